"""Elementwise math, activations, bitwise ops and the remaining reductions in torch.

These complete the default domain's arithmetic with kernels that stay differentiable where the
op is (activations, trigonometry, norms), so AdaRound and QAT can train through a model that
uses them. Integer semantics follow ONNX Runtime (C truncation, sign of the divisor for ``Mod``).
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from qaas_engine.graph.ops_tensor import REDUCERS, norm_axis, reduce
from qaas_engine.graph.registry import Inputs, Kernel, NodeContext, register


def _unary(table: dict[str, Callable[[NodeContext, Tensor], Tensor]]) -> None:
    for op_type, fn in table.items():

        def op(ctx: NodeContext, inputs: Inputs, fn: Callable = fn) -> list[Tensor]:
            return [fn(ctx, inputs[0])]

        register(op_type)(op)


def _attr(ctx: NodeContext, name: str, default: float) -> float:
    return float(ctx.attrs.get(name, default))


def _selu(ctx: NodeContext, x: Tensor) -> Tensor:
    alpha = _attr(ctx, "alpha", 1.67326319217681884765625)
    gamma = _attr(ctx, "gamma", 1.05070102214813232421875)
    return gamma * F.elu(x, alpha)


def _shrink(ctx: NodeContext, x: Tensor) -> Tensor:
    lambd, bias = _attr(ctx, "lambd", 0.5), _attr(ctx, "bias", 0.0)
    shifted = torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, x * 0))
    return shifted.to(x.dtype)


def _is_inf(ctx: NodeContext, x: Tensor) -> Tensor:
    negative, positive = ctx.attrs.get("detect_negative", 1), ctx.attrs.get("detect_positive", 1)
    if negative and positive:
        return torch.isinf(x)
    if negative:
        return torch.isneginf(x)
    if positive:
        return torch.isposinf(x)
    return torch.zeros(x.shape, dtype=torch.bool)


_unary(
    {
        "Floor": lambda ctx, x: torch.floor(x),
        "Ceil": lambda ctx, x: torch.ceil(x),
        "Round": lambda ctx, x: torch.round(x),  # half to even, as ONNX specifies
        "Sign": lambda ctx, x: torch.sign(x),
        "Sin": lambda ctx, x: torch.sin(x),
        "Cos": lambda ctx, x: torch.cos(x),
        "Tan": lambda ctx, x: torch.tan(x),
        "Asin": lambda ctx, x: torch.asin(x),
        "Acos": lambda ctx, x: torch.acos(x),
        "Atan": lambda ctx, x: torch.atan(x),
        "Sinh": lambda ctx, x: torch.sinh(x),
        "Cosh": lambda ctx, x: torch.cosh(x),
        "Asinh": lambda ctx, x: torch.asinh(x),
        "Acosh": lambda ctx, x: torch.acosh(x),
        "Atanh": lambda ctx, x: torch.atanh(x),
        "IsNaN": lambda ctx, x: torch.isnan(x),
        "IsInf": _is_inf,
        "BitwiseNot": lambda ctx, x: torch.bitwise_not(x),
        "Elu": lambda ctx, x: F.elu(x, _attr(ctx, "alpha", 1.0)),
        "Selu": _selu,
        "Celu": lambda ctx, x: F.celu(x, _attr(ctx, "alpha", 1.0)),
        "Softplus": lambda ctx, x: torch.log1p(torch.exp(-x.abs())) + torch.relu(x),
        "Softsign": lambda ctx, x: x / (1 + x.abs()),
        "Mish": lambda ctx, x: x * torch.tanh(F.softplus(x)),
        "Swish": lambda ctx, x: x * torch.sigmoid(_attr(ctx, "alpha", 1.0) * x),
        "ThresholdedRelu": lambda ctx, x: torch.where(x > _attr(ctx, "alpha", 1.0), x, x * 0),
        "Shrink": _shrink,
    }
)


@register("Mod")
def mod(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """``fmod=1`` takes the dividend's sign (C fmod), ``fmod=0`` the divisor's (Python's %).
    Float ``fmod=0`` is C fmod moved into the divisor's sign: ``-3 mod inf`` is inf, and a zero
    result takes the divisor's sign, as numpy computes it (torch.remainder differs there)."""
    a, b = inputs[0], inputs[1]
    if ctx.attrs.get("fmod", 0):
        return [torch.fmod(a, b)]
    if not a.dtype.is_floating_point:
        return [torch.remainder(a, b)]
    r = torch.fmod(a, b)
    r = torch.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)
    return [torch.where(r == 0, torch.copysign(r, b), r)]


