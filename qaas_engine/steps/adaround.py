"""AdaRound: learned rounding of weights, layer by layer, from unlabelled calibration data."""

from __future__ import annotations

from typing import Any

from qaas_engine.quant.adaround import AdaRoundConfig, adaround
from qaas_engine.state import PipelineState


def adaround_step(state: PipelineState) -> dict[str, Any]:
    config = AdaRoundConfig(iterations=state.spec.adaround_iterations)
    return adaround(
        state.quantized(),
        state.calibration_feeds,
        config,
        state.progress,
        state.should_stop,
        state.float_weights,
    )
