"""The simulated model written as a QDQ ONNX graph that ONNX Runtime runs.

Weights are stored as integers with a DequantizeLinear; each quantized activation gets a
QuantizeLinear/DequantizeLinear pair right after its producer; Conv/Gemm biases become int32 at
scale ``s_input * s_weight``. The result computes, in float between Q and DQ, exactly what the
simulation computes, and lets the runtime fuse the groups into integer kernels.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qaas_engine.control_flow import used_names
from qaas_engine.export.runtime_forms import (
    PRELU_ZERO,
    TILED_SLOPE,
    channels_last_read,
    channels_last_transpose,
    float_weight_only,
    pooled_outputs,
    prelu_as_max,
    static_shapes,
    tiled_slope,
)
from qaas_engine.export.single_channel_conv import single_channel_depthwise
from qaas_engine.quant.encoding import Encoding
from qaas_engine.quant.sim import QuantSim
from qaas_engine.targets import target_rules
from qaas_engine.tensors import to_numpy
from qaas_engine.weights_apart import without_initializers

MS_DOMAIN = "com.microsoft"  # ONNX Runtime's Q/DQ with 16-bit integers at any opset


def unsigned_container(encoding: Encoding) -> Encoding:
    """The same grid stored as uint8 with the zero point moved up by 2^(bits-1).

    ONNX Runtime's u8s8 integer kernels on AVX2 CPUs without VNNI sum pairs of u8*s8 products in
    int16 and saturate (wrong results, not just slow ones); u8u8 kernels do not. Storing a signed
    8-bit grid as unsigned changes no value the graph computes, so export does it by default.
    """
    scheme = encoding.scheme
    if not scheme.signed or scheme.bits > 8:
        return encoding
    shift = 2 ** (scheme.bits - 1)
    unsigned = replace(scheme, signed=False)
    return Encoding(unsigned, encoding.scale, encoding.zero_point + shift)


def _container(encoding: Encoding) -> tuple[np.dtype, int, bool]:
    """numpy dtype, ONNX dtype, and whether the standard-domain Q/DQ can hold it."""
    bits, signed = encoding.scheme.bits, encoding.scheme.signed
    if bits <= 8:
        return (
            (np.dtype(np.int8), TensorProto.INT8, True)
            if signed
            else (np.dtype(np.uint8), TensorProto.UINT8, True)
        )
    if bits <= 16:
        return (
            (np.dtype(np.int16), TensorProto.INT16, False)
            if signed
            else (np.dtype(np.uint16), TensorProto.UINT16, False)
        )
    return np.dtype(np.int32), TensorProto.INT32, True


# grid integers kept between exports of one simulation: a small model's all, a large one's
# first weights only (its exports are few, and memory follows the model)
KNOWN_INTEGER_BYTES = 64 * 2**20


class QdqBuilder:
    """Collects the Q/DQ nodes' constants while nodes are made; the caller adds both."""

    def __init__(
        self, model: onnx.ModelProto, known: dict[str, tuple[bytes, np.ndarray]] | None = None
    ) -> None:
        self.model = model
        self.initializers: list[onnx.TensorProto] = []
        self.uses_ms_domain = False
        # weight name -> (digest of its values and grid, its integers): a weight exported again
        # on the same grid is not divided and rounded again (``QuantSim.weight_integers``)
        self.known = known if known is not None else {}

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def scale_zero_point(self, prefix: str, encoding: Encoding) -> tuple[str, str, dict]:
        dtype, _, _ = _container(encoding)
        per_channel = encoding.scheme.per_channel and encoding.scale.size > 1
        scale = encoding.scale.astype(np.float32)
        zero_point = encoding.zero_point.astype(dtype)
        if not per_channel:
            scale, zero_point = scale.reshape(()), zero_point.reshape(())
        attrs = {"axis": encoding.scheme.axis} if per_channel else {}
        return (
            self.constant(f"{prefix}_scale", scale),
            self.constant(f"{prefix}_zero_point", zero_point),
            attrs,
        )

    def dequantized_weight(
        self, name: str, weight: np.ndarray, output: str, encoding: Encoding
    ) -> onnx.NodeProto:
        """The weight stored as integers under ``name``, and the DequantizeLinear that gives
        ``output``: the grid values exactly as the simulation computes them."""
        dtype, _, _ = _container(encoding)
        values = np.ascontiguousarray(weight, dtype=np.float32)
        digest = _grid_digest(values, encoding, dtype)
        known = self.known.get(name)
        if known is not None and known[0] == digest:
            integers = known[1]
        else:
            integers = encoding.quantize_array(values).astype(dtype)
            held = sum(kept.nbytes for _, kept in self.known.values())
            if held + integers.nbytes <= KNOWN_INTEGER_BYTES:
                self.known[name] = (digest, integers)
        self.constant(name, integers)
        return self.dequantize(name, output, encoding)

    def dequantize(self, source: str, output: str, encoding: Encoding) -> onnx.NodeProto:
        scale, zero_point, attrs = self.scale_zero_point(source, encoding)
        return self._qdq_node(
            "DequantizeLinear", [source, scale, zero_point], output, encoding, attrs
        )

    def quantize_pair(self, tensor: str, output: str, encoding: Encoding) -> list[onnx.NodeProto]:
        nodes = []
        source = tensor
        if encoding.scheme.bits < 8:
            # An 8-bit container saturates at its own limits; the narrower grid needs a Clip.
            low = self.constant(f"{tensor}_clip_low", np.asarray(encoding.low[0], np.float32))
            high = self.constant(f"{tensor}_clip_high", np.asarray(encoding.high[0], np.float32))
            clipped = f"{tensor}_clipped"
            nodes.append(
                helper.make_node("Clip", [tensor, low, high], [clipped], name=f"{tensor}_Clip")
            )
            source = clipped
        scale, zero_point, attrs = self.scale_zero_point(tensor, encoding)
        quantized = f"{tensor}_quantized"
        nodes.append(
            self._qdq_node(
                "QuantizeLinear", [source, scale, zero_point], quantized, encoding, attrs
            )
        )
        nodes.append(
            self._qdq_node(
                "DequantizeLinear", [quantized, scale, zero_point], output, encoding, attrs
            )
        )
        return nodes

    def _qdq_node(self, op, inputs, output, encoding, attrs) -> onnx.NodeProto:
        _, _, standard = _container(encoding)
        domain = "" if standard else MS_DOMAIN
        self.uses_ms_domain |= not standard
        return helper.make_node(op, inputs, [output], name=f"{output}_{op}", domain=domain, **attrs)


