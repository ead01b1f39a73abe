"""Rules for the ways real models break under one 8-bit grid per tensor, applied after
calibration from what it measured, each reported with what it did and why.

``wide_join``: a Concat whose inputs span very different ranges (a detector's box coordinates in
pixels joined to class probabilities in 0..1). One grid over the joined tensor is sized by the
widest part and leaves the narrow part a handful of levels, so its information is lost while the
output SQNR, dominated by the wide part, still looks fine. The inputs keep their own grids; the
join itself stays float (ONNX Runtime concatenates the dequantized parts, exactly what the
simulation computes).

``range_method``: where the exported graph's output SQNR on calibration samples falls below
``QuantSpec.min_sqnr_db`` and the user named no ``--calibration-method``, the activation ranges
are set again from histograms by the MSE and percentile estimators, and the one whose measured
output SQNR is highest is kept (min/max ranges let one outlier stretch a grid over values that
never occur again; clipping helps some models and hurts others, so it is measured, not assumed).
Free at inference: only the grids move.

``sensitive_tensor``: where the exported graph's output SQNR on calibration samples falls below
``QuantSpec.min_sqnr_db``, the activations that contribute most of the output noise (priced to first
order by ``quant.sensitivity``'s backward pass in torch, or, where that costs less, measured one by
one in ONNX Runtime by ``noise_pricing``, with no torch import) get 16-bit grids, which ONNX Runtime
runs (W8A16 groups, computed in float between 16-bit Q/DQ), until the predicted SQNR reaches the
target or ``MAX_PROMOTED_SHARE`` of them are promoted. The noise is priced relative to each output
channel's power, as the worst-channel SQNR counts it: in the outputs' own units a small-range output
(MTCNN's landmarks beside its box offsets) weighs nothing, and the pricing had predicted 44 dB where
28 dB was measured. Weights keep the bits the spec asked for; where they carry the noise, nothing is
promoted. The SQNR is measured again after; a promotion that neither reaches the target nor raises
it by ``MIN_MEASURED_GAIN_DB`` is undone (16-bit groups run unfused, so a small gain short of the
target is not worth their speed). Where calibration comes one sample at a time (a stream), the set
ranked on the probe's samples together is measured beside the first sample's, and the better kept.
On a target without 16-bit integer kernels (``onnxruntime-cpu``) the kept ones are then trimmed
to the shortest prefix, ranked by noise share per MAC they force float, that measures within
``KEEP_WITHIN_DB`` of all of them (``qaas_engine.sixteen_bit_cost``).
Post-training pipelines only: a learning step (AdaRound, QAT, Bayesian Bits) trains the 8-bit grids
the spec asked for.

``bias_shift`` (``qaas_engine.bias_shift``), where the output SQNR still misses the target after
the others: empirical bias correction of every Conv/Gemm on calibration samples past the
probe's, layer after layer, kept only where the probe's SQNR rises by ``MIN_SHIFT_GAIN_DB``.

``weight_grid`` (``qaas_engine.weight_grids``), after ``range_method``, where the output SQNR
still misses the target:
weights the ``avx2-s7`` kernels narrowed to 7 bits back on the spec's 8-bit grids (stored
uint8, u8u8 kernels), kept for a measured gain of ``MIN_WIDENING_GAIN_DB``.

``mask_range`` and ``outlier_channels`` (``qaas_engine.attention``), where the output SQNR
misses the target, before the two above: an additive attention mask's constants kept out of
any grid, and 16-bit grids on activations whose channels span very different ranges.

``--strict-bits`` (``QuantSpec.strict_bits``) turns every rule off: the grids are then exactly
the ones the spec asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from qaas_engine import attention, noise_pricing, output_grids, sixteen_bit_cost, weight_grids
from qaas_engine import bias_shift as shifts
from qaas_engine.concurrent_runs import run_each
from qaas_engine.cost.shapes import layer_shapes, macs_per_sample
from qaas_engine.export.qdq import export_for_target
from qaas_engine.graph.lazy import set_weight
from qaas_engine.quant.encoding import Encoding
from qaas_engine.quant.estimators import ACTIVATION_METHODS
from qaas_engine.quant.observers import HistogramObserver
from qaas_engine.quant.placement import place_quantizers
from qaas_engine.quant.sensitivity import NoiseEstimate, estimate_noise
from qaas_engine.quant.sim import QuantSim
from qaas_engine.rule_action import RuleAction
from qaas_engine.sessions import session
from qaas_engine.simulated_runs import SimulatedRuns, graph_digest
from qaas_engine.step_registry import learns
from qaas_engine.tapped import TappedModel, samples
from qaas_engine.targets import KernelChoice, target_rules
from qaas_engine.tensors import batch_size, to_numpy

if TYPE_CHECKING:
    from qaas_engine.state import PipelineState

# Joined ranges wider apart than this leave the narrow part under 256 / 16 = 16 levels at 8 bits.
WIDE_JOIN_RATIO = 16.0
JOIN_OPS = frozenset({"Concat"})
# the calibration samples the rules measure the output SQNR on (in ORT), and the first of them
# the noise is priced on (a backward pass in torch holds every activation of them)
MEASURED_SAMPLES = 8
SENSITIVITY_SAMPLES = 8
PROMOTED_BITS = 16
MAX_PROMOTED_SHARE = 0.1  # of the quantizers, at least MIN_PROMOTED
MIN_PROMOTED = 4
# The rules' budget is counted in float forwards of one sample in ORT, not in seconds, so the
# same model, data and seed get the same grids on any machine under any load: up to
# BUDGET_PER_CALIBRATION_SAMPLE forwards per calibration sample, and at least as many as
# MIN_BUDGET_MACS of the model's multiply-accumulates take (a small model's rules cost little).
BUDGET_PER_CALIBRATION_SAMPLE = 3.0
MIN_BUDGET_FORWARDS = 64.0
MIN_BUDGET_MACS = 2e10
# one run of the exported graph per sample, in float forwards: its price with the optimizer
# off; measured as deployed it runs in about 1-1.5, but the price stays, so the budget
# decides what it decided (the same rules and grids as before, faster)
QDQ_COST = 2.0
# torch executor forward + backward per sample, in ORT forwards; where ONNX Runtime measures each
# activation's noise for less (a small model: no torch import), it does (``noise_pricing``)
TORCH_COST_FACTOR = noise_pricing.TORCH_COST_FACTOR
MIN_GAIN_DB = 3.0  # predicted, with every activation at 16 bits: less, and nothing is promoted
# measured: 16-bit groups run unfused (in float between Q/DQ), so a smaller gain is not worth them
MIN_MEASURED_GAIN_DB = 3.0
# range_method: the estimators tried after min/max, and the gain that justifies moving the grids
RANGE_METHODS = ("mse", "percentile")
MIN_RANGE_GAIN_DB = 0.5
# values binned per tensor and batch: an even sample of a large activation gives its histogram
# (a 99.99th percentile still rests on about a hundred values over the measured samples).
# Per sample of the *batch*, given to each ORT chunk of it: where the tap budget splits a batch,
# each chunk bins up to that many, so a large tensor's every value is binned (PP-OCRv4's
# recognizer at 144 samples: 16.6 M values a tensor, against 2.4 M at 2**15 per sample read).
# That binning, not the forward, is most of the pass on large sets. Binning per sample read is
# faster, but range_method's decision there is fragile: another subsample of as many values
# moved MSE's range by up to 150 of 2048 bins on that recognizer (a flat MSE valley) and
# flipped the decision (held out: lines as float 0.36 -> 0.17-0.23), so the quota stays as
# measured until the rule decides on more than the probe's 8 samples.
HISTOGRAM_VALUES = 2**15
# The histogram pass reads at most this many calibration samples past the probe's: whole batches
# spread evenly over the data (every k-th, so an ordered set still shows all of its parts). Its
# float forward repeats calibration's with every activation tapped, and on a BERT-base-sized
# encoder with 256 samples it was 67 s of a 146 s job; 128 samples still put about 400 values
# past a 99.99th percentile. A set this size or smaller is read whole, as before.
HISTOGRAM_SAMPLES = 128
# where ONNX Runtime's CPU runs 16-bit groups float, the fewest promotions that keep the SQNR
# are searched with at least this many measurements of the exported graph, budget or not: an
# artifact slower than float costs every inference, the measurements only this job
MIN_TRIM_MEASUREMENTS = 6
# bias_shift: the calibration samples past the probe's it corrects on (at least the minimum:
# a mean over fewer is noise; PP-OCRv4's recognizer, held out: 8.3 dB -> 14.2 corrected on 8,
# 14.3 on 16, 14.0 on 24), and the gain on the probe's samples that keeps it, as for a 16-bit
# promotion: 8 samples flatter. On the bench the shift gained 6.3 and 9.2 dB there on the OCR
# detector and recognizer (task metric 0.954 -> 0.981, 0.22 -> 0.41 held out); YOLOv8n's
# +2.3 dB came with box F1 0.857 -> 0.833, and the text-direction classifier lost 1.1 dB.
SHIFT_SAMPLES = 16
MIN_SHIFT_SAMPLES = 8
MIN_SHIFT_GAIN_DB = 3.0
KEEP_WITHIN_DB = sixteen_bit_cost.KEEP_WITHIN_DB


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


def measured_sqnr_db(
    model: onnx.ModelProto,
    sim: QuantSim,
    batches: list[dict[str, Any]],
    references: list[list[np.ndarray]],
    record: SimulatedRuns | None = None,
) -> float:
    """The exported graph's output SQNR against the float ``references`` over ``batches`` (the
    worst output), as ONNX Runtime runs it deployed (``deployed_measurement``): its integer
    kernels, which the simulation computes exactly (``metrics.simulation_vs_onnxruntime``), at
    a third to a half less time than the graph with the optimizer off; else in the simulation's
    session (ORT's Q/DQ rewrites off, ``sessions.QDQ_REWRITES``). ``record`` keeps the
    outputs, for the evaluation to reuse on the same graph: exported as the pipeline exports it
    (the same weight container, scalar operands on their exact one-step grids), so the bytes
    can match."""
    qdq = export_for_target(model, sim)
    deployed = deployed_measurement(sim.kernels)
    names = [value.name for value in model.graph.output]
    digest = graph_digest(qdq) if record is not None else None
    # a graph measured before, byte for byte: its recorded outputs, the same figure
    ran = record.all_outputs(digest, batches, optimized=deployed) if record is not None else None
    if ran is None:
        runtime = session(qdq, qdq_fusions=deployed)
        # the batches' runs two at a time (``concurrent_runs``), summed in their order below
        ran = run_each(lambda feeds: runtime.run(names, feeds), batches)
        if record is not None:
            record.record(digest, ran, optimized=deployed)
    signal = np.zeros(len(names))
    noise = np.zeros(len(names))
    floating = np.zeros(len(names), dtype=bool)
    for reference, outputs in zip(references, ran, strict=True):
        for i, (ref, test) in enumerate(zip(reference, outputs, strict=True)):
            ref, test = np.asarray(ref), np.asarray(test)
            if not np.issubdtype(ref.dtype, np.floating):
                continue
            floating[i] = True
            ref64 = ref.astype(np.float64)
            signal[i] += float(np.sum(ref64**2))
            noise[i] += float(np.sum((ref64 - test.astype(np.float64)) ** 2))
    worst = float("inf")
    for index in np.flatnonzero(floating & (noise > 0)):
        ratio = max(float(signal[index]), 1e-30) / float(noise[index])
        worst = min(worst, 10.0 * float(np.log10(ratio)))
    return worst


def deployed_measurement(kernels: KernelChoice) -> bool:
    """Whether the rules measure the graph as ONNX Runtime deploys it here: where its kernels
    are exact on this CPU (not where int8 weights laid out for other hardware meet a CPU
    without an int8 dot product, whose u8s8 kernels saturate here and not on the target);
    else in the simulation's session, with ORT's Q/DQ rewrites off (the simulation's own
    arithmetic)."""
    return not kernels.saturates_here


@dataclass
class Probe:
    """The calibration samples the rules measure on, and the float outputs there."""

    batches: list[dict[str, Any]]
    references: list[list[np.ndarray]]
    samples: int  # how many the SQNR is measured on
    # what the attention rules read of each quantized activation, from the same float pass
    stats: dict[str, attention.TensorStats] = field(default_factory=dict)
    simulated: SimulatedRuns | None = None  # the exported graphs' outputs, for the evaluation

    def sqnr_db(self, model: onnx.ModelProto, sim: QuantSim) -> float:
        return measured_sqnr_db(model, sim, self.batches, self.references, self.simulated)


class CalibrationProbe:
    """What the probe reads of the first ``MEASURED_SAMPLES`` calibration samples, recorded
    while calibration runs them (``QuantSim.calibrate``'s ``on_values``): their float outputs
    and the attention statistics of every quantized activation, so the rules run the float
    model over those samples no second time (on a large detector, a quarter of calibration)."""

    def __init__(self, state: PipelineState, taps: Iterable[str]) -> None:
        data = state.calibration
        total = 0 if data is None else min(MEASURED_SAMPLES, data.num_samples)
        if data is not None and state.spec.max_calibration_samples is not None:
            total = min(total, state.spec.max_calibration_samples)
        self.wanted = total
        self.one_at_a_time = data is not None and data.one_at_a_time
        self.output_names = [value.name for value in state.model.graph.output]
        widths = attention.feature_widths(state.model)
        self.stats = {name: attention.TensorStats(widths) for name in sorted(taps)}
        self.rng = np.random.default_rng(state.spec.seed)
        self.chunks: list[list[np.ndarray]] = []  # each chunk's graph outputs
        self.seen = 0

    def __call__(self, values: dict[str, np.ndarray], count: int) -> None:
        if self.seen >= self.wanted:
            return
        take = count if self.one_at_a_time else min(count, self.wanted - self.seen)
        if take < count:
            values = samples(values, 0, take)
        self.chunks.append([np.asarray(values[name]) for name in self.output_names])
        attention.observe_all(self.stats, values, self.rng)
        self.seen += 1 if self.one_at_a_time else take

    def probe(self, batches: list[dict[str, Any]], taps: list[str]) -> Probe | None:
        """The probe over ``batches`` (the first samples, as ``probe`` cuts them), where every
        one of ``taps`` was recorded; None otherwise (the probe then runs its own pass)."""
        if self.seen != self.wanted or self.wanted == 0 or not set(taps) <= set(self.stats):
            return None
        if self.one_at_a_time:
            if len(self.chunks) != len(batches):
                return None
            references = self.chunks
        else:
            if len(batches) != 1:
                return None
            references = [
                [np.concatenate(parts) for parts in zip(*self.chunks, strict=True)]
                if len(self.chunks) > 1
                else self.chunks[0]
            ]
        stats = {name: self.stats[name] for name in taps}
        measured = len(batches) if self.one_at_a_time else sum(batch_size(b) for b in batches)
        runs = SimulatedRuns(batches, references=references)
        return Probe(batches, references, measured, stats, runs)


def probe(state: PipelineState, sim: QuantSim | None = None) -> Probe | None:
    """One float pass over the first ``MEASURED_SAMPLES`` calibration samples; with ``sim``,
    its quantized activations are tapped on the way (``Probe.stats``). Where calibration
    recorded those samples (``CalibrationProbe``), no pass runs."""
    data = state.calibration
    if data is None:
        return None
    batches = [
        {name: np.asarray(value) for name, value in feeds.items()}
        for feeds, _ in data.batches(MEASURED_SAMPLES, MEASURED_SAMPLES)
    ]
    samples = len(batches) if data.one_at_a_time else sum(batch_size(b) for b in batches)
    taps = sorted(sim.activation_encodings) if sim is not None else []
    recorded = state.calibration_probe
    if recorded is not None:
        state.calibration_probe = None  # read once: the grids change after
        kept = recorded.probe(batches, taps)
        if kept is not None:
            return kept
    runner = TappedModel(state.model, taps, batched=not data.one_at_a_time)
    widths = attention.feature_widths(state.model)
    stats = {name: attention.TensorStats(widths) for name in taps}
    rng = np.random.default_rng(state.spec.seed)
    references = []
    for feeds in batches:
        chunks = []
        for values in runner.run(feeds):
            chunks.append([np.asarray(values[n]) for n in runner.output_names])
            attention.observe_all(stats, values, rng)
        references.append(
            chunks[0]
            if len(chunks) == 1
            else [np.concatenate(parts) for parts in zip(*chunks, strict=True)]
        )
    return Probe(batches, references, samples, stats, SimulatedRuns(batches, references=references))


@dataclass
class RangeEvidence:
    """What the estimators set ranges from: each activation's histogram over the calibration
    samples the probe does not measure on (all of them when there are no others), and the
    exact extremes seen there."""

    histograms: dict[str, HistogramObserver]
    low: dict[str, float]
    high: dict[str, float]
    samples: int
    apart: bool  # True: none of the probe's samples set these ranges


def calibration_histograms(state: PipelineState, sim: QuantSim, skip: int = 0) -> RangeEvidence:
    """Each quantized activation's histogram over the calibration data after its first
    ``skip`` samples (at most ``HISTOGRAM_SAMPLES`` of them, spread over the data), on the
    grid's range: the pass ``--calibration-method mse|percentile`` makes. Scored on the
    skipped samples, an estimator cannot win by fitting the very samples it is measured on
    (the ranges it keeps come from the rest)."""
    data = state.calibration
    observers = {
        name: HistogramObserver(float(np.min(enc.low)), float(np.max(enc.high)))
        for name, enc in sim.activation_encodings.items()
    }
    total = calibration_samples(state)
    if data is None or not observers:
        return RangeEvidence({}, {}, {}, 0, False)
    skip = skip if total > skip else 0
    low = dict.fromkeys(observers, np.inf)
    high = dict.fromkeys(observers, -np.inf)
    runner = TappedModel(state.model, sorted(observers), batched=not data.one_at_a_time)
    rng = np.random.default_rng(sim.spec.seed)
    stride = max(1, math.ceil((total - skip) / HISTOGRAM_SAMPLES))  # every k-th batch
    seen = read = batches = 0
    for feeds in state.calibration_arrays():
        count = 1 if data.one_at_a_time else batch_size(feeds)
        first, seen = seen, seen + count
        if seen <= skip:
            continue
        if first < skip:  # the batch straddles the probe's last sample
            feeds, count = samples(feeds, skip - first, count), seen - skip
        batches += 1
        if (batches - 1) % stride:
            continue
        read += count
        for values in runner.run(feeds):
            for name, observer in observers.items():
                value = values.get(name)
                if value is not None and np.issubdtype(np.asarray(value).dtype, np.floating):
                    flat = np.asarray(value).reshape(-1)
                    extremes, every_finite = _finite_extremes(flat)
                    if extremes is not None:
                        low[name] = min(low[name], extremes[0])
                        high[name] = max(high[name], extremes[1])
                    # the whole tensor's extremes bound its sample's: no second read of them
                    observer.observe(
                        _even_sample(flat, HISTOGRAM_VALUES * count, rng),
                        extremes if every_finite else None,
                    )
    return RangeEvidence(observers, low, high, read, skip > 0)


def _finite_extremes(flat: np.ndarray) -> tuple[tuple[float, float] | None, bool]:
    """The smallest and largest finite values (None where there are none), and whether every
    value is finite. Both extremes of the whole tensor first, two reads and no copy: where they
    are finite, so is every value, and they are the answer; only a tensor with inf or NaN pays
    for the finite copy."""
    if flat.size == 0:
        return None, True
    smallest, largest = float(flat.min()), float(flat.max())
    if math.isfinite(smallest) and math.isfinite(largest):
        return (smallest, largest), True
    finite = flat[np.isfinite(flat)]
    return ((float(finite.min()), float(finite.max())) if finite.size else None), False


def _even_sample(values: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """About ``count`` of ``values``, every k-th from a random start; k is made odd so it
    cannot step in time with an even channel or row size."""
    if values.size <= count:
        return values
    stride = values.size // count
    stride += 1 - stride % 2
    return values[int(rng.integers(0, stride)) :: stride]


def range_method(
    model: onnx.ModelProto,
    sim: QuantSim,
    measured: Probe,
    before: float,
    evidence: RangeEvidence,
) -> tuple[list[RuleAction], float]:
    """Activation ranges set again by the estimator that measures best (in place), when that
    gains at least ``MIN_RANGE_GAIN_DB`` over min/max ranges set on the same samples; the
    actions and the SQNR the grids now give."""
    if not evidence.histograms:
        return [], before
    saved = dict(sim.activation_encodings)
    start = sim.spec.range_estimator
    scores: dict[str, float] = {start: before}
    candidates: dict[str, dict[str, Encoding]] = {start: saved}
    for method in (start, *RANGE_METHODS):
        if method == start and not evidence.apart:
            continue  # the ranges already set are min/max over these very samples
        encodings = dict(saved)
        for name, hist in evidence.histograms.items():
            if hist.counts.sum() == 0 or name not in encodings:
                continue
            scheme = encodings[name].scheme
            if method == start:
                low, high = evidence.low[name], evidence.high[name]
            else:
                low, high = ACTIVATION_METHODS[method][1](None, hist, scheme)  # type: ignore[arg-type]
            encodings[name] = Encoding.from_range(scheme, low, high)
        _set_activations(sim, encodings)
        candidates[method] = encodings
        scores[method] = measured.sqnr_db(model, sim)
    best = max(scores, key=lambda method: scores[method])
    if best == start or scores[best] < scores[start] + MIN_RANGE_GAIN_DB:
        _set_activations(sim, saved)
        return [], before
    _set_activations(sim, candidates[best])
    sim.range_estimator = best
    tried = ", ".join(f"{method} {score:.1f} dB" for method, score in scores.items())
    where = (
        f"ranges set on the other {evidence.samples} calibration samples"
        if evidence.apart
        else "ranges set on all of them"
    )
    return [
        RuleAction(
            rule="range_method",
            node="(all activations)",
            action=f"activation ranges set by the {best} estimator",
            why=(
                f"output SQNR on {measured.samples} calibration samples {before:.1f} dB with "
                f"{start} ranges (target {sim.spec.min_sqnr_db:g} dB); measured there with "
                f"{where}: {tried}; --calibration-method fixes the estimator"
            ),
        )
    ], scores[best]


def _set_activations(sim: QuantSim, encodings: dict[str, Encoding]) -> None:
    sim.activation_encodings = dict(encodings)
    sim.derive_scaled_grids()
    sim.derive_bias_encodings()


def sensitive_tensors(
    state: PipelineState,
    sim: QuantSim,
    budget: float | None = None,
    measured: Probe | None = None,
    before: float | None = None,
) -> list[RuleAction]:
    """Promote the quantizers that carry most of the output noise to 16-bit grids (in place),
    when the measured output SQNR misses the spec's target. ``budget``: float forwards left
    (see ``BUDGET_PER_CALIBRATION_SAMPLE``; the whole rules' budget when None)."""
    spec = sim.spec
    if state.calibration is None or learns(spec.pipeline) or spec.activation_bits != 8:
        return []
    budget = rules_budget(state) if budget is None else budget
    measured = measured or probe(state)
    if measured is None:
        return []
    if before is None:
        before = measured.sqnr_db(state.model, sim)
    if before >= spec.min_sqnr_db:
        return []
    # one sample priced (a backward pass in the torch executor, or a run per activation in ONNX
    # Runtime, whichever costs less), then a measurement like the first
    measuring = QDQ_COST * measured.samples
    pricing = noise_pricing.choose(sim, model_macs(state, measured), budget - measuring)
    cost = pricing.per_sample + measuring
    if cost > budget:
        return [
            RuleAction(
                rule="sensitive_tensor",
                node="(model)",
                action="not applied: pricing the noise would cost too much",
                why=f"output SQNR {before:.1f} dB < {spec.min_sqnr_db:g} dB target, but pricing "
                f"and measuring 16-bit grids costs about {cost:.0f} float forwards, over the "
                f"{max(budget, 0):.0f} left of the rules' budget ({budget_words()}); more "
                "calibration samples, --keep-float or a wider --activations grid can help",
            )
        ]
    first = measured.batches[0]
    estimate = _priced(
        state.model, sim, first, state.calibration.one_at_a_time, spec.seed, budget - cost, pricing
    )
    chosen = _most_noise(estimate, spec.min_sqnr_db)
    # one sample of a stream decides little (below, ``_stream_ranking``): the probe's samples
    # ranked together give a second set, measured against the first where they differ
    summed, cost = _stream_ranking(state, sim, measured, estimate, pricing, budget, cost)
    other = _most_noise(summed, spec.min_sqnr_db) if summed is not None else []
    if not chosen and other and summed is not None:
        estimate, chosen, other = summed, other, []
    if not chosen:
        return [
            RuleAction(
                rule="sensitive_tensor",
                node="(model)",
                action="none promoted: the weights carry the noise",
                why=f"output SQNR {before:.1f} dB < {spec.min_sqnr_db:g} dB target, but with "
                f"every activation at {PROMOTED_BITS} bits the priced noise would fall less "
                f"than {MIN_GAIN_DB:g} dB; more weight bits (--weights) or --keep-float can help",
            )
        ]
    saved = dict(sim.activation_encodings)
    after = _measured_promotion(state, sim, measured, chosen, saved)
    ranked_on = ""
    if other and other != chosen and summed is not None:
        after_other = _measured_promotion(state, sim, measured, other, saved)
        if after_other > after:
            ranked_on = (
                f"; ranked on {min(len(measured.batches), SENSITIVITY_SAMPLES)} samples of the "
                f"stream (ranked on the first, {len(chosen)} measured {after:.1f} dB)"
            )
            estimate, chosen, after = summed, other, after_other
        else:
            _promoted(sim, chosen, saved)
    if after < before + MIN_MEASURED_GAIN_DB and after < spec.min_sqnr_db:
        _set_activations(sim, saved)
        return [
            RuleAction(
                rule="sensitive_tensor",
                node=", ".join(chosen[:3]) + (" ..." if len(chosen) > 3 else ""),
                action="none kept: 16-bit grids on the noisiest activations gained too little",
                why=f"output SQNR {before:.1f} dB < {spec.min_sqnr_db:g} dB target; with "
                f"{len(chosen)} at 16 bits it measured {after:.1f} dB, less than "
                f"{MIN_MEASURED_GAIN_DB:g} dB better, and 16-bit groups run unfused: "
                "all stay 8-bit",
            )
        ]
    share = {name: _share(estimate, name) for name in chosen}
    allowed = max(MIN_TRIM_MEASUREMENTS, int((budget - cost) // (QDQ_COST * measured.samples)))
    kept, trimmed = _fewest_sixteen_bit(
        state, sim, measured, estimate, chosen, saved, after, allowed
    )
    full = len(chosen)
    return [
        RuleAction(
            rule="sensitive_tensor",
            node=name,
            action=f"{PROMOTED_BITS}-bit activations",
            why=(
                f"{share[name]:.0%} of the predicted output noise; output SQNR on "
                f"{measured.samples} calibration samples {before:.1f} dB at 8 bits "
                f"(target {spec.min_sqnr_db:g} dB), {after:.1f} dB with {full} quantizers at "
                f"{PROMOTED_BITS} bits"
                + (f", {trimmed.kept_db:.1f} dB with these {len(kept)}" if trimmed else "")
                + ranked_on
            ),
        )
        for name in kept
    ] + ([trimmed.action()] if trimmed else [])


@dataclass
class TrimmedPromotion:
    """What ``_fewest_sixteen_bit`` dropped, and the figures it decided on (one report line)."""

    kept: list[str]
    dropped: list[str]
    full_db: float
    kept_db: float
    # MACs ONNX Runtime's CPU runs float with every promotion, with the kept ones, in all; a
    # depthwise conv's weighted by sixteen_bit_cost.DEPTHWISE_FLOAT_WEIGHT
    full_macs: float
    kept_macs: float
    total_macs: float
    measured: dict[int, float]

    def action(self) -> RuleAction:
        shown = ", ".join(self.dropped[:3]) + (" ..." if len(self.dropped) > 3 else "")
        tried = ", ".join(f"{k}: {db:.1f} dB" for k, db in sorted(self.measured.items()))
        total = max(self.total_macs, 1)
        return RuleAction(
            rule="sensitive_tensor",
            node=shown,
            action=f"{len(self.dropped)} of {len(self.kept) + len(self.dropped)} kept 8-bit: "
            "latency on onnxruntime-cpu",
            why=(
                f"ONNX Runtime's CPU has no {PROMOTED_BITS}-bit integer kernel: a "
                f"{PROMOTED_BITS}-bit activation runs its producer and consumers float; all "
                f"promotions ran {self.full_macs / total:.0%} of the model's MACs float "
                f"(depthwise weighted x{sixteen_bit_cost.DEPTHWISE_FLOAT_WEIGHT:g}), the "
                f"{len(self.kept)} kept run {self.kept_macs / total:.0%}; ranked by noise share "
                f"per MAC forced float, the shortest prefix within {KEEP_WITHIN_DB:g} dB of "
                f"{self.full_db:.1f} dB kept, or the longest that runs at most "
                f"{sixteen_bit_cost.MAX_FLOAT_SHARE:.0%} float ({self.kept_db:.1f} dB; measured "
                f"per prefix length: {tried})"
            ),
        )


def _fewest_sixteen_bit(
    state: PipelineState,
    sim: QuantSim,
    measured: Probe,
    estimate: NoiseEstimate,
    chosen: list[str],
    saved: dict[str, Encoding],
    after: float,
    allowed: int,
) -> tuple[list[str], TrimmedPromotion | None]:
    """The promotions worth their latency on ONNX Runtime's CPU (``sixteen_bit_cost``), set in
    ``sim``; and what was dropped, or None where all are kept."""
    if len(chosen) < 2 or not target_rules(sim.spec.target).sixteen_bit_runs_float:
        return chosen, None
    plain = node_macs(state, measured)
    # what a promotion costs in time: depthwise convs and element-wise ops forced float weigh more
    priced = sixteen_bit_cost.latency_macs(state.model, plain, _elementwise(state, measured))
    total = sum(sixteen_bit_cost.latency_macs(state.model, plain).values())
    forced = sixteen_bit_cost.forced_float_nodes(state.model, sim.placement, chosen)
    share = {name: _share(estimate, name) for name in chosen}
    promoted = {name: sim.activation_encodings[name] for name in chosen}

    def place(prefix: Sequence[str]) -> None:
        keep = set(prefix)
        for name in chosen:
            sim.activation_encodings[name] = promoted[name] if name in keep else saved[name]
        sim.invalidate()
        sim.derive_bias_encodings()

    def measure(prefix: Sequence[str]) -> float:
        place(prefix)
        return measured.sqnr_db(state.model, sim)

    def trimmed(
        costs: Mapping[str, float], capped: bool
    ) -> tuple[list[str], int, dict[int, float]]:
        order = sixteen_bit_cost.ranked(chosen, share, forced, costs)
        free = 0
        while free < len(order) and sixteen_bit_cost.float_macs([order[free]], forced, costs) == 0:
            free += 1
        predicted_full = estimate.sqnr_db(frozenset(order))
        first = next(
            k
            for k in range(len(order) + 1)
            if estimate.sqnr_db(frozenset(order[:k])) >= predicted_full - KEEP_WITHIN_DB
        )
        longest = (
            sixteen_bit_cost.longest_within_budget(order, free, forced, priced, total)
            if capped
            else None
        )
        length, tried = sixteen_bit_cost.trim(order, free, first, after, measure, allowed, longest)
        return order, length, tried

    # ranked by plain MACs, as before the latency budget: where that choice runs within the
    # budget it stands (the weighted ranking picked worse sets on the OCR recognizer and
    # detector, whose noise shares mostly tie); ranked by weighted cost and capped only where
    # it does not (PicoDet)
    order, length, tried = trimmed(plain, capped=False)
    if sixteen_bit_cost.float_macs(order[:length], forced, priced) > (
        sixteen_bit_cost.MAX_FLOAT_SHARE * total
    ):
        order, length, tried = trimmed(priced, capped=True)
    place(order[:length])
    if length == len(order):
        return chosen, None
    kept = order[:length]
    return kept, TrimmedPromotion(
        kept=kept,
        dropped=order[length:],
        full_db=after,
        kept_db=tried[length],
        full_macs=sixteen_bit_cost.float_macs(order, forced, priced),
        kept_macs=sixteen_bit_cost.float_macs(kept, forced, priced),
        total_macs=total,
        measured=tried,
    )


def _promoted(sim: QuantSim, chosen: Sequence[str], saved: dict[str, Encoding]) -> None:
    """``chosen`` on 16-bit grids in ``sim``, every other activation as ``saved`` has it."""
    _set_activations(sim, saved)
    for name in chosen:
        _promote(sim, name)
    sim.derive_bias_encodings()


def _measured_promotion(
    state: PipelineState,
    sim: QuantSim,
    measured: Probe,
    chosen: Sequence[str],
    saved: dict[str, Encoding],
) -> float:
    """``chosen`` promoted (:func:`_promoted`), and the output SQNR measured so."""
    _promoted(sim, chosen, saved)
    return measured.sqnr_db(state.model, sim)


def _stream_ranking(
    state: PipelineState,
    sim: QuantSim,
    measured: Probe,
    first: NoiseEstimate,
    pricing: noise_pricing.Pricing,
    budget: float,
    cost: float,
) -> tuple[NoiseEstimate | None, float]:
    """Where calibration comes one sample at a time (a stream's chunks, each with its state),
    the noise priced on up to ``SENSITIVITY_SAMPLES`` of the probe's samples summed, ``first``
    (the first's) among them; and the rule's cost with it. None where there is one sample, or
    where pricing the others and measuring one more set would overrun ``budget``.

    The first chunk of a stream starts from a zero state: on Silero VAD op18 the unrolled
    LSTM's cell-state product priced under 0.3% of its noise, over the probe's 8 chunks 33%.
    Ranked on the 8, op18's promotions measured 19.9 dB on the probe (14.7 dB ranked on the
    first, undone), held out and streamed 28.5 dB output, stateN 14.8 dB (20.0 / 6.1 before).
    The first's set is kept where it measures as well: on op15 it measured 45.7 dB, the 8's
    24.5 dB (their 4th pick, another encoder ReLU, measured no gain)."""
    if state.calibration is None or not state.calibration.one_at_a_time:
        return None, cost
    others = measured.batches[1:SENSITIVITY_SAMPLES]
    extra = pricing.per_sample * len(others) + QDQ_COST * measured.samples
    if not others or cost + extra > budget:
        return None, cost
    total = NoiseEstimate(signal=first.signal)
    total.activations.update(first.activations)
    total.weights.update(first.weights)
    for sample in others:
        estimate = _priced(state.model, sim, sample, True, sim.spec.seed, budget - cost, pricing)
        total.signal += estimate.signal
        for into, part in (
            (total.activations, estimate.activations),
            (total.weights, estimate.weights),
        ):
            for name, power in part.items():
                into[name] = into.get(name, 0.0) + power
    return total, cost + extra


def _priced(
    model: onnx.ModelProto,
    sim: QuantSim,
    feeds: dict[str, Any],
    one_at_a_time: bool,
    seed: int,
    budget: float,
    pricing: noise_pricing.Pricing | None = None,
) -> NoiseEstimate:
    """The noise estimate on one sample; on ``SENSITIVITY_SAMPLES`` where the budget allows;
    in the engine ``pricing`` names (torch when None, or where ONNX Runtime cannot price every
    activation)."""
    per_sample = TORCH_COST_FACTOR if pricing is None else pricing.per_sample
    more = per_sample * (SENSITIVITY_SAMPLES - 1)
    count = 1 if one_at_a_time or more > budget else SENSITIVITY_SAMPLES
    if not one_at_a_time:
        feeds = {name: value[:count] if np.ndim(value) else value for name, value in feeds.items()}
    if pricing is not None and pricing.engine == "onnxruntime":
        measured = noise_pricing.try_measure_noise(model, sim, feeds, per_channel=True)
        if measured is not None:
            return measured
    return estimate_noise(sim, feeds, seed=seed, per_channel=True)


def calibration_samples(state: PipelineState) -> int:
    data = state.calibration
    samples = 0 if data is None else data.num_samples
    if data is not None and state.spec.max_calibration_samples is not None:
        samples = min(samples, state.spec.max_calibration_samples)
    return samples


def rules_budget(state: PipelineState, macs_per_sample: int = 0) -> float:
    """Float forwards of one sample the rules may spend: a multiple of the calibration's own,
    or what ``MIN_BUDGET_MACS`` buys of a model of ``macs_per_sample``, whichever is more."""
    floor = MIN_BUDGET_MACS / macs_per_sample if macs_per_sample > 0 else MIN_BUDGET_FORWARDS
    return max(
        MIN_BUDGET_FORWARDS, floor, BUDGET_PER_CALIBRATION_SAMPLE * calibration_samples(state)
    )


def budget_words() -> str:
    return (
        f"{BUDGET_PER_CALIBRATION_SAMPLE:g} per calibration sample, at least "
        f"{MIN_BUDGET_FORWARDS:g} and at least {MIN_BUDGET_MACS:.0e} multiply-accumulates' worth"
    )


def model_macs(state: PipelineState, measured: Probe) -> int:
    """Multiply-accumulates of one sample, from the shapes of one run (0 where none count)."""
    return sum(node_macs(state, measured).values())


def _one_sample(state: PipelineState, measured: Probe) -> dict[str, Any]:
    feeds = measured.batches[0]
    if not state.calibration or not state.calibration.one_at_a_time:
        feeds = {name: value[:1] if np.ndim(value) else value for name, value in feeds.items()}
    return feeds


def node_macs(state: PipelineState, measured: Probe) -> dict[str, int]:
    """Each weighted node's multiply-accumulates for one sample ({} where shapes are unknown);
    the shapes of one run, cached, so a second call runs nothing."""
    try:
        return macs_per_sample(state.model, state.executor, _one_sample(state, measured))
    except Exception:  # shapes unknown: the budget falls back to its count of forwards
        return {}


def _elementwise(state: PipelineState, measured: Probe) -> dict[str, int]:
    """Each two-tensor element-wise node's output elements for one sample (the same cached
    run's shapes; {} where unknown)."""
    try:
        layers = layer_shapes(state.model, state.executor, _one_sample(state, measured))
    except Exception:  # shapes unknown: element-wise ops are not priced
        return {}
    return {layer.name: layer.output_elements for layer in layers if layer.kind != "mac"}


def _most_noise(estimate: NoiseEstimate, target_db: float) -> list[str]:
    """The largest contributors, largest first, until the rest predicts ``target_db``."""
    everything = frozenset(estimate.activations)
    if estimate.sqnr_db(everything) - estimate.sqnr_db() < MIN_GAIN_DB:
        return []  # the weights carry the noise: wider activation grids would not help
    ranked = sorted(estimate.activations.items(), key=lambda item: -item[1])
    cap = max(MIN_PROMOTED, int(MAX_PROMOTED_SHARE * len(ranked)))
    chosen: list[str] = []
    for name, power in ranked:
        if estimate.sqnr_db(frozenset(chosen)) >= target_db or len(chosen) >= cap or power <= 0:
            break
        chosen.append(name)
    return chosen


def _share(estimate: NoiseEstimate, name: str) -> float:
    total = sum(estimate.activations.values()) + sum(estimate.weights.values())
    power = estimate.activations.get(name, estimate.weights.get(name, 0.0))
    return power / total if total > 0 else 0.0


def _promote(sim: QuantSim, name: str) -> None:
    """The activation on a 16-bit grid over the range calibration saw
    (``QuantSim.wide_encoding``)."""
    sim.activation_encodings[name] = sim.wide_encoding(name, PROMOTED_BITS)
    sim.invalidate()


@output_grids.registered  # output_grid runs last, on the grids the others settled
def apply_rules(
    state: PipelineState, sim: QuantSim, budget: float | None = None
) -> tuple[QuantSim, list[RuleAction]]:
    """The simulation with every rule's decision applied, and the report's lines for them.

    Nodes a rule keeps float are placed again as a user's ``--keep-float`` would place them;
    the ranges already measured carry over, so nothing is calibrated twice. The output SQNR is
    measured once and handed from rule to rule, within one budget of float forwards
    (``rules_budget``): what a rule does depends on the model, data and seed, never on how busy
    the machine is.
    """
    if sim.spec.strict_bits or not sim.activation_encodings:
        return sim, []
    model = state.model
    actions = wide_joins(model, sim)
    if actions:
        sim = _keep_float(model, sim, actions)
    spec = sim.spec
    if state.calibration is None or learns(spec.pipeline):
        return sim, actions
    measured = probe(state, sim)
    if measured is None:
        return sim, actions
    state.simulated_runs = measured.simulated
    before = measured.sqnr_db(model, sim)
    if before >= spec.min_sqnr_db:
        return sim, actions
    if budget is None:
        budget = rules_budget(state, model_macs(state, measured))
    budget -= (1 + QDQ_COST) * measured.samples
    sim, found, before, budget = attention_rules(state, sim, measured, before, budget)
    actions += found
    if before >= spec.min_sqnr_db:
        return sim, actions
    # a histogram pass over the calibration data, then min/max and each estimator measured
    read = min(calibration_samples(state), MEASURED_SAMPLES + HISTOGRAM_SAMPLES)
    cost = read + (1 + len(RANGE_METHODS)) * QDQ_COST * measured.samples
    if spec.calibration_method != "auto":
        pass  # a --calibration-method the user named is kept as given
    elif cost <= budget:
        evidence = calibration_histograms(state, sim, skip=measured.samples)
        ranged, before = range_method(model, sim, measured, before, evidence)
        actions += ranged
        budget -= cost
    else:
        actions.append(
            RuleAction(
                rule="range_method",
                node="(all activations)",
                action="not tried: measuring other estimators would cost too much",
                why=f"output SQNR {before:.1f} dB < {spec.min_sqnr_db:g} dB target; trying "
                f"{' and '.join(RANGE_METHODS)} ranges costs about {cost:.0f} float forwards, "
                f"over the {max(budget, 0):.0f} left of the rules' budget ({budget_words()}); "
                "--calibration-method mse or percentile tries one",
            )
        )
    # on the activation ranges settled: on min/max ones PP-LCNet's orientation classifier
    # measured 8-bit weights 2 dB worse than 7-bit, on the MSE ranges chosen after 7 dB better
    widened, before = weight_grids.eight_bit_weights(
        sim, before, spec.min_sqnr_db, lambda: measured.sqnr_db(model, sim)
    )
    if widened:
        actions += widened
        budget -= QDQ_COST * measured.samples
    actions += sensitive_tensors(state, sim, budget, measured, before)
    now = measured.sqnr_db(model, sim)  # the last measurement's graph: its recorded figure
    if now < spec.min_sqnr_db:
        actions += bias_shift(state, sim, measured, now)
    return sim, actions


def bias_shift(
    state: PipelineState, sim: QuantSim, measured: Probe, before: float
) -> list[RuleAction]:
    """``bias_shift``, last: each Conv/Gemm bias moved by the per-channel mean error its layer
    shows on calibration samples past the probe's, layer after layer, with the grids the other
    rules chose (``qaas_engine.bias_shift``); kept where the output SQNR on the probe's
    samples, which the correction never saw, gains ``MIN_SHIFT_GAIN_DB``.

    Free at inference, and about one forward of the exported graph over ``SHIFT_SAMPLES``: it
    takes no part of the rules' budget, which would make it compete with 16-bit promotions
    that it complements (PP-OCRv4 detector and recognizer: run before them and taking their
    budget, it left both worse than the two together)."""
    data, model = state.calibration, state.model
    if data is None or data.one_at_a_time or shifts.has_subgraphs(model):
        return []  # streams carry state; control flow reads tensors its node does not list
    batches = _samples_after(state, measured.samples, SHIFT_SAMPLES)
    if sum(batch_size(feeds) for feeds in batches) < MIN_SHIFT_SAMPLES:
        return []
    found = shifts.shifted_biases(export_for_target(model, sim), model, batches)
    moved = {name: shift for name, shift in found.shifts.items() if np.any(shift)}
    if not moved:
        return []
    weights = sim.executor.weights
    kept = {name: np.array(to_numpy(weights[name])) for name in moved}
    for name, shift in moved.items():
        old = kept[name]
        set_weight(sim.executor, name, (old + shift.reshape(old.shape)).astype(old.dtype))
    sim.invalidate()
    after = measured.sqnr_db(model, sim)
    what = (
        f"{len(moved)} of {found.layers} Conv/Gemm biases by the mean error of their layer on "
        f"{found.samples} calibration samples, layer after layer (largest before: "
        f"{max(found.error_before[name] for name in moved):.3g})"
    )
    why = f"output SQNR {before:.1f} -> {after:.1f} dB on the {measured.samples} probe samples"
    if after < before + MIN_SHIFT_GAIN_DB:
        for name, old in kept.items():
            set_weight(sim.executor, name, old)
        sim.invalidate()
        action = RuleAction(
            "bias_shift", "(model)", f"not kept: shifting {what}",
            f"{why}, under the {MIN_SHIFT_GAIN_DB:g} dB gain that keeps it",
        )  # fmt: skip
        return [action]
    return [RuleAction("bias_shift", "(model)", f"shifted {what}", why)]


def _samples_after(state: PipelineState, skip: int, limit: int) -> list[dict[str, np.ndarray]]:
    """Calibration batches from sample ``skip`` on, ``limit`` samples at most."""
    batches: list[dict[str, np.ndarray]] = []
    seen = taken = 0
    for feeds in state.calibration_arrays():
        count = batch_size(feeds)
        first, seen = seen, seen + count
        if seen <= skip:
            continue
        start = max(skip - first, 0)
        stop = min(count, start + limit - taken)
        if stop > start:
            batches.append(samples(feeds, start, stop) if (start, stop) != (0, count) else feeds)
            taken += stop - start
        if taken >= limit:
            break
    return batches


def attention_rules(
    state: PipelineState, sim: QuantSim, measured: Probe, before: float, budget: float
) -> tuple[QuantSim, list[RuleAction], float, float]:
    """``mask_range`` then ``outlier_channels`` (``qaas_engine.attention``), from the values the
    probe's float pass tapped (no forward of their own): the simulation, the actions, the
    output SQNR now and the budget left. A rule that acts costs one run of the exported graph."""
    model, spec, stats = state.model, sim.spec, measured.stats
    cost = QDQ_COST * measured.samples  # a measurement after each rule that acts
    actions = attention.masked_ranges(model, sim, stats)
    if actions and cost > budget:
        return (
            sim,
            [_over_budget("mask_range", before, spec.min_sqnr_db, cost, budget)],
            before,
            budget,
        )
    if actions:
        placed = _keep_float(model, sim, actions)
        after = measured.sqnr_db(model, placed)
        budget -= QDQ_COST * measured.samples
        if after < before + attention.MIN_GAIN_DB:  # two clusters that lose nothing that counts
            actions = [attention.mask_not_kept(actions, before, after)]
        else:
            sim, before = placed, after
            if before >= spec.min_sqnr_db:
                return sim, actions, before, budget
    if spec.activation_bits != 8:
        return sim, actions, before, budget
    chosen = attention.outlier_candidates(sim, stats)
    if chosen and cost > budget:
        over = _over_budget("outlier_channels", before, spec.min_sqnr_db, cost, budget)
        return sim, [*actions, over], before, budget
    promoted, before, measurements = attention.outlier_channels(
        sim,
        chosen,
        lambda placed: measured.sqnr_db(model, placed),
        before,
        measured.samples,
        spec.min_sqnr_db if budget >= 2 * cost else -math.inf,  # a second stage fits or not
    )
    budget -= measurements * cost
    return sim, actions + promoted, before, budget


def _over_budget(rule: str, before: float, target: float, cost: float, budget: float) -> RuleAction:
    return RuleAction(
        rule=rule,
        node="(model)",
        action="not applied: measuring it would cost too much",
        why=f"output SQNR {before:.1f} dB < {target:g} dB target, but measuring what the rule "
        f"changes costs about {cost:.0f} float forwards, over the {max(budget, 0):.0f} left of "
        f"the rules' budget ({budget_words()})",
    )


def _keep_float(model: onnx.ModelProto, sim: QuantSim, actions: list[RuleAction]) -> QuantSim:
    """The simulation placed again with the rules' nodes kept float, ranges carried over."""
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
    placed.range_estimator = sim.range_estimator
    placed.observed_ranges = sim.observed_ranges
    placed.weight_integers = sim.weight_integers
    placed.wide_weights = set(sim.wide_weights)
    placed.derive_bias_encodings()
    return placed
