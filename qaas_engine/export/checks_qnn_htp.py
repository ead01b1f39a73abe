"""Qualcomm HTP's rules (AIMET's htp_quantsim_config_v73/v75.json and QNN's HTP quantization:
symmetric signed weights, asymmetric uint8/uint16 activations, int32 bias at s_input * s_weight,
supergroups, shared and fixed encodings), checked on the QDQ graph and the AIMET encodings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from qaas_engine.export.qdq_readback import (
    RELATIVE_TOLERANCE,
    SIGNED,
    WEIGHTED,
    Grid,
    QdqGraph,
    Violation,
)
from qaas_engine.targets import QNN_HTP

# AIMET's HTP configs: ops whose output takes no quantizer of its own (is_output_quantized
# False), those of them the placement passes through (quant.placement.PASS_THROUGH_OPS); the
# rest (DepthToSpace, TopK, GatherND...) get a grid of their own, which HTP requantizes to
HTP_DATA_MOVEMENT = (
    "Reshape", "Transpose", "MaxPool", "Pad", "Slice", "Split", "Squeeze", "Tile", "Gather",
    "Expand", "ReduceMax", "ReduceMin", "Dropout", "Upsample",
)  # fmt: skip
HTP_KERNELS = {(8, 8), (8, 4), (16, 8), (16, 4), (16, 16)}  # (activation bits, weight bits)


def check_qnn_htp(model: onnx.ModelProto, encodings: dict[str, Any]) -> list[Violation]:
    """Every broken HTP rule in ``model`` and its AIMET ``encodings``."""
    graph = QdqGraph(model)
    found = _htp_encodings(graph, encodings)
    fused = QNN_HTP.fused_pairs or frozenset()
    fixed = {op: (low, high) for op, low, high in QNN_HTP.fixed_ranges}
    param_bits = {e["name"]: int(e["bw"]) for e in encodings.get("param_encodings", [])}
    for node in graph.compute_nodes():
        name = node.name or node.output[0]
        if node.op_type in WEIGHTED:
            found.extend(_htp_weighted(graph, node, name, param_bits))
        quantized = graph.quantized(node.output[0]) if node.output else None
        if quantized is not None:
            grid, q_node = quantized
            readers = graph.after_qdq(q_node)
            pair = (node.op_type, readers[0].op_type) if len(readers) == 1 else None
            # a supergroup runs quantized: an activation left float (kept) cannot join it
            joins = pair is not None and graph.quantized(readers[0].output[0]) is not None
            if pair in fused and joins and node.output[0] not in graph.outputs:
                found.append(
                    Violation(
                        name,
                        "htp.supergroup",
                        f"quantizer between {node.op_type} and {readers[0].op_type}, which HTP "
                        "runs as one supergroup",
                    )
                )
            if node.op_type in fixed:
                found.extend(_htp_fixed(grid, node, fixed[node.op_type]))
        if _moves_data(node) and quantized is not None:
            source = graph.dequantized(node.input[0])
            if source is not None and not source[0].same_as(quantized[0]):
                found.append(
                    Violation(
                        name,
                        "htp.no_output_quantizer",
                        f"{node.op_type} output on a grid of its own, not its input's",
                    )
                )
        if node.op_type in QNN_HTP.tied_ops and quantized is not None:
            found.extend(_htp_concat(graph, node, name, quantized[0], fixed))
    for value in model.graph.input:
        if value.name not in graph.constants and value.name in graph.consumers:
            if value.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16):
                if graph.quantized(value.name) is None:
                    found.append(
                        Violation(value.name, "htp.model_input", "graph input not quantized")
                    )
    return found


def _moves_data(node: onnx.NodeProto) -> bool:
    """Data movement that keeps its input's values: not a Pad with a fill value, not an
    interpolating Upsample."""
    if node.op_type not in HTP_DATA_MOVEMENT or not node.input:
        return False
    if node.op_type == "Pad":
        return not (len(node.input) > 2 and node.input[2])
    if node.op_type == "Upsample":
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"nearest")
        return mode == b"nearest"
    return True


def _htp_encodings(graph: QdqGraph, encodings: dict[str, Any]) -> list[Violation]:
    """Weights, biases and activations in the AIMET file, as QNN's converter reads them."""
    found = []
    roles = _param_roles(graph)
    for entry in encodings.get("param_encodings", []):
        name, bits, offsets = entry["name"], int(entry["bw"]), entry["offset"]
        role = roles.get(name, "weight")
        if role == "bias":
            if bits != 32 or not entry["is_sym"]:
                found.append(Violation(name, "htp.bias_int32", f"bias {bits}-bit, not int32 sym"))
            continue
        symmetric = entry["is_sym"] and all(o == -(2 ** (bits - 1)) for o in offsets)
        if not symmetric or bits not in (4, 8, 16):
            found.append(
                Violation(
                    name,
                    "htp.weight_grid",
                    f"{bits}-bit weight, symmetric={entry['is_sym']}, offsets "
                    f"{sorted(set(offsets))[:3]}: HTP takes symmetric int4/int8/int16",
                )
            )
    for entry in encodings.get("activation_encodings", []):
        bits = int(entry["bw"])
        if entry["is_sym"] or bits not in (8, 16) or any(o > 0 for o in entry["offset"]):
            found.append(
                Violation(
                    entry["name"],
                    "htp.activation_grid",
                    f"{bits}-bit activation, symmetric={entry['is_sym']}: HTP takes asymmetric "
                    "uint8/uint16",
                )
            )
    for node in graph.model.graph.node:
        if node.op_type == "QuantizeLinear":
            grid = graph.grid(node)
            if grid.elem_type not in (TensorProto.UINT8, TensorProto.UINT16):
                kind = TensorProto.DataType.Name(grid.elem_type)
                found.append(
                    Violation(grid.node, "htp.activation_grid", f"{kind}, not uint8/uint16")
                )
    return found


