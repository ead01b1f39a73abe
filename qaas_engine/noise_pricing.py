"""Each quantizer's output noise measured in ONNX Runtime, and which engine prices it cheaper.

``quant.sensitivity`` prices every quantizer at once from one backward pass of the torch
executor: one pass for all of them, but a post-training job that runs it imports torch for it
alone (about 2 s on the 2-core dev box: more than a small model's whole pricing). Here each
activation's noise is *measured*: the float graph with every activation quantizer behind
``Where(switch, quantized, float)`` (``reporting.probe``), one ONNX Runtime session, one run
per activation with only its switch on; and a second session with every weight on its grid
(the rules weigh the weights' noise only as a total). No torch and no linearisation: the noise
is what that grid alone does to the outputs on the sample.

The cost is a forward per activation, against torch's forward + backward for all of them, so
it pays only where a model has few activations or cheap forwards. Measured on the dev box at
load 8 (whole ``rules._priced``, same run): the LSTM captcha OCR (53 activations, 0.49 GMAC)
2.9 s here against 3.4 s in torch, its import included; YOLOX at 416x416 (263 activations,
3.2 GMAC) about 90 s against 2.8 s; the batch axis cannot hold one copy per switch there, as
both declare batch 1. ``choose`` decides by counting, never by timing, so the same model,
data and seed get the same grids on any machine: ``ORT_PRICING_COST`` forwards per run, against
torch's ``TORCH_COST_FACTOR`` forwards plus ``TORCH_IMPORT_MACS`` multiply-accumulates for its
import and executor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from qaas_engine.concurrent_runs import run_each
from qaas_engine.quant.sensitivity import NoiseEstimate
from qaas_engine.quant.sim import QuantSim
from qaas_engine.reporting.probe import ProbeModel, build_probe
from qaas_engine.sessions import session

# the weights' total noise, under one name: the rules never promote a weight, they only weigh
# the activations' share against it
WEIGHTS = "(weights)"
# torch executor forward + backward per sample, in ORT float forwards (as rules priced it)
TORCH_COST_FACTOR = 40.0
# importing torch and materializing its executor, in multiply-accumulates ORT computes in the
# same time (about 2 s at ~30 GMAC/s on two cores): paid once per job that prices in torch
TORCH_IMPORT_MACS = 6e10
# one probe run with a switch on, in float forwards (Q/DQ + Where on every quantizer)
ORT_PRICING_COST = 1.0


@dataclass(frozen=True)
class Pricing:
    """The engine that prices the noise and what one sample costs there, in float forwards."""

    engine: str  # "onnxruntime" or "torch"
    per_sample: float


def ort_cost(sim: QuantSim) -> float:
    """Runs per sample: the reference, one per activation, one for all weights."""
    return ORT_PRICING_COST * (len(sim.activation_encodings) + 1 + bool(sim.weight_encodings))


def torch_cost(macs_per_sample: int) -> float:
    """Forward + backward per sample, plus the import spread over one sample."""
    imported = TORCH_IMPORT_MACS / macs_per_sample if macs_per_sample > 0 else 0.0
    return TORCH_COST_FACTOR + imported


def choose(sim: QuantSim, macs_per_sample: int, budget: float) -> Pricing:
    """ONNX Runtime where it costs less than torch and fits ``budget`` (float forwards); else
    torch, the cheaper in passes."""
    ort = Pricing("onnxruntime", ort_cost(sim))
    torch = Pricing("torch", torch_cost(macs_per_sample))
    if ort.per_sample <= torch.per_sample and ort.per_sample <= budget:
        return ort
    if TORCH_COST_FACTOR <= budget:  # what the torch pass itself costs, as rules counted it
        return Pricing("torch", TORCH_COST_FACTOR)
    return ort if ort.per_sample <= torch.per_sample else torch


def measure_noise(
    model: onnx.ModelProto, sim: QuantSim, feeds: Mapping[str, Any], *, per_channel: bool = False
) -> NoiseEstimate:
    """Each activation quantizer's output noise power on ``feeds`` (squared error summed over
    the float outputs' elements), all weight quantizers' together under ``WEIGHTS``, and the
    outputs' power: the units ``quant.sensitivity`` prices in. Two sessions: the activations'
    runs pay no weight switch (a Where over every weight each run: 4x the LSTM OCR's forward),
    and the weights are quantized once in numpy."""
    arrays = {name: np.asarray(value) for name, value in feeds.items()}
    probe = build_probe(model, {}, sim.activation_encodings, arena=True)
    reference = _floats(probe.run_switched(arrays))
    if all(r is None for r in reference):
        return NoiseEstimate()
    if per_channel:
        factors = [None if r is None else _channel_factors(r) for r in reference]
        signal = float(sum(_channel_count(r) for r in reference if r is not None))
    else:
        factors = [None] * len(reference)
        signal = float(sum(float(np.sum(r**2)) for r in reference if r is not None))
    estimate = NoiseEstimate(signal=signal)
    estimate.activations.update(_activation_noises(probe, arrays, reference, factors))
    names = probe.outputs
    del probe
    if sim.weight_encodings:
        estimate.weights[WEIGHTS] = _noise(
            reference, _with_quantized_weights(model, sim, arrays, names), factors
        )
    return estimate


def _channel_axis(values: np.ndarray) -> int | None:
    """The channel axis as ``quant.sensitivity`` takes it: 1 of a 4-D output, else the last;
    None under two dimensions (the whole output is one channel)."""
    if values.ndim < 2:
        return None
    return 1 if values.ndim == 4 else values.ndim - 1


def _channel_count(values: np.ndarray) -> int:
    axis = _channel_axis(values)
    return 1 if axis is None else int(values.shape[axis])


def _channel_factors(values: np.ndarray) -> np.ndarray:
    """1 / the power of each element's channel over the samples (floored at 1e-6 of the mean
    channel's): a noise weighed by it counts relative to its channel, as the worst-channel
    SQNR does, so a small-range output is not drowned by a large-range one."""
    axis = _channel_axis(values)
    if axis is None:
        return np.full(values.shape, 1.0 / max(float(np.sum(values**2)), 1e-30))
    dims = tuple(d for d in range(values.ndim) if d != axis)
    power = np.sum(values**2, axis=dims, keepdims=True)
    return 1.0 / np.maximum(power, max(float(power.mean()) * 1e-6, 1e-30))


def _activation_noises(
    probe: ProbeModel,
    feeds: Mapping[str, np.ndarray],
    reference: list[np.ndarray | None],
    factors: list[np.ndarray | None],
) -> dict[str, float]:
    """Each activation's noise, one run with its switch on, two runs at a time
    (``concurrent_runs``): each run and its sum are computed as alone, in the switches' order."""
    switched = list(probe.activation_switches)

    def noise(name: str) -> float:
        return _noise(reference, probe.run_switched(feeds, activations=[name]), factors)

    return dict(zip(switched, run_each(noise, switched), strict=True))


def _with_quantized_weights(
    model: onnx.ModelProto, sim: QuantSim, feeds: Mapping[str, np.ndarray], names: list[str]
) -> list[np.ndarray]:
    """The outputs with every weight on its grid (in float, as the export's DequantizeLinear
    gives it) and the activations float: one plain session and one run, where a switch per
    weight would cost a Where over every weight on every run."""
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    for init in quantized.graph.initializer:
        encoding = sim.weight_encodings.get(init.name)
        if encoding is not None:
            values = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(encoding.fake_quantize_array(values), init.name))
    runner = session(quantized)
    del quantized
    return list(runner.run(names, dict(feeds)))


