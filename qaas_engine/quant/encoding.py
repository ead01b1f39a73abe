"""Quantization grids and the fake-quant op that simulates them.

The quantizer is ``x_int = clamp(round(x / s) + o, qmin, qmax)`` and ``x_q = (x_int - o) * s``,
computed exactly as ONNX ``QuantizeLinear``/``DequantizeLinear`` do (divide, round half to even,
add the zero point, saturate), so that the simulation and the exported graph agree bit for bit
wherever the runtime computes in float between Q and DQ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

# Smallest scale we emit: keeps x / s finite for an all-zero tensor.
MIN_SCALE = 1e-8
# Signed symmetric grids of this width use the restricted range [-(2^(b-1) - 1), 2^(b-1) - 1].
RESTRICTED_BITS = 8


@dataclass(frozen=True)
class QuantScheme:
    """How one tensor is quantized: the integer grid and how ranges map onto it."""

    bits: int = 8
    symmetric: bool = True
    signed: bool = True
    per_channel: bool = False
    axis: int = 0

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def restricted(self) -> bool:
        """A signed symmetric grid whose range is [-qmax, qmax] steps: qmin is never chosen."""
        return self.symmetric and self.signed and self.bits == RESTRICTED_BITS

    @property
    def steps_below_zero(self) -> int:
        """Grid steps a symmetric range's negative bound spans (its scale is bound / this)."""
        return self.qmax if self.restricted or not self.signed else -self.qmin


@dataclass
class Encoding:
    """A scheme with its scale and zero point (one entry per channel, or a single entry)."""

    scheme: QuantScheme
    scale: np.ndarray  # float32, shape [C] or [1]
    zero_point: np.ndarray  # int64, same shape

    @classmethod
    def from_range(cls, scheme: QuantScheme, lows: npt.ArrayLike, highs: npt.ArrayLike) -> Encoding:
        """Grid covering [low, high] (widened to include 0, so zero padding stays exact); a
        range per channel, or one (numbers are fine)."""
        low = np.minimum(np.asarray(lows, dtype=np.float64).reshape(-1), 0.0)
        high = np.maximum(np.asarray(highs, dtype=np.float64).reshape(-1), 0.0)
        qmin, qmax = scheme.qmin, scheme.qmax
        if scheme.symmetric:
            if scheme.restricted:
                # int8 as TFLite's spec and ONNX Runtime have it: [-127, 127], no -128 (whose
                # products overflow the int16 pair sums of u8s8 kernels).
                scale = np.maximum(-low, high) / qmax
                zero_point = np.zeros_like(scale)
            elif scheme.signed:
                # Zero at 0 and the whole grid in use: -qmin steps below zero, qmax above
                # (max|w|/qmax would never use the lowest level, a real loss at 4 bits).
                scale = np.maximum(-low / -qmin, high / qmax)
                zero_point = np.zeros_like(scale)
            else:
                scale = high / qmax
                zero_point = np.zeros_like(scale)
        else:
            scale = (high - low) / (qmax - qmin)
            scale = np.maximum(scale, MIN_SCALE)
            zero_point = np.clip(np.round(qmin - low / scale), qmin, qmax)
        scale = np.maximum(scale, MIN_SCALE).astype(np.float32)
        return cls(scheme, scale, zero_point.astype(np.int64))

    def scaled(self, factor: float) -> Encoding:
        """The same integers on a grid ``factor`` times as fine or coarse: where ``y = x *
        factor`` (``factor`` > 0), quantizing ``y`` here gives ``x``'s own integers back."""
        scale = (np.asarray(self.scale, np.float64) * factor).astype(np.float32)
        return Encoding(self.scheme, scale, np.array(self.zero_point, copy=True))

    @property
    def low(self) -> np.ndarray:
        return ((self.scheme.qmin - self.zero_point) * self.scale.astype(np.float64)).astype(
            np.float32
        )

    @property
    def high(self) -> np.ndarray:
        return ((self.scheme.qmax - self.zero_point) * self.scale.astype(np.float64)).astype(
            np.float32
        )

    def aimet_offsets(self) -> list[int]:
        """AIMET stores grids as unsigned with x_q = (x_u + offset) * scale: offset = qmin - o."""
        return [int(self.scheme.qmin - z) for z in self.zero_point]

    def array_params(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """Scale (float64) and zero point shaped to broadcast against an array of ``ndim``."""
        scale = self.scale.astype(np.float64)
        zero_point = self.zero_point.astype(np.float64)
        if self.scheme.per_channel and scale.size > 1:
            shape = [1] * ndim
            shape[self.scheme.axis] = -1
            return scale.reshape(shape), zero_point.reshape(shape)
        return scale.reshape(()), zero_point.reshape(())

    def quantize_array(self, x: np.ndarray) -> np.ndarray:
        """:meth:`quantize_int` in numpy: the grid values QuantizeLinear writes (float64)."""
        scale, zero_point = self.array_params(x.ndim)
        values = np.round(np.asarray(x, dtype=np.float64) / scale) + zero_point
        return np.clip(values, self.scheme.qmin, self.scheme.qmax)

    def fake_quantize_array(self, x: np.ndarray) -> np.ndarray:
        """Quantize-dequantize in numpy, in ``x``'s dtype (no gradient: analysis, export)."""
        scale, zero_point = self.array_params(x.ndim)
        return ((self.quantize_array(x) - zero_point) * scale).astype(x.dtype)

    def torch_params(
        self, like: torch.Tensor, channel_axis: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point shaped to broadcast against ``like``."""
        import torch

        scale = torch.as_tensor(self.scale, dtype=like.dtype, device=like.device)
        zero_point = torch.as_tensor(self.zero_point, dtype=like.dtype, device=like.device)
        if self.scheme.per_channel and scale.numel() > 1:
            axis = self.scheme.axis if channel_axis is None else channel_axis
            shape = [1] * like.dim()
            shape[axis] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        else:
            scale, zero_point = scale.reshape(()), zero_point.reshape(())
        return scale, zero_point

    def quantize_int(self, x: torch.Tensor) -> torch.Tensor:
        """Integer grid values the runtime's QuantizeLinear would produce (float64 tensor)."""
        import torch

        x = x.double()
        scale, zero_point = self.torch_params(x)
        return torch.clamp(torch.round(x / scale) + zero_point, self.scheme.qmin, self.scheme.qmax)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize with a straight-through gradient."""
        import torch

        scale, zero_point = self.torch_params(x)
        x_int = torch.clamp(torch.round(x / scale) + zero_point, self.scheme.qmin, self.scheme.qmax)
        x_q = (x_int - zero_point) * scale
        return x + (x_q - x).detach()
