"""Redundancy made on purpose, without changing what a trained network computes.

Mixed precision should find the parts of a network that cost energy and carry nothing. Two such
parts are added to a trained ``DepthwiseReLUNet``: an identity 1x1 convolution (its weights are
exact on a 2-bit grid, so any wider grid is waste) and extra output channels in the head whose
classifier weights are zero (pruning them changes nothing). The float output stays the same.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qaas_engine.zoo.imbalance import DepthwiseReLUNet


class RedundantNet(nn.Module):
    """``DepthwiseReLUNet`` with an identity layer before the head and dead head channels."""

    def __init__(self, base: DepthwiseReLUNet, dead_channels: int = 8, seed: int = 0) -> None:
        super().__init__()
        base = copy.deepcopy(base)
        self.stem, self.expand, self.depthwise = base.stem, base.expand, base.depthwise
        self.project, self.down = base.project, base.down
        width = base.down[0].out_channels
        self.identity = nn.Conv2d(width, width, 1, bias=False)
        head_conv, head_bn = base.head[0], base.head[1]
        live = head_conv.out_channels
        generator = torch.Generator().manual_seed(seed)
        conv = nn.Conv2d(width, live + dead_channels, 1, bias=False)
        bn = nn.BatchNorm2d(live + dead_channels)
        classifier = nn.Linear(live + dead_channels, base.classifier.out_features)
        with torch.no_grad():
            self.identity.weight.copy_(torch.eye(width).reshape(width, width, 1, 1))
            conv.weight[:live] = head_conv.weight
            conv.weight[live:] = (
                torch.randn(dead_channels, width, 1, 1, generator=generator) / width**0.5
            )
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name)[:live] = getattr(head_bn, name)
            classifier.weight.zero_()
            classifier.weight[:, :live] = base.classifier.weight
            classifier.bias.copy_(base.classifier.bias)
        self.head = nn.Sequential(conv, bn, nn.ReLU())
        self.classifier = classifier
        self.dead_channels = range(live, live + dead_channels)
        self.train(base.training)  # a trained (eval-mode) base gives an eval-mode copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        x = self.head(self.identity(self.down(x)))
        return self.classifier(x.mean((2, 3)))
