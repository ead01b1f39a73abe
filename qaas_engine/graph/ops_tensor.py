"""Elementwise, shape, indexing and reduction ONNX ops in torch.

Each op mirrors ONNX Runtime's CPU kernels, including where an attribute became an input in a
later opset, so a model computes the same values here as in the runtime it will be deployed to.
The small helpers at the top are shared with :mod:`qaas_engine.graph.ops_nn`.
"""

import math
from collections.abc import Callable
from typing import Any, overload

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor

from qaas_engine.graph.dtypes import TORCH_DTYPES, UNSIGNED_BITS, wrap_unsigned
from qaas_engine.graph.registry import Inputs, NodeContext, Value, register


@overload
def int_list(t: Tensor) -> list[int]: ...


@overload
def int_list(t: Tensor | None) -> list[int] | None: ...


def int_list(t: Tensor | None) -> list[int] | None:
    """Python ints from an integer input; ``None`` passes through so callers can fall back."""
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def ints_from(
    ctx: NodeContext, inputs: Inputs, index: int, name: str, since: int
) -> list[int] | None:
    """Read ``name`` wherever this model's opset keeps it: an attribute before ``since``, else an
    input at ``index``."""
    if ctx.opset >= since:
        return int_list(inputs.optional(index))
    value = ctx.attrs.get(name)
    return None if value is None else [int(v) for v in value]


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _register_all(table: dict[str, Callable[..., Tensor]], arity: int) -> None:
    """Register plain torch functions applied to the node's first ``arity`` inputs."""
    for op_type, fn in table.items():

        def op(ctx: NodeContext, inputs: Inputs, fn: Callable[..., Tensor] = fn) -> list[Tensor]:
            return [fn(*inputs[:arity])]

        register(op_type)(op)


def _div(a: Tensor, b: Tensor) -> Tensor:
    """ORT divides integers with C semantics (truncation), not Python's floor division."""
    if a.dtype.is_floating_point or b.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a: Tensor, b: Tensor) -> Tensor:
    """ONNX Pow keeps the base's type even when the exponent's type would promote it."""
    return torch.pow(a, b).to(a.dtype)


_register_all(
    {
        "Erf": torch.erf,
        "Exp": torch.exp,
        "Log": torch.log,
        "Sqrt": torch.sqrt,
        "Reciprocal": torch.reciprocal,
        "Neg": torch.neg,
        "Abs": torch.abs,
        "Not": torch.logical_not,
    },
    arity=1,
)
_register_all(
    {
        "Add": torch.add,
        "Sub": torch.sub,
        "Mul": torch.mul,
        "Div": _div,
        "Pow": _pow,
        "Equal": torch.eq,
        "Less": torch.lt,
        "LessOrEqual": torch.le,
        "Greater": torch.gt,
        "GreaterOrEqual": torch.ge,
        "And": torch.logical_and,
        "Or": torch.logical_or,
        "Xor": torch.logical_xor,
    },
    arity=2,
)


@register("Identity", any_value=True)
def identity(ctx: NodeContext, inputs: Inputs) -> list[Value]:
    """Also passes sequences and optionals through."""
    return [inputs.value(0)]


