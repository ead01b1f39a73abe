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

from qaas_engine.weights_apart import inferred_skeleton

# A probability under this (or over 1 minus it) is judged as this: "no" (or "yes") at any
# threshold a user would set. Without a clip a probability the float model puts at 1e-9 and the
# quantized one at 0 would be an infinite log-odds error.
LOGIT_CLIP = 1e-4

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


def logit_channels(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, int], ...]]:
    """Per graph output, the channel ranges (start, stop along ``channel_axes``' axis, or the
    default one) that a Sigmoid produced: probabilities, judged in log-odds space.

    Why: a user of a probability thresholds or ranks it. Raw SQNR of a class row whose float
    probabilities are all near 1e-3 measures noise against that tiny power (YOLOv8n: an 8-bit
    grid of step 1/255 rounds such a row to 0, raw SQNR 0 dB, though no detection changes);
    log-odds weigh a change from 0.5 to 0.6 as much as one from 0.01 to 0.012, and a row of
    confident "no" still has its own power, so it cannot hide behind a box row."""
    # the float weights stubbed: shape inference on the whole model held four copies of them
    # at once (BERT-base: the job's peak, 2.9 GB, and 3.6 s), and never reads their values
    inferred = inferred_skeleton(model)
    shapes = {
        value.name: [d.dim_value if d.HasField("dim_value") else None for d in _dims(value)]
        for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    }
    producers = {name: node for node in model.graph.node for name in node.output}
    axes = channel_axes(model)
    ranges: dict[str, tuple[tuple[int, int], ...]] = {}
    for output in model.graph.output:
        node = _through(producers, producers.get(output.name))
        rank = _rank(output)
        if node is None or rank is None or rank < 2:
            continue
        if node.op_type == "Sigmoid":
            axis = axes.get(output.name, default_axis(rank))
            size = (shapes.get(output.name) or [None] * rank)[axis or 0]
            if size:
                ranges[output.name] = ((0, size),)
            continue
        if node.op_type != "Concat" or output.name not in axes:
            continue
        axis, start = axes[output.name], 0
        found: list[tuple[int, int]] = []
        for part in node.input:
            shape = shapes.get(part)
            size = shape[axis] if shape and len(shape) == rank else None
            if not size:
                found = []
                break
            producer = _through(producers, producers.get(part))
            if producer is not None and producer.op_type == "Sigmoid":
                found.append((start, start + size))
            start += size
        if found:
            ranges[output.name] = tuple(found)
    return ranges


def _through(
    producers: dict[str, onnx.NodeProto], node: onnx.NodeProto | None
) -> onnx.NodeProto | None:
    while node is not None and node.op_type in _PASS_THROUGH and node.input:
        node = producers.get(node.input[0])
    return node


def _dims(value: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    kind = value.type.tensor_type
    return list(kind.shape.dim) if kind.HasField("shape") else []


def _rank(value: onnx.ValueInfoProto) -> int | None:
    kind = value.type.tensor_type
    return len(kind.shape.dim) if kind.HasField("shape") else None
