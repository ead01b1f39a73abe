"""Steps that rewrite the float model before quantizers exist."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qaas_engine.state import PipelineState
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
    """Per-channel minimum of the given tensors over the calibration data."""
    minimum: dict[str, np.ndarray] = {}

    def hook(name: str, value: torch.Tensor) -> torch.Tensor:
        if name in tensors:
            dims = [0] + list(range(2, value.dim())) if value.dim() >= 3 else [0]
            low = value.detach().double().amin(dim=dims).cpu().numpy()
            minimum[name] = low if name not in minimum else np.minimum(minimum[name], low)
        return value

    with torch.no_grad():
        for feeds in state.calibration_feeds():
            state.executor.run(feeds, hook=hook)
    return minimum
