"""Per-channel range imbalance made on purpose, without changing what the network computes.

Real MobileNets reach per-tensor INT8 with channel ranges that differ by orders of magnitude; a
small digits net does not. Scaling BN output channel i by ``k_i`` (gamma and beta) and dividing
the next layer's input channel i by ``k_i`` is exact through a ReLU (``relu(k y) = k relu(y)``),
so the float function stays the same while per-tensor quantization breaks.
"""

from __future__ import annotations

import torch
from torch import nn


class DepthwiseReLUNet(nn.Module):
    """Stem, expand -> depthwise -> project (+residual), strided depthwise, 1x1, GAP, Linear."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()

        def cbr(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, relu=True):
            layers = [
                nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                nn.BatchNorm2d(c_out),
            ]
            return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)

        self.stem = cbr(1, width, 3)
        self.expand = cbr(width, 2 * width, 1)
        self.depthwise = cbr(2 * width, 2 * width, 3, groups=2 * width)
        self.project = cbr(2 * width, width, 1, relu=False)
        self.down = cbr(width, width, 3, stride=2, groups=width)
        self.head = cbr(width, 2 * width, 1)
        self.classifier = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        x = self.head(self.down(x))
        return self.classifier(x.mean((2, 3)))


def _rescale(bn: nn.BatchNorm2d, next_conv: nn.Conv2d, factors: torch.Tensor) -> None:
    with torch.no_grad():
        bn.weight.mul_(factors)
        bn.bias.mul_(factors)
        if next_conv.groups == 1:
            next_conv.weight.div_(factors.view(1, -1, 1, 1))
        else:  # depthwise: input channel i is output channel i
            next_conv.weight.div_(factors.view(-1, 1, 1, 1))


def imbalance_channels(model: DepthwiseReLUNet, seed: int = 0, decades: float = 2.0) -> None:
    """Scale each channel by 10^U(-decades, decades) through the ReLUs; float output unchanged."""
    generator = torch.Generator().manual_seed(seed)

    def factors(n: int) -> torch.Tensor:
        return 10 ** ((torch.rand(n, generator=generator) * 2 - 1) * decades)

    _rescale(model.expand[1], model.depthwise[0], factors(model.expand[1].num_features))
    _rescale(model.depthwise[1], model.project[0], factors(model.depthwise[1].num_features))
    _rescale(model.down[1], model.head[0], factors(model.down[1].num_features))