@register("Where")
def where(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    cond, x, y = inputs[:3]
    return [torch.where(cond.bool(), x, y)]


@register("Min", "Max", "Sum", "Mean")
def variadic(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """The variadic elementwise ops fold pairwise with multidirectional broadcasting."""
    fold = {"Min": torch.minimum, "Max": torch.maximum}.get(ctx.op_type, torch.add)
    tensors = inputs.present()
    out = tensors[0]
    for t in tensors[1:]:
        out = fold(out, t)
    return [out / len(tensors) if ctx.op_type == "Mean" else out]


# --- shape ---------------------------------------------------------------------------------------


@register("Shape")
def shape(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """``start``/``end`` (opset 15) clamp like Python slicing, so a slice of the shape does it."""
    dims = inputs[0].shape[ctx.attrs.get("start", 0) : ctx.attrs.get("end")]
    return [torch.tensor(list(dims), dtype=torch.int64)]


@register("Reshape")
def reshape(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    target = int_list(inputs[1]) if ctx.opset >= 5 else list(ctx.attrs["shape"])
    if not ctx.attrs.get("allowzero", 0):
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return [x.reshape(target)]


@register("Flatten")
def flatten(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    axis = norm_axis(ctx.attrs.get("axis", 1), x.dim())
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@register("Transpose")
def transpose(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    perm = ctx.attrs.get("perm") or list(reversed(range(x.dim())))
    return [x.permute(*perm)]


@register("Squeeze")
def squeeze(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    axes = ints_from(ctx, inputs, 1, "axes", since=13)
    if axes:
        dims = [norm_axis(a, x.dim()) for a in axes]
    else:
        dims = [i for i, size in enumerate(x.shape) if size == 1]
    return [x.squeeze(tuple(dims))] if dims else [x]


@register("Unsqueeze")
def unsqueeze(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Negative axes count from the end of the *output*, so normalise against the final rank."""
    x = inputs[0]
    axes = ints_from(ctx, inputs, 1, "axes", since=13) or []
    rank = x.dim() + len(axes)
    for axis in sorted(norm_axis(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return [x]


@register("Concat")
def concat(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    return [torch.cat(inputs.present(), dim=ctx.attrs["axis"])]


@register("Split")
def split(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Without explicit sizes, ONNX splits evenly into the node's outputs; from opset 18 the last
    chunk may be smaller (``ceil`` sized chunks)."""
    x = inputs[0]
    axis = norm_axis(ctx.attrs.get("axis", 0), x.dim())
    sizes = ints_from(ctx, inputs, 1, "split", since=13)
    if not sizes:
        parts = ctx.attrs.get("num_outputs", ctx.num_outputs)
        chunk = -(-x.shape[axis] // parts)
        sizes = [chunk] * (parts - 1) + [x.shape[axis] - chunk * (parts - 1)]
    return list(torch.split(x, sizes, dim=axis))


@register("Expand")
def expand(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Expand broadcasts both ways: a 1 in the requested shape keeps the input's dimension."""
    x = inputs[0]
    return [x.expand(torch.broadcast_shapes(x.shape, tuple(int_list(inputs[1]))))]


@register("Tile")
def tile(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    return [inputs[0].repeat(*int_list(inputs[1]))]


# --- indexing ------------------------------------------------------------------------------------


def _slice_axis(x: Tensor, axis: int, start: int, end: int, step: int) -> Tensor:
    """ONNX clamps starts/ends (INT64_MAX/MIN included) exactly like Python's ``slice.indices``;
    torch views cannot step backwards, so negative steps gather by index."""
    idx = range(*slice(start, end, step).indices(x.shape[axis]))
    if step > 0:
        return x[(slice(None),) * axis + (slice(idx.start, idx.stop, idx.step),)]
    return x.index_select(axis, torch.tensor(list(idx), dtype=torch.int64))


@register("Slice")
def slice_(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    if ctx.opset >= 10:
        starts, ends = int_list(inputs[1]), int_list(inputs[2])
        axes, steps = int_list(inputs.optional(3)), int_list(inputs.optional(4))
    else:
        starts, ends, axes = ctx.attrs["starts"], ctx.attrs["ends"], ctx.attrs.get("axes")
        steps = None
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    out = x
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        out = _slice_axis(out, norm_axis(axis, x.dim()), start, end, step)
    return [out]


@register("Gather")
def gather(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x, indices = inputs[0], inputs[1].long()
    axis = norm_axis(ctx.attrs.get("axis", 0), x.dim())
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    picked = x.index_select(axis, indices.reshape(-1))
    return [picked.reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1 :])]


@register("ArgMax", "ArgMin")
def arg_extreme(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """torch returns the first extreme index; ``select_last_index`` is the first on a flip."""
    x = inputs[0]
    axis = norm_axis(ctx.attrs.get("axis", 0), x.dim())
    keep = bool(ctx.attrs.get("keepdims", 1))
    fn = torch.argmax if ctx.op_type == "ArgMax" else torch.argmin
    if ctx.attrs.get("select_last_index", 0):
        return [x.shape[axis] - 1 - fn(x.flip(axis), dim=axis, keepdim=keep)]
    return [fn(x, dim=axis, keepdim=keep)]


@register("Einsum")
def einsum(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    return [torch.einsum(ctx.attrs["equation"].replace(" ", ""), *inputs)]


@register("Pad")
def pad(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    mode = ctx.attrs.get("mode", "constant")
    if ctx.opset >= 11:
        pads, axes = int_list(inputs[1]), int_list(inputs.optional(3))
        fill = inputs.optional(2)
        value = fill.reshape(-1)[0].item() if fill is not None and fill.numel() else 0
    else:
        pads = ctx.attrs["pads"] if "pads" in ctx.attrs else ctx.attrs["paddings"]
        axes = None
        value = ctx.attrs.get("value", 0.0)
    axes = [norm_axis(a, x.dim()) for a in axes] if axes else list(range(x.dim()))
    per_axis = {a: (pads[i], pads[i + len(axes)]) for i, a in enumerate(axes)}
    if mode == "constant":
        flat = [p for a in reversed(range(x.dim())) for p in per_axis.get(a, (0, 0))]
        value = value if x.dtype.is_floating_point else int(value)
        return [F.pad(x, flat, value=value)]
    if mode not in _PAD_INDEX:
        raise ctx.unsupported(f"attribute mode={mode}")
    out = x
    for axis, (begin, end) in per_axis.items():
        if begin or end:
            idx = torch.arange(-begin, x.shape[axis] + end)
            out = out.index_select(axis, _PAD_INDEX[mode](idx, x.shape[axis]))
    return [out]


def _reflect(idx: Tensor, size: int) -> Tensor:
    """Mirror without repeating the edge element; periodic so pads larger than the axis work."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    folded = idx.remainder(period)
    return torch.where(folded >= size, period - folded, folded)


# Non-constant pad modes are index maps from padded positions to source positions; gathering by
# them works for any axis (torch's own reflect/replicate only pad trailing spatial dims).
_PAD_INDEX: dict[str, Callable[[Tensor, int], Tensor]] = {
    "edge": lambda idx, size: idx.clamp(0, size - 1),
    "reflect": _reflect,
    "wrap": lambda idx, size: idx.remainder(size),
}


# --- reductions ----------------------------------------------------------------------------------

REDUCERS: dict[str, tuple[Callable[[Tensor, tuple[int, ...], bool], Tensor], int]] = {
    "ReduceMean": (lambda x, dims, keep: x.mean(dims, keepdim=keep), 18),
    "ReduceSum": (lambda x, dims, keep: x.sum(dims, keepdim=keep).to(x.dtype), 13),
    "ReduceMax": (lambda x, dims, keep: x.amax(dims, keepdim=keep), 18),
    "ReduceMin": (lambda x, dims, keep: x.amin(dims, keepdim=keep), 18),
}


@register(*REDUCERS)
def reduce(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Axes move from attribute to input at the opset in ``REDUCERS``; no axes means all of
    them, unless ``noop_with_empty_axes`` asks for the identity."""
    fn, since = REDUCERS[ctx.op_type]
    x = inputs[0]
    axes = ints_from(ctx, inputs, 1, "axes", since)
    if not axes:
        if ctx.attrs.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.dim()))
    dims = tuple(norm_axis(a, x.dim()) for a in axes)
    return [fn(x, dims, bool(ctx.attrs.get("keepdims", 1)))]


# --- constants and types -------------------------------------------------------------------------


def _from_numpy(ctx: NodeContext, name: str, value: Any) -> Tensor:
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ctx.unsupported(f"attribute {name} of dtype {array.dtype}")
    return torch.from_numpy(array.copy())


@register("Constant")
def constant(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    attrs = ctx.attrs
    if "value" in attrs:
        return [_from_numpy(ctx, "value", attrs["value"])]
    for name, dtype in (("value_float", torch.float32), ("value_floats", torch.float32)):
        if name in attrs:
            return [torch.tensor(attrs[name], dtype=dtype)]
    for name in ("value_int", "value_ints"):
        if name in attrs:
            return [torch.tensor(attrs[name], dtype=torch.int64)]
    raise ctx.unsupported(f"attribute {next(iter(attrs), 'value')} (only numeric dense constants)")


@register("ConstantOfShape")
def constant_of_shape(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    value = ctx.attrs.get("value", np.zeros(1, dtype=np.float32))
    fill = _from_numpy(ctx, "value", value).reshape(-1)
    return [torch.full(int_list(inputs[0]), fill[0].item(), dtype=fill.dtype)]


def onnx_type(to: int | str) -> int:
    """Opset 1 spells the target type as a name ("FLOAT"); later opsets as a TensorProto enum.
    A name ONNX does not know is UNDEFINED (0)."""
    if not isinstance(to, str):
        return to
    known = to in onnx.TensorProto.DataType.keys()
    return onnx.TensorProto.DataType.Value(to) if known else onnx.TensorProto.UNDEFINED


def torch_dtype(ctx: NodeContext, to: int | str) -> torch.dtype:
    code = onnx_type(to)
    if code not in TORCH_DTYPES:
        raise ctx.unsupported(f"attribute to={to}")
    return TORCH_DTYPES[code]


@register("Cast")
def cast(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Unsigned targets torch lacks are held widened, wrapped into the type's range as a C cast
    of an integer would; types torch cannot hold at all are left to the reference fallback."""
    x, code = inputs[0], onnx_type(ctx.attrs["to"])
    target = torch_dtype(ctx, ctx.attrs["to"])
    if code in UNSIGNED_BITS:
        return [wrap_unsigned(x.to(torch.int64), code)]
    return [x.to(target)]


@register("CastLike")
def cast_like(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    return [inputs[0].to(inputs[1].dtype)]


@register("Range")
def range_(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """The element count is computed like ORT, from ``limit - start`` in the input's own type."""
    start, limit, delta = (t.reshape(()) for t in inputs[:3])
    count = max(math.ceil((limit - start).item() / delta.item()), 0)
    return [start + torch.arange(count, dtype=start.dtype) * delta]
