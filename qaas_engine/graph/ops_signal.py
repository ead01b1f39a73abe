"""Fourier transform and window functions in torch (``torch.fft``), differentiable, for audio
front ends exported into the model (spectrograms before a CNN)."""

import math

import torch
from torch import Tensor

from qaas_engine.graph.ops_tensor import norm_axis, torch_dtype
from qaas_engine.graph.registry import Inputs, NodeContext, register


@register("DFT")
def dft(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """The last axis holds (real) or (real, imaginary); the transform runs along ``axis`` (an
    attribute before opset 20, an input from it), zero-padded or cut to ``dft_length``. An
    inverse one-sided transform is left to the reference fallback."""
    x, length = inputs[0], inputs.optional(1)
    if ctx.opset >= 20:
        axis_input = inputs.optional(2)
        axis = -2 if axis_input is None else int(axis_input.reshape(-1)[0])
    else:
        axis = int(ctx.attrs.get("axis", 1))
    axis = norm_axis(axis, x.dim())
    inverse, onesided = ctx.attrs.get("inverse", 0), ctx.attrs.get("onesided", 0)
    if inverse and onesided:
        raise ctx.unsupported("an inverse one-sided DFT")
    signal = x[..., 0] if x.shape[-1] == 1 else torch.complex(x[..., 0], x[..., 1])
    n = None if length is None else int(length.reshape(-1)[0])
    spectrum = (torch.fft.ifft if inverse else torch.fft.fft)(signal, n=n, dim=axis)
    if onesided:
        spectrum = spectrum.narrow(axis, 0, spectrum.shape[axis] // 2 + 1)
    if not spectrum.is_complex():
        spectrum = torch.complex(spectrum, torch.zeros_like(spectrum))
    return [torch.view_as_real(spectrum).to(x.dtype)]


_WINDOWS = {
    "HannWindow": (0.5, 0.5, 0.0),
    "HammingWindow": (25 / 46, 21 / 46, 0.0),
    "BlackmanWindow": (0.42, 0.5, 0.08),
}


@register(*_WINDOWS)
def window(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """a0 - a1 cos(2 pi n / N) + a2 cos(4 pi n / N), with N the size (``periodic``) or one
    less (symmetric)."""
    size = int(inputs[0].reshape(-1)[0])
    a0, a1, a2 = _WINDOWS[ctx.op_type]
    period = size if ctx.attrs.get("periodic", 1) else size - 1
    phase = 2 * math.pi * torch.arange(size, dtype=torch.float64) / max(period, 1)
    values = a0 - a1 * torch.cos(phase) + a2 * torch.cos(2 * phase)
    return [values.to(torch_dtype(ctx, ctx.attrs.get("output_datatype", 1)))]
