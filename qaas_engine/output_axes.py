"""Which axis of each graph output holds its channels, for the worst-channel SQNR.

The default is axis 1 of a 4-D output (NCHW) and the last axis otherwise. A detector in the
YOLOv8 style ends in a Concat that joins its box coordinates (pixels) and class scores (0..1)
along axis 1 of a ``[batch, 4 + classes, anchors]`` output: taking the last axis as channels
judged each of the 8400 anchors, where the box and class rows are what quantization hurts
(auto saw 64.6 dB per anchor where the rows measured 4.3). An output made by a Concat along an
axis other than the batch axis is judged along that axis: the Concat is what joined parts of
different meaning there.
"""

from __future__ import annotations

import onnx

# ops that pass their input through unchanged in shape and meaning
_PASS_THROUGH = frozenset({"Identity"})


def default_axis(rank: int) -> int | None:
    """Axis 1 of a 4-D tensor, the last otherwise; None under two dimensions."""
    if rank < 2:
        return None
    return 1 if rank == 4 else rank - 1


def channel_axes(model: onnx.ModelProto) -> dict[str, int]:
    """Per graph output whose producer is a Concat along a non-batch axis (through Identity),
    that axis; outputs not listed take ``default_axis``."""
    producers = {name: node for node in model.graph.node for name in node.output}
    axes: dict[str, int] = {}
    for output in model.graph.output:
        rank = _rank(output)
        node = producers.get(output.name)
        while node is not None and node.op_type in _PASS_THROUGH and node.input:
            node = producers.get(node.input[0])
        if rank is None or rank < 3 or node is None or node.op_type != "Concat":
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        if axis is None:
            continue
        axis = axis + rank if axis < 0 else axis
        if 0 < axis < rank:
            axes[output.name] = int(axis)
    return axes


def _rank(value: onnx.ValueInfoProto) -> int | None:
    kind = value.type.tensor_type
    return len(kind.shape.dim) if kind.HasField("shape") else None
