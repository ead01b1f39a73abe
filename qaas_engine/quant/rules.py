"""Rules for the ways real models break under one 8-bit grid per tensor, applied after
calibration from the ranges it measured, each reported with what it did and why.

``wide_join``: a Concat whose inputs span very different ranges (a detector's box coordinates in
pixels joined to class probabilities in 0..1). One grid over the joined tensor is sized by the
widest part and leaves the narrow part a handful of levels, so its information is lost while the
output SQNR, dominated by the wide part, still looks fine. The inputs keep their own grids; the
join itself stays float (ONNX Runtime concatenates the dequantized parts, exactly what the
simulation computes).

``--strict-bits`` (``QuantSpec.strict_bits``) turns every rule off: the grids are then exactly
the ones the spec asked for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from qaas_engine.quant.encoding import Encoding
from qaas_engine.quant.placement import place_quantizers
from qaas_engine.quant.sim import QuantSim

# Joined ranges wider apart than this leave the narrow part under 256 / 16 = 16 levels at 8 bits.
WIDE_JOIN_RATIO = 16.0
JOIN_OPS = frozenset({"Concat"})


@dataclass(frozen=True)
class RuleAction:
    """One line of the report's ``rules``: which rule, where, what it did and why."""

    rule: str
    node: str
    action: str
    why: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def encoding_width(encoding: Encoding) -> float:
    """The range the grid covers (the widest channel's, for a per-channel grid)."""
    scheme = encoding.scheme
    span = (scheme.qmax - scheme.qmin) * np.asarray(encoding.scale, dtype=np.float64)
    return float(np.max(span))


def wide_joins(model: onnx.ModelProto, sim: QuantSim) -> list[RuleAction]:
    """Concats whose quantized inputs' ranges differ more than ``WIDE_JOIN_RATIO`` times."""
    actions = []
    for node in model.graph.node:
        if node.op_type not in JOIN_OPS or not node.output:
            continue
        if sim.encoding_of(node.output[0]) is None:
            continue
        widths = []
        for name in node.input:
            encoding = sim.encoding_of(name) if name else None
            if encoding is not None:
                widths.append((encoding_width(encoding), name))
        if len(widths) < 2:
            continue
        (narrow, narrow_name), (wide, wide_name) = min(widths), max(widths)
        if narrow <= 0 or wide / narrow <= WIDE_JOIN_RATIO:
            continue
        levels = max(1, int((2**8) * narrow / wide))
        actions.append(
            RuleAction(
                rule="wide_join",
                node=node.name or node.output[0],
                action="kept the join in float; each input keeps its own grid",
                why=(
                    f"its inputs' ranges differ {wide / narrow:.0f}x ({wide_name}: {wide:.4g} "
                    f"wide, {narrow_name}: {narrow:.4g}): one 8-bit grid over the join would "
                    f"give the narrow part about {levels} levels"
                ),
            )
        )
    return actions


def apply_rules(model: onnx.ModelProto, sim: QuantSim) -> tuple[QuantSim, list[RuleAction]]:
    """The simulation with every rule's decision applied, and the report's lines for them.

    Nodes a rule keeps float are placed again as a user's ``--keep-float`` would place them;
    the ranges already measured carry over, so nothing is calibrated twice.
    """
    if sim.spec.strict_bits or not sim.activation_encodings:
        return sim, []
    actions = wide_joins(model, sim)
    if not actions:
        return sim, []
    keep = frozenset(sim.spec.keep_float_nodes) | {action.node for action in actions}
    placement = place_quantizers(
        model,
        quantize_activations=sim.spec.quantize_activations,
        keep_float_nodes=keep,
        keep_float_ops=frozenset(sim.spec.keep_float_ops),
    )
    placed = QuantSim(sim.executor, placement, sim.spec)
    placed.weight_encodings = dict(sim.weight_encodings)
    placed.activation_encodings = {
        name: encoding
        for name, encoding in sim.activation_encodings.items()
        if name in placement.activations
    }
    placed.skipped.update(
        {name: why for name, why in sim.skipped.items() if name not in placement.activations}
    )
    for action in actions:
        placed.skipped[action.node] = f"rule {action.rule}: {action.why}"
    placed.engines = dict(sim.engines)
    placed.derive_bias_encodings()
    return placed, actions
