"""Bias correction: empirical with calibration data, analytical from BatchNorm statistics."""

from __future__ import annotations

from typing import Any

from qaas_engine.errors import SpecError
from qaas_engine.quant.bias_correction import (
    analytical_bias_correction,
    empirical_bias_correction,
)
from qaas_engine.quant.moments import propagate
from qaas_engine.state import PipelineState


def bias_correction(state: PipelineState) -> dict[str, Any]:
    sim = state.quantized()
    if state.calibration is not None:
        return empirical_bias_correction(
            sim, state.calibration_feeds, state.progress, state.float_weights
        )
    if not state.channel_stats:
        raise SpecError(
            "bias_correction without calibration data needs BatchNorm statistics, and the model "
            "has none; give --calibration NPZ"
        )
    return analytical_bias_correction(sim, propagate(state.model, state.batchnorm_seeds()))
