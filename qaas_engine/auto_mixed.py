"""auto's mixed-precision rungs: the activations that carry most of the output noise on 16-bit
grids (W8A16 groups, which ONNX Runtime runs), and, where 16 bits are not enough, the noisiest
quantizers (activations or weights) kept float.

A rung here does not calibrate again: it starts from the most faithful post-training
configuration auto built, ranks its activation quantizers by first-order output noise on
calibration samples (``quant.sensitivity``, the pricing the ``sensitive_tensor`` rule uses,
here with each output channel's noise relative to its power, along the axis the evaluation
takes as channels (``output_axes``): the worst-channel SQNR target counts noise that way, and
an absolute ranking misses a small-range channel's), and widens the top k for k = 1, 2, 4, ...
until the exported model meets the target. Each configuration is priced by the energy model,
so the report's frontier shows what each step of fidelity costs.

A base whose pipeline ran empirical bias correction had its biases moved to offset the mean
shift *its* grids caused, activation grids included; a rung that widens or floats some of them
gets the biases its base's float steps left, and says so (its pipeline drops the step). Kept as
they were, the offsets outlive the noise they cancelled: on Silero VAD (op18, the LSTM unrolled;
its STFT power spectrum's 8-bit grid shifts the mean the most), 'dfq' with every activation on a
16-bit grid measured 9.6 dB output SQNR on recorded states (its weights alone, activations
float, 9.2 dB, where 'ptq''s weights alone give 36 dB), 31.9 dB with the float steps' biases.
Correcting each rung again on its own grids measured no better there (25.4 dB; streamed on
auto's validation data 20.8 dB output and -4.4 dB stateN worst channel, against 16.7 and -1.2
undone) and cost a pass over the calibration data per layer per rung: auto's wall time 98 s
against 7.5 s undone (6 s before either; the bench's 2-core machine, shared).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from qaas_engine.data import Dataset
from qaas_engine.export.qdq import export_qdq
from qaas_engine.graph.lazy import materialized
from qaas_engine.output_axes import channel_axes
from qaas_engine.quant.sensitivity import MAX_GRAPH_BYTES, estimate_noise, sample_activation_bytes
from qaas_engine.quant.sim import QuantSim
from qaas_engine.state import PipelineState
from qaas_engine.targets import target_rules
from qaas_engine.tensors import to_numpy

WIDE_BITS = 16
# calibration samples the noise is priced on, at most; fewer where their activations would
# not fit one pricing pass (``MAX_GRAPH_BYTES``), counted, never timed, so the ranking and the
# choice are the same on every machine (a timed cut priced the same model on 8 samples here
# and on 1 there)
PRICED_SAMPLES = 8


@dataclass(frozen=True)
class Ranking:
    """Activation quantizers, the noisiest first; every quantizer (activations and weights)
    the same way, for the float fallback; and how that order was found."""

    names: list[str]
    how: str
    everything: list[str]


@dataclass(frozen=True)
class MixedConfig:
    """One mixed configuration: which tensors changed, and the simulation and export."""

    kind: str  # "16-bit" or "float"
    tensors: list[str]
    sim: QuantSim
    qdq: onnx.ModelProto
    bias_correction_undone: bool = False  # the base's empirical offsets dropped

    def changes(self, base: str, ranking: Ranking) -> list[dict[str, str]]:
        """The report's lines for it, in the rules' shape (rule, node, action, why)."""
        pool = ranking.names if self.kind == "16-bit" else ranking.everything
        what = "activations" if self.kind == "16-bit" else "quantizers"
        lines = []
        for rank, name in enumerate(self.tensors):
            if self.kind == "16-bit":
                action = f"{WIDE_BITS}-bit activations"
            elif name in self.sim.placement.weights:
                action = "weights kept float"
            else:
                action = "activation kept float (no Q/DQ)"
            why = (
                f"pipeline auto: #{rank + 1} of {len(pool)} {what} by output noise "
                f"({ranking.how}); with the {len(self.tensors)} noisiest changed on top of "
                f"'{base}' the fidelity target was met where fewer did not"
            )
            lines.append(
                {"rule": "auto_mixed_precision", "node": name, "action": action, "why": why}
            )
        return lines


def rank_activations(state: PipelineState, sim: QuantSim) -> Ranking:
    """The quantizers, largest first-order output noise first, priced on calibration samples;
    the activations alone by grid step where the pricing cannot run (an op without a torch
    gradient)."""
    names = list(sim.activation_encodings)
    data = state.calibration
    if data is None or not names:
        return _by_step(sim, names, "no calibration data to price on")
    try:
        samples = 1
        if not data.one_at_a_time:
            held = sample_activation_bytes(sim, _first(data, 1))
            samples = max(1, min(PRICED_SAMPLES, data.num_samples, MAX_GRAPH_BYTES // max(held, 1)))
        estimate = estimate_noise(
            sim,
            _first(data, samples),
            seed=state.spec.seed,
            per_channel=True,
            channel_axes=channel_axes(state.model),
        )
    except Exception as error:  # the torch executor cannot differentiate some graph
        return _by_step(sim, names, f"pricing failed: {str(error).splitlines()[0][:120]}")
    power = {**estimate.weights, **estimate.activations}
    ranked = sorted(names, key=lambda name: -power.get(name, 0.0))
    everything = sorted([*names, *sim.weight_encodings], key=lambda name: -power.get(name, 0.0))
    return Ranking(
        ranked,
        f"first-order noise relative to each output channel's power, on {samples} calibration "
        "samples",
        everything,
    )


def _by_step(sim: QuantSim, names: list[str], why: str) -> Ranking:
    step = {name: float(np.max(sim.activation_encodings[name].scale)) for name in names}
    ranked = sorted(names, key=lambda name: -step[name])
    return Ranking(ranked, f"by grid step ({why})", ranked)


def _first(data: Dataset, count: int) -> dict[str, Any]:
    feeds, _ = next(iter(data.batches(count, count)))
    return {name: np.asarray(value) for name, value in feeds.items()}


def counts(total: int) -> list[int]:
    """1, 2, 4, ... and ``total`` last: log2(total) configurations reach every tensor."""
    steps, k = [], 1
    while k < total:
        steps.append(k)
        k *= 2
    return [*steps, total] if total else []


def widened(sim: QuantSim, names: list[str]) -> QuantSim:
    """A copy of ``sim`` with ``names`` on 16-bit grids over the ranges calibration saw
    (``QuantSim.wide_encoding``)."""
    new = _copy(sim)
    for name in names:
        encoding = new.activation_encodings[name]
        if encoding.scheme.bits >= WIDE_BITS:
            continue
        new.activation_encodings[name] = new.wide_encoding(name, WIDE_BITS)
    new.derive_bias_encodings()
    return new


def floated(
    sim: QuantSim,
    names: list[str],
    model: onnx.ModelProto | None = None,
    reference: Mapping[str, Any] | None = None,
) -> QuantSim:
    """A copy of ``sim`` with ``names`` (activations or weights) left float (no Q/DQ).

    A quantized step may have changed a layer's parameters to offset its quantization (bias
    correction moves biases); a layer whose weights are kept float gets its float parameters
    back from ``reference`` (the state's float weights), so with every quantizer kept float the
    configuration is the float model, not the float model with stale corrections."""
    new = _copy(sim)
    for name in [*names, *_fed_by_dq(sim, names)]:
        new.activation_encodings.pop(name, None)
        new.weight_encodings.pop(name, None)
        new.skipped[name] = "pipeline auto: among the noisiest quantizers, kept float"
    restore = _float_parameters(sim, set(names) & set(sim.weight_encodings), model, reference)
    if restore:
        executor = copy.copy(materialized(sim.executor))
        executor.weights = {**executor.weights, **restore}
        new.executor = executor
        new.invalidate()
    new.derive_bias_encodings()
    return new


def _fed_by_dq(sim: QuantSim, names: list[str]) -> list[str]:
    """The activation quantizers feeding the layers whose weights in ``names`` are kept float.

    ONNX Runtime's optimizer (WeightBiasQuantization, 1.20+) quantizes a float weight whose
    layer reads a DequantizeLinear output: per-tensor int8, coarser than the per-channel grid it
    replaced, so 'weights kept float' would deploy worse than quantized weights. A layer without
    a quantized input keeps its float weights in ONNX Runtime too."""
    fed = []
    for name in names:
        site = sim.placement.weights.get(name)
        source = None if site is None else sim.quantizer_of(site.input)
        if source is not None:
            fed.append(source)
    return fed


def _float_parameters(
    sim: QuantSim,
    weights: set[str],
    model: onnx.ModelProto | None,
    reference: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The float values of the parameters of the layers whose weights in ``weights`` are kept
    float, where a quantized step changed them."""
    if not weights or model is None or not reference:
        return {}
    current = sim.executor.weights
    restore: dict[str, Any] = {}
    for node in model.graph.node:
        if not weights.intersection(node.input):
            continue
        for name in node.input:
            if name in reference and name in current and current[name] is not reference[name]:
                if not np.array_equal(to_numpy(current[name]), to_numpy(reference[name])):
                    restore[name] = reference[name]
    return restore


def bias_correction_undone(state: PipelineState, sim: QuantSim) -> bool:
    """Where the base's pipeline corrected biases empirically, ``sim`` (a copy of the base with
    some grids changed) gets the biases the float steps left (in place; the base's executor and
    weights are not touched); True where it did. A correction from BatchNorm statistics
    (analytical) depends on the weights' grids alone, which a rung never changes."""
    report = state.step_reports.get("bias_correction") or {}
    if report.get("mode") != "empirical":
        return False
    reference = state.reference_weights()
    biases = [row["bias"] for row in report.get("layers", []) if row["bias"] in reference]
    if not biases:
        return False
    executor = copy.copy(materialized(sim.executor))
    executor.weights = {**executor.weights, **{bias: reference[bias] for bias in biases}}
    sim.executor = executor
    sim.invalidate()
    sim.derive_bias_encodings()
    return True


def _copy(sim: QuantSim) -> QuantSim:
    new = copy.copy(sim)
    new.activation_encodings = dict(sim.activation_encodings)
    new.weight_encodings = dict(sim.weight_encodings)
    new.skipped = dict(sim.skipped)
    new.engines = dict(sim.engines)
    new.bias_encodings = {}
    new.invalidate()
    return new


def build(state: PipelineState, sim: QuantSim, kind: str, tensors: list[str]) -> MixedConfig:
    """The configuration and its export, laid out for the same kernels as the base."""
    changed = (
        widened(sim, tensors)
        if kind == "16-bit"
        else floated(sim, tensors, state.model, state.float_weights)
    )
    undone = bias_correction_undone(state, changed)
    unsigned = state.kernels is not None and not state.kernels.signed_weights
    # the same layout as the base's export (pipeline.run_pipeline)
    executed = state.kernels is None or target_rules(state.kernels.target).executed_here
    qdq = export_qdq(
        state.model, changed, unsigned_weights=unsigned, quantize_scalar_operands=executed
    )
    onnx.checker.check_model(qdq)
    return MixedConfig(kind, list(tensors), changed, qdq, undone)
