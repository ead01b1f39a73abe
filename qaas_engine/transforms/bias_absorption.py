"""High-bias absorption (Nagel et al. 2019, section 4.1), after equalization.

For ``layer1 -> Relu -> layer2`` where layer1's output channel i is (nearly) always above
``c_i > 0``: ``relu(y) - c = relu(y - c)``, so ``c`` moves out of layer1's bias and into layer2's
(``b2 += W2 c``). Equalization shrinks weights but not the spread of activations; this shrinks the
activation range that the quantizer must cover. ``c_i = max(0, beta_i - 3 gamma_i)`` from the BN
statistics, or the observed per-channel minimum when calibration data is at hand.

Only layer2 without padding is eligible: a padded border reads zeros where the shifted input
would have been ``-c``, so absorbing there would change the function.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from qaas_engine.graph.attributes import parse_attributes
from qaas_engine.transforms.cle import ChannelStats, Pair, find_pairs
from qaas_engine.transforms.graph_edit import GraphEditor


def _pads_input(node: onnx.NodeProto) -> bool:
    if node.op_type != "Conv":
        return False
    attrs = parse_attributes(node)
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return True
    return any(int(p) != 0 for p in attrs.get("pads", []))


def _weight_times(second_weight: np.ndarray, pair: Pair, shift: np.ndarray) -> np.ndarray:
    """``W2 c``: what layer2 computes from a constant input ``c`` (no padding involved)."""
    layer = pair.second
    if layer.node.op_type == "Conv":
        if layer.depthwise:
            return second_weight.reshape(second_weight.shape[0], -1).sum(axis=1) * shift
        summed = second_weight.reshape(second_weight.shape[0], second_weight.shape[1], -1).sum(2)
        return summed @ shift
    if layer.in_axis == 1:
        return second_weight @ shift
    return shift @ second_weight


def absorb_high_biases(
    model: onnx.ModelProto, stats: dict[str, ChannelStats], observed_min: dict | None = None
) -> dict[str, Any]:
    """Absorb in place; ``stats`` (keyed by layer1 output) are shifted to match."""
    editor = GraphEditor(model)
    pairs, _ = find_pairs(editor)
    absorbed, skipped = [], []
    for pair in pairs:
        first_out = pair.first.node.output[0]
        if pair.activation is None or pair.activation.op_type != "Relu":
            continue
        if pair.first.bias is None or pair.second.node.op_type == "MatMul":
            continue
        if _pads_input(pair.second.node):
            skipped.append(
                {"layer": pair.first.name, "reason": f"{pair.second.name} pads its input"}
            )
            continue
        if observed_min is not None and first_out in observed_min:
            shift = np.maximum(observed_min[first_out], 0.0)
        elif first_out in stats:
            shift = np.maximum(stats[first_out].beta - 3 * np.abs(stats[first_out].gamma), 0.0)
        else:
            skipped.append({"layer": pair.first.name, "reason": "no statistics for its output"})
            continue
        if not np.any(shift > 0):
            continue
        editor.set_array(pair.first.bias, editor.array(pair.first.bias) - shift)
        if pair.cap is not None:
            cap = editor.array(pair.cap)
            editor.set_array(pair.cap, cap - shift.reshape(cap.shape))
        delta = _weight_times(editor.array(pair.second.weight), pair, shift)
        second = pair.second.node
        if pair.second.bias is not None:
            editor.set_array(pair.second.bias, editor.array(pair.second.bias) + delta)
        else:
            name = editor.unique_name(f"{pair.second.name}_bias")
            editor.set_array(name, delta)
            while len(second.input) < 2:
                second.input.append("")
            second.input.append(name)
        if first_out in stats:
            stats[first_out] = ChannelStats(stats[first_out].beta - shift, stats[first_out].gamma)
        absorbed.append(
            {
                "first": pair.first.name,
                "second": pair.second.name,
                "channels": int(np.count_nonzero(shift)),
                "max_shift": float(shift.max()),
            }
        )
    return {"absorbed": absorbed, "skipped": skipped}