def _param_roles(graph: QdqGraph) -> dict[str, str]:
    """Constant name -> 'weight' or 'bias', by where its dequantized value goes."""
    roles = {}
    for node in graph.model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in graph.constants:
            continue
        for user in graph.consumers.get(node.output[0], []):
            index = list(user.input).index(node.output[0])
            bias = user.op_type in ("Conv", "ConvTranspose", "Gemm") and index == 2
            roles[node.input[0]] = "bias" if bias else "weight"
    return roles


def _htp_weighted(
    graph: QdqGraph, node: onnx.NodeProto, name: str, param_bits: dict[str, int]
) -> list[Violation]:
    found: list[Violation] = []
    index = graph.weight_input(node)
    if index is None:
        return found
    dequantized = graph.dequantized(node.input[index])
    assert dequantized is not None
    weight = dequantized[0]
    if weight.elem_type not in SIGNED or np.any(weight.zero_point != 0):
        found.append(Violation(name, "htp.weight_grid", "weight not signed with zero point 0"))
    allowed = {"Conv": 0, "ConvTranspose": 1}.get(node.op_type)
    if weight.axis is not None and weight.axis != allowed:
        found.append(
            Violation(
                name,
                "htp.weight_per_channel",
                f"{node.op_type} weight per channel on axis {weight.axis}: HTP takes "
                + ("per-tensor weights here" if allowed is None else f"axis {allowed}"),
            )
        )
    activation = graph.dequantized(node.input[1 - index if node.op_type == "MatMul" else 0])
    if activation is None:
        return found
    source = graph.producer[node.input[index]].input[0]
    weight_bits = param_bits.get(source, weight.bits)
    combo = (activation[0].bits, weight_bits)
    if combo not in HTP_KERNELS:
        found.append(Violation(name, "htp.kernel", f"A{combo[0]}W{combo[1]} is not an HTP kernel"))
    bias = graph.dequantized(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if bias is not None:  # a float bias is the converter's to quantize (AIMET leaves it float)
        expected = activation[0].scale * weight.scale
        if bias[0].elem_type != TensorProto.INT32:
            found.append(Violation(name, "htp.bias_int32", "bias not dequantized from int32"))
        elif not np.allclose(bias[0].scale, expected, rtol=RELATIVE_TOLERANCE, atol=0) or np.any(
            bias[0].zero_point != 0
        ):
            found.append(Violation(name, "htp.bias_int32", "bias scale is not s_input * s_weight"))
    return found


def _htp_fixed(grid: Grid, node: onnx.NodeProto, bounds: tuple[float, float]) -> list[Violation]:
    low_bound, high_bound = bounds
    qmax = 2**grid.bits - 1
    low = float(-grid.zero_point[0] * grid.scale[0])
    high = float((qmax - grid.zero_point[0]) * grid.scale[0])
    if abs(low - low_bound) > 1e-6 or abs(high - high_bound) > 1e-6 * max(1.0, high_bound):
        return [
            Violation(
                node.name or node.output[0],
                "htp.fixed_range",
                f"{node.op_type} output on [{low:.6g}, {high:.6g}], not "
                f"[{low_bound:g}, {high_bound:g}]",
            )
        ]
    return []


def _htp_concat(
    graph: QdqGraph, node: onnx.NodeProto, name: str, output: Grid, fixed: dict
) -> list[Violation]:
    found = []
    for tensor in node.input:
        if not tensor or tensor in graph.constants:
            continue  # QNN's converter quantizes a static input on the output's encoding
        source = graph.dequantized(tensor)
        producer = graph.producer.get(tensor)
        origin = graph.producer.get(producer.input[0]) if producer is not None else None
        if origin is not None and origin.op_type == "QuantizeLinear":
            origin = graph.producer.get(origin.input[0])
        if origin is not None and origin.op_type in fixed:
            continue  # a fixed grid (Sigmoid, Softmax) is requantized where it joins
        if source is None or not source[0].same_as(output):
            found.append(
                Violation(
                    name,
                    "htp.concat_shared",
                    f"input '{tensor}' is not on the Concat's output encoding",
                )
            )
    return found
