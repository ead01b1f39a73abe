"""A quantizer on nested grids whose bit-width is a learned gate (Bayesian Bits' building block).

One tensor is quantized on grids of 2, 4, 8 and 16 bits over the same range; the value is the
gated sum of residuals ``x_2 + z4 * (e_4 + z8 * (e_8 + z16 * e_16))``, so gates on up to width
``b`` give exactly ``x_b``. Each gate is hard-concrete (Louizos et al. 2018): sampled while
training, its expectation otherwise, and frozen to a decision at the end. A weight's 2-bit gate
is one per output channel, and prunes it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from qaas_engine.quant.encoding import Encoding

HC_BETA, HC_ZETA, HC_GAMMA = 2.0 / 3.0, 1.1, -0.1  # hard-concrete temperature and stretch
GATE_ON, GATE_OFF = 3.0, -3.0  # initial log_alpha: decided, but still free to move


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _active_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z != 0) of a hard-concrete gate."""
    return torch.sigmoid(log_alpha - HC_BETA * math.log(-HC_GAMMA / HC_ZETA))


def _gate(log_alpha: torch.Tensor, sample: bool) -> torch.Tensor:
    if sample:
        u = torch.rand_like(log_alpha).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / HC_BETA)
    else:
        s = torch.sigmoid(log_alpha)
    return torch.clamp(s * (HC_ZETA - HC_GAMMA) + HC_GAMMA, 0.0, 1.0)


class GatedQuantizer(nn.Module):
    """Nested grids of one tensor with a gate per doubling (and per channel at 2 bits)."""

    def __init__(
        self,
        encoding: Encoding,
        levels: tuple[int, ...],
        start_bits: int,
        channels: int | None,
        fixed: bool = False,
    ) -> None:
        super().__init__()
        self.base = encoding
        self.levels = levels
        self.axis = encoding.scheme.axis
        self.encodings = [
            encoding
            if b == encoding.scheme.bits
            else Encoding.from_range(replace(encoding.scheme, bits=b), encoding.low, encoding.high)
            for b in levels
        ]
        for index, level in enumerate(self.encodings):
            self.register_buffer(f"scale{index}", torch.from_numpy(level.scale.copy()))
            self.register_buffer(
                f"zero{index}", torch.from_numpy(level.zero_point.astype(np.float32))
            )
        start = [GATE_ON if b <= start_bits else GATE_OFF for b in levels[1:]]
        self.log_alpha = nn.Parameter(torch.tensor(start), requires_grad=not fixed)
        self.prunable = channels is not None
        self.channel_log_alpha = nn.Parameter(
            torch.full((channels or 1,), GATE_ON), requires_grad=self.prunable and not fixed
        )
        self.frozen: tuple[torch.Tensor, torch.Tensor] | None = None

    def _level(self, x: torch.Tensor, index: int) -> torch.Tensor:
        scale, zero = getattr(self, f"scale{index}"), getattr(self, f"zero{index}")
        scheme = self.encodings[index].scheme
        if scale.numel() > 1:
            shape = [1] * x.dim()
            shape[self.axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        x_int = torch.clamp(_round_ste(x / scale) + zero, scheme.qmin, scheme.qmax)
        return (x_int - zero) * scale

    def gates(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frozen is not None:
            return self.frozen
        return (
            _gate(self.log_alpha, self.training),
            _gate(self.channel_log_alpha, self.training and self.prunable),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        doubling, channel = self.gates()
        values = [self._level(x, i) for i in range(len(self.levels))]
        out = values[-1] - values[-2] if len(values) > 1 else values[0]
        for i in range(len(values) - 2, -1, -1):  # inside out: e_b + z_2b * (...)
            out = out * doubling[i]
            out = out + (values[i] - values[i - 1] if i > 0 else values[0])
        if self.prunable:
            shape = [1] * x.dim()
            shape[self.axis] = -1
            out = out * channel.reshape(shape)
        return out

    def expected_bits(self) -> torch.Tensor:
        """E[bits] under the gates: 2 + P(z4)(2 + P(z8)(4 + P(z16) 8))."""
        if self.frozen is not None:
            return torch.tensor(float(self.decided_bits()))
        active = _active_probability(self.log_alpha)
        bits = torch.tensor(0.0)
        for i in range(len(self.levels) - 1, 0, -1):
            bits = active[i - 1] * (self.levels[i] - self.levels[i - 1] + bits)
        return bits + self.levels[0]

    def active_fraction(self) -> torch.Tensor:
        if not self.prunable:
            return torch.tensor(1.0)
        if self.frozen is not None:
            return self.frozen[1].mean()
        return _active_probability(self.channel_log_alpha).mean()

    def decided_bits(self) -> int:
        bits = self.levels[0]
        for i, log_alpha in enumerate(self.log_alpha.detach().tolist()):
            if log_alpha <= 0:
                break
            bits = self.levels[i + 1]
        return bits

    def kept_channels(self) -> np.ndarray:
        if not self.prunable:
            return np.ones(1, dtype=bool)
        return self.channel_log_alpha.detach().cpu().numpy() > 0

    def freeze(self) -> None:
        """Gates to their decisions: the quantizer becomes the plain grid at the chosen width."""
        bits = self.decided_bits()
        doubling = torch.tensor([1.0 if b <= bits else 0.0 for b in self.levels[1:]])
        channel = torch.from_numpy(self.kept_channels().astype(np.float32))
        self.frozen = (doubling, channel)
        self.log_alpha.requires_grad_(False)
        self.channel_log_alpha.requires_grad_(False)

    def decided_encoding(self) -> Encoding:
        return self.encodings[self.levels.index(self.decided_bits())]
