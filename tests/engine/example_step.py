"""A pipeline step written the way a new one is: one function of the pipeline state that
returns its section of the report. ``test_step_registry`` registers it under a name."""

from typing import Any

from qaas_engine.state import PipelineState


def weight_census(state: PipelineState) -> dict[str, Any]:
    """Weight quantizers by bit-width, and how many calibration batches the step saw."""
    sim = state.quantized()
    bits = [encoding.scheme.bits for encoding in sim.weight_encodings.values()]
    return {
        "weights_by_bits": {str(b): bits.count(b) for b in sorted(set(bits))},
        "calibration_batches": sum(1 for _ in state.calibration_feeds()),
    }
