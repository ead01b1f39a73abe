"""Resize, Upsample and GridSample in torch, to ONNX's coordinate rules rather than torch's.

Resize is separable: each resized axis is a gather (nearest) or a product with an interpolation
matrix (linear, cubic, antialiased, cropped), so every variant is one differentiable matmul per
axis. Source coordinates are computed in float32 as ONNX Runtime does, since a coordinate that
lands a hair on the other side of an integer picks another pixel.
"""

import math
from collections.abc import Callable
from typing import overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from qaas_engine.graph.ops_tensor import int_list, norm_axis
from qaas_engine.graph.registry import Inputs, NodeContext, register

# Output positions to source coordinates per coordinate_transformation_mode; arguments are
# (positions, scale, input size, output size). tf_crop_and_resize is handled with its ROI.
_COORDS: dict[str, Callable[[Tensor, Tensor, int, int], Tensor]] = {
    "half_pixel": lambda o, s, n_in, n_out: (o + 0.5) / s - 0.5,
    "pytorch_half_pixel": lambda o, s, n_in, n_out: (o + 0.5) / s - 0.5 if n_out > 1 else o * 0,
    "align_corners": lambda o, s, n_in, n_out: o * (n_in - 1) / (n_out - 1) if n_out > 1 else o * 0,
    "asymmetric": lambda o, s, n_in, n_out: o / s,
    "tf_half_pixel_for_nn": lambda o, s, n_in, n_out: (o + 0.5) / s,
    "half_pixel_symmetric": lambda o, s, n_in, n_out: (
        n_in / 2 * (1 - n_out / (s * n_in)) + (o + 0.5) / s - 0.5
    ),
}
_CROP = "tf_crop_and_resize"

# Source coordinate to source index per nearest_mode; "simple" is what ORT uses before opset 11.
_NEAREST: dict[str, Callable[[Tensor, bool], Tensor]] = {
    "round_prefer_floor": lambda c, down: torch.ceil(c - 0.5),
    "round_prefer_ceil": lambda c, down: torch.floor(c + 0.5),
    "floor": lambda c, down: torch.floor(c),
    "ceil": lambda c, down: torch.ceil(c),
    "simple": lambda c, down: torch.ceil(c) if down else torch.trunc(c),
}


def _cubic(distance: Tensor, a: float) -> Tensor:
    """Keys' cubic convolution kernel with coefficient ``a`` (ONNX default -0.75)."""
    d = distance.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _taps(mode: str, scale: float, antialias: bool) -> int:
    """How many source pixels one output pixel blends: the kernel's support, stretched by
    1/scale when an antialiased resize shrinks."""
    support = 1 if mode == "linear" else 2
    if antialias and scale < 1:
        return 2 - 2 * (math.floor(-support / scale) + 1)
    return 2 * support


def _weights(ctx: NodeContext, mode: str, offsets: Tensor, scale: float) -> Tensor:
    """Tap weights from each tap's distance to the source coordinate (in source pixels)."""
    antialias = bool(ctx.attrs.get("antialias", 0)) and scale < 1
    distance = offsets * scale if antialias else offsets
    if mode == "linear":
        weights = (1 - distance.abs()).clamp(min=0)
    else:
        weights = _cubic(distance, float(ctx.attrs.get("cubic_coeff_a", -0.75)))
    return weights / weights.sum(1, keepdim=True) if antialias else weights


def _source(
    coord: str, size: int, scale: float, n_in: int, roi: tuple[float, float], length: float
) -> tuple[Tensor, Tensor | None]:
    """Source coordinate of each output position, and for tf_crop_and_resize which positions
    fall outside the input (they take ``extrapolation_value``).

    ``length`` is the spec's resized length, ``scale * n_in`` before truncation to ``size``:
    align_corners and tf_crop_and_resize divide by it (ORT divides by ``size``; the two differ
    only for scales whose product with the input size is not whole)."""
    positions = torch.arange(size, dtype=torch.float64)
    if coord == _CROP:
        start, end = roi
        if length != 1:
            src = start * (n_in - 1) + positions * (end - start) * (n_in - 1) / (length - 1)
        else:
            src = torch.full((size,), (start + end) * (n_in - 1) / 2, dtype=torch.float64)
        return src, (src < 0) | (src > n_in - 1)
    if coord == "align_corners" and length != size:
        return positions * (n_in - 1) / (length - 1) if length != 1 else positions * 0, None
    s = torch.tensor(scale, dtype=torch.float32)
    positions = torch.arange(size, dtype=torch.float32)
    return _COORDS[coord](positions, s, n_in, size).double(), None


