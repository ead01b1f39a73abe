"""Rules for the two ways a transformer breaks under one 8-bit grid per tensor, decided from the
values the float model computes on calibration samples (not from op names).

``mask_range``: an additive attention mask, ``(1 - mask) * large_negative`` added to the scores
before Softmax, leaves the sum's values in two clusters far apart: the scores (tens) and the
masked positions (at -1e4, or float32's lowest value, -3.4e38). One grid over both sizes its
step by the gap, so every score lands on the same level or two and the attention goes uniform:
the whole network breaks (all-MiniLM-L6-v2: embedding cosine 0.35 against float, for ONNX
Runtime's quantizer, NNCF and qaas alike). A tensor whose values split at their widest gap
into two clusters that each hold a real share of the values, the wider cluster spanning under
``1 / WIDE_GAP_RATIO`` of the range but more than one value (a 0/1 mask loses nothing on a
grid), is kept float: the node computing it runs in float, so its consumer (the Softmax) sees
exact scores and exact masking, and nothing else changes. Kept only where the measured output
SQNR gains ``MIN_GAIN_DB`` (a saturated Softmax's probabilities also lie in two clusters, and
lose little that counts on a grid).

``outlier_channels``: where the output SQNR still misses ``QuantSpec.min_sqnr_db``, activations
whose last-axis channels span very different ranges (the few outlier features of a transformer's
residual stream, layer-norm inputs and outputs, feed-forward outputs: 50-250x the typical
channel) get 16-bit grids. One 8-bit grid sized by the outlier leaves the typical channel
``256 / ratio`` levels, and a LayerNorm divides the outlier back out, so that noise is what the
next layer sees. Cheapest first: the tensors only elementwise ops and normalizations read, kept
if the measured output SQNR gains ``MIN_GAIN_DB`` (16-bit groups run unfused in ONNX Runtime);
then, still below the target, the inputs of MatMul/Gemm/Conv, kept only for
``WEIGHTED_GAIN_DB`` (their integer kernels would run in float). Only a last axis as wide
as a MatMul/Gemm weight's input or a LayerNorm's scale counts as channels: the last axis of an
NCHW tensor is its width, a detector's may be its anchors, and neither carries channel
outliers (an NCHW channel outlier is the ``sensitive_tensor`` rule's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from qaas_engine.quant.encoding import Encoding
from qaas_engine.quant.sim import QuantSim
from qaas_engine.rule_action import RuleAction

# a cluster spanning under 1/64 of the range gets under 4 of 255 steps at 8 bits (a -1e4 mask
# over scores spread up to 150; a near-constant outlier channel beside the rest stays apart)
WIDE_GAP_RATIO = 64.0
MASKED_MIN_SHARE = 0.005  # of the values, in each cluster: one stray outlier is no mask
OUTLIER_RATIO = 16.0  # widest channel / median channel: the typical channel under 16 levels
MIN_CHANNELS = 8
PROMOTED_BITS = 16
MIN_GAIN_DB = 3.0
# a weighted op's 16-bit input makes its kernel float: all-MiniLM-L6-v2 went from 0.60x to
# 0.89x float latency for 3.1 dB (cosine 0.986 -> 0.993), not worth it at W8A8
WEIGHTED_GAIN_DB = 6.0
SAMPLE_VALUES = 2**12  # per tensor and batch, for the clusters (every activation is held)


@dataclass
class TensorStats:
    """What the rules read of one activation over the measured samples."""

    # last-axis widths that hold channels (``feature_widths``); others keep no channel_max
    widths: frozenset[int] = frozenset()
    values: list[np.ndarray] = field(default_factory=list)  # an even sample of its values
    channel_max: np.ndarray | None = None  # |x| max per last-axis channel

    def observe(self, value: np.ndarray, rng: np.random.Generator) -> None:
        flat = value.reshape(-1)
        if flat.size > SAMPLE_VALUES:
            stride = flat.size // SAMPLE_VALUES
            stride += 1 - stride % 2  # odd: cannot step in time with an even row size
            flat = flat[int(rng.integers(0, stride)) :: stride]
        self.values.append(flat.astype(np.float32))
        if value.ndim >= 2 and value.shape[-1] >= MIN_CHANNELS and value.shape[-1] in self.widths:
            finite = np.where(np.isfinite(value), np.abs(value), 0.0)
            peak = finite.reshape(-1, value.shape[-1]).max(axis=0).astype(np.float64)
            seen = self.channel_max
            same = seen is not None and seen.shape == peak.shape
            self.channel_max = np.maximum(seen, peak) if seen is not None and same else peak


def observe_all(
    stats: dict[str, TensorStats], values: dict[str, np.ndarray], rng: np.random.Generator
) -> None:
    """Each tapped float activation of one run into its entry of ``stats``."""
    for name, entry in stats.items():
        value = values.get(name)
        if value is not None and np.issubdtype(np.asarray(value).dtype, np.floating):
            entry.observe(np.asarray(value), rng)


@dataclass(frozen=True)
class Clusters:
    """A tensor's values split at their widest empty gap."""

    low: tuple[float, float]
    high: tuple[float, float]
    smaller_share: float  # of the values, in the less populated cluster
    widest_share: float  # of the whole range, spanned by the wider cluster


