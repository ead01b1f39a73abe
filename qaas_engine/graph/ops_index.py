"""Gather/scatter by index tensors, block rearrangements and generated matrices in torch.

Negative indices count from the end of their axis, as in ONNX Runtime. The scatters are written
out-of-place (``Tensor.scatter``/``scatter_reduce``) so gradients reach both the data and the
updates, which matters where a transformer writes into a cache or a mask.
"""

import math

import torch
from torch import Tensor

from qaas_engine.graph.ops_tensor import norm_axis, torch_dtype
from qaas_engine.graph.registry import Inputs, NodeContext, register

_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _positive(indices: Tensor, size: int | Tensor) -> Tensor:
    indices = indices.long()
    return torch.where(indices < 0, indices + size, indices)


@register("GatherElements")
def gather_elements(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    axis = norm_axis(ctx.attrs.get("axis", 0), x.dim())
    return [torch.gather(x, axis, _positive(inputs[1], x.shape[axis]))]


@register("GatherND")
def gather_nd(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """The leading ``batch_dims`` axes pair data with indices; each index row of length k then
    picks a slice of the remaining data axes."""
    data, indices = inputs[0], inputs[1]
    batch_dims = int(ctx.attrs.get("batch_dims", 0))
    k = indices.shape[-1]
    batch_shape = data.shape[:batch_dims]
    batches = math.prod(batch_shape)
    flat = data.reshape(batches, *data.shape[batch_dims:])
    rows = indices.reshape(batches, -1, k)
    sizes = torch.tensor(data.shape[batch_dims : batch_dims + k], dtype=torch.int64)
    rows = _positive(rows, sizes)
    batch_index = torch.arange(batches).unsqueeze(1).expand(batches, rows.shape[1])
    picked = flat[(batch_index, *rows.unbind(-1))]
    out_shape = (*batch_shape, *indices.shape[batch_dims:-1], *data.shape[batch_dims + k :])
    return [picked.reshape(out_shape)]


def _scatter(data: Tensor, axis: int, index: Tensor, updates: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return data.scatter(axis, index, updates)
    return data.scatter_reduce(axis, index, updates, _REDUCE[reduction], include_self=True)


@register("ScatterElements", "Scatter")
def scatter_elements(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """``Scatter`` is the opset 9-10 name of ScatterElements without ``reduction``."""
    data, indices, updates = inputs[:3]
    axis = norm_axis(ctx.attrs.get("axis", 0), data.dim())
    index = _positive(indices, data.shape[axis])
    return [_scatter(data, axis, index, updates, ctx.attrs.get("reduction", "none"))]


@register("ScatterND")
def scatter_nd(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Index rows address slices of the first k data axes; flattening those axes turns the
    scatter into one along axis 0 with a linear index."""
    data, indices, updates = inputs[:3]
    k = indices.shape[-1]
    lead = data.shape[:k]
    flat = data.reshape(math.prod(lead), *data.shape[k:])
    sizes = torch.tensor(lead, dtype=torch.int64)
    strides = torch.tensor([math.prod(lead[i + 1 :]) for i in range(k)], dtype=torch.int64)
    linear = (_positive(indices.reshape(-1, k), sizes) * strides).sum(-1)
    rows = updates.reshape(-1, *data.shape[k:])
    index = linear.reshape(-1, *[1] * (rows.dim() - 1)).expand_as(rows)
    out = _scatter(flat, 0, index, rows, ctx.attrs.get("reduction", "none"))
    return [out.reshape(data.shape)]


@register("DepthToSpace")
def depth_to_space(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """DCR takes the block offsets from the outer part of the channel axis, CRD from the inner."""
    x = inputs[0]
    b = int(ctx.attrs["blocksize"])
    n, c, h, w = x.shape
    if ctx.attrs.get("mode", "DCR") == "CRD":
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


@register("SpaceToDepth")
def space_to_depth(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """The inverse of DepthToSpace in the same ``mode``."""
    x = inputs[0]
    b = int(ctx.attrs["blocksize"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b)
    if ctx.attrs.get("mode", "DCR") == "CRD":
        y = y.permute(0, 1, 3, 5, 2, 4)
    else:
        y = y.permute(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, c * b * b, h // b, w // b)]


@register("EyeLike")
def eye_like(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    dtype = torch_dtype(ctx, ctx.attrs["dtype"]) if "dtype" in ctx.attrs else x.dtype
    rows, cols = x.shape
    diagonal = torch.arange(cols).unsqueeze(0) - torch.arange(rows).unsqueeze(1)
    return [(diagonal == int(ctx.attrs.get("k", 0))).to(dtype)]


@register("TopK")
def top_k(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """A stable sort, so equal values keep the lower index first, as ONNX requires (torch.topk
    leaves ties unordered)."""
    x = inputs[0]
    k = int(inputs[1].reshape(-1)[0]) if ctx.opset >= 10 else int(ctx.attrs["k"])
    axis = norm_axis(ctx.attrs.get("axis", -1), x.dim())
    largest = bool(ctx.attrs.get("largest", 1))
    values, indices = torch.sort(x, dim=axis, descending=largest, stable=True)
    return [values.narrow(axis, 0, k), indices.narrow(axis, 0, k)]


@register("OneHot")
def one_hot(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Negative indices count back from ``depth``; indices out of range give all-off rows."""
    indices, depth_input, values = inputs[:3]
    depth = int(depth_input.reshape(-1)[0])
    index = indices.long()
    index = torch.where(index < 0, index + depth, index)
    hot = index.unsqueeze(-1) == torch.arange(depth)
    hot = hot.movedim(-1, norm_axis(ctx.attrs.get("axis", -1), indices.dim() + 1))
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return [torch.where(hot, on, off)]


@register("Compress")
def compress(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Without ``axis`` the input is flattened; a condition shorter than the axis keeps only
    what it covers."""
    x, condition = inputs[0], inputs[1].reshape(-1).bool()
    if "axis" not in ctx.attrs:
        x, axis = x.reshape(-1), 0
    else:
        axis = norm_axis(ctx.attrs["axis"], x.dim())
    kept = torch.nonzero(condition[: x.shape[axis]]).reshape(-1)
    return [x.index_select(axis, kept)]


@register("ReverseSequence")
def reverse_sequence(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Each batch entry's first ``sequence_lens[b]`` steps reversed, the rest left in place."""
    x, lengths = inputs[0], inputs[1].long()
    time_axis, batch_axis = int(ctx.attrs.get("time_axis", 0)), int(ctx.attrs.get("batch_axis", 1))
    steps = torch.arange(x.shape[time_axis]).unsqueeze(1)  # (time, batch)
    order = torch.where(steps < lengths, lengths - 1 - steps, steps)
    moved = x.movedim((time_axis, batch_axis), (0, 1))
    index = order.reshape(*order.shape, *[1] * (moved.dim() - 2)).expand_as(moved)
    return [moved.gather(0, index).movedim((0, 1), (time_axis, batch_axis))]


@register("CenterCropPad")
def center_crop_pad(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Crops a centred window or pads with zeros around the input, axis by axis; an odd
    difference leaves the extra element at the end."""
    x = inputs[0]
    sizes = [int(v) for v in inputs[1].reshape(-1).tolist()]
    axes = ctx.attrs.get("axes") or list(range(x.dim()))
    for axis, size in zip((norm_axis(a, x.dim()) for a in axes), sizes, strict=False):
        current = x.shape[axis]
        if size < current:
            x = x.narrow(axis, (current - size) // 2, size)
        elif size > current:
            before = (size - current) // 2
            shape = list(x.shape)
            pieces = []
            for count in (before, size - current - before):
                shape[axis] = count
                pieces.append(x.new_zeros(shape))
            x = torch.cat([pieces[0], x, pieces[1]], dim=axis)
    return [x]
