"""The exported model checked against a target's documented constraints.

We cannot run Qualcomm's HTP or NVIDIA's TensorRT here, so an export for them is read back (the
QDQ ONNX and the AIMET encodings, as the target's converter would read them) and every rule of
``qaas_engine.targets.TargetRules.constraints`` is checked. Each violation names the node or
tensor and the rule; the pipeline refuses an export that has any.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from qaas_engine.targets import QNN_HTP

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# ops TensorRT fuses into the Conv/Gemm before them (a Q/DQ between breaks the fusion)
ACTIVATIONS = (
    "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Elu",
    "Selu", "Softplus", "Gelu", "Mish",
)  # fmt: skip
# AIMET's HTP configs: ops whose output takes no quantizer of its own (is_output_quantized
# False), those of them the placement passes through (quant.placement.PASS_THROUGH_OPS); the
# rest (DepthToSpace, TopK, GatherND...) get a grid of their own, which HTP requantizes to
HTP_DATA_MOVEMENT = (
    "Reshape", "Transpose", "MaxPool", "Pad", "Slice", "Split", "Squeeze", "Tile", "Gather",
    "Expand", "ReduceMax", "ReduceMin", "Dropout", "Upsample",
)  # fmt: skip
HTP_KERNELS = {(8, 8), (8, 4), (16, 8), (16, 4), (16, 16)}  # (activation bits, weight bits)
RELATIVE_TOLERANCE = 1e-5
BITS: dict[int, int] = {
    TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.INT8: 8, TensorProto.UINT8: 8,
    TensorProto.INT16: 16, TensorProto.UINT16: 16, TensorProto.INT32: 32,
}  # fmt: skip
SIGNED = {TensorProto.INT4, TensorProto.INT8, TensorProto.INT16, TensorProto.INT32}


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (a node or tensor name), which rule, and what is wrong."""

    where: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule} at '{self.where}': {self.detail}"


@dataclass(frozen=True)
class Grid:
    """A Q/DQ node's grid as stored: scale, zero point, container type, axis (None: per tensor)."""

    node: str
    scale: np.ndarray
    zero_point: np.ndarray
    elem_type: int
    axis: int | None
    domain: str

    @property
    def bits(self) -> int:
        return BITS.get(self.elem_type, 0)

    def same_as(self, other: Grid) -> bool:
        return (
            self.elem_type == other.elem_type
            and self.scale.shape == other.scale.shape
            and np.allclose(self.scale, other.scale, rtol=RELATIVE_TOLERANCE, atol=0)
            and np.array_equal(self.zero_point, other.zero_point)
        )


class QdqGraph:
    """The exported graph read back: which tensors each node reads through a DequantizeLinear
    (and whether from a constant) and which outputs feed a QuantizeLinear."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.constants = {init.name: init for init in graph.initializer}
        # graph outputs by the name of the tensor quantized for them ("X_float" for output X)
        self.outputs = {o.name for o in graph.output} | {f"{o.name}_float" for o in graph.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)

    def grid(self, node: onnx.NodeProto) -> Grid:
        scale = self._array(node.input[1]).astype(np.float64).reshape(-1)
        if len(node.input) > 2 and node.input[2] in self.constants:
            zero = self.constants[node.input[2]]
            zero_point, elem_type = numpy_helper.to_array(zero).reshape(-1), zero.data_type
        else:
            zero_point, elem_type = np.zeros(1, np.int64), TensorProto.UINT8
        axis = None
        if scale.size > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        name = node.name or node.output[0]
        return Grid(name, scale, zero_point.astype(np.int64), elem_type, axis, node.domain)

    def _array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.constants[name])

    def dequantized(self, tensor: str) -> tuple[Grid, bool] | None:
        """The grid ``tensor`` was dequantized from, and whether from a constant (a weight)."""
        node = self.producer.get(tensor)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        return self.grid(node), node.input[0] in self.constants

    def quantized(self, tensor: str) -> tuple[Grid, onnx.NodeProto] | None:
        """The QuantizeLinear ``tensor`` feeds (through a Clip for sub-8-bit grids), with the
        node that reads the dequantized value back, if any."""
        for user in self.consumers.get(tensor, []):
            if self.is_grid_clip(user):
                found = self.quantized(user.output[0])
                if found is not None:
                    return found
            if user.op_type == "QuantizeLinear":
                return self.grid(user), user
        return None

    def after_qdq(self, q_node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The nodes reading the dequantized value of a QuantizeLinear."""
        readers = []
        for dq in self.consumers.get(q_node.output[0], []):
            if dq.op_type == "DequantizeLinear":
                readers.extend(self.consumers.get(dq.output[0], []))
        return readers

    def compute_nodes(self) -> list[onnx.NodeProto]:
        return [
            n
            for n in self.model.graph.node
            if n.op_type not in QDQ_OPS and not self.is_grid_clip(n)
        ]

    @staticmethod
    def is_grid_clip(node: onnx.NodeProto) -> bool:
        """The Clip the export puts before a QuantizeLinear of a sub-8-bit grid (by its name)."""
        return (
            node.op_type == "Clip"
            and len(node.output) == 1
            and bool(node.input)
            and node.output[0] == f"{node.input[0]}_clipped"
        )

    def weight_input(self, node: onnx.NodeProto) -> int | None:
        """Which input of a weighted op is its dequantized constant weight."""
        for index in (1, 0) if node.op_type == "MatMul" else (1,):
            if len(node.input) > index:
                found = self.dequantized(node.input[index])
                if found is not None and found[1]:
                    return index
        return None


def check_export(target: str, model: onnx.ModelProto, encodings: dict[str, Any]) -> list[Violation]:
    """Every violation of ``target``'s documented constraints (empty: the export satisfies
    them). ``onnxruntime-cpu`` is run, not checked: nothing to report."""
    if target == "tensorrt":
        return check_tensorrt(model)
    if target == "qnn-htp":
        return check_qnn_htp(model, encodings)
    return []


# -- TensorRT ----------------------------------------------------------------------------------
def check_tensorrt(model: onnx.ModelProto) -> list[Violation]:
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


# -- Qualcomm HTP ------------------------------------------------------------------------------
def check_qnn_htp(model: onnx.ModelProto, encodings: dict[str, Any]) -> list[Violation]:
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
