"""Where quantizers stand: the same places an integer runtime quantizes.

ONNX Runtime runs a QDQ graph by fusing ``DQ -> op -> Q`` groups into integer kernels, folding a
Relu or Clip that feeds a Q into the producer, and passing quantized values through data-movement
ops unchanged. The simulation must quantize exactly there, or its accuracy is a fiction:

* every float graph input and every float output of a computing op gets its own quantizer;
* an output whose only consumer is Relu/Clip (or the constant bias Add after a MatMul/Gemm/Conv)
  is left alone: the runtime quantizes after the activation;
* outputs of data-movement ops (Reshape, MaxPool, nearest Resize...) share their input's grid;
* on ``onnxruntime-cpu``, the output of a Div or Mul by a positive constant scalar is put on its
  input's grid scaled by the constant (``Placement.scaled``): the same integers, so the export
  needs no op there (ONNX Runtime has no integer Div; a QLinearMul by a scalar is a pass);
* weights of Conv, ConvTranspose, Gemm and MatMul are quantized; biases of Conv and Gemm become
  int32 at scale ``s_input * s_weight``; other constants stay float;
* tensors computed from constants only (shape arithmetic) and integer tensors are never touched;
* recurrent ops (LSTM, GRU, RNN), control flow and nodes of other domains (an exporter's or a
  runtime's custom ops) compute in float like the nodes a user keeps float: ONNX Runtime has no
  QDQ kernel for them, so a quantizer on their outputs would only add rounding error;
* likewise a region of quantized tensors that borders such float computation and holds no
  weighted op (a recurrent state from the graph input through an LSTM to the output) keeps
  no grid: it would buy no integer kernel, only rounding fed back chunk after chunk.
* nodes the executor computes by ONNX's reference implementation (no torch kernel) stay float.

A deployment target may say otherwise (``qaas_engine.targets.TargetRules``): Qualcomm HTP fuses
only its supergroups, puts a Concat's inputs and output on one grid and fixes Sigmoid/Softmax
output ranges; TensorRT wants Q/DQ on the inputs of weighted ops and residual Adds only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from qaas_engine.control_flow import used_names
from qaas_engine.graph.attributes import parse_attributes
from qaas_engine.graph.kernels import has_torch_kernel
from qaas_engine.targets import DEFAULT_TARGET, TargetRules, target_rules

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}
PASS_THROUGH_OPS = {
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Split",
    "Gather",
    "MaxPool",
    "GlobalMaxPool",
    "Identity",
    "Dropout",
    "Expand",
    "Tile",
    "ReduceMax",
    "ReduceMin",
    "Pad",
    "Resize",
    "Upsample",
}
FUSED_ACTIVATIONS = {"Relu", "Clip"}
BIAS_FUSING_PRODUCERS = {"MatMul", "Gemm", "Conv", "ConvTranspose"}
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
FLOAT_ONLY_OPS = {"LSTM", "GRU", "RNN", "If", "Loop", "Scan"}
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class WeightSite:
    """A quantized weight and the op that consumes it."""

    name: str
    node: str
    op_type: str
    channel_axis: int | None  # None: this op's weight can only be quantized per tensor
    input: str  # the activation the op multiplies with the weight
    bias: str | None = None  # int32 bias at scale s_input * s_weight
    # a conv with one input and one output channel per group: ORT's depthwise int8 kernel, which
    # sums in int32, where other weighted ops run a GEMM (targets.KernelChoice.weight_bits)
    depthwise: bool = False


@dataclass
class Placement:
    weights: dict[str, WeightSite] = field(default_factory=dict)
    activations: list[str] = field(default_factory=list)  # tensors with a quantizer of their own
    shared: dict[str, str] = field(default_factory=dict)  # pass-through output -> its input
    fused: dict[str, str] = field(default_factory=dict)  # producer output -> fused consumer node
    skipped: dict[str, str] = field(default_factory=dict)  # tensor -> why it stays float
    float_nodes: list[str] = field(default_factory=list)  # nodes computing in float, any reason
    # groups of tensors the target runs on one grid (a Concat's inputs and output)
    tied: list[list[str]] = field(default_factory=list)
    fixed_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # tensor -> range
    # Div/Mul output -> (its quantized input, the factor): its grid is the input's, scale times
    # the factor (QuantSim.derive_scaled_grids), so its integers are the input's own
    scaled: dict[str, tuple[str, float]] = field(default_factory=dict)


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    types: dict[str, int] = {}
    graph = model.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


def _dynamic_tensors(model: onnx.ModelProto, initializers: set[str]) -> set[str]:
    dynamic = {i.name for i in model.graph.input if i.name not in initializers}
    for node in model.graph.node:
        if any(name in dynamic for name in node.input if name):
            dynamic.update(o for o in node.output if o)
    return dynamic


def _weight_site(
    node: onnx.NodeProto, name: str, initializers: dict[str, onnx.TensorProto]
) -> WeightSite | None:
    attrs = parse_attributes(node)
    op = node.op_type
    node_name = node.name or node.output[0]
    inputs = list(node.input)
    bias = inputs[2] if len(inputs) > 2 and inputs[2] in initializers else None
    if op == "Conv" and len(inputs) > 1 and inputs[1] in initializers:
        dims = list(initializers[inputs[1]].dims)
        group = int(attrs.get("group", 1))
        depthwise = len(dims) > 1 and dims[1] == 1 and dims[0] == group
        return WeightSite(inputs[1], node_name, op, 0, inputs[0], bias, depthwise=depthwise)
    if op == "ConvTranspose" and len(inputs) > 1 and inputs[1] in initializers:
        axis = 1 if int(attrs.get("group", 1)) == 1 else None
        return WeightSite(inputs[1], node_name, op, axis, inputs[0], None)
    if op == "Gemm" and len(inputs) > 1 and inputs[1] in initializers:
        if int(attrs.get("transA", 0)) or inputs[0] in initializers:
            return None
        axis = 0 if int(attrs.get("transB", 0)) else 1
        gemm_bias = bias if bias and len(initializers[bias].dims) == 1 else None
        return WeightSite(inputs[1], node_name, op, axis, inputs[0], gemm_bias)
    if op == "MatMul" and len(inputs) > 1:
        if inputs[1] in initializers and inputs[0] not in initializers:
            rank = len(initializers[inputs[1]].dims)
            return WeightSite(inputs[1], node_name, op, rank - 1 if rank >= 2 else None, inputs[0])
        if inputs[0] in initializers and inputs[1] not in initializers:
            return WeightSite(inputs[0], node_name, op, None, inputs[1])
    return None


def place_quantizers(
    model: onnx.ModelProto,
    *,
    quantize_activations: bool = True,
    keep_float_nodes: frozenset[str] = frozenset(),
    keep_float_ops: frozenset[str] = frozenset(),
    target: str = DEFAULT_TARGET,
) -> Placement:
    rules = target_rules(target)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    types = _tensor_types(model)
    dynamic = _dynamic_tensors(model, set(initializers))
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                consumers[name].append(node)
    graph_outputs = {o.name for o in graph.output}
    placement = Placement()

    def kept_float(node: onnx.NodeProto) -> bool:
        return bool(float_reason(node, keep_float_nodes, keep_float_ops))

    placement.float_nodes = [
        node.name or node.output[0] for node in graph.node if kept_float(node) and node.output
    ]

    for node in graph.node:
        if node.op_type in WEIGHTED_OPS and not kept_float(node):
            site = _weight_site(node, "", initializers)
            if site is None or site.name in placement.weights:
                continue
            if types.get(site.name) not in FLOAT_TYPES:
                continue
            placement.weights[site.name] = site
    if not quantize_activations:
        return placement

    def is_float_dynamic(name: str) -> bool:
        return (
            bool(name)
            and name in dynamic
            and types.get(name, onnx.TensorProto.FLOAT) in FLOAT_TYPES
        )

    if rules.layout == "consumer-inputs":
        _place_on_consumer_inputs(model, placement, consumers, kept_float, is_float_dynamic)
        return placement

    quantized: set[str] = set()
    for value in graph.input:
        if value.name in initializers:
            continue
        if is_float_dynamic(value.name):
            placement.activations.append(value.name)
            quantized.add(value.name)
    for node in graph.node:
        for output in node.output:
            if not output:
                continue
            if not is_float_dynamic(output):
                continue
            reason = float_reason(node, keep_float_nodes, keep_float_ops)
            if reason:
                placement.skipped[output] = f"node '{node.name}' ({node.op_type}) {reason}"
                continue
            moves = node.op_type in PASS_THROUGH_OPS and not _changes_values(node)
            if moves or _identity_cast(node, types):
                source = node.input[0] if node.input else ""
                if source in quantized:
                    placement.shared[output] = source
                    quantized.add(output)
                    continue
                if source in dynamic:
                    continue  # moves a float-kept tensor: stays float
                # a lookup into a constant table (an embedding) computes a new activation
            users = consumers.get(output, [])
            if output not in graph_outputs and len(users) == 1:
                user = users[0]
                if _fuses(rules, node, user) and not kept_float(user):
                    placement.fused[output] = user.name or user.output[0]
                    continue
                if (
                    rules.fused_pairs is None
                    and node.op_type == "Relu"
                    and user.op_type == "Min"
                    and all(i in initializers for i in user.input if i != output)
                ):
                    # Relu + per-channel Min is an exact ReLU6 after equalization: one activation.
                    placement.fused[output] = user.name or user.output[0]
                    continue
                if (
                    user.op_type == "Add"
                    and node.op_type in BIAS_FUSING_PRODUCERS
                    and any(i in initializers for i in user.input if i != output)
                    and not kept_float(user)
                ):
                    placement.fused[output] = user.name or user.output[0]
                    continue
            placement.activations.append(output)
            quantized.add(output)
            scaling = _scaling(node, initializers) if rules.scalings_on_grid else None
            if scaling is not None and scaling[0] in quantized and output not in graph_outputs:
                placement.scaled[output] = scaling
    float_dynamic = {
        name
        for name in [*(v.name for v in graph.input), *(o for n in graph.node for o in n.output)]
        if is_float_dynamic(name)
    }
    _drop_grids_between_float(model, placement, float_dynamic, kept_float)
    _target_groups(model, placement, rules, kept_float)
    return placement


def _drop_grids_between_float(
    model: onnx.ModelProto,
    placement: Placement,
    float_dynamic: set[str],
    kept_float,
) -> None:
    """No quantizers on a region of tensors that borders float computation and holds no
    weighted op.

    A recurrent state passed from the graph's input through an LSTM to its output is computed
    in float at both ends: grids there give the runtime no integer kernel, only rounding, which
    a stream feeds back chunk after chunk. Regions are the quantized tensors joined by the
    quantized nodes between them; one with a quantized Conv/Gemm/MatMul keeps its grids, as
    does one bordering no float tensor (a model of element-wise ops only). A float node's
    subgraphs count as reading the outer names they use.
    """
    graph = model.graph
    universe = [*placement.activations, *placement.shared, *placement.fused]
    parent = {name: name for name in universe}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for output, source in placement.shared.items():
        if source in parent:
            parent[root(output)] = root(source)
    stays_float = float_dynamic - set(universe)
    weighted: set[str] = set()
    touches_float: set[str] = set()
    for node in graph.node:
        names = [*node.input, *node.output]
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                names.extend(used_names(sub))
        members = [name for name in names if name in parent]
        if not members:
            continue
        if kept_float(node) or any(name in stays_float for name in names):
            touches_float.update(members)
        if kept_float(node):
            continue
        for name in members[1:]:
            parent[root(name)] = root(members[0])
        if node.op_type in WEIGHTED_OPS and any(i in placement.weights for i in node.input):
            weighted.add(members[0])
    weighted_roots = {root(name) for name in weighted}
    float_roots = {root(name) for name in touches_float}
    idle = {name for name in universe if root(name) in float_roots - weighted_roots}
    if not idle:
        return
    for name in idle:
        placement.shared.pop(name, None)
        placement.fused.pop(name, None)
        placement.scaled.pop(name, None)
        if name in placement.activations:
            placement.skipped[name] = (
                "between float nodes, with no weighted op: a grid would only add rounding"
            )
    placement.activations = [name for name in placement.activations if name not in idle]


SCALING_OPS = ("Div", "Mul")


def _scaling(
    node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]
) -> tuple[str, float] | None:
    """(the dynamic input, the factor) of a Div or Mul by a positive finite constant scalar."""
    if node.op_type not in SCALING_OPS or len(node.input) != 2:
        return None
    positions = (1,) if node.op_type == "Div" else (0, 1)
    for position in positions:
        constant = initializers.get(node.input[position])
        other = node.input[1 - position]
        if constant is None or other in initializers or constant.data_type not in FLOAT_TYPES:
            continue
        values = numpy_helper.to_array(constant).astype(np.float64).reshape(-1)
        if values.size != 1 or not np.isfinite(values[0]) or values[0] <= 0.0:
            continue
        factor = 1.0 / values[0] if node.op_type == "Div" else values[0]
        if np.isfinite(factor) and factor > 0.0:
            return other, float(factor)
    return None


def _fuses(rules: TargetRules, producer: onnx.NodeProto, user: onnx.NodeProto) -> bool:
    """Whether ``producer`` and its only consumer ``user`` run as one kernel on the target."""
    if rules.fused_pairs is None:
        return user.op_type in FUSED_ACTIVATIONS
    return (producer.op_type, user.op_type) in rules.fused_pairs


def _target_groups(model: onnx.ModelProto, placement: Placement, rules: TargetRules, kept_float):
    """The target's tied grids (a Concat's inputs and output) and fixed output ranges."""
    fixed = {op: (low, high) for op, low, high in rules.fixed_ranges}
    for node in model.graph.node:
        if kept_float(node) or not node.output:
            continue
        if node.op_type in rules.tied_ops:
            placement.tied.append([name for name in [*node.input, node.output[0]] if name])
        if node.op_type in fixed:
            placement.fixed_ranges[node.output[0]] = fixed[node.op_type]


def _place_on_consumer_inputs(
    model: onnx.ModelProto,
    placement: Placement,
    consumers: dict[str, list[onnx.NodeProto]],
    kept_float,
    is_float_dynamic,
) -> None:
    """TensorRT's layout: a quantizer on each activation input of a weighted op (both inputs of
    a MatMul) and on the residual input(s) of an Add; none on a weighted op's output, which the
    runtime fuses with its activation or with the Add it feeds."""
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    producers = {out: node for node in graph.node for out in node.output if out}

    def fuses_into_add(name: str) -> bool:
        producer = producers.get(name)
        return (
            producer is not None
            and producer.op_type in WEIGHTED_OPS
            and not kept_float(producer)
            and len(consumers.get(name, [])) == 1
            and name not in graph_outputs
        )

    wanted: set[str] = set()
    for node in graph.node:
        if kept_float(node):
            continue
        if node.op_type in WEIGHTED_OPS:
            inputs = node.input[:2] if node.op_type == "MatMul" else node.input[:1]
            wanted.update(name for name in inputs if is_float_dynamic(name))
        elif node.op_type == "Add":
            dynamic = [name for name in node.input if is_float_dynamic(name)]
            if len(dynamic) < 2:
                continue
            fused = next((name for name in dynamic if fuses_into_add(name)), None)
            wanted.update(name for name in dynamic if name != fused)
        for output in node.output:
            users = consumers.get(output, [])
            if node.op_type in WEIGHTED_OPS and len(users) == 1 and output not in graph_outputs:
                placement.fused[output] = users[0].name or users[0].output[0]

    order = [value.name for value in graph.input] + [
        out for node in graph.node for out in node.output if out
    ]
    placement.activations = [name for name in order if name in wanted]
    for name in placement.activations:
        placement.fused.pop(name, None)


def float_reason(
    node: onnx.NodeProto, keep_float_nodes: frozenset[str], keep_float_ops: frozenset[str]
) -> str:
    """Why ``node`` computes in float ('' when it is quantized)."""
    if node.op_type in keep_float_ops or (node.name or "") in keep_float_nodes:
        return "kept in float"
    if node.domain not in DEFAULT_DOMAINS:
        return f"of domain '{node.domain}' runs in float"
    if node.op_type in FLOAT_ONLY_OPS:
        return "runs in float (no integer kernel)"
    if not has_torch_kernel(node):
        return "runs in float: no torch kernel, run by onnx.reference"
    return ""


def _identity_cast(node: onnx.NodeProto, types: dict[str, int]) -> bool:
    """A Cast to the float type its input has: the same values, so the input's grid (Silero
    VAD's STFT casts each Slice to float32: on a grid of its own, the Slice requantized, and
    ONNX Runtime ran it and both Slices in float between a DequantizeLinear and a Quantize)."""
    if node.op_type != "Cast" or not node.input:
        return False
    to = parse_attributes(node).get("to")
    source = types.get(node.input[0])
    return to is not None and int(to) == source and source in FLOAT_TYPES


def _changes_values(node: onnx.NodeProto) -> bool:
    """Resize/Upsample that interpolate, and Pad with a fill value, leave the input's grid."""
    if node.op_type in ("Resize", "Upsample"):
        return parse_attributes(node).get("mode", "nearest") != "nearest"
    if node.op_type == "Pad":
        return len(node.input) > 2 and bool(node.input[2])
    return False
