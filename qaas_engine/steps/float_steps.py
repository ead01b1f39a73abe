"""Steps that rewrite the float model before quantizers exist."""

from __future__ import annotations

from typing import Any

import numpy as np

from qaas_engine.state import PipelineState
from qaas_engine.tapped import TappedModel
from qaas_engine.transforms.bias_absorption import absorb_high_biases
from qaas_engine.transforms.cle import equalize


def bn_fold(state: PipelineState) -> dict[str, Any]:
    """Folding happens while preparing (every pipeline needs it); this reports what it did."""
    return {
        "folded": [{"layer": f.layer, "batchnorm": f.batchnorm} for f in state.folded_batchnorms],
    }


def cle(state: PipelineState) -> dict[str, Any]:
    report = equalize(state.model, state.channel_stats)
    return {
        "iterations": report.iterations,
        "equalized": report.equalized,
        "skipped": report.skipped,
        "clips_made_exact": report.clips_made_exact,
        "weight_ranges": report.ranges,
    }


def bias_absorption(state: PipelineState) -> dict[str, Any]:
    observed = None
    if state.calibration is not None:
        layer_outputs = {
            n.outputs[0] for n in state.executor.nodes if n.op_type in ("Conv", "Gemm")
        }
        observed = _observed_minimum(state, layer_outputs)
    result = absorb_high_biases(state.model, state.channel_stats, observed)
    result["source"] = "calibration minimum" if observed is not None else "BatchNorm statistics"
    return result


def _observed_minimum(state: PipelineState, tensors: set[str]) -> dict[str, np.ndarray]:
    """Per-channel minimum of the given tensors over the calibration data: the float graph run
    in ONNX Runtime, or in the torch executor where ORT cannot load or run it."""
    data = state.calibration
    try:
        runner = TappedModel(
            state.model, sorted(tensors), batched=not data or not data.one_at_a_time
        )
        minimum: dict[str, np.ndarray] = {}
        for feeds in state.calibration_arrays():
            for values in runner.run(feeds):
                for name in tensors & values.keys():
                    _lower(minimum, name, values[name])
        return minimum
    except Exception:  # a graph only the torch executor runs
        return _observed_minimum_in_torch(state, tensors)


def _lower(minimum: dict[str, np.ndarray], name: str, value: np.ndarray) -> None:
    axes = (0, *range(2, value.ndim)) if value.ndim >= 3 else (0,)
    low = value.astype(np.float64).min(axis=axes)
    minimum[name] = low if name not in minimum else np.minimum(minimum[name], low)


def _observed_minimum_in_torch(state: PipelineState, tensors: set[str]) -> dict[str, np.ndarray]:
    import torch

    minimum: dict[str, np.ndarray] = {}

    def hook(name: str, value: torch.Tensor) -> torch.Tensor:
        if name in tensors:
            _lower(minimum, name, value.detach().cpu().numpy())
        return value

    with torch.no_grad():
        for feeds in state.calibration_feeds():
            state.executor.run(feeds, hook=hook)
    return minimum
