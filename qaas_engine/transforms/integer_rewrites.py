"""Float rewrites, exact up to float rounding, that let ONNX Runtime fuse what is quantized.

The simulation and the export both start from the rewritten model, so the simulation computes
what the runtime computes; only the float graph's form changes.

Conv bias Adds: some exporters (paddle2onnx's squeeze-excite blocks, for one) write a
convolution's bias as a separate ``Add`` of a ``[1, C, 1, 1]`` constant. The simulation then
quantizes the group Conv -> Add -> activation as one, but ONNX Runtime fuses only
DQ -> Conv -> Q: the Conv and the Add run float between a DequantizeLinear and a
QuantizeLinear. With the Add folded first, the bias is quantized at ``s_input * s_weight`` like
any other (the simulation computes that) and the export fuses into a QLinearConv.
Divisions by a constant and HardSwish: see :func:`divisions_to_products` and
:func:`decompose_hard_swishes`.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from qaas_engine.transforms.bn_fold import prune_unused_initializers
from qaas_engine.transforms.graph_edit import GraphEditor


def _channel_vector(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as a per-output-channel vector where it broadcasts along axis 1 of a
    ``rank``-D Conv output only (or is one number), else None."""
    if value.ndim > rank or not np.issubdtype(value.dtype, np.floating):
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(size != 1 for axis, size in enumerate(shape) if axis != 1):
        return None
    if shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)


def _kept(node: onnx.NodeProto, keep: frozenset[str]) -> bool:
    """Whether the user keeps ``node`` float by name or op type (``--keep-float``): it stays as
    written, so the choice still names a node of the model."""
    return node.op_type in keep or (node.name or "") in keep


def _foldable(
    model: onnx.ModelProto, keep: frozenset[str] = frozenset()
) -> list[tuple[onnx.NodeProto, onnx.NodeProto, np.ndarray]]:
    """(conv, add, per-channel constant) for each Add that can move into its Conv's bias."""
    editor = GraphEditor(model)
    inits, consumers, producers = editor.initializers, editor.consumers, editor.producers
    graph_outputs = editor.graph_outputs
    found = []
    for add in model.graph.node:
        if add.op_type != "Add" or len(add.input) != 2 or _kept(add, keep):
            continue
        convs = [producers.get(name) for name in add.input]
        for index, conv in enumerate(convs):
            constant = add.input[1 - index]
            if conv is None or conv.op_type != "Conv" or constant not in inits:
                continue
            if len(consumers[conv.output[0]]) != 1 or conv.output[0] in graph_outputs:
                continue
            if conv.input[1] not in inits or (len(conv.input) > 2 and conv.input[2] not in inits):
                continue
            channels = int(inits[conv.input[1]].dims[0])
            rank = len(inits[conv.input[1]].dims)
            vector = _channel_vector(numpy_helper.to_array(inits[constant]), channels, rank)
            if vector is not None:
                found.append((conv, add, vector))
                break
    return found