# ops ONNX Runtime fuses into QLinearAdd/QLinearMul only when every input comes from a
# DequantizeLinear: a float scalar operand (x * scale + bias of an affine layer, hardswish's
# x + 3) leaves the op float between a DQ and a Q
SCALAR_OPERAND_OPS = frozenset({"Add", "Mul"})


def exact_scalar(value: float, signed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(integer, scale, zero point) whose DequantizeLinear gives ``value`` exactly: one step of
    a grid whose scale is the value itself (the rounding-free grid for a single number)."""
    if value == 0.0:
        return np.asarray(0), np.asarray(1.0, np.float32), np.asarray(0)
    scale = np.asarray(abs(value), np.float32)
    if value > 0:
        return np.asarray(1), scale, np.asarray(0)
    return (
        (np.asarray(-1), scale, np.asarray(0)) if signed else (np.asarray(0), scale, np.asarray(1))
    )


def _scalar_operand(
    builder: QdqBuilder, name: str, value: np.ndarray, signed: bool, cache: dict[str, str]
) -> tuple[str, onnx.NodeProto | None]:
    """The dequantized name of a one-element float constant (its node the first time)."""
    if name in cache:
        return cache[name], None
    dtype = np.int8 if signed else np.uint8
    integer, scale, zero_point = exact_scalar(float(value.reshape(-1)[0]), signed)
    stored = builder.constant(f"{name}_integer", integer.astype(dtype).reshape(value.shape))
    scale_name = builder.constant(f"{name}_integer_scale", scale)
    zero_name = builder.constant(f"{name}_integer_zero_point", zero_point.astype(dtype))
    cache[name] = f"{name}_integer_dequantized"
    node = helper.make_node(
        "DequantizeLinear", [stored, scale_name, zero_name], [cache[name]],
        name=f"{cache[name]}_DequantizeLinear",
    )  # fmt: skip
    return cache[name], node


def _grid_digest(values: np.ndarray, encoding: Encoding, dtype: Any) -> bytes:
    """The weight's values, shape, grid and container, by value."""
    digest = hashlib.sha256()
    digest.update(repr((values.shape, encoding.scheme, np.dtype(dtype).str)).encode())
    for array in (encoding.scale, encoding.zero_point):
        digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(str(np.asarray(array).dtype).encode())
    digest.update(values.data)
    return digest.digest()


def _integers(pair: list[onnx.NodeProto]) -> str:
    """The QuantizeLinear's output in a ``quantize_pair``: the tensor's integers."""
    return next(node.output[0] for node in pair if node.op_type == "QuantizeLinear")


def _same_grid(a: Encoding, b: Encoding) -> bool:
    return (
        a.scheme == b.scheme
        and np.array_equal(np.asarray(a.scale, np.float32), np.asarray(b.scale, np.float32))
        and np.array_equal(a.zero_point, b.zero_point)
    )


def _scaled_read(
    builder: QdqBuilder,
    node: onnx.NodeProto,
    sim: QuantSim,
    activations: dict[str, Encoding],
    integers: dict[str, str],
) -> onnx.NodeProto | None:
    """For a Div/Mul by a constant whose output grid is its input's scaled
    (``Placement.scaled``), the DequantizeLinear that reads the input's integers on the output's
    grid, in place of the op and its QuantizeLinear: quantizing ``x * k`` on that grid gives
    back ``x``'s integers, so ONNX Runtime computes the same values with no op at all. None where
    the grids differ (a rule moved one of them): the op is exported as usual."""
    if not node.output or node.output[0] not in sim.placement.scaled:
        return None
    output = node.output[0]
    source, factor = sim.placement.scaled[output]
    if source not in integers or output not in activations or source not in activations:
        return None
    encoding = activations[output]
    if not _same_grid(encoding, activations[source].scaled(factor)):
        return None
    scale, zero_point, attrs = builder.scale_zero_point(f"{output}_scaled", encoding)
    return builder._qdq_node(
        "DequantizeLinear",
        [integers[source], scale, zero_point],
        f"{output}_dequantized",
        encoding,
        attrs,
    )


def _eight_bit(encoding: Encoding | None) -> bool:
    """An activation stored in 8 bits: its producer and consumers are ORT integer kernels."""
    return encoding is not None and encoding.scheme.bits <= 8


def _without_unread_dequantize(nodes: list[onnx.NodeProto], outputs: set[str]) -> list:
    """``nodes`` less the DequantizeLinears whose output nothing reads (a tensor read only by
    ops a scaled grid replaced): ONNX Runtime would still run them."""
    read = {name for node in nodes for name in node.input} | outputs
    for node in nodes:  # names a subgraph reads from the outer graph
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                read.update(used_names(sub))
    return [
        node
        for node in nodes
        if node.op_type != "DequantizeLinear" or any(o in read for o in node.output)
    ]


def _saturates(sim: QuantSim, weight: str, bits: int) -> bool:
    """An int8 weight the kernels would sum wrongly (``avx2-s7``): stored as uint8 instead."""
    site = sim.placement.weights[weight]
    return sim.kernels.saturates(bits, site.op_type, depthwise=site.depthwise)


def export_for_target(model: onnx.ModelProto, sim: QuantSim) -> onnx.ModelProto:
    """The graph the rules measure: exported for the sim's target in the weight container and
    forms the pipeline writes for it, so a measurement's figure is the artifact's."""
    return export_qdq(
        model,
        sim,
        unsigned_weights=not sim.kernels.signed_weights,
        quantize_scalar_operands=target_rules(sim.spec.target).executed_here,
    )


def export_qdq(
    model: onnx.ModelProto,
    sim: QuantSim,
    *,
    unsigned_weights: bool = True,
    unsigned_activations: bool = True,
    quantize_scalar_operands: bool = False,
    runtime_forms: bool | None = None,
) -> onnx.ModelProto:
    """A new QDQ model from the float ``model`` (same graph) and the sim's weights/encodings.

    Activations on signed 8-bit grids are stored as uint8 (see :func:`unsigned_container`): u8
    activations are what ONNX Runtime's integer kernels take. ``unsigned_weights`` does the same
    for weights (u8u8 kernels, exact on any CPU); False keeps them int8 (u8s8 kernels: the fast
    path where the CPU has an int8 dot product, see :mod:`qaas_engine.targets`).
    ``unsigned_activations`` False keeps signed activation grids int8 (TensorRT takes INT8 only).
    ``quantize_scalar_operands``: a one-element float constant feeding an Add/Mul whose other
    inputs and output (or the activation fused after it) are quantized is stored as an integer
    on a grid that holds it exactly (:func:`exact_scalar`), so ONNX Runtime fuses the op (same
    values, fewer nodes).
    A Div/Mul by a constant whose output is on its input's grid scaled (``Placement.scaled``,
    ``onnxruntime-cpu``) is exported as a DequantizeLinear of the input's integers
    (:func:`_scaled_read`).
    ``runtime_forms``: forms that compute the same values faster in ONNX Runtime
    (:mod:`qaas_engine.export.runtime_forms`): the per-channel slope of a PRelu on an 8-bit
    activation tiled along the last axis; a Reshape/Flatten of a pooled ``[N, C, 1, 1]`` tensor
    reads it channels-last; the int8 weight of a Gemm whose activation is float is written as
    its dequantized float values; an 8-bit conv over one input channel runs as a depthwise conv
    over its tiled input. None: as ``quantize_scalar_operands`` (both are
    the forms of a target run here), so every caller exporting for ``onnxruntime-cpu`` (the
    rules' and auto's measurements) writes the graph the pipeline writes, and the evaluation
    can reuse their runs of it (``simulated_runs.graph_digest``).
    """
    if runtime_forms is None:
        runtime_forms = quantize_scalar_operands
    out = without_initializers(model)  # each initializer is written below, once
    graph = out.graph
    builder = QdqBuilder(out, sim.weight_integers)
    weights = sim.executor.weights
    graph_outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}  # consumer input -> dequantized tensor
    prefix_nodes: list[onnx.NodeProto] = []

    param_encodings = {**sim.weight_encodings, **sim.bias_encodings}
    kept_initializers = []
    for init in model.graph.initializer:
        value = weights.get(init.name)
        tensor = None if value is None else to_numpy(value)
        if init.name in param_encodings and tensor is not None:
            encoding = param_encodings[init.name]
            if init.name in sim.weight_encodings and (
                unsigned_weights or _saturates(sim, init.name, encoding.scheme.bits)
            ):
                encoding = unsigned_container(encoding)
            dequantized = f"{init.name}_dequantized"
            prefix_nodes.append(
                builder.dequantized_weight(init.name, tensor, dequantized, encoding)
            )
            rename[init.name] = dequantized
        elif tensor is not None and np.issubdtype(tensor.dtype, np.floating):
            dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
            kept_initializers.append(numpy_helper.from_array(tensor.astype(dtype), init.name))
        else:
            kept_initializers.append(init)

    activations = sim.activation_quantizers()
    if unsigned_activations:
        activations = {name: unsigned_container(enc) for name, enc in activations.items()}
    producer_rename: dict[str, str] = {}
    integers: dict[str, str] = {}  # quantized tensor -> its QuantizeLinear's output
    for value in graph.input:
        if value.name in activations:
            dequantized = f"{value.name}_dequantized"
            pair = builder.quantize_pair(value.name, dequantized, activations[value.name])
            prefix_nodes.extend(pair)
            integers[value.name] = _integers(pair)
            rename[value.name] = dequantized

    float_constants = {
        init.name: init for init in kept_initializers if init.data_type == TensorProto.FLOAT
    }
    floats = {
        name: numpy_helper.to_array(init)
        for name, init in float_constants.items()
        if int(np.prod(init.dims)) == 1
    }
    scalars: dict[str, str] = {}
    shapes = static_shapes(model) if runtime_forms else {}
    pooled = pooled_outputs(model)
    constants = {init.name: init for init in kept_initializers}
    channels_last: dict[tuple[str, str], str] = {}  # (pooled tensor, form) -> what reads it
    body: list[onnx.NodeProto] = []
    for node in graph.node:
        read = _scaled_read(builder, node, sim, activations, integers)
        if read is not None:
            body.append(read)
            rename[node.output[0]] = read.output[0]
            integers[node.output[0]] = read.input[0]  # the same integers, read on another grid
            continue
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, name in enumerate(new.input):
            if name in rename:
                new.input[i] = rename[name]
        if (
            quantize_scalar_operands
            and new.op_type in SCALAR_OPERAND_OPS
            and (new.output[0] in activations or new.output[0] in sim.placement.fused)
            and sum(name in floats for name in new.input) == 1
            and all(
                name in floats or name != old
                for name, old in zip(new.input, node.input, strict=True)
            )
        ):
            for i, name in enumerate(new.input):
                if name in floats:
                    new.input[i], made = _scalar_operand(
                        builder, name, floats[name], not unsigned_activations, scalars
                    )
                    if made is not None:
                        body.append(made)
        pending = []
        for i, name in enumerate(new.output):
            if name not in activations:
                continue
            if name in graph_outputs:
                # The graph output keeps its name and carries the dequantized value.
                producer_rename[name] = f"{name}_float"
                new.output[i] = producer_rename[name]
                pair = builder.quantize_pair(new.output[i], name, activations[name])
            else:
                dequantized = f"{name}_dequantized"
                rename[name] = dequantized
                pair = builder.quantize_pair(name, dequantized, activations[name])
            integers[name] = _integers(pair)
            pending.extend(pair)
        read_as = None
        if runtime_forms and new.op_type in ("Reshape", "Flatten"):
            target = constants.get(new.input[1]) if len(new.input) > 1 else None
            read_as = channels_last_read(
                node, pooled, shapes, None if target is None else numpy_helper.to_array(target)
            )
        if read_as is not None:
            key = (new.input[0], read_as)
            if key not in channels_last:
                nodes = channels_last_transpose(new.input[0], read_as == "flattened")
                body.extend(nodes)
                channels_last[key] = nodes[-1].output[0]
            new.input[0] = channels_last[key]
        if (
            runtime_forms
            and new.op_type == "PRelu"
            and new.input[1] in float_constants
            and _eight_bit(activations.get(node.input[0]))
        ):
            slope = numpy_helper.to_array(float_constants[new.input[1]])
            tiled = tiled_slope(slope, shapes.get(node.input[0]))
            if tiled is not None:
                new.input[1] = builder.constant(f"{node.output[0]}{TILED_SLOPE}", tiled)
            zero = (
                ""  # Max(x, x * slope) needs no zero
                if np.all(slope <= 1)
                else builder.constant(f"{node.output[0]}{PRELU_ZERO}", np.zeros((), np.float32))
            )
            body.extend(prelu_as_max(new, slope, zero))
            body.extend(pending)
            continue
        body.append(new)
        body.extend(pending)

    del graph.node[:]
    graph.node.extend(_without_unread_dequantize(prefix_nodes + body, graph_outputs))
    graph.initializer.extend(kept_initializers + builder.initializers)
    del graph.value_info[:]
    if runtime_forms:
        float_weight_only(out)
        single_channel_depthwise(out, shapes)
    if builder.uses_ms_domain and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    out.producer_name = "qaas"
    return out
