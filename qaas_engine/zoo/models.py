"""Small reference classifiers for (N, 1, 8, 8) digit images, 10 classes, each under 60k params.

Each one exercises a family of ONNX patterns the quantizer must handle (depthwise convs and
residual adds, plain residual blocks, attention with MatMul/Softmax/LayerNormalization, modern
activations with squeeze-excite and ConvTranspose, per-channel PReLU) while training to >93%
accuracy on digits in seconds on a CPU.
"""

import math

import torch
from torch import nn

NUM_CLASSES = 10


def _conv_bn(
    c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise 3x3, linear 1x1 project, add when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_residual = stride == 1 and c_in == c_out
        self.body = nn.Sequential(
            *_conv_bn(c_in, hidden, 1),
            nn.ReLU6(),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU6(),
            *_conv_bn(hidden, c_out, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out


class MobileNetV2Like(nn.Module):
    """Stem, inverted-residual blocks (stride 2 at blocks 1 and 3), 1x1 head conv, GAP, Linear."""

    def __init__(self, width: int = 16, blocks: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(1, width, 3), nn.ReLU6()]
        c_in, downsamples = width, 0
        for i in range(blocks):
            stride = 2 if i in (1, 3) else 1
            downsamples += stride == 2
            c_out = width + (width // 2) * downsamples
            layers.append(InvertedResidual(c_in, c_out, stride))
            c_in = c_out
        layers += [*_conv_bn(c_in, 2 * c_in, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * c_in, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv+BN projects the skip when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*_conv_bn(c_in, c_out, 3, stride), nn.ReLU())
        self.conv2 = nn.Sequential(*_conv_bn(c_out, c_out, 3))
        self.downsample: nn.Module = (
            nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.downsample(x))


class ResNetLike(nn.Module):
    """Stem, three basic blocks (16, 32/2, 32), GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(1, 16, 3), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer with attention spelled out so ONNX shows MatMul and Softmax."""

    def __init__(self, dim: int, heads: int, tokens: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.tokens = dim, heads, tokens
        self.head_dim = dim // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        # -1 for the batch keeps the exported Reshape shape a constant under a dynamic batch.
        return t.reshape(-1, self.tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        q, k, v = self._split(self.q(h)), self._split(self.k(h)), self._split(self.v(h))
        attn = self.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale)
        ctx = torch.matmul(attn, v).transpose(1, 2).reshape(-1, self.tokens, self.dim)
        x = x + self.out(ctx)
        return x + self.mlp(self.norm2(x))


class TransformerEncoderLike(nn.Module):
    """The 8 image rows as 8 tokens of 8 features: embed, encoder layers, LN, token mean, head."""

    tokens = 8
    features = 8

    def __init__(self, dim: int = 32, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(self.features, dim)
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.layers = nn.Sequential(*(EncoderLayer(dim, heads, self.tokens) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.reshape(-1, self.tokens, self.features)) + self.pos
        x = self.norm(self.layers(x))
        return self.head(x.mean(dim=1))


class SqueezeExcite(nn.Module):
    """Channel gate: GAP, 1x1 reduce, ReLU, 1x1 expand, Hardsigmoid, multiply."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, reduced, 1),
            nn.ReLU(),
            nn.Conv2d(reduced, channels, 1),
            nn.Hardsigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SiLUHardSwishNet(nn.Module):
    """SiLU/Hardswish convs, SE gate, MaxPool, ConvTranspose upsample, LeakyReLU, PReLU, AvgPool.

    The ConvTranspose carries its own bias and no BN, so that folding BN into convolutions
    (export with ``keep_batchnorm=False``) leaves no BatchNormalization node behind.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(1, 16, 3),
            nn.SiLU(),
            *_conv_bn(16, 24, 3),
            nn.Hardswish(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            SqueezeExcite(24, 8),
            nn.ConvTranspose2d(24, 16, 2, stride=2),  # 4x4 -> 8x8
            nn.LeakyReLU(0.1),
            *_conv_bn(16, 32, 3),
            nn.PReLU(),
            nn.AvgPool2d(2),  # 8x8 -> 4x4
            *_conv_bn(32, 32, 3),
            nn.SiLU(),
            *_conv_bn(32, 48, 3, stride=2),
            nn.Hardswish(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class PReLUNet(nn.Module):
    """Conv+BN+per-channel PReLU chain (16, 16, 32/2, 32, 48/2), GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c_out, stride in ((16, 1), (16, 1), (32, 2), (32, 1), (48, 2)):
            layers += [*_conv_bn(c_in, c_out, 3, stride), nn.PReLU(c_out)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


MODELS: dict[str, type[nn.Module]] = {
    "mobilenetv2": MobileNetV2Like,
    "resnet": ResNetLike,
    "transformer": TransformerEncoderLike,
    "silu_hardswish": SiLUHardSwishNet,
    "prelu": PReLUNet,
}


def build_model(name: str, seed: int = 0) -> nn.Module:
    """Construct zoo model ``name`` with weights initialized from ``seed`` (reproducible)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}; choose from {sorted(MODELS)}") from None
    torch.manual_seed(seed)
    return cls()
