"""``single_channel_depthwise``: a conv over one input channel run as ORT's depthwise int8 kernel.

A network's entry conv often reads one channel (a grey image, a spectrogram): weight
``[C, 1, kh, kw]``. ONNX Runtime runs that QLinearConv as an im2col GEMM only ``kh * kw`` deep,
which its int8 GEMM packs and pads for a depth it never gets. Tiling the input's integers to C
channels and running the same weight with ``group=C`` computes each output channel as the same
integer sum (channel c reads its own copy of the one input channel), so the grids, the values
and the simulation are unchanged, and ORT's depthwise int8 kernel runs it.

Chosen by shape only (:func:`depthwise_wins`), from a lone-conv micro-benchmark of both forms in
ORT 1.32 on an AVX-512 VNNI CPU: 3x3 kernels at stride 1 with C a multiple of 16, or C = 8,
and at most 64 Ki outputs a sample were faster tiled (8 channels 1.11-1.13x at batch 1 and
1.27-1.28x at batch 32 on 16x16 and 28x28 maps; the bundled example's artifact went 1.45x ->
1.53x float at batch 32, same run); 12, 24 or 40 channels, 5x5 and 7x7 kernels, and larger maps
(32 channels at 64x64: 0.90-0.93x at batch 32; the Tile's copy then costs more than the GEMM's
waste) measured slower.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper

from qaas_engine.export.runtime_forms import FOLDED_ACTIVATIONS, TILED_CHANNELS, Dim

EIGHT_BIT = frozenset({onnx.TensorProto.UINT8, onnx.TensorProto.INT8})


def depthwise_wins(weight_shape: tuple[int, ...], output_shape: list[Dim] | None) -> bool:
    """Where the tiled depthwise form measured faster (see the module's docstring)."""
    if len(weight_shape) != 4 or weight_shape[1] != 1 or tuple(weight_shape[2:]) != (3, 3):
        return False
    channels = weight_shape[0]
    if (channels % 16 and channels != 8) or output_shape is None or len(output_shape) != 4:
        return False
    height, width = output_shape[2], output_shape[3]
    if not isinstance(height, int) or not isinstance(width, int):
        return False
    return channels * height * width <= 65_536


def single_channel_depthwise(qdq: onnx.ModelProto, shapes: Mapping[str, list[Dim]]) -> list[str]:
    """In place: each 8-bit Conv over one input channel that :func:`depthwise_wins` admits,
    rewritten as Tile of its input's integers -> DequantizeLinear -> the same Conv with
    ``group=C``; the convs changed, by name. ``shapes``: the float model's static shapes (the
    Conv keeps its output's name)."""
    graph = qdq.graph
    initializers = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def eight_bit_dequantize(name: str) -> onnx.NodeProto | None:
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 3:
            return None
        zero = initializers.get(node.input[2])
        scale = initializers.get(node.input[1])
        if zero is None or scale is None or int(np.prod(scale.dims)) != 1:
            return None
        return node if zero.data_type in EIGHT_BIT else None

    def into_eight_bit_quantize(conv: onnx.NodeProto) -> bool:
        """Conv (-> Relu/Clip) -> one 8-bit QuantizeLinear: a group ORT fuses."""
        users = readers.get(conv.output[0], [])
        if len(users) == 1 and users[0].op_type in FOLDED_ACTIVATIONS:
            users = readers.get(users[0].output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or len(users[0].input) < 3:
            return False
        zero = initializers.get(users[0].input[2])
        return zero is not None and zero.data_type in EIGHT_BIT

    changed: list[str] = []
    sources: list[onnx.NodeProto] = []  # DequantizeLinears a conv no longer reads
    inserted: dict[int, list[onnx.NodeProto]] = {}  # conv's position -> nodes to put before it
    for position, conv in enumerate(graph.node):
        if conv.op_type != "Conv" or len(conv.input) < 2:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if attributes.get("group", 1) != 1 or attributes.get("auto_pad", b"NOTSET") != b"NOTSET":
            continue
        if any(s != 1 for s in attributes.get("strides", [])):
            continue
        if any(d != 1 for d in attributes.get("dilations", [])):
            continue
        source, weight = eight_bit_dequantize(conv.input[0]), producer.get(conv.input[1])
        if source is None or weight is None or weight.op_type != "DequantizeLinear":
            continue
        integers = initializers.get(weight.input[0])
        if integers is None or not depthwise_wins(tuple(integers.dims), shapes.get(conv.output[0])):
            continue
        if not into_eight_bit_quantize(conv):
            continue
        channels = int(integers.dims[0])
        # named like the export's other integer tensors: "<tensor>_quantized"
        stem = f"{source.input[0].removesuffix('_quantized')}{TILED_CHANNELS}{channels}"
        tiled = f"{stem}_quantized"
        if tiled not in producer:
            repeats = helper.make_tensor(
                f"{stem}_repeats", onnx.TensorProto.INT64, [4], [1, channels, 1, 1]
            )
            graph.initializer.append(repeats)
            dequantized = helper.make_node(
                "DequantizeLinear",
                [tiled, *source.input[1:]],
                [f"{stem}_dequantized"],
                name=f"{stem}_DequantizeLinear",
            )
            tile = helper.make_node(
                "Tile", [source.input[0], repeats.name], [tiled], name=f"{stem}_Tile"
            )
            inserted[position] = [tile, dequantized]
            producer[tiled] = tile
        conv.input[0] = f"{stem}_dequantized"
        sources.append(source)
        del conv.attribute[:]
        for name, value in {**attributes, "group": channels}.items():
            conv.attribute.append(helper.make_attribute(name, value))
        changed.append(conv.name or conv.output[0])
    if not changed:
        return changed
    nodes = []
    for position, node in enumerate(graph.node):
        nodes.extend(inserted.get(position, []))
        nodes.append(node)
    read = {name for node in nodes for name in node.input}
    outputs = {value.name for value in graph.output}
    unread = [n for n in sources if n.output[0] not in read and n.output[0] not in outputs]
    nodes = [node for node in nodes if all(node is not n for n in unread)]
    del graph.node[:]
    graph.node.extend(nodes)
    return changed