@register("BitShift")
def bit_shift(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    a, b = inputs[0], inputs[1]
    if ctx.attrs["direction"] == "LEFT":
        return [torch.bitwise_left_shift(a, b)]
    return [torch.bitwise_right_shift(a, b)]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Kernel:
    def op(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
        return [fn(inputs[0], inputs[1])]

    return op


register("BitwiseAnd")(_binary(torch.bitwise_and))
register("BitwiseOr")(_binary(torch.bitwise_or))
register("BitwiseXor")(_binary(torch.bitwise_xor))


@register("Hardmax")
def hardmax(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """One at the first maximum along the axis; before opset 13 over the coerced 2-D block."""
    x = inputs[0]
    if ctx.opset >= 13:
        axis = norm_axis(ctx.attrs.get("axis", -1), x.dim())
        hot = F.one_hot(x.argmax(axis), x.shape[axis]).movedim(-1, axis)
        return [hot.to(x.dtype)]
    axis = norm_axis(ctx.attrs.get("axis", 1), x.dim())
    flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
    return [F.one_hot(flat.argmax(1), flat.shape[1]).to(x.dtype).reshape(x.shape)]


@register("CumSum", "CumProd")
def cumulative(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """``exclusive`` shifts the running value by one (starting from 0, or 1 for products)
    rather than subtracting or dividing, so integers stay exact; ``reverse`` runs from the end."""
    x = inputs[0]
    axis = norm_axis(int(inputs[1].reshape(-1)[0]), x.dim())
    reverse, exclusive = ctx.attrs.get("reverse", 0), ctx.attrs.get("exclusive", 0)
    product = ctx.op_type == "CumProd"
    y = x.flip(axis) if reverse else x
    if exclusive:
        start = y.narrow(axis, 0, 1)
        head = torch.ones_like(start) if product else torch.zeros_like(start)
        y = torch.cat([head, y.narrow(axis, 0, y.shape[axis] - 1)], dim=axis)
    y = torch.cumprod(y, axis, dtype=x.dtype) if product else torch.cumsum(y, axis, dtype=x.dtype)
    return [y.flip(axis) if reverse else y]


@register("SwiGLU")
def swiglu(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    gate, value = inputs[0], inputs[1]
    return [gate * torch.sigmoid(_attr(ctx, "alpha", 1.0) * gate) * value]


# --- reductions beyond sum/mean/max/min ----------------------------------------------------------


def _prod(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    for dim in sorted(dims, reverse=True):
        x = x.prod(dim, keepdim=keep, dtype=x.dtype) if x.dim() else x
    return x


def _float_reduce(fn: Callable[[Tensor, tuple[int, ...], bool], Tensor]) -> Callable:
    """Norms of integer tensors are computed in float64 and truncated back, as ORT does."""

    def reduce(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
        if x.dtype.is_floating_point:
            return fn(x, dims, keep)
        return fn(x.double(), dims, keep).to(x.dtype)

    return reduce


def _extreme(name: str) -> Callable[[Tensor, tuple[int, ...], bool], Tensor]:
    """amax/amin refuse empty reductions; ONNX defines them as -inf/+inf (the type's bounds)."""

    def reduce(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
        if x.numel():
            return getattr(x, name)(dims, keepdim=keep)
        shape = [1 if i in dims else s for i, s in enumerate(x.shape)]
        if not keep:
            shape = [s for i, s in enumerate(x.shape) if i not in dims]
        if x.dtype.is_floating_point:
            fill = -math.inf if name == "amax" else math.inf
        else:
            info = torch.iinfo(x.dtype) if x.dtype != torch.bool else None
            fill = (info.min if name == "amax" else info.max) if info else name == "amin"
        return torch.full(shape, fill, dtype=x.dtype)

    return reduce


_MORE_REDUCERS: dict[str, tuple[Callable[[Tensor, tuple[int, ...], bool], Tensor], int]] = {
    "ReduceL1": (lambda x, d, k: x.abs().sum(d, keepdim=k).to(x.dtype), 18),
    "ReduceL2": (_float_reduce(lambda x, d, k: x.square().sum(d, keepdim=k).sqrt()), 18),
    "ReduceSumSquare": (lambda x, d, k: (x * x).sum(d, keepdim=k).to(x.dtype), 18),
    "ReduceLogSum": (_float_reduce(lambda x, d, k: x.sum(d, keepdim=k).log()), 18),
    "ReduceLogSumExp": (_float_reduce(lambda x, d, k: torch.logsumexp(x, d, keepdim=k)), 18),
    "ReduceProd": (_prod, 18),
    "ReduceMax": (_extreme("amax"), 18),
    "ReduceMin": (_extreme("amin"), 18),
}
REDUCERS.update(_MORE_REDUCERS)
register(*_MORE_REDUCERS)(reduce)


@register("LpNormalization")
def lp_normalization(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """A zero vector stays zero (the norm is replaced by one rather than divided by)."""
    x = inputs[0]
    axis = norm_axis(ctx.attrs.get("axis", -1), x.dim())
    p = int(ctx.attrs.get("p", 2))
    norm = x.abs().sum(axis, keepdim=True) if p == 1 else x.square().sum(axis, keepdim=True).sqrt()
    return [x / torch.where(norm == 0, torch.ones_like(norm), norm)]


@register("Size")
def size(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    return [torch.tensor(inputs[0].numel(), dtype=torch.int64)]


@register("NonZero")
def nonzero(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    return [torch.nonzero(x.reshape(1) if x.dim() == 0 else x).t().contiguous()]


@register("Trilu")
def trilu(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x, k = inputs[0], inputs.optional(1)
    diagonal = int(k.reshape(-1)[0]) if k is not None else 0
    if x.numel() == 0:
        return [x]
    keep = torch.ones(x.shape[-2:], dtype=torch.bool)
    keep = keep.triu(diagonal) if ctx.attrs.get("upper", 1) else keep.tril(diagonal)
    return [torch.where(keep, x, torch.zeros_like(x))]


@register("Det")
def det(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    return [torch.linalg.det(inputs[0])]