def clusters(values: np.ndarray) -> Clusters | None:
    """The two clusters of ``values`` either side of the widest gap (None: one value only).
    Infinite values count as a cluster at the end of the float range."""
    values = np.clip(
        values.astype(np.float64), -np.finfo(np.float64).max / 4, np.finfo(np.float64).max / 4
    )
    ordered = np.unique(values)
    if ordered.size < 2:
        return None
    gaps = np.diff(ordered)
    cut = int(np.argmax(gaps))
    low, high = ordered[: cut + 1], ordered[cut + 1 :]
    span = float(ordered[-1] - ordered[0])
    below = float(np.count_nonzero(values <= low[-1])) / values.size
    widest = float(max(low[-1] - low[0], high[-1] - high[0])) / span
    return Clusters(
        (float(low[0]), float(low[-1])),
        (float(high[0]), float(high[-1])),
        min(below, 1.0 - below),
        widest,
    )


def masked_ranges(
    model: onnx.ModelProto, sim: QuantSim, stats: dict[str, TensorStats]
) -> list[RuleAction]:
    """Nodes whose quantized outputs hold masking constants far from their other values."""
    producers = {out: node for node in model.graph.node for out in node.output if out}
    actions = []
    for name in sim.activation_encodings:
        entry, node = stats.get(name), producers.get(name)
        if entry is None or node is None or not entry.values:
            continue
        found = clusters(np.concatenate(entry.values))
        if found is None or found.smaller_share < MASKED_MIN_SHARE:
            continue
        if found.widest_share <= 0 or found.widest_share >= 1 / WIDE_GAP_RATIO:
            continue  # two exact values (a 0/1 mask) lose nothing; a wide spread is no gap
        levels = found.widest_share * 255
        actions.append(
            RuleAction(
                rule="mask_range",
                node=node.name or node.output[0],
                action=f"kept {node.op_type} in float (its output has no quantizer)",
                why=(
                    f"{name}'s values lie in two clusters, [{found.low[0]:.3g}, "
                    f"{found.low[1]:.3g}] and [{found.high[0]:.3g}, {found.high[1]:.3g}] "
                    f"({found.smaller_share:.0%} of them in the smaller), as an additive "
                    f"attention mask leaves scores: one 8-bit grid over both would give "
                    f"the wider cluster about {levels:.2g} of its 255 steps"
                ),
            )
        )
    return actions


def mask_not_kept(actions: list[RuleAction], before: float, after: float) -> RuleAction:
    """The line for ``masked_ranges`` undone: keeping those nodes float gained too little (a
    saturated Softmax's probabilities near 0 and near 1 also lie in two clusters)."""
    nodes = ", ".join(a.node for a in actions[:3]) + (" ..." if len(actions) > 3 else "")
    return RuleAction(
        rule="mask_range",
        node=nodes,
        action="none kept: their outputs keep their grids",
        why=f"their values lie in two clusters far apart, but with these {len(actions)} in "
        f"float the output SQNR measured {after:.1f} dB against {before:.1f} dB, less than "
        f"{MIN_GAIN_DB:g} dB better",
    )


def feature_widths(model: onnx.ModelProto) -> frozenset[int]:
    """The widths a last axis has where it holds features: the input width of every
    MatMul/Gemm weight and the length of every LayerNormalization scale. A last axis of another
    length (an NCHW tensor's width, a detector's anchors) has no channels to be outliers."""
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    widths: set[int] = set()
    for node in model.graph.node:
        weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None or not weight:
            continue
        if node.op_type == "MatMul" and len(weight) >= 2:
            widths.add(int(weight[-2]))
        elif node.op_type == "Gemm" and len(weight) == 2:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            widths.add(int(weight[1] if trans_b else weight[0]))
        elif node.op_type == "LayerNormalization":
            widths.add(int(weight[-1]))
    return frozenset(widths)