def try_measure_noise(
    model: onnx.ModelProto, sim: QuantSim, feeds: Mapping[str, Any], *, per_channel: bool = False
) -> NoiseEstimate | None:
    """``measure_noise``, or None where ONNX Runtime cannot run the probe graph or the probe
    cannot switch every activation (one a subgraph computes): the caller prices in torch."""
    try:
        estimate = measure_noise(model, sim, feeds, per_channel=per_channel)
    except Exception:  # an op or type the probe's Q/DQ/Where cannot follow: torch can
        return None
    if set(estimate.activations) != set(sim.activation_encodings) and estimate.signal > 0:
        return None
    return estimate


def _floats(outputs: list[Any]) -> list[np.ndarray | None]:
    return [
        np.asarray(value, dtype=np.float64)
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)
        else None
        for value in outputs
    ]


def _noise(
    reference: list[np.ndarray | None],
    outputs: list[np.ndarray],
    factors: list[np.ndarray | None] | None = None,
) -> float:
    """Squared error summed over the float outputs, each element weighed by its factor."""
    total = 0.0
    weights = factors if factors is not None else [None] * len(reference)
    for ref, value, factor in zip(reference, outputs, weights, strict=True):
        if ref is not None:
            squared = (np.asarray(value, dtype=np.float64) - ref) ** 2
            total += float(np.sum(squared if factor is None else squared * factor))
    return total
