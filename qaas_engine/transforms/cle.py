"""Cross-layer equalization (Nagel et al. 2019) on an ONNX graph.

For ``layer1 -> act -> layer2`` with a positively homogeneous ``act`` (``act(x / s) = act(x) / s``
for s > 0), dividing layer1's output channel i by ``s_i`` and multiplying layer2's input channel
i by ``s_i`` leaves the function unchanged. ``s_i = sqrt(r1_i / r2_i)`` gives both channels the
range ``sqrt(r1_i * r2_i)``, so one per-tensor grid fits every channel. Chains (expand ->
depthwise -> project) are iterated until the scales settle.

A clipping activation ``Clip(0, M)`` is not homogeneous; instead of swapping it for a ReLU (which
changes the function wherever inputs exceed M, as AIMET does), it becomes ``Relu`` followed by
``Min`` with a per-channel bound ``M / s_i``: exact, and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from qaas_engine.graph.attributes import parse_attributes
from qaas_engine.transforms.graph_edit import GraphEditor

HOMOGENEOUS = {"Relu", "PRelu", "LeakyRelu"}
MAX_ITERATIONS = 50
TOLERANCE = 1e-4


@dataclass
class Layer:
    node: onnx.NodeProto
    weight: str
    bias: str | None
    out_axis: int
    in_axis: int
    depthwise: bool = False

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]


@dataclass
class Pair:
    first: Layer
    second: Layer
    activation: onnx.NodeProto | None
    cap: str | None = None  # per-channel bound of a former Clip, scaled with layer1


@dataclass
class ChannelStats:
    """Per-channel mean/deviation of a tensor before its activation (from folded BN)."""

    beta: np.ndarray
    gamma: np.ndarray


@dataclass
class EqualizationReport:
    equalized: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    clips_made_exact: list[str] = field(default_factory=list)
    ranges: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    iterations: int = 0


def as_layer(node: onnx.NodeProto, editor: GraphEditor) -> tuple[Layer | None, str]:
    """The node as a weighted layer whose channels can be scaled, or why not."""
    if node.op_type not in ("Conv", "Gemm", "MatMul"):
        return None, f"{node.op_type} is not a Conv/Gemm"
    if len(node.input) < 2 or not editor.is_constant(node.input[1]):
        return None, "its weight is not a constant"
    attrs = parse_attributes(node)
    weight = editor.array(node.input[1])
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and not editor.is_constant(bias):
        return None, "its bias is not a constant"
    if node.op_type == "Conv":
        groups = int(attrs.get("group", 1))
        if groups == 1:
            return Layer(node, node.input[1], bias, 0, 1), ""
        if weight.shape[1] == 1 and groups == weight.shape[0]:
            return Layer(node, node.input[1], bias, 0, 0, depthwise=True), ""
        return None, f"grouped convolution (group={groups})"
    if node.op_type == "MatMul":
        if weight.ndim != 2:
            return None, "MatMul weight is not 2-D"
        return Layer(node, node.input[1], None, 1, 0), ""
    if int(attrs.get("transA", 0)) or weight.ndim != 2:
        return None, "Gemm with transA"
    if bias is not None and editor.array(bias).ndim != 1:
        return None, "Gemm bias is not per output feature"
    trans_b = int(attrs.get("transB", 0))
    return Layer(node, node.input[1], bias, 0 if trans_b else 1, 1 if trans_b else 0), ""


def _clip_bounds(node: onnx.NodeProto, editor: GraphEditor) -> tuple[float, float] | None:
    attrs = parse_attributes(node)
    low, high = attrs.get("min", -np.inf), attrs.get("max", np.inf)
    inputs = list(node.input)
    if len(inputs) > 1 and inputs[1]:
        if not editor.is_constant(inputs[1]):
            return None
        low = float(editor.array(inputs[1]))
    if len(inputs) > 2 and inputs[2]:
        if not editor.is_constant(inputs[2]):
            return None
        high = float(editor.array(inputs[2]))
    return float(low), float(high)


def find_pairs(editor: GraphEditor) -> tuple[list[Pair], list[dict[str, str]]]:
    pairs, skipped = [], []
    for node in list(editor.model.graph.node):
        if node.op_type not in ("Conv", "Gemm"):
            continue
        first, why = as_layer(node, editor)
        if first is None:
            continue
        out = node.output[0]
        user = editor.single_consumer(out)
        if user is None:
            n_users = len(editor.consumers.get(out, []))
            if n_users > 1:
                skipped.append({"layer": first.name, "reason": f"output feeds {n_users} consumers"})
            continue
        activation, cap = None, None
        if user.op_type in HOMOGENEOUS or user.op_type == "Clip":
            if user.op_type == "Clip":
                bounds = _clip_bounds(user, editor)
                if bounds is None or bounds[0] != 0.0:
                    skipped.append(
                        {
                            "layer": first.name,
                            "reason": "Clip without a lower bound of 0 is not homogeneous",
                        }
                    )
                    continue
            activation = user
            tail = user.output[0]
            capped = editor.single_consumer(tail)
            if user.op_type == "Relu" and capped is not None and capped.op_type == "Min":
                others = [i for i in capped.input if i != tail]
                if len(others) == 1 and editor.is_constant(others[0]):
                    cap, tail = others[0], capped.output[0]  # an earlier equalization's bound
            nxt = editor.single_consumer(tail)
            if nxt is None:
                n_users = len(editor.consumers.get(tail, []))
                if n_users > 1:
                    skipped.append(
                        {
                            "layer": first.name,
                            "reason": f"activation output feeds {n_users} consumers",
                        }
                    )
                continue
        elif user.op_type in ("Conv", "Gemm", "MatMul"):
            nxt = user
        else:
            skipped.append(
                {
                    "layer": first.name,
                    "reason": f"followed by {user.op_type}, which is not positively homogeneous",
                }
            )
            continue
        second, why = as_layer(nxt, editor)
        if second is None:
            skipped.append({"layer": first.name, "reason": f"next layer {nxt.name}: {why}"})
            continue
        pairs.append(Pair(first, second, activation, cap))
    return pairs, skipped


def _channel_ranges(weight: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(np.abs(weight), axis, 0)
    return moved.reshape(moved.shape[0], -1).max(axis=1)


def _scale_axis(array: np.ndarray, axis: int, factors: np.ndarray) -> np.ndarray:
    shape = [1] * array.ndim
    shape[axis] = -1
    return array * factors.reshape(shape)


def _make_clips_exact(pairs: list[Pair], editor: GraphEditor) -> list[str]:
    """Clip(0, M) -> Relu then Min with a per-channel bound that scaling can follow."""
    replacements: dict[str, list[onnx.NodeProto]] = {}
    for pair in pairs:
        clip = pair.activation
        if clip is None or clip.op_type != "Clip":
            continue
        bounds = _clip_bounds(clip, editor)
        if bounds is None:  # a bound computed at run time: nothing to make exact
            continue
        _, high = bounds
        weight = editor.array(pair.first.weight)
        channels = weight.shape[pair.first.out_axis]
        is_conv = pair.first.node.op_type == "Conv"
        shape = (channels,) + (1,) * (weight.ndim - 2) if is_conv else (channels,)
        label = clip.name or clip.output[0]
        pair.cap = editor.unique_name(f"{label}_cap")
        editor.set_array(pair.cap, np.full(shape, high, dtype=np.float32))
        relu_out = editor.unique_name(f"{pair.first.node.output[0]}_relu")
        relu = helper.make_node(
            "Relu", [clip.input[0]], [relu_out], name=editor.unique_name(f"{label}_relu")
        )
        minimum = helper.make_node("Min", [relu_out, pair.cap], [clip.output[0]], name=label)
        replacements[clip.output[0]] = [relu, minimum]
        pair.activation = relu
    if not replacements:
        return []
    nodes = []
    for node in editor.model.graph.node:
        key = node.output[0] if node.output else ""
        if node.op_type == "Clip" and key in replacements:
            nodes.extend(replacements[key])
        else:
            nodes.append(node)
    copied = [onnx.NodeProto() for _ in nodes]
    for target, source in zip(copied, nodes, strict=True):
        target.CopyFrom(source)
    del editor.model.graph.node[:]
    editor.model.graph.node.extend(copied)
    editor.refresh()
    return sorted(replacements)


def equalize(
    model: onnx.ModelProto, stats: dict[str, ChannelStats] | None = None
) -> EqualizationReport:
    """Equalize every eligible pair in place; ``stats`` (keyed by layer output) are rescaled."""
    editor = GraphEditor(model)
    pairs, skipped = find_pairs(editor)
    report = EqualizationReport(skipped=skipped)
    involved = {p.first.weight: p.first for p in pairs} | {p.second.weight: p.second for p in pairs}
    before = {
        name: _channel_ranges(editor.array(name), layer.out_axis)
        for name, layer in involved.items()
    }
    report.clips_made_exact = _make_clips_exact(pairs, editor)
    totals: dict[int, np.ndarray | None] = {id(p): None for p in pairs}
    for iteration in range(MAX_ITERATIONS):
        worst = 0.0
        for pair in pairs:
            scale = _equalize_pair(pair, editor, stats)
            totals[id(pair)] = scale if totals[id(pair)] is None else totals[id(pair)] * scale
            worst = max(worst, float(np.max(np.abs(np.log(scale)))))
        report.iterations = iteration + 1
        if worst < TOLERANCE:
            break
    for pair in pairs:
        total = totals[id(pair)]
        assert total is not None  # every pair was scaled at least once above
        report.equalized.append(
            {
                "first": pair.first.name,
                "second": pair.second.name,
                "activation": pair.activation.op_type if pair.activation is not None else None,
                "scale_min": float(total.min()),
                "scale_max": float(total.max()),
            }
        )
    for name, layer in involved.items():
        after = _channel_ranges(editor.array(name), layer.out_axis)
        report.ranges[layer.name] = {
            "before": [round(float(v), 6) for v in before[name]],
            "after": [round(float(v), 6) for v in after],
        }
    return report


def _equalize_pair(pair: Pair, editor: GraphEditor, stats: dict[str, ChannelStats] | None):
    first, second = pair.first, pair.second
    w1, w2 = editor.array(first.weight), editor.array(second.weight)
    r1 = _channel_ranges(w1, first.out_axis)
    r2 = _channel_ranges(w2, second.in_axis)
    valid = (r1 > 0) & (r2 > 0)
    scale = np.ones_like(r1)
    scale[valid] = np.sqrt(r1[valid] / r2[valid])
    editor.set_array(first.weight, _scale_axis(w1, first.out_axis, 1.0 / scale))
    if first.bias is not None:
        editor.set_array(first.bias, editor.array(first.bias) / scale)
    editor.set_array(second.weight, _scale_axis(w2, second.in_axis, scale))
    if pair.cap is not None:
        cap = editor.array(pair.cap)
        editor.set_array(pair.cap, _scale_axis(cap, 0, 1.0 / scale))
    if stats is not None:
        key = first.node.output[0]
        if key in stats:
            stats[key] = ChannelStats(stats[key].beta / scale, stats[key].gamma / scale)
    return scale
