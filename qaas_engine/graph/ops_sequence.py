"""Sequence and optional values in torch: a sequence is a Python list of tensors, an empty
optional is ``None``.

Exporters emit these around dynamic splits and concatenations (``SplitToSequence`` then
``ConcatFromSequence``); computing them with torch keeps the tensors inside differentiable.
"""

import torch
from torch import Tensor

from qaas_engine.graph.ops_tensor import int_list, norm_axis
from qaas_engine.graph.registry import Inputs, NodeContext, Value, register

Sequence = list[Tensor]


def _position(at: Tensor | None, length: int, default: int) -> int:
    index = default if at is None else int(at.reshape(-1)[0])
    return index + length if index < 0 else index


@register("SequenceConstruct", any_value=True)
def sequence_construct(ctx: NodeContext, inputs: Inputs) -> list[Sequence]:
    return [list(inputs)]


@register("SequenceEmpty")
def sequence_empty(ctx: NodeContext, inputs: Inputs) -> list[Sequence]:
    return [[]]


@register("SequenceLength", any_value=True)
def sequence_length(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    return [torch.tensor(len(inputs.sequence(0)), dtype=torch.int64)]


@register("SequenceAt", any_value=True)
def sequence_at(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    sequence = inputs.sequence(0)
    return [sequence[_position(inputs[1], len(sequence), 0)]]


@register("SequenceInsert", any_value=True)
def sequence_insert(ctx: NodeContext, inputs: Inputs) -> list[Sequence]:
    sequence = list(inputs.sequence(0))
    sequence.insert(_position(inputs.optional(2), len(sequence), len(sequence)), inputs[1])
    return [sequence]


@register("SequenceErase", any_value=True)
def sequence_erase(ctx: NodeContext, inputs: Inputs) -> list[Sequence]:
    sequence = list(inputs.sequence(0))
    del sequence[_position(inputs.optional(1), len(sequence), len(sequence) - 1)]
    return [sequence]


@register("ConcatFromSequence", any_value=True)
def concat_from_sequence(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    sequence = inputs.sequence(0)
    axis = int(ctx.attrs["axis"])
    if ctx.attrs.get("new_axis", 0):
        return [torch.stack(sequence, dim=norm_axis(axis, sequence[0].dim() + 1))]
    return [torch.cat(sequence, dim=axis)]


@register("SplitToSequence")
def split_to_sequence(ctx: NodeContext, inputs: Inputs) -> list[Sequence]:
    """No ``split``: pieces of one along the axis, the axis squeezed away if ``keepdims=0``
    (it applies only then); a scalar ``split``: equal chunks, the last one shorter; a 1-D
    ``split``: those lengths."""
    x, split = inputs[0], inputs.optional(1)
    axis = norm_axis(int(ctx.attrs.get("axis", 0)), x.dim())
    if split is None:
        pieces = list(torch.split(x, 1, dim=axis))
        if ctx.attrs.get("keepdims", 1):
            return [pieces]
        return [[p.squeeze(axis) for p in pieces]]
    sizes = int_list(split)
    if split.dim() == 0:
        return [list(torch.split(x, sizes[0], dim=axis))]
    return [list(torch.split(x, sizes, dim=axis))]


@register("Optional", any_value=True)
def optional(ctx: NodeContext, inputs: Inputs) -> list[Value]:
    return [inputs.value(0)]


@register("OptionalHasElement", any_value=True)
def optional_has_element(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    return [torch.tensor(inputs.value(0) is not None)]


@register("OptionalGetElement", any_value=True)
def optional_get_element(ctx: NodeContext, inputs: Inputs) -> list[Tensor | Sequence]:
    value = inputs.value(0)
    if value is None:
        raise ctx.unsupported("an empty optional has no element")
    return [value]
