"""Convolution, pooling, batch normalisation, softmax and activation ONNX ops in torch.

Padding and ceil-mode rules differ between ONNX and torch's functional API, so these ops resolve
ONNX's geometry to explicit pads first and only then call torch; the result matches ONNX
Runtime rather than torch's own conventions.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from qaas_engine.graph.ops_tensor import norm_axis
from qaas_engine.graph.registry import Inputs, NodeContext, register

Pads = list[tuple[int, int]]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


# --- geometry helpers ----------------------------------------------------------------------------


def _spatial_rank(ctx: NodeContext, x: Tensor) -> int:
    n = x.dim() - 2
    if n not in _CONV:
        raise ctx.unsupported(f"{n}-D spatial input")
    return n


def _per_axis(ctx: NodeContext, name: str, n: int, default: int) -> list[int]:
    value = ctx.attrs.get(name)
    return [default] * n if not value else [int(v) for v in value]


def _split_total(total: int, more_at_end: bool) -> tuple[int, int]:
    small = total // 2
    return (small, total - small) if more_at_end else (total - small, small)


def _explicit_pads(ctx: NodeContext, n: int) -> Pads:
    """ONNX lists all begins, then all ends; pair them per axis."""
    pads = ctx.attrs.get("pads") or [0] * (2 * n)
    return list(zip(pads[:n], pads[n:], strict=True))


def _resolve_pads(
    ctx: NodeContext, sizes: list[int], kernel: list[int], strides: list[int], dils: list[int]
) -> Pads:
    """Explicit (begin, end) pads per spatial axis from ``pads`` or ``auto_pad``."""
    n = len(sizes)
    auto_pad = ctx.attrs.get("auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        return _explicit_pads(ctx, n)
    if auto_pad == "VALID":
        return [(0, 0)] * n
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.unsupported(f"attribute auto_pad={auto_pad}")
    out = []
    for size, k, s, d in zip(sizes, kernel, strides, dils, strict=True):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        out.append(_split_total(total, more_at_end=auto_pad == "SAME_UPPER"))
    return out


def _torch_pad(pads: Pads) -> list[int]:
    """F.pad lists (begin, end) pairs from the last axis backwards."""
    return [p for begin, end in reversed(pads) for p in (begin, end)]


def _channel_view(t: Tensor, rank: int) -> Tensor:
    """Per-channel vectors broadcast against NC... tensors."""
    return t.reshape((1, -1) + (1,) * (rank - 2))


# --- convolution and matrix products -------------------------------------------------------------


@register("Conv")
def conv(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """torch only pads symmetrically, so asymmetric pads are applied with F.pad first."""
    x, w, b = inputs[0], inputs[1], inputs.optional(2)
    n = _spatial_rank(ctx, x)
    strides, dils = _per_axis(ctx, "strides", n, 1), _per_axis(ctx, "dilations", n, 1)
    pads = _resolve_pads(ctx, list(x.shape[2:]), list(w.shape[2:]), strides, dils)
    if all(begin == end for begin, end in pads):
        padding = [begin for begin, _ in pads]
    else:
        x, padding = F.pad(x, _torch_pad(pads)), [0] * n
    return [_CONV[n](x, w, b, strides, padding, dils, ctx.attrs.get("group", 1))]


def _transpose_pads(
    ctx: NodeContext, sizes: list[int], strides: list[int], full: list[int], extra: list[int]
) -> Pads:
    """ConvTranspose pads crop the full output; ``output_shape`` or SAME_* imply them, with the
    larger half of an odd total at the end for SAME_UPPER and at the start otherwise (NOTSET
    included), as in the spec and ORT."""
    n = len(full)
    auto_pad = ctx.attrs.get("auto_pad", "NOTSET")
    target = ctx.attrs.get("output_shape")
    if target:
        target = list(target)[-n:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = [size * s for size, s in zip(sizes, strides, strict=True)]
    elif auto_pad == "VALID":
        return [(0, 0)] * n
    elif auto_pad == "NOTSET":
        return _explicit_pads(ctx, n)
    else:
        raise ctx.unsupported(f"attribute auto_pad={auto_pad}")
    totals = [f + e - t for f, e, t in zip(full, extra, target, strict=True)]
    if any(t < 0 for t in totals):
        raise ctx.unsupported(f"attribute output_shape={target} larger than the full output")
    return [_split_total(t, more_at_end=auto_pad == "SAME_UPPER") for t in totals]


@register("ConvTranspose")
def conv_transpose(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Computes the uncropped transpose, then crops ``pads`` and appends ``output_padding`` with
    F.pad so that asymmetric pads work; bias goes last so appended cells get it too."""
    x, w, b = inputs[0], inputs[1], inputs.optional(2)
    n = _spatial_rank(ctx, x)
    strides, dils = _per_axis(ctx, "strides", n, 1), _per_axis(ctx, "dilations", n, 1)
    extra = _per_axis(ctx, "output_padding", n, 0)
    full = [
        s * (size - 1) + (k - 1) * d + 1
        for size, k, s, d in zip(x.shape[2:], w.shape[2:], strides, dils, strict=True)
    ]
    pads = _transpose_pads(ctx, list(x.shape[2:]), strides, full, extra)
    y = _CONV_T[n](x, w, None, strides, 0, 0, ctx.attrs.get("group", 1), dils)
    crop = [(-begin, e - end) for (begin, end), e in zip(pads, extra, strict=True)]
    y = F.pad(y, _torch_pad(crop))
    return [y if b is None else y + _channel_view(b, y.dim())]


