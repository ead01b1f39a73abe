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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from qaas_engine.evaluation import SQNR_CEILING_DB
from qaas_engine.graph.executor import GraphExecutor
from qaas_engine.quant.sim import QuantSim

Feeds = Mapping[str, torch.Tensor]
NOISE_SHARE_TO_SUGGEST = 0.25  # a layer alone causing >= this share of the output noise
MAX_SUGGESTIONS = 3
DEFAULT_TIME_BUDGET_S = 15.0


@dataclass
class _Sqnr:
    signal: float = 0.0
    noise: float = 0.0

    def update(self, reference: torch.Tensor, test: torch.Tensor) -> None:
        reference, test = reference.double(), test.double()
        self.signal += float(torch.sum(reference**2))
        self.noise += float(torch.sum((reference - test) ** 2))

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
        layers.append(_Layer(site.node, site.op_type, weight, output))
    return layers


def analyze_layers(
    sim: QuantSim,
    batches: Iterable[Feeds],
    float_weights: Mapping[str, torch.Tensor] | None = None,
    *,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
) -> dict[str, Any]:
    """Rank the weighted layers by how much quantizing each alone hurts the model's output."""
    started = time.perf_counter()
    executor: GraphExecutor = sim.executor
    reference_weights = dict(float_weights if float_weights is not None else executor.weights)
    quantized = sim.quantized_weights()
    quantizers = sim.activation_quantizers()
    layers = _layers(sim)
    final = executor.output_names[0]
    batches = list(batches)
    watched = {layer.output for layer in layers}

    references: list[dict[str, torch.Tensor]] = []
    per_layer = {layer.node: _Sqnr() for layer in layers}
    whole = _Sqnr()
    with torch.no_grad():
        for feeds in batches:
            captured = _run(executor, feeds, reference_weights, watched, {})
            references.append(captured)
            quant = _run(executor, feeds, quantized, watched, quantizers)
            whole.update(captured[final], quant[final])
            for layer in layers:
                per_layer[layer.node].update(captured[layer.output], quant[layer.output])

        rows = []
        for layer in layers:
            row: dict[str, Any] = {
                "layer": layer.node,
                "op": layer.op_type,
                "output": layer.output,
                "sqnr_db": per_layer[layer.node].db(),
                "weights_only_sqnr_db": None,
                "activations_only_sqnr_db": None,
            }
            rows.append(row)
            if time.perf_counter() - started > time_budget_s:
                row["note"] = f"sensitivity not measured: {time_budget_s:.0f} s budget spent"
                continue
            weights_only = {**reference_weights, layer.weight: quantized[layer.weight]}
            row["weights_only_sqnr_db"] = _output_sqnr(
                executor, batches, references, weights_only, {}, final
            )
            encoding = quantizers.get(layer.output)
            if encoding is not None:
                row["activations_only_sqnr_db"] = _output_sqnr(
                    executor, batches, references, reference_weights,
                    {layer.output: encoding}, final,
                )  # fmt: skip
    whole_db = whole.db()
    for row in rows:
        measured = [
            v
            for v in (row["weights_only_sqnr_db"], row["activations_only_sqnr_db"])
            if v is not None
        ]
        row["sensitivity_db"] = min(measured) if measured else None
        row["noise_share"] = (
            round(min(1.0, 10 ** ((whole_db - row["sensitivity_db"]) / 10)), 4)
            if measured
            else None
        )
    ranked = sorted(rows, key=lambda r: (r["sensitivity_db"] is None, r["sensitivity_db"] or 0.0))
    suggestions = [
        r["layer"]
        for r in ranked
        if r["noise_share"] is not None and r["noise_share"] >= NOISE_SHARE_TO_SUGGEST
    ][:MAX_SUGGESTIONS]
    return {
        "output_sqnr_db": whole_db,
        "samples": sum(_batch_size(feeds) for feeds in batches),
        "layers": ranked,
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
        "seconds": round(time.perf_counter() - started, 3),
    }


def _run(
    executor: GraphExecutor,
    feeds: Feeds,
    weights: Mapping[str, torch.Tensor],
    watched: set[str],
    quantizers: Mapping[str, Any],
) -> dict[str, torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str, value: torch.Tensor) -> torch.Tensor:
        encoding = quantizers.get(name)
        if encoding is not None and value.is_floating_point():
            value = encoding.fake_quantize(value)
        if name in watched:
            captured[name] = value
        return value

    captured.update(executor.run(feeds, hook=hook, weights=weights))
    return captured


def _output_sqnr(executor, batches, references, weights, quantizers, final) -> float:
    meter = _Sqnr()
    for feeds, reference in zip(batches, references, strict=True):
        out = _run(executor, feeds, weights, set(), quantizers)[final]
        meter.update(reference[final], out)
    return meter.db()


def _batch_size(feeds: Feeds) -> int:
    for value in feeds.values():
        return int(value.shape[0]) if value.dim() > 0 else 1
    return 0
