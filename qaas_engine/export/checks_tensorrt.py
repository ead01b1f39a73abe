"""TensorRT's explicit-quantization rules (its developer guide: symmetric INT8 Q/DQ, zero point
0, per-tensor activations, per-channel weights on the output channel; Q/DQ on the inputs of
weighted ops and on the residual input of an Add, none between a weighted op and its
activation), checked on the exported QDQ graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from qaas_engine.export.qdq_readback import QDQ_OPS, WEIGHTED, QdqGraph, Violation

# ops TensorRT fuses into the Conv/Gemm before them (a Q/DQ between breaks the fusion)
ACTIVATIONS = (
    "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Elu",
    "Selu", "Softplus", "Gelu", "Mish",
)  # fmt: skip


def check_tensorrt(model: onnx.ModelProto) -> list[Violation]:
    """Every broken TensorRT rule in ``model`` (the biases, the Q/DQ types and the layout)."""
    graph = QdqGraph(model)
    found: list[Violation] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        found.append(Violation("(model)", "trt.opset", f"opset {opset}; per-channel Q/DQ needs 13"))
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        grid = graph.grid(node)
        if grid.domain not in ("", "ai.onnx") or grid.elem_type != TensorProto.INT8:
            kind = TensorProto.DataType.Name(grid.elem_type)
            found.append(
                Violation(grid.node, "trt.int8", f"{kind} in domain '{grid.domain}', not INT8")
            )
        if np.any(grid.zero_point != 0):
            found.append(Violation(grid.node, "trt.zero_point", "zero point not 0"))
        if node.op_type == "QuantizeLinear" and grid.axis is not None:
            found.append(
                Violation(
                    grid.node, "trt.activation_per_tensor", "activation quantized per channel"
                )
            )
    for node in graph.compute_nodes():
        name = node.name or node.output[0]
        if node.op_type in WEIGHTED:
            found.extend(_trt_weighted(graph, node, name))
        if node.op_type == "Add":
            found.extend(_trt_residual(graph, node, name))
        if node.op_type in WEIGHTED:
            quantized = graph.quantized(node.output[0])
            if quantized is not None:
                after = [u.op_type for u in graph.after_qdq(quantized[1])]
                if len(after) == 1 and after[0] in ACTIVATIONS:
                    found.append(
                        Violation(
                            name,
                            "trt.no_qdq_before_activation",
                            f"Q/DQ between {node.op_type} and its {', '.join(after)}: "
                            "TensorRT cannot fuse them",
                        )
                    )
    return found


def _trt_weighted(graph: QdqGraph, node: onnx.NodeProto, name: str) -> list[Violation]:
    found = []
    if len(node.input) > 2 and graph.dequantized(node.input[2]) is not None:
        found.append(Violation(name, "trt.bias_float", "bias dequantized from integers"))
    index = graph.weight_input(node)
    if index is None:
        return found
    dequantized = graph.dequantized(node.input[index])
    assert dequantized is not None
    grid = dequantized[0]
    expected = _output_channel_axis(graph, node, index)
    if grid.axis is not None and grid.axis != expected:
        found.append(
            Violation(
                name,
                "trt.weight_axis",
                f"per-channel weight on axis {grid.axis}, not the output channel ({expected})",
            )
        )
    for position, tensor in enumerate(node.input[:2]):
        if position != index and tensor and graph.dequantized(tensor) is None:
            found.append(
                Violation(
                    name,
                    "trt.weighted_inputs",
                    f"INT8 weights but activation input '{tensor}' is not quantized",
                )
            )
    return found


def _output_channel_axis(graph: QdqGraph, node: onnx.NodeProto, index: int) -> int | None:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    weight = graph.producer[node.input[index]].input[0]
    rank = len(graph.constants[weight].dims)
    return rank - 1 if index == 1 else None


def _trt_residual(graph: QdqGraph, node: onnx.NodeProto, name: str) -> list[Violation]:
    inputs = [t for t in node.input if t and t not in graph.constants]
    if len(inputs) < 2:
        return []
    from_weighted = [
        t for t in inputs if t in graph.producer and graph.producer[t].op_type in WEIGHTED
    ]
    if not from_weighted:
        return []
    # one input may stay float: the weighted op's output TensorRT fuses the Add into
    unquantized = [t for t in inputs if graph.dequantized(t) is None]
    fused = next((t for t in unquantized if t in from_weighted), None)
    return [
        Violation(name, "trt.residual_add", f"residual input '{t}' is not quantized")
        for t in unquantized
        if t != fused
    ]
