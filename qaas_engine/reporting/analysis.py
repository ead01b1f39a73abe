"""Per-layer analysis in the manner of AIMET's QuantAnalyzer: which layers cost the accuracy.

Three views per weighted layer, on a few batches: the SQNR of its output in the fully quantized
model (where error accumulates), and the model's output SQNR when *only* that layer's weights or
*only* its output activation are quantized (everything else float) — its own sensitivity. The
layers whose quantization alone accounts for a large share of the full model's output noise are
suggested for ``--keep-float``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from qaas_engine.evaluation import SQNR_CEILING_DB
from qaas_engine.graph.lazy import materialized
from qaas_engine.quant.observers import as_array
from qaas_engine.quant.sim import QuantSim
from qaas_engine.reporting.probe import ProbeModel, build_probe
from qaas_engine.tapped import TappedModel, samples
from qaas_engine.tensors import batch_size, to_numpy, to_torch

if TYPE_CHECKING:
    from qaas_engine.graph.executor import GraphExecutor

Feeds = Mapping[str, Any]
NOISE_SHARE_TO_SUGGEST = 0.25  # a layer alone causing >= this share of the output noise
MAX_SUGGESTIONS = 3
DEFAULT_TIME_BUDGET_S = 10.0
PIECE_SAMPLES = 4  # samples per run: small steps, so a budget can stop between them


@dataclass
class _Sqnr:
    signal: float = 0.0
    noise: float = 0.0

    def update(self, reference: Any, test: Any) -> None:
        """Torch tensors or arrays."""
        self.update_arrays(as_array(reference), as_array(test))

    def update_arrays(self, reference: np.ndarray, test: np.ndarray) -> None:
        reference, test = reference.astype(np.float64), test.astype(np.float64)
        self.signal += float(np.sum(reference**2))
        self.noise += float(np.sum((reference - test) ** 2))

    def db(self) -> float:
        if self.noise == 0:
            return SQNR_CEILING_DB
        if self.signal == 0:
            return -SQNR_CEILING_DB
        return round(min(SQNR_CEILING_DB, 10 * math.log10(self.signal / self.noise)), 3)


@dataclass(frozen=True)
class _Layer:
    node: str
    op_type: str
    weight: str
    output: str  # the tensor the runtime writes: after a fused Relu/Clip
    input: str  # the activation multiplied with the weight


def _layers(sim: QuantSim) -> list[_Layer]:
    outputs = {node.name: node.outputs[0] for node in sim.executor.nodes if node.outputs}
    by_name = {node.name: node for node in sim.executor.nodes}
    layers = []
    for weight, site in sim.placement.weights.items():
        if weight not in sim.weight_encodings or site.node not in by_name:
            continue
        produced = outputs[site.node]
        fused_into = sim.placement.fused.get(produced)
        output = outputs.get(fused_into, produced) if fused_into else produced
        layers.append(_Layer(site.node, site.op_type, weight, output, site.input))
    return layers


@dataclass
class LayerMeasurement:
    """One weighted layer's SQNRs in dB; the two sensitivities are None when not measured."""

    layer: _Layer
    sqnr_db: float
    weights_only_sqnr_db: float | None = None
    activations_only_sqnr_db: float | None = None
    skipped: str | None = None  # why the sensitivities were not measured
    input_sqnr_db: float | None = None  # the layer's input in the fully quantized model

    @property
    def sqnr_drop_db(self) -> float:
        """SQNR lost across this layer in the fully quantized model (0 when unknown)."""
        return 0.0 if self.input_sqnr_db is None else self.input_sqnr_db - self.sqnr_db

    @property
    def sensitivity_db(self) -> float | None:
        """The worse of its two sensitivities: what quantizing this layer alone costs."""
        measured = [
            v for v in (self.weights_only_sqnr_db, self.activations_only_sqnr_db) if v is not None
        ]
        return min(measured) if measured else None


@dataclass
class Measurements:
    output_sqnr_db: float  # the fully quantized model's output against float
    samples: int
    layers: list[LayerMeasurement]
    engine: str = "onnxruntime"  # what computed them