def outlier_candidates(
    sim: QuantSim, stats: dict[str, TensorStats]
) -> list[tuple[str, float, float, float]]:
    """(tensor, widest / median channel, widest, median) for each 8-bit activation whose
    feature channels (``TensorStats.widths``) span ``OUTLIER_RATIO`` times the typical one."""
    chosen: list[tuple[str, float, float, float]] = []
    for name, encoding in sim.activation_encodings.items():
        entry = stats.get(name)
        if entry is None or entry.channel_max is None or encoding.scheme.bits >= PROMOTED_BITS:
            continue
        peaks = entry.channel_max[entry.channel_max > 0]
        if peaks.size < MIN_CHANNELS or not np.isfinite(peaks).all():
            continue
        median = float(np.median(peaks))
        ratio = float(peaks.max()) / median
        if ratio >= OUTLIER_RATIO:
            chosen.append((name, ratio, float(peaks.max()), median))
    return chosen


def weighted_inputs(sim: QuantSim) -> frozenset[str]:
    """The quantizers whose values a MatMul/Gemm/Conv multiplies with its weight (through any
    data-movement op that shares the grid): 16 bits there turn an integer kernel into a float
    one, the bulk of the model's work."""
    shared = sim.placement.shared
    found = set()
    for site in sim.placement.weights.values():
        name = site.input
        while name in shared:
            name = shared[name]
        found.add(name)
    return frozenset(found)


def outlier_channels(
    sim: QuantSim,
    chosen: list[tuple[str, float, float, float]],
    measure: Callable[[QuantSim], float],
    before: float,
    samples: int,
    target_db: float,
) -> tuple[list[RuleAction], float, int]:
    """16-bit grids (in place) on the ``outlier_candidates``, cheapest first: those only
    elementwise ops and normalizations read (they run in float between 16-bit Q/DQ at little
    cost), kept where the measured output SQNR gains ``MIN_GAIN_DB``; then, while the SQNR
    misses ``target_db``, those a weighted op multiplies, kept only for ``WEIGHTED_GAIN_DB``
    (16 bits there turn its integer kernel into a float one). The actions, the SQNR the grids
    now give, and how many measurements were made."""
    weighted = weighted_inputs(sim)
    stages = [
        ([c for c in chosen if c[0] not in weighted], MIN_GAIN_DB, "read by elementwise ops"),
        ([c for c in chosen if c[0] in weighted], WEIGHTED_GAIN_DB, "multiplied by weights"),
    ]
    actions: list[RuleAction] = []
    measurements = 0
    for group, bar, role in stages:
        if not group or (measurements and before >= target_db):
            continue
        saved = dict(sim.activation_encodings)
        for name, *_ in group:
            sim.activation_encodings[name] = widened(sim.activation_encodings[name])
        sim.invalidate()
        sim.derive_bias_encodings()
        after = measure(sim)
        measurements += 1
        if after < before + bar:
            sim.activation_encodings = saved
            sim.invalidate()
            sim.derive_bias_encodings()
            names = ", ".join(n for n, *_ in group[:3]) + (" ..." if len(group) > 3 else "")
            actions.append(
                RuleAction(
                    rule="outlier_channels",
                    node=names,
                    action=f"none kept: 16-bit grids on the activations with outlier channels "
                    f"{role} gained too little",
                    why=f"output SQNR {before:.1f} dB; with these {len(group)} at "
                    f"{PROMOTED_BITS} bits it measured {after:.1f} dB, less than {bar:g} dB "
                    f"better ({_cost_words(role)}): all stay 8-bit",
                )
            )
            continue
        actions += [
            RuleAction(
                rule="outlier_channels",
                node=name,
                action=f"{PROMOTED_BITS}-bit activations",
                why=(
                    f"its widest channel reaches {peak:.3g}, {ratio:.0f}x the median channel's "
                    f"{median:.3g}: one 8-bit grid leaves the typical channel about "
                    f"{256 / ratio:.0f} levels; output SQNR on {samples} calibration samples "
                    f"{before:.1f} dB, {after:.1f} dB with these {len(group)} ({role}) at "
                    f"{PROMOTED_BITS} bits"
                ),
            )
            for name, ratio, peak, median in group
        ]
        before = after
    return actions, before, measurements


def _cost_words(role: str) -> str:
    if role == "multiplied by weights":
        return "16-bit inputs turn the integer MatMul/Gemm/Conv kernels into float ones"
    return "16-bit groups run unfused"


def widened(encoding: Encoding) -> Encoding:
    """The same range on a ``PROMOTED_BITS`` grid."""
    wide = dataclasses.replace(encoding.scheme, bits=PROMOTED_BITS)
    return Encoding.from_range(wide, encoding.low, encoding.high)
