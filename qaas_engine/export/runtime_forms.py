"""Float forms that ONNX Runtime runs faster than the ones the model wrote, with the same values.

Used by the QDQ export for ``onnxruntime-cpu`` (``TargetRules.runtime_forms``): the simulation
computes the model's own ops, and each form here gives the same float32 values bit for bit, so
simulation and runtime still agree exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

# a 4-D tensor with one value per channel: ONNX Runtime's int8 graphs run channels-last, and a
# Reshape of such a tensor (a classifier head) reads it in either order alike
GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool"})
CHANNELS_FIRST_TO_LAST = (0, 2, 3, 1)
Dim = int | str  # a size, or a symbolic one's name ("" where nothing is known)
TILED_SLOPE = "_tiled_slope"  # suffix of a PRelu's tiled slope (see tiled_slope)
CHANNELS_LAST = "_channels_last"  # suffix of a pooled tensor read channels-last
TILED_CHANNELS = "_tiled_channels"  # infix of a one-channel input tiled for a depthwise conv


def tiled_slope(slope: np.ndarray, shape: list[Dim] | None) -> np.ndarray | None:
    """A PRelu's per-channel ``slope`` ``[C, 1, ..., 1]`` tiled along its input's last axis,
    ``[C, 1, ..., W]`` (``shape``: the input's): the same values under broadcasting. None where
    the slope is not per channel or the axis is not known.

    ONNX Runtime has no integer PReLU: between the int8 kernels it runs channels-last, and its
    PRelu kernel then walks a ``[C]`` slope C values a span (MTCNN ONet's five PReLUs cost
    about as much as its four QLinearConvs); tiled, the spans are W*C long. Measured on MTCNN
    ONet: 1.08x faster than the untiled artifact at batch 1 and 32. A Max(x, x * slope) form,
    exact for slopes <= 1, was 1.5x faster at batch 1 but 2-7% slower at batch 32 (the Mul,
    the Max and a second DequantizeLinear each pass over the tensor), so it is not used."""
    width = shape[-1] if shape else ""
    if slope.size <= 1 or slope.shape[-1] != 1 or not isinstance(width, int) or width <= 1:
        return None
    if slope.ndim > len(shape or ()) or np.count_nonzero(np.asarray(slope.shape) > 1) != 1:
        return None
    return np.ascontiguousarray(np.broadcast_to(slope, (*slope.shape[:-1], width)))


PRELU_NEGATIVE = "_prelu_negative"  # suffix of the x * slope (or min(x, 0) * slope) a PRelu became
PRELU_ZERO = "_prelu_zero"


def prelu_as_max(node: onnx.NodeProto, slope: np.ndarray, zero: str) -> list[onnx.NodeProto]:
    """``node`` (a PRelu, ``slope`` its constant slope, ``zero`` a float 0 constant's name) as
    ops ONNX Runtime vectorizes: ``Max(x, x * slope)`` where every slope is at most 1, else
    ``Relu(x) + Min(x, 0) * slope``. Both give PRelu's values bit for bit: each output is
    ``x`` or the same rounded product ``x * slope`` (with ``s <= 1`` the larger of the two is
    the one PRelu picks, whatever the sign of ``x``), or that product plus an exact zero.
    ``zero`` is read by the second form only.

    ORT's PRelu kernel walks its broadcast element by element: MTCNN ONet's five PReLUs took
    longer than its four QLinearConvs. Measured on its W8A8 artifact (one thread, Intel Xeon
    with avx512_vnni and AMX, medians of alternating runs): batch 1 0.95x -> 1.73x float's
    speed, batch 32 1.05x -> 1.41x (the Relu form: 1.63x and 1.33x)."""
    x, slope_name = node.input[0], node.input[1]
    out, name = node.output[0], node.name or node.output[0]
    negative = f"{out}{PRELU_NEGATIVE}"
    if np.all(slope <= 1):
        return [
            helper.make_node("Mul", [x, slope_name], [negative], name=f"{name}/times_slope"),
            helper.make_node("Max", [x, negative], [out], name=name),
        ]
    return [
        helper.make_node("Relu", [x], [f"{out}_prelu_positive"], name=f"{name}/positive"),
        helper.make_node("Min", [x, zero], [f"{out}_prelu_below"], name=f"{name}/below_zero"),
        helper.make_node(
            "Mul", [f"{out}_prelu_below", slope_name], [negative], name=f"{name}/times_slope"
        ),
        helper.make_node("Add", [f"{out}_prelu_positive", negative], [out], name=name),
    ]


def static_shapes(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """Tensor name -> dims as the import's shape inference annotated them."""
    graph = model.graph
    return {
        value.name: [
            dim.dim_value if dim.HasField("dim_value") else dim.dim_param
            for dim in value.type.tensor_type.shape.dim
        ]
        for value in [*graph.value_info, *graph.input, *graph.output]
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape")
    }


def pooled_outputs(model: onnx.ModelProto) -> set[str]:
    """Outputs of the global pools: ``[N, C, 1, 1]`` whatever the input's size."""
    return {
        node.output[0] for node in model.graph.node if node.op_type in GLOBAL_POOLS and node.output
    }


def channels_last_read(
    node: onnx.NodeProto,
    pooled: set[str],
    shapes: dict[str, list[Dim]],
    target_shape: np.ndarray | None,
) -> str | None:
    """How ``node`` may read its ``[N, C, 1, 1]`` input as ``[N, 1, 1, C]``, the same values in
    the same order: ``"as is"`` (a Flatten at axis 1; a Reshape to a constant ``target_shape``
    with no 0, which would copy an input axis), ``"flattened"`` (a Reshape to a shape of at
    most two numbers, computed at run time as paddle2onnx writes it: it reads the ``[N, C]``
    Flatten of it, where a 0 copies N or C alike), None where neither holds. ``shapes`` come
    from the import's shape inference (:func:`static_shapes`).

    ORT lays an int8 graph out channels-last and moves its layout Transposes down the graph only
    towards another Transpose they cancel with. A head of pool -> Reshape -> Gemm has none, so
    the last convolution's output went back to NCHW, and the ops after it (the direction
    classifier's hardswish and uint8 MaxPool) ran there; a Transpose to channels-last before the
    Reshape gives ORT one to cancel, and the tail stays NHWC."""
    source = node.input[0] if node.input else ""
    shape = shapes.get(source)
    if source not in pooled and not (shape is not None and len(shape) == 4 and shape[2:] == [1, 1]):
        return None
    if node.op_type == "Flatten":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        return "as is" if axis == 1 else None
    if node.op_type != "Reshape" or len(node.input) < 2:
        return None
    if target_shape is not None and not np.any(target_shape == 0):
        return "as is"
    known = shapes.get(node.input[1])
    length: Dim | None = (
        target_shape.size
        if target_shape is not None
        else (known[0] if known is not None and len(known) == 1 else None)
    )
    return "flattened" if isinstance(length, int) and 1 <= length <= 2 else None


def channels_last_transpose(source: str, flattened: bool) -> list[onnx.NodeProto]:
    """``source`` ``[N, C, 1, 1]`` as ``[N, 1, 1, C]``, then as ``[N, C]`` where ``flattened``
    (see :func:`channels_last_read`); the last node's output is what the reader reads."""
    output = f"{source}{CHANNELS_LAST}"
    nodes = [
        helper.make_node(
            "Transpose",
            [source],
            [output],
            name=f"{output}_Transpose",
            perm=list(CHANNELS_FIRST_TO_LAST),
        )
    ]
    if flattened:
        nodes.append(
            helper.make_node(
                "Flatten", [output], [f"{output}_flat"], name=f"{output}_Flatten", axis=1
            )
        )
    return nodes


def applied_forms(qdq: onnx.ModelProto) -> dict[str, list[str]]:
    """What the export wrote in these forms, by the names it gave them: the PRelus whose slope
    it tiled, the tensors it read channels-last, the Gemms whose weight it wrote float
    (:func:`float_weight_only`) and the one-channel convs it runs depthwise
    (:mod:`qaas_engine.export.single_channel_conv`), for the report."""
    initializers = {init.name for init in qdq.graph.initializer}
    tiled = [
        node.name or node.output[0]
        for node in qdq.graph.node
        if node.op_type in ("PRelu", "Mul")
        and len(node.input) > 1
        and node.input[1].endswith(TILED_SLOPE)
        and node.input[1] in initializers
    ]
    tiled = [name.removesuffix("/times_slope") for name in tiled]
    negatives = {
        node.output[0] for node in qdq.graph.node if node.output[0].endswith(PRELU_NEGATIVE)
    }
    split = [
        node.name or node.output[0]
        for node in qdq.graph.node
        if node.op_type in ("Max", "Add") and any(name in negatives for name in node.input)
    ]
    channels_last = [
        node.input[0]
        for node in qdq.graph.node
        if node.op_type == "Transpose" and node.output[0] == f"{node.input[0]}{CHANNELS_LAST}"
    ]
    float_weights = [
        node
        for node in qdq.graph.node
        if node.op_type in FLOAT_GROUP_OPS
        and len(node.input) > 1
        and node.input[1].endswith(FLOAT_WEIGHT)
        and node.input[1] in initializers
    ]
    weight_only = [
        node.name or node.output[0]
        for node in float_weights
        if not node.input[1].endswith(UNFUSED + FLOAT_WEIGHT)
    ]
    unfused = [
        node.name or node.output[0]
        for node in float_weights
        if node.input[1].endswith(UNFUSED + FLOAT_WEIGHT)
    ]
    tiles = {node.output[0] for node in qdq.graph.node if node.op_type == "Tile"}
    tiled_reads = {
        node.output[0]
        for node in qdq.graph.node
        if node.op_type == "DequantizeLinear"
        and TILED_CHANNELS in node.input[0]
        and node.input[0] in tiles
    }
    depthwise = [
        node.name or node.output[0]
        for node in qdq.graph.node
        if node.op_type == "Conv" and node.input[0] in tiled_reads
    ]
    return {
        name: found
        for name, found in (
            ("tiled_prelu_slopes", tiled),
            ("prelus_as_max", split),
            ("channels_last_reads", channels_last),
            ("float_weights_of_weight_only_gemms", weight_only),
            ("float_weights_of_unfused_groups", unfused),
            ("single_channel_convs_run_depthwise", depthwise),
        )
        if found
    }


# ops whose weight ONNX Runtime's CPU dequantizes on every run where the activation is float
WEIGHT_ONLY_OPS = frozenset({"Gemm"})
# ops whose weight it dequantizes on every run in a QDQ group it cannot fuse (see float_weight_only)
FLOAT_GROUP_OPS = frozenset({"Gemm", "Conv"})
# activations ORT folds into the Q after a Conv before it fuses the group (Conv -> Relu -> Q)
FOLDED_ACTIVATIONS = frozenset({"Relu", "Clip"})
SIXTEEN_BIT = frozenset({onnx.TensorProto.UINT16, onnx.TensorProto.INT16})
UNFUSED = "_unfused"  # infix of the float weight of a group ORT runs float
FLOAT_WEIGHT = "_float_weight"
FLOAT_BIAS = "_float_bias"  # suffix of a Gemm's bias written as its float values, [1, N]
DATA_MOVEMENT = frozenset(
    {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Gather"}
)  # suffix of a weight written as its dequantized float values


def dequantized_values(
    integers: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int
) -> np.ndarray:
    """What ONNX Runtime's DequantizeLinear computes: ``float(q - z) * s`` in float32, one
    rounding (per-tensor, or per slice along ``axis`` where the scale has one value each).
    Integers of up to 16 bits and their difference are exact in float32, so those are
    centred in float32 in one buffer (three passes, not five: the rules export the captcha
    LSTM's 8.4 M-weight Gemm this way on every measurement); wider ones in int32 first."""
    scale = scale.astype(np.float32)
    exact = integers.dtype.itemsize <= 2  # |q - z| < 2**17: no float32 rounding before scale
    kind = np.float32 if exact else np.int32
    zero = zero_point.astype(kind) if zero_point is not None else np.zeros(scale.shape, kind)
    if scale.ndim == 1 and integers.ndim > 1:
        shape = [1] * integers.ndim
        shape[axis % integers.ndim] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    if not exact:
        return ((integers.astype(np.int32) - zero).astype(np.float32) * scale).astype(np.float32)
    values: np.ndarray = integers.astype(np.float32)
    np.subtract(values, zero, out=values)
    np.multiply(values, scale, out=values)
    return values


def float_weight_only(qdq: onnx.ModelProto) -> list[str]:
    """In place: the int8 weight of a Gemm whose activation input is float (no DequantizeLinear
    writes it), and of a Gemm or Conv in a QDQ group ONNX Runtime cannot fuse into an integer
    kernel (:func:`unfused_group`), is written as its dequantized float32 values; the nodes
    changed, by name.

    ONNX Runtime fuses DequantizeLinear -> Gemm into an integer kernel only with an 8-bit
    activation; with a float one it runs the float Gemm and, since its optimizer never folds a
    DequantizeLinear of a constant (that would undo the QDQ format), dequantizes the whole
    weight on every run, and the Gemm cannot pre-pack it. The captcha LSTM's 1024 x 8210 output
    Gemm (its input is the float LSTM's output): the DequantizeLinear took 4.3 ms of 17.7 and the
    unpacked Gemm 6.8 ms against float's 4.5, the artifact 0.92x float at batch 1. The values
    are the ones the DequantizeLinear computed (:func:`dequantized_values`), and the simulation
    runs this graph, so simulation and runtime still agree exactly; the file holds that weight
    at 32 bits.

    Where a DequantizeLinear (a 16-bit one too) writes the activation, ORT's optimizer
    quantizes a float weight of a Gemm/Conv to int8 itself, on a grid of its own (its
    WeightBiasQuantization: the outputs changed against the unoptimized graph, measured on a
    16-bit group), unless the op's bias is not an initializer: so there only a group with a
    dequantized bias, and one ORT runs float anyway. Gemm and Conv only: a MatMul with a
    constant float weight may be fused with a following Add into a Gemm when ORT optimizes, and
    not in the simulation's unoptimized run."""
    graph = qdq.graph
    initializers = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, index))
    outputs = {value.name for value in graph.output}
    nested = subgraph_reads(graph)

    def dequantized_by(name: str) -> onnx.NodeProto | None:
        """The DequantizeLinear that writes ``name``, or one that ORT may move past the
        data-movement ops between (its QDQ propagation)."""
        node = producer.get(name)
        while node is not None and node.op_type in DATA_MOVEMENT and node.input:
            node = producer.get(node.input[0])
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def sixteen_bit(node: onnx.NodeProto) -> bool:
        zero = initializers.get(node.input[2]) if len(node.input) > 2 else None
        return zero is not None and zero.data_type in SIXTEEN_BIT

    def weight_only(user: onnx.NodeProto) -> bool:
        return user.op_type in WEIGHT_ONLY_OPS and dequantized_by(user.input[0]) is None

    def unfused(user: onnx.NodeProto) -> bool:
        source = dequantized_by(user.input[0])
        return (
            user.op_type in FLOAT_GROUP_OPS
            and source is not None
            and unfused_group(user, source, sixteen_bit, readers, nested, outputs)
            and len(user.input) > 2
            and user.input[2] in producer  # a bias no optimizer quantizes (see above)
        )

    changed: list[str] = []
    removed: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.output[0] in outputs:
            continue
        if not all(name in initializers for name in node.input if name):
            continue
        if any(a.name == "block_size" and a.i for a in node.attribute):
            continue
        if node.output[0] in nested:
            continue
        users = readers.get(node.output[0], [])
        if not users or any(index != 1 for _, index in users):
            continue
        if all(weight_only(user) for user, _ in users):
            name = f"{node.input[0]}{FLOAT_WEIGHT}"
        elif all(unfused(user) for user, _ in users):
            name = f"{node.input[0]}{UNFUSED}{FLOAT_WEIGHT}"
        else:
            continue
        arrays = [numpy_helper.to_array(initializers[name]) for name in node.input if name]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        zero = arrays[2] if len(arrays) > 2 else None
        values = dequantized_values(arrays[0], arrays[1], zero, axis)
        _add_float_initializer(graph, name, values)
        for user, index in users:
            user.input[index] = name
            changed.append(user.name or user.output[0])
            if name.endswith(UNFUSED + FLOAT_WEIGHT) and user.op_type == "Gemm":
                removed += _float_row_bias(graph, user, producer, initializers, readers, nested)
        removed.append(node)
    for node in removed:
        graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    dropped = {name for node in removed for name in node.input} - read
    for init in [init for init in graph.initializer if init.name in dropped]:
        graph.initializer.remove(init)
    return changed


def _float_row_bias(
    graph: onnx.GraphProto,
    gemm: onnx.NodeProto,
    producer: Mapping[str, onnx.NodeProto],
    initializers: Mapping[str, onnx.TensorProto],
    readers: Mapping[str, list[tuple[onnx.NodeProto, int]]],
    nested: set[str],
) -> list[onnx.NodeProto]:
    """In place: the dequantized bias of a Gemm that now runs float on a float weight written
    as its float32 values, shaped ``[1, N]`` (the same broadcast over the rows); the
    DequantizeLinear it replaces, to remove. A 1-D float bias would have ORT's optimizer
    quantize the weight and bias itself (its WeightBiasQuantization takes 1-D biases only);
    as a DequantizeLinear it ran on every run (four of them, 3 us each, in MTCNN ONet's head)."""
    bias = gemm.input[2]
    node = producer.get(bias)
    if node is None or node.op_type != "DequantizeLinear" or bias in nested:
        return []
    if len(readers.get(bias, [])) != 1 or not all(n in initializers for n in node.input if n):
        return []
    arrays = [numpy_helper.to_array(initializers[n]) for n in node.input if n]
    if arrays[0].ndim != 1:
        return []
    zero = arrays[2] if len(arrays) > 2 else None
    values = dequantized_values(arrays[0], arrays[1], zero, 0).reshape(1, -1)
    name = f"{node.input[0]}{UNFUSED}{FLOAT_BIAS}"
    _add_float_initializer(graph, name, values)
    gemm.input[2] = name
    return [node]


def subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names the nodes of ``graph``'s subgraphs (an If's branches, a Loop's body) read, at any
    depth: an outer tensor read there is read in float, whatever the outer graph quantizes."""
    found: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            bodies = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else []
            bodies += list(attribute.graphs)
            for body in bodies:
                for inner in body.node:
                    found.update(inner.input)
                found |= subgraph_reads(body)
    return found


def unfused_group(
    node: onnx.NodeProto,
    source: onnx.NodeProto,
    sixteen_bit: Callable[[onnx.NodeProto], bool],
    readers: Mapping[str, list[tuple[onnx.NodeProto, int]]],
    nested: set[str],
    outputs: set[str],
) -> bool:
    """Whether ONNX Runtime's CPU runs the Gemm/Conv ``node``, whose activation the
    DequantizeLinear ``source`` writes, as a float op: the activation is on a 16-bit grid
    (no 16-bit integer kernel), or a 16-bit QuantizeLinear reads its output; for a Conv also
    where its output (after a Relu or Clip ORT folds into the Q) is a graph output or is read
    in a subgraph, in float (a QLinearConv writes integers only). Only such evidence: a Conv
    whose output goes elsewhere than one QuantizeLinear may still be fused by ORT. MTCNN
    ONet's 16-bit dense5 Gemm: its weight's DequantizeLinear took 0.038 ms of the artifact's
    0.54 at batch 1; Silero VAD's last encoder Conv, whose ReLU output an If branch reads in
    float."""
    if sixteen_bit(source):
        return True
    out = node.output[0]
    users = [user for user, _ in readers.get(out, [])]
    if any(u.op_type == "QuantizeLinear" and sixteen_bit(u) for u in users):
        return True
    if node.op_type != "Conv":
        return False
    if len(users) == 1 and users[0].op_type in FOLDED_ACTIVATIONS and out not in nested:
        out = users[0].output[0]
        users = [user for user, _ in readers.get(out, [])]
    return (
        out in nested
        or out in outputs
        or any(u.op_type == "QuantizeLinear" and sixteen_bit(u) for u in users)
    )


def _add_float_initializer(graph: onnx.GraphProto, name: str, values: np.ndarray) -> None:
    """``values`` as a float32 initializer built in place: ``initializer.append`` of a
    ``numpy_helper.from_array`` tensor copies its bytes twice more (0.5 s a job for the captcha
    LSTM's 33 MB Gemm weight, which every measurement of the rules exports)."""
    tensor = graph.initializer.add()
    tensor.name = name
    tensor.data_type = onnx.TensorProto.FLOAT
    tensor.dims.extend(values.shape)
    tensor.raw_data = np.ascontiguousarray(values, dtype="<f4").tobytes()