def measure_layers(
    sim: QuantSim,
    batches: list[dict[str, np.ndarray]],
    float_model: onnx.ModelProto,
    qdq: onnx.ModelProto,
    float_weights: Mapping[str, Any] | None = None,
    *,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    batched: bool = True,
) -> Measurements:
    """Every weighted layer's output SQNR in the fully quantized model, then, while the time
    budget lasts, the model's output SQNR with only that layer's weights or only its output
    quantized (two runs per layer: the expensive part), most suspect layers first.

    In ONNX Runtime (the exported graph for the first part, a switchable probe of the float
    graph for the second); in the torch executor where ORT cannot load the float graph.
    """
    try:
        return _measure_in_runtime(sim, batches, float_model, qdq, time_budget_s, batched)
    except Exception as error:  # a graph only the torch executor runs
        reason = str(error).splitlines()[0][:200]
        measurements = _measure_in_torch(sim, batches, float_weights, time_budget_s)
        measurements.engine = f"torch (onnxruntime could not run the analysis: {reason})"
        return measurements


def _measure_in_runtime(
    sim: QuantSim,
    batches: list[dict[str, np.ndarray]],
    float_model: onnx.ModelProto,
    qdq: onnx.ModelProto,
    time_budget_s: float,
    batched: bool,
) -> Measurements:
    """``batched``: samples lie on axis 0 of every feed, so a batch may be cut into pieces."""
    started = time.perf_counter()
    layers = _layers(sim)
    quantizers = sim.activation_quantizers()
    graph_outputs = {value.name for value in qdq.graph.output}
    qdq_tensors = {name for node in qdq.graph.node for name in node.output}

    def exported(tensor: str) -> str:
        """The tensor's name in the exported graph, after its Q/DQ."""
        renamed = f"{tensor}_dequantized"
        return renamed if tensor not in graph_outputs and renamed in qdq_tensors else tensor

    watched = sorted({t for layer in layers for t in (layer.output, layer.input)})
    # the probe with every switch off is the float model: it gives the float taps too
    probe = build_probe(
        float_model,
        {layer.weight: sim.weight_encodings[layer.weight] for layer in layers},
        {layer.output: quantizers[layer.output] for layer in layers if layer.output in quantizers},
        taps=watched,
        # the weights as the export holds them (a quantized step may have moved them)
        quantize_from=_ExportedWeights(sim, [layer.weight for layer in layers]),
    )
    quantized = TappedModel(qdq, [exported(t) for t in watched], optimized=False, batched=batched)
    sqnr = {t: _Sqnr() for t in watched}
    whole = _Sqnr()
    final = float_model.graph.output[0].name
    # Every run below takes one piece: samples few enough that the exposed tensors fit the
    # tapped models' budget (ORT's own buffers for a piece are of the same order), so memory
    # stays bounded whatever the model; pieces stop coming once half the budget is spent.
    pieces: list[dict[str, np.ndarray]] = []
    references: list[np.ndarray] = []
    probe_seconds = 0.0  # the float probe over the pieces kept: what one sensitivity run costs
    for feeds in batches:
        size = min(quantized.chunk_for(feeds), PIECE_SAMPLES)
        for piece in _chunks(feeds, size) if batched else [feeds]:
            if pieces and time.perf_counter() - started > time_budget_s / 2:
                break
            ran = time.perf_counter()
            ref = probe.run_tapped(piece)
            probe_seconds += time.perf_counter() - ran
            test = next(quantized.run(piece))  # the same samples through both models
            whole.update_arrays(ref[final], test[final])
            for tensor in watched:
                if tensor in ref and exported(tensor) in test:
                    sqnr[tensor].update_arrays(ref[tensor], test[exported(tensor)])
            pieces.append(piece)
            references.append(ref[final])
    del quantized

    measured = [
        LayerMeasurement(layer, sqnr[layer.output].db(), input_sqnr_db=sqnr[layer.input].db())
        for layer in layers
    ]
    # where the quantized model loses most SQNR across a layer, first: the budget goes there.
    # A layer costs a probe run over the pieces per quantizer measured (the tapped float run
    # timed above, or the last layer's own time once known): it is measured only where that
    # still fits, so the section ends within its budget instead of one layer past it.
    per_run = probe_seconds
    for measurement in sorted(measured, key=lambda m: -m.sqnr_drop_db):
        layer = measurement.layer
        runs = 2 if layer.output in probe.activation_switches else 1
        if time.perf_counter() - started + runs * per_run > time_budget_s:
            measurement.skipped = f"sensitivity not measured: {time_budget_s:.1f} s budget spent"
            continue
        ran = time.perf_counter()
        measurement.weights_only_sqnr_db = _probe_sqnr(
            probe, pieces, references, weight=layer.weight
        )
        if layer.output in probe.activation_switches:
            measurement.activations_only_sqnr_db = _probe_sqnr(
                probe, pieces, references, activation=layer.output
            )
        per_run = (time.perf_counter() - ran) / runs
    samples = sum(batch_size(piece) for piece in pieces) if batched else len(pieces)
    return Measurements(whole.db(), samples, measured, engine="onnxruntime")