def _interpolation_matrix(
    ctx: NodeContext, how: tuple, n_in: int, size: int, scale: float, roi: tuple, length: float
) -> tuple[Tensor, Tensor | None]:
    """(size, n_in) weights: row i mixes the taps around output i's source coordinate, the
    window leaning left at exact integers, taps past the edge clamped to it (or dropped and the
    rest renormalised with ``exclude_outside``)."""
    mode, coord, _ = how
    src, outside = _source(coord, size, scale, n_in, roi, length)
    taps = _taps(mode, scale, bool(ctx.attrs.get("antialias", 0)))
    base = torch.floor(src)
    base = torch.where(base == src, base - 1, base)  # an integer coordinate: ratio 1, not 0
    index = base.long().unsqueeze(1) + torch.arange(taps) - taps // 2 + 1
    weights = _weights(ctx, mode, index.double() - src.unsqueeze(1), scale)
    if ctx.attrs.get("exclude_outside", 0):
        weights = torch.where((index < 0) | (index >= n_in), 0.0, weights)
        total = weights.sum(1, keepdim=True)
        weights = weights / torch.where(total == 0, 1.0, total)
    matrix = torch.zeros(size, n_in, dtype=torch.float64)
    matrix.scatter_add_(1, index.clamp(0, n_in - 1), weights)
    return matrix, outside


def _resize_axis(
    ctx: NodeContext, x: Tensor, axis: int, geometry: tuple, roi: tuple, how: tuple
) -> Tensor:
    mode, coord, nearest = how
    size, scale, length = geometry
    n_in = x.shape[axis]
    if mode == "nearest":
        src, outside = _source(coord, size, scale, n_in, roi, length)
        idx = _NEAREST[nearest](src.float(), scale < 1).long().clamp(0, n_in - 1)
        y = x.index_select(axis, idx)
    else:
        matrix, outside = _interpolation_matrix(ctx, how, n_in, size, scale, roi, length)
        compute = x.dtype if x.dtype.is_floating_point else torch.float64
        y = torch.matmul(x.movedim(axis, -1).to(compute), matrix.t().to(compute))
        y = y.movedim(-1, axis)
    if outside is not None and bool(outside.any()):
        shape = [size if a == axis else 1 for a in range(x.dim())]
        fill = torch.tensor(float(ctx.attrs.get("extrapolation_value", 0.0)), dtype=y.dtype)
        y = torch.where(outside.reshape(shape), fill, y)
    return y


def _saturate(y: Tensor, dtype: torch.dtype) -> Tensor:
    """Integer images: rounded and clamped to the type's range, as ONNX's reference does."""
    if dtype.is_floating_point or y.dtype == dtype:
        return y.to(dtype)
    info = torch.iinfo(dtype)
    return torch.round(y).clamp(info.min, info.max).to(dtype)


def _aspect_sizes(
    ctx: NodeContext, dims: list[int], sizes: list[int], axes: list[int]
) -> tuple[list[int], list[float]]:
    """keep_aspect_ratio_policy: one scale for every resized axis, the smallest (not_larger) or
    largest (not_smaller) of the requested ones; sizes round half up from it."""
    policy = ctx.attrs.get("keep_aspect_ratio_policy", "stretch")
    if policy not in ("not_larger", "not_smaller"):
        raise ctx.unsupported(f"attribute keep_aspect_ratio_policy={policy}")
    ratios = [sizes[a] / dims[a] for a in axes]
    scale = min(ratios) if policy == "not_larger" else max(ratios)
    new_sizes = [int(scale * d + 0.5) if a in axes else d for a, d in enumerate(dims)]
    return new_sizes, [scale if a in axes else 1.0 for a in range(len(dims))]


def _resize(
    ctx: NodeContext,
    x: Tensor,
    scales: list[float] | None,
    sizes: list[int] | None,
    how: tuple[str, str, str],
    roi: list[float] | None = None,
    axes: list[int] | None = None,
) -> Tensor:
    """Output sizes truncate ``float32(scale) * size`` as ORT does; given sizes define scales."""
    mode, coord, nearest = how
    if mode not in ("nearest", "linear", "cubic"):
        raise ctx.unsupported(f"attribute mode={mode}")
    if coord not in _COORDS and coord != _CROP:
        raise ctx.unsupported(f"attribute coordinate_transformation_mode={coord}")
    if nearest not in _NEAREST:
        raise ctx.unsupported(f"attribute nearest_mode={nearest}")
    dims = list(x.shape)
    axes = axes if axes is not None else list(range(x.dim()))
    requested = (
        sizes is not None and ctx.attrs.get("keep_aspect_ratio_policy", "stretch") == "stretch"
    )
    if sizes is not None and ctx.attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        sizes, scales = _aspect_sizes(ctx, dims, sizes, axes)
    elif sizes is not None:
        scales = [float(np.float32(o) / np.float32(i)) for o, i in zip(sizes, dims, strict=True)]
    elif scales is not None:
        sizes = [int(np.float32(s) * np.float32(i)) for s, i in zip(scales, dims, strict=True)]
    else:
        raise ctx.unsupported("Resize without scales or sizes")
    lengths = [
        float(s) if requested else f * d for s, f, d in zip(sizes, scales, dims, strict=True)
    ]
    roi = roi or [0.0] * x.dim() + [1.0] * x.dim()
    y = x
    for axis, (size, scale) in enumerate(zip(sizes, scales, strict=True)):
        box = (roi[axis], roi[axis + x.dim()])
        cropped = coord == _CROP and box != (0.0, 1.0)
        if size != dims[axis] or scale != 1.0 or cropped:
            y = _resize_axis(ctx, y, axis, (size, scale, lengths[axis]), box, how)
    return _saturate(y, x.dtype)