@register("MatMul")
def matmul(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Half-precision products accumulate in float32 and round once, as ORT's kernels do."""
    a, b = inputs[0], inputs[1]
    if a.dtype in (torch.float16, torch.bfloat16):
        return [torch.matmul(a.float(), b.float()).to(a.dtype)]
    return [torch.matmul(a, b)]


@register("Gemm")
def gemm(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    a, b, c = inputs[0], inputs[1], inputs.optional(2)
    a = a.t() if ctx.attrs.get("transA", 0) else a
    b = b.t() if ctx.attrs.get("transB", 0) else b
    alpha, beta = ctx.attrs.get("alpha", 1.0), ctx.attrs.get("beta", 1.0)
    y = a @ b
    y = y if alpha == 1.0 else y * alpha
    if c is not None:
        y = y + (c if beta == 1.0 else c * beta)
    return [y]


# --- pooling -------------------------------------------------------------------------------------


def _pool_geometry(ctx: NodeContext, x: Tensor) -> tuple[list[int], list[int], list[int], Pads]:
    """Kernel, strides, dilations and the pads that make a floor-mode torch pool produce ORT's
    output size: ``ceil_mode`` becomes extra end padding, except that, as in ORT, no window may
    start inside the end padding."""
    n = _spatial_rank(ctx, x)
    kernel = [int(k) for k in ctx.attrs["kernel_shape"]]
    strides, dils = _per_axis(ctx, "strides", n, 1), _per_axis(ctx, "dilations", n, 1)
    pads = _resolve_pads(ctx, list(x.shape[2:]), kernel, strides, dils)
    if not ctx.attrs.get("ceil_mode", 0):
        return kernel, strides, dils, pads
    ceil_pads = []
    for size, (begin, end), k, s, d in zip(x.shape[2:], pads, kernel, strides, dils, strict=True):
        span = size + begin + end - ((k - 1) * d + 1)
        out = -(-span // s) + 1
        if (out - 1) * s >= size + begin:
            out -= 1
        ceil_pads.append((begin, end + max(0, (out - 1) * s - span)))
    return kernel, strides, dils, ceil_pads


@register("MaxPool")
def max_pool(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    kernel, strides, dils, pads = _pool_geometry(ctx, x)
    lowest = -math.inf if x.dtype.is_floating_point else torch.iinfo(x.dtype).min
    padded = F.pad(x, _torch_pad(pads), value=lowest)
    if ctx.num_outputs < 2:
        return [_MAX_POOL[len(kernel)](padded, kernel, strides, 0, dils)]
    y, where = _MAX_POOL[len(kernel)](padded, kernel, strides, 0, dils, return_indices=True)
    return [y, _onnx_pool_indices(ctx, where, x.shape, padded.shape, pads)]


def _onnx_pool_indices(
    ctx: NodeContext, where: Tensor, shape: torch.Size, padded: torch.Size, pads: Pads
) -> Tensor:
    """torch indexes each padded plane; ONNX indexes the whole unpadded tensor, row-major or,
    with ``storage_order=1``, column-major within each plane."""
    spatial = list(shape[2:])
    coords, rest = [], where
    for size in reversed(padded[2:]):
        coords.append(rest % size)
        rest = rest // size
    coords = [c - begin for c, (begin, _) in zip(reversed(coords), pads, strict=True)]
    order = list(range(len(spatial)))
    order = order[::-1] if ctx.attrs.get("storage_order", 0) else order
    flat = torch.zeros_like(where)
    for axis in order:
        flat = flat * spatial[axis] + coords[axis]
    planes = torch.arange(shape[0] * shape[1]).reshape(shape[0], shape[1], *[1] * len(spatial))
    return flat + planes * math.prod(spatial)


@register("LpPool")
def lp_pool(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """(sum over the window of |x|^p)^(1/p); padding contributes zeros."""
    x = inputs[0]
    p = float(ctx.attrs.get("p", 2))
    kernel, strides, dils, pads = _pool_geometry(ctx, x)
    ones = torch.ones((1, 1, *kernel), dtype=x.dtype)
    flat = F.pad(x.abs().pow(p).reshape(-1, 1, *x.shape[2:]), _torch_pad(pads))
    sums = _CONV[len(kernel)](flat, ones, None, strides, 0, dils)
    return [sums.pow(1 / p).reshape(*x.shape[:2], *sums.shape[2:])]


@register("GlobalLpPool")
def global_lp_pool(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x, p = inputs[0], float(ctx.attrs.get("p", 2))
    dims = tuple(range(2, x.dim()))
    return [x.abs().pow(p).sum(dims, keepdim=True).pow(1 / p)]


@register("AveragePool")
def average_pool(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Window sums over a count of contributing cells, both as convolutions with a ones kernel:
    that handles asymmetric pads, dilations and ORT's divisor (explicit pads count only with
    ``count_include_pad``; ceil-mode overhang never counts)."""
    x = inputs[0]
    kernel, strides, dils, pads = _pool_geometry(ctx, x)
    n = len(kernel)
    explicit = _resolve_pads(ctx, list(x.shape[2:]), kernel, strides, dils)  # before ceil_mode
    ones = torch.ones((1, 1, *kernel), dtype=x.dtype)
    cells = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
    if ctx.attrs.get("count_include_pad", 0):
        cells = F.pad(cells, _torch_pad(explicit), value=1.0)
        pads_left = [(0, end - e) for (_, end), (_, e) in zip(pads, explicit, strict=True)]
    else:
        pads_left = pads
    counts = _CONV[n](F.pad(cells, _torch_pad(pads_left)), ones, None, strides, 0, dils)
    flat = F.pad(x.reshape(-1, 1, *x.shape[2:]), _torch_pad(pads))
    sums = _CONV[n](flat, ones, None, strides, 0, dils)
    return [(sums / counts).reshape(*x.shape[:2], *sums.shape[2:])]


@register("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    dims = tuple(range(2, x.dim()))
    if ctx.op_type == "GlobalMaxPool":
        return [x.amax(dims, keepdim=True)]
    return [x.mean(dims, keepdim=True)]


# --- normalisation -------------------------------------------------------------------------------


@register("BatchNormalization")
def batch_norm(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Inference form only; written out rather than F.batch_norm so it is differentiable in the
    running statistics too."""
    x, scale, bias, mean, var = inputs[:5]
    if ctx.attrs.get("training_mode", 0):
        raise ctx.unsupported(f"attribute training_mode={ctx.attrs['training_mode']}")
    if ctx.attrs.get("spatial", 1) != 1:
        raise ctx.unsupported(f"attribute spatial={ctx.attrs['spatial']}")
    if ctx.num_outputs > 1:
        raise ctx.unsupported("training outputs (running/saved mean and variance)")
    factor = scale * torch.rsqrt(var + ctx.attrs.get("epsilon", 1e-5))
    centered = x - _channel_view(mean, x.dim())
    return [centered * _channel_view(factor, x.dim()) + _channel_view(bias, x.dim())]


def _softmax_like(fn: Callable[..., Tensor]) -> Callable[[NodeContext, Inputs], list[Tensor]]:
    def op(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
        """Before opset 13 the input is coerced to 2-D at ``axis`` (default 1) and normalised
        over the whole trailing block; from 13 over one axis (default -1)."""
        x = inputs[0]
        if ctx.opset >= 13:
            return [fn(x, dim=ctx.attrs.get("axis", -1))]
        axis = norm_axis(ctx.attrs.get("axis", 1), x.dim())
        flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
        return [fn(flat, dim=1).reshape(x.shape)]

    return op


def _half_aware(fn: Callable[..., Tensor], log: bool) -> Callable[..., Tensor]:
    """Half-precision inputs round after each step (exp, sum, divide) as ORT and numpy do; torch
    rounds once from float32, which is one ulp away often enough to fail a 1e-3 tolerance."""

    def softmax(x: Tensor, dim: int) -> Tensor:
        if x.dtype not in (torch.float16, torch.bfloat16):
            return fn(x, dim=dim)
        shifted = x - x.amax(dim, keepdim=True)
        exps = torch.exp(shifted)
        total = exps.sum(dim, keepdim=True)
        return shifted - torch.log(total) if log else exps / total

    return softmax


register("Softmax")(_softmax_like(_half_aware(torch.softmax, log=False)))
register("LogSoftmax")(_softmax_like(_half_aware(torch.log_softmax, log=True)))


# --- activations ---------------------------------------------------------------------------------


@register("Relu")
def relu(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    return [torch.relu(inputs[0])]


@register("Sigmoid")
def sigmoid(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    return [torch.sigmoid(inputs[0])]


@register("Tanh")
def tanh(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    return [torch.tanh(inputs[0])]


@register("Clip")
def clip(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Bounds are attributes before opset 11 and optional inputs after; min > max yields max,
    as in both ONNX and torch.clamp."""
    x = inputs[0]
    if ctx.opset >= 11:
        low, high = inputs.optional(1), inputs.optional(2)
    else:
        low, high = ctx.attrs.get("min"), ctx.attrs.get("max")
    if low is None and high is None:
        return [x]
    return [torch.clamp(x, low, high)]


@register("LeakyRelu")
def leaky_relu(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    return [F.leaky_relu(inputs[0], ctx.attrs.get("alpha", 0.01))]


@register("PRelu")
def prelu(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Slope broadcasts to X numpy-style, aligned on trailing axes: a per-channel slope of NCHW
    input must be [C, 1, 1] (a bare [C] aligns with W, and ORT rejects it unless C == W)."""
    x, slope = inputs[0], inputs[1]
    return [torch.where(x < 0, x * slope, x)]


@register("HardSigmoid")
def hard_sigmoid(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    alpha, beta = ctx.attrs.get("alpha", 0.2), ctx.attrs.get("beta", 0.5)
    return [torch.clamp(inputs[0] * alpha + beta, 0.0, 1.0)]


@register("HardSwish")
def hard_swish(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    return [x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)]


@register("Gelu")
def gelu(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    approximate = ctx.attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.unsupported(f"attribute approximate={approximate}")
    return [F.gelu(inputs[0], approximate=approximate)]


@register("Dropout")
def dropout(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Inference only: identity, with an all-keep bool mask from opset 10. Before 10 the spec
    leaves the mask unfilled in test mode and ORT returns zeros of X's type, so we do too."""
    x, training = inputs[0], inputs.optional(2)
    if training is not None and bool(training.item()):
        raise ctx.unsupported("input training_mode=True")
    if ctx.num_outputs < 2:
        return [x]
    if ctx.opset < 10:
        return [x, torch.zeros_like(x)]
    return [x, torch.ones(x.shape, dtype=torch.bool)]