def fold_bias_adds(model: onnx.ModelProto, keep: frozenset[str] = frozenset()) -> list[str]:
    """Fold in place; returns the names of the Adds folded away."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    folded, gone = [], set()
    for conv, add, vector in _foldable(model, keep):
        bias = np.zeros_like(vector)
        if len(conv.input) > 2 and conv.input[2]:
            bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
        name = f"{conv.name or conv.output[0]}_bias_folded"
        graph.initializer.append(numpy_helper.from_array((bias + vector).astype(np.float32), name))
        if len(conv.input) > 2:
            conv.input[2] = name
        else:
            conv.input.append(name)
        conv.output[0] = add.output[0]
        folded.append(add.name or add.output[0])
        gone.add(add.output[0])  # the Conv now writes it: the Add is the only Add that does
    if folded:
        kept = [n for n in graph.node if not (n.op_type == "Add" and n.output[0] in gone)]
        del graph.node[:]
        graph.node.extend(kept)
        prune_unused_initializers(model)
    return folded


def _scalar(init: onnx.TensorProto | None) -> float | None:
    """The value of a one-element float initializer, else None."""
    if init is None or init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return None
    value = numpy_helper.to_array(init)
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def _divisions(
    model: onnx.ModelProto, keep: frozenset[str] = frozenset()
) -> list[tuple[onnx.NodeProto, float]]:
    """(Div, reciprocal) for each division by a one-element float constant whose reciprocal
    float32 holds exactly."""
    inits = {init.name: init for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Div" or len(node.input) != 2 or node.input[0] in inits:
            continue
        if _kept(node, keep):
            continue
        divisor = _scalar(inits.get(node.input[1]))
        if divisor is None or divisor == 0.0:
            continue
        reciprocal = exact_reciprocal(divisor)
        if reciprocal is not None:
            found.append((node, reciprocal))
    return found


def exact_reciprocal(divisor: float) -> float | None:
    """``1 / divisor`` where float32 holds it exactly (a power of two), else None.

    Only then does ``x * (1/c)`` equal ``x / c`` for every x, and ONNX Runtime's QLinearMul
    compute what the simulation does: with an inexact reciprocal (1/6, HardSwish's division as
    paddle2onnx writes it) PP-OCRv4's recognizer measured 0.1-0.25 dB lower output SQNR on
    three data draws and sim-vs-ORT 77 dB instead of exact, so such a division stays a Div."""
    value = np.float32(divisor)
    if not np.isfinite(value) or value == 0.0:
        return None
    reciprocal = np.float32(1.0) / value
    if not np.isfinite(reciprocal) or reciprocal == 0.0:
        return None
    if Fraction(float(reciprocal)) * Fraction(float(value)) != 1:
        return None
    return float(reciprocal)


def divisions_to_products(model: onnx.ModelProto, keep: frozenset[str] = frozenset()) -> list[str]:
    """``x / c`` by a constant scalar as ``x * (1/c)`` in place, where ``1/c`` is exact
    (:func:`exact_reciprocal`): ONNX Runtime has no integer Div, so a quantized division runs
    float between a DequantizeLinear and a QuantizeLinear, where a product by a constant fuses
    into a QLinearMul (the export stores ``1/c`` on a grid that holds it exactly). The product
    equals the division exactly."""
    changed = []
    for node, reciprocal in _divisions(model, keep):
        name = f"{node.name or node.output[0]}_reciprocal"
        model.graph.initializer.append(
            numpy_helper.from_array(np.array(reciprocal, dtype=np.float32), name)
        )
        node.op_type = "Mul"
        node.input[1] = name
        changed.append(node.name or node.output[0])
    if changed:
        prune_unused_initializers(model)
    return changed


def _hard_swishes(
    model: onnx.ModelProto, keep: frozenset[str] = frozenset()
) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "HardSwish" and not _kept(n, keep)]


def decompose_hard_swishes(model: onnx.ModelProto, keep: frozenset[str] = frozenset()) -> list[str]:
    """``HardSwish(x)`` as ``x * HardSigmoid(x, 1/6, 0.5)`` in place, the decomposition ONNX
    Runtime's CPU provider makes itself: it has no integer HardSwish, and a quantized one runs
    as a float HardSigmoid and a float Mul between a DequantizeLinear and a QuantizeLinear.
    Split, the gate is quantized on its own [0, 1] grid and the product fuses into a QLinearMul
    (what ``quantize_static`` gets from its pre-processing)."""
    nodes = []
    changed = []
    for node in model.graph.node:
        if node.op_type != "HardSwish" or _kept(node, keep):
            nodes.append(node)
            continue
        name = node.name or node.output[0]
        gate = f"{name}_gate"
        sigmoid = onnx.helper.make_node(
            "HardSigmoid", [node.input[0]], [gate], name=gate, alpha=1.0 / 6.0, beta=0.5
        )
        product = onnx.helper.make_node("Mul", [node.input[0], gate], list(node.output), name=name)
        nodes.extend([sigmoid, product])
        changed.append(name)
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return changed


def _hard_sigmoids(
    model: onnx.ModelProto, keep: frozenset[str] = frozenset()
) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "HardSigmoid" and not _kept(n, keep)]


def decompose_hard_sigmoids(
    model: onnx.ModelProto, keep: frozenset[str] = frozenset()
) -> list[str]:
    """``HardSigmoid(x)`` as ``Clip(x * alpha + beta, 0, 1)`` in place: ONNX Runtime has no
    integer HardSigmoid (a quantized one runs float between a DequantizeLinear and a
    QuantizeLinear); the product and the sum fuse into a QLinearMul and a QLinearAdd (their
    constants stored exactly, :func:`qaas_engine.export.qdq.exact_scalar`) and the Clip folds
    into the sum's QuantizeLinear."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    nodes, changed = [], []
    for node in graph.node:
        if node.op_type != "HardSigmoid" or _kept(node, keep):
            nodes.append(node)
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        alpha, beta = float(attributes.get("alpha", 0.2)), float(attributes.get("beta", 0.5))
        name = node.name or node.output[0]
        constants = {"alpha": alpha, "beta": beta, "low": 0.0, "high": 1.0}
        for key, value in constants.items():
            graph.initializer.append(
                numpy_helper.from_array(np.array(value, dtype=np.float32), f"{name}_{key}")
            )
        scaled, shifted = f"{name}_scaled", f"{name}_shifted"
        clip_inputs = [shifted] + ([f"{name}_low", f"{name}_high"] if opset >= 11 else [])
        clip_attributes: dict[str, Any] = {} if opset >= 11 else {"min": 0.0, "max": 1.0}
        nodes += [
            onnx.helper.make_node("Mul", [node.input[0], f"{name}_alpha"], [scaled], name=scaled),
            onnx.helper.make_node("Add", [scaled, f"{name}_beta"], [shifted], name=shifted),
            onnx.helper.make_node(
                "Clip", clip_inputs, list(node.output), name=name, **clip_attributes
            ),
        ]
        changed.append(name)
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
        prune_unused_initializers(model)
    return changed


def needs_rewrite(
    model: onnx.ModelProto, *, onnxruntime_cpu: bool, keep: frozenset[str] = frozenset()
) -> bool:
    """Whether :func:`rewrite_for_integer_kernels` would change ``model``."""
    return bool(
        _foldable(model, keep)
        or _divisions(model, keep)
        or (onnxruntime_cpu and (_hard_swishes(model, keep) or _hard_sigmoids(model, keep)))
    )


def rewrite_for_integer_kernels(
    model: onnx.ModelProto, *, onnxruntime_cpu: bool, keep: frozenset[str] = frozenset()
) -> list[str]:
    """Every rewrite of this module, in place; the names of the nodes rewritten or removed.
    ``onnxruntime_cpu``: also what only ONNX Runtime's CPU provider wants (a target such as
    Qualcomm HTP runs HardSwish as one op). ``keep``: node names and op types kept float."""
    changed = fold_bias_adds(model, keep) + divisions_to_products(model, keep)
    if onnxruntime_cpu:  # HardSwish first: its gate is a HardSigmoid
        changed += decompose_hard_swishes(model, keep) + decompose_hard_sigmoids(model, keep)
    return changed