def _floats(t: Tensor | None) -> list[float] | None:
    """Resize's optional float inputs may be given as empty tensors to mean 'absent'."""
    return None if t is None or t.numel() == 0 else [float(v) for v in t.reshape(-1).tolist()]


@overload
def _full_rank(values: list, axes: list[int] | None, fill: list) -> list: ...


@overload
def _full_rank(values: list | None, axes: list[int] | None, fill: list) -> list | None: ...


def _full_rank(values: list | None, axes: list[int] | None, fill: list) -> list | None:
    """Opset 18 ``axes`` gives scales/sizes for some axes only; the rest stay as ``fill``."""
    if values is None or not axes:
        return values
    out = list(fill)
    for axis, value in zip(axes, values, strict=True):
        out[axis] = value
    return out


@register("Resize")
def resize(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    mode = ctx.attrs.get("mode", "nearest")
    if ctx.opset < 11:
        how = (mode, "asymmetric", "simple")
        return [_resize(ctx, x, _floats(inputs[1]), None, how)]
    coord = ctx.attrs.get("coordinate_transformation_mode", "half_pixel")
    how = (mode, coord, ctx.attrs.get("nearest_mode", "round_prefer_floor"))
    rank = x.dim()
    axes = [norm_axis(a, rank) for a in ctx.attrs["axes"]] if ctx.attrs.get("axes") else None
    scales = _full_rank(_floats(inputs.optional(2)), axes, [1.0] * rank)
    sizes = _full_rank(int_list(inputs.optional(3)) or None, axes, list(x.shape))
    roi = _floats(inputs.optional(1)) if coord == _CROP else None
    if roi is not None and axes:
        starts = _full_rank(roi[: len(axes)], axes, [0.0] * rank)
        roi = starts + _full_rank(roi[len(axes) :], axes, [1.0] * rank)
    return [_resize(ctx, x, scales, sizes, how, roi, axes)]


@register("Upsample")
def upsample(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Pre-opset-10 Resize: asymmetric coordinates, scales as attribute (input from opset 9)."""
    x = inputs[0]
    scales = _floats(inputs[1]) if ctx.opset >= 9 else list(ctx.attrs["scales"])
    how = (ctx.attrs.get("mode", "nearest"), "asymmetric", "simple")
    return [_resize(ctx, x, scales, None, how)]


# --- grid sample ---------------------------------------------------------------------------------

_GRID_MODES = {"linear": "bilinear", "bilinear": "bilinear", "nearest": "nearest"}
_GRID_MODES |= {"cubic": "bicubic", "bicubic": "bicubic"}


@register("GridSample")
def grid_sample(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """torch's grid_sample has ONNX's conventions (x before y, -1..1 extent, the same padding
    modes and cubic coefficient); it has no volumetric cubic, which is left to the fallback."""
    x, grid = inputs[0], inputs[1]
    mode = _GRID_MODES.get(ctx.attrs.get("mode", "linear" if ctx.opset >= 20 else "bilinear"))
    padding = ctx.attrs.get("padding_mode", "zeros")
    if mode is None or padding not in ("zeros", "border", "reflection"):
        raise ctx.unsupported(f"attribute mode={ctx.attrs.get('mode')}/padding_mode={padding}")
    if x.dim() not in (4, 5) or (x.dim() == 5 and mode == "bicubic"):
        raise ctx.unsupported(f"{x.dim() - 2}-D {mode} sampling")
    align = bool(ctx.attrs.get("align_corners", 0))
    return [F.grid_sample(x, grid.to(x.dtype), mode, padding, align_corners=align)]


@register("AffineGrid")
def affine_grid(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """The sampling grid of an affine transform, in GridSample's convention (torch's too)."""
    theta, size = inputs[0], [int(v) for v in inputs[1].reshape(-1).tolist()]
    align = bool(ctx.attrs.get("align_corners", 0))
    return [F.affine_grid(theta, size, align_corners=align)]