class _ExportedWeights(Mapping[str, np.ndarray]):
    """The weights as the export holds them, each read as the probe packs it: not all of a
    large model's weights at once beside the probe being built."""

    def __init__(self, sim: QuantSim, names: list[str]) -> None:
        self._weights = sim.executor.weights
        self._names = set(names)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        return to_numpy(self._weights[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _probe_sqnr(
    probe: ProbeModel,
    batches: list[dict[str, np.ndarray]],
    references: list[np.ndarray],
    **switch: str,
) -> float:
    meter = _Sqnr()
    for feeds, reference in zip(batches, references, strict=True):
        meter.update_arrays(reference, probe.run(feeds, **switch))
    return meter.db()


def _chunks(feeds: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, batch_size(feeds), size):
        yield samples(feeds, start, start + size)


def _measure_in_torch(
    sim: QuantSim,
    batches: list[dict[str, np.ndarray]],
    float_weights: Mapping[str, Any] | None,
    time_budget_s: float,
) -> Measurements:
    """The same measurements op by op in the torch executor (graphs ORT cannot load)."""
    import torch

    started = time.perf_counter()
    executor = materialized(sim.executor)
    reference_weights = dict(float_weights if float_weights is not None else executor.weights)
    quantized = sim.quantized_weights()
    quantizers = sim.activation_quantizers()
    layers = _layers(sim)
    final = executor.output_names[0]
    batch_list: list[Feeds] = [to_torch(feeds) for feeds in batches]
    watched = {layer.output for layer in layers}

    references: list[dict[str, Any]] = []
    per_layer = {layer.node: _Sqnr() for layer in layers}
    whole = _Sqnr()
    measured = []
    with torch.no_grad():
        for feeds in batch_list:
            captured = _run(executor, feeds, reference_weights, watched, {})
            references.append(captured)
            quant = _run(executor, feeds, quantized, watched, quantizers)
            whole.update(captured[final], quant[final])
            for layer in layers:
                per_layer[layer.node].update(captured[layer.output], quant[layer.output])

        for layer in layers:
            measurement = LayerMeasurement(layer, per_layer[layer.node].db())
            measured.append(measurement)
            if time.perf_counter() - started > time_budget_s:
                measurement.skipped = (
                    f"sensitivity not measured: {time_budget_s:.0f} s budget spent"
                )
                continue
            weights_only = {**reference_weights, layer.weight: quantized[layer.weight]}
            measurement.weights_only_sqnr_db = _output_sqnr(
                executor, batch_list, references, weights_only, {}, final
            )
            encoding = quantizers.get(layer.output)
            if encoding is not None:
                measurement.activations_only_sqnr_db = _output_sqnr(
                    executor, batch_list, references, reference_weights,
                    {layer.output: encoding}, final,
                )  # fmt: skip
    samples = sum(batch_size(feeds) for feeds in batches)
    return Measurements(whole.db(), samples, measured, engine="torch")


def noise_share(sensitivity_db: float, output_sqnr_db: float) -> float:
    """The share of the full model's output noise that one layer alone causes (at most 1)."""
    return round(min(1.0, 10 ** ((output_sqnr_db - sensitivity_db) / 10)), 4)


def rank_layers(measurements: Measurements) -> list[LayerMeasurement]:
    """Most sensitive first (lowest SQNR when alone quantized); unmeasured layers last."""
    return sorted(
        measurements.layers,
        key=lambda m: (m.sensitivity_db is None, m.sensitivity_db or 0.0),
    )


def suggest_keep_float(ranked: list[LayerMeasurement], output_sqnr_db: float) -> list[str]:
    """The few layers that alone cause a large share of the output noise, worst first."""
    return [
        m.layer.node
        for m in ranked
        if m.sensitivity_db is not None
        and noise_share(m.sensitivity_db, output_sqnr_db) >= NOISE_SHARE_TO_SUGGEST
    ][:MAX_SUGGESTIONS]


def describe(
    measurements: Measurements, ranked: list[LayerMeasurement], suggestions: list[str]
) -> dict[str, Any]:
    """The report's ``analysis`` section: ranked rows, the suggestion, and how to read them."""
    whole_db = measurements.output_sqnr_db
    return {
        "output_sqnr_db": whole_db,
        "samples": measurements.samples,
        "layers": [_row(m, whole_db) for m in ranked],
        "suggest_keep_float": suggestions,
        "suggestion": (
            f"--keep-float {','.join(suggestions)}"
            if suggestions
            else "no single layer dominates the quantization noise"
        ),
        "how": (
            "sqnr_db: the layer's output in the fully quantized model vs float; "
            "weights_only / activations_only: the model's output SQNR with only that layer's "
            "weights / only its output quantizer applied, all else float; ranked by the lower "
            f"of the two; suggested when that alone is >= {NOISE_SHARE_TO_SUGGEST:.0%} of the "
            "full model's output noise (noise_share)"
        ),
    }


def _row(measurement: LayerMeasurement, output_sqnr_db: float) -> dict[str, Any]:
    layer = measurement.layer
    row: dict[str, Any] = {
        "layer": layer.node,
        "op": layer.op_type,
        "output": layer.output,
        "sqnr_db": measurement.sqnr_db,
        "weights_only_sqnr_db": measurement.weights_only_sqnr_db,
        "activations_only_sqnr_db": measurement.activations_only_sqnr_db,
    }
    if measurement.skipped is not None:
        row["note"] = measurement.skipped
    sensitivity = measurement.sensitivity_db
    row["sensitivity_db"] = sensitivity
    row["noise_share"] = None if sensitivity is None else noise_share(sensitivity, output_sqnr_db)
    return row


def analyze_layers(
    sim: QuantSim,
    batches: list[dict[str, np.ndarray]],
    float_model: onnx.ModelProto,
    qdq: onnx.ModelProto,
    float_weights: Mapping[str, Any] | None = None,
    *,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    batched: bool = True,
) -> dict[str, Any]:
    """Rank the weighted layers by how much quantizing each alone hurts the model's output."""
    started = time.perf_counter()
    measurements = measure_layers(
        sim, batches, float_model, qdq, float_weights, time_budget_s=time_budget_s,
        batched=batched,
    )  # fmt: skip
    ranked = rank_layers(measurements)
    suggestions = suggest_keep_float(ranked, measurements.output_sqnr_db)
    section = describe(measurements, ranked, suggestions)
    section["seconds"] = round(time.perf_counter() - started, 3)
    section["engine"] = measurements.engine
    section["time_budget_s"] = round(time_budget_s, 3)
    return section


def _run(
    executor: GraphExecutor,
    feeds: Feeds,
    weights: Mapping[str, Any],
    watched: set[str],
    quantizers: Mapping[str, Any],
) -> dict[str, Any]:
    captured: dict[str, Any] = {}

    def hook(name: str, value: Any) -> Any:
        encoding = quantizers.get(name)
        if encoding is not None and value.is_floating_point():
            value = encoding.fake_quantize(value)
        if name in watched:
            captured[name] = value
        return value

    captured.update(executor.run(feeds, hook=hook, weights=weights))
    return captured


def _output_sqnr(
    executor: GraphExecutor,
    batches: list[Feeds],
    references: list[dict[str, Any]],
    weights: Mapping[str, Any],
    quantizers: Mapping[str, Any],
    final: str,
) -> float:
    meter = _Sqnr()
    for feeds, reference in zip(batches, references, strict=True):
        out = _run(executor, feeds, weights, set(), quantizers)[final]
        meter.update(reference[final], out)
    return meter.db()
