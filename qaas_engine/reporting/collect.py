"""The report's extra sections (energy, latency, analysis), each bounded and each skipped with a
reason rather than failing the job: a quantized model is worth returning without its plots."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import onnx

from qaas_engine.cost.energy import EnergyProfile
from qaas_engine.data import Dataset
from qaas_engine.quant.sim import QuantSim
from qaas_engine.reporting.analysis import analyze_layers
from qaas_engine.reporting.energy import energy_report
from qaas_engine.reporting.latency import measure_latency

if TYPE_CHECKING:
    from qaas_engine.graph.lazy import Executor

ANALYSIS_SAMPLES = 16  # one small batch: enough to rank layers, 2 passes per layer
EnergyProfileSource = EnergyProfile | Mapping[str, Any] | str | os.PathLike[str] | None

T = TypeVar("T")


class QuantizedRun(Protocol):
    """What the sections read of a pipeline's state (a ``PipelineState`` is one); a protocol,
    so reporting does not depend on the orchestration that calls it."""

    @property
    def model(self) -> onnx.ModelProto: ...

    @property
    def executor(self) -> Executor: ...

    @property
    def float_weights(self) -> Mapping[str, Any] | None: ...


class StepTimer(Protocol):
    """Times each section as a report step (a pipeline ``Timer`` is one)."""

    def run(self, name: str, fn: Callable[[], T]) -> T: ...


_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
}


def synthetic_sample(model: onnx.ModelProto, executor_inputs: list[str]) -> dict[str, np.ndarray]:
    """Zeros shaped like the graph inputs (symbolic dims as 1), for data-free jobs; empty when
    an input's shape or type is unknown."""
    sample = {}
    declared = {i.name: i for i in model.graph.input}
    for name in executor_inputs:
        tensor_type = declared[name].type.tensor_type
        dtype = _NP_TYPES.get(tensor_type.elem_type)
        if dtype is None or not tensor_type.HasField("shape"):
            return {}
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor_type.shape.dim]
        sample[name] = np.zeros(dims, dtype=dtype)
    return sample


def _one_sample(state: QuantizedRun, data: Dataset | None) -> dict[str, np.ndarray]:
    if data is not None:
        feeds, _ = next(data.batches(1))
        return {name: np.asarray(array, order="C") for name, array in feeds.items()}
    return synthetic_sample(state.model, state.executor.input_names)


# Each extra's budget: (share of the quantization's own time, floor, ceiling) in seconds. Both
# are report extras beside the quantization (issue #16: whole process within 2x ONNX Runtime's
# quantize_static when quantization alone is within 1x), so together they take about a quarter
# of what the quantization took, and a few seconds at most on a large model.
LATENCY_BUDGET = (0.1, 0.1, 1.0)
ANALYSIS_BUDGET = (0.15, 0.25, 3.0)


def extras_budgets(quantization_seconds: float | None) -> tuple[float, float]:
    """Seconds for latency and for the per-layer analysis, scaled to what the quantization
    itself took (the ceilings when that is not known)."""

    def within(budget: tuple[float, float, float]) -> float:
        share, low, high = budget
        if quantization_seconds is None:
            return high
        return min(high, max(low, share * quantization_seconds))

    return within(LATENCY_BUDGET), within(ANALYSIS_BUDGET)


def add_report_sections(
    report: dict[str, Any],
    *,
    float_model: onnx.ModelProto,
    state: QuantizedRun,
    sim: QuantSim,
    qdq: onnx.ModelProto,
    data: Dataset | None,
    timer: StepTimer,
    energy_profile: EnergyProfileSource = None,
    quantization_seconds: float | None = None,
) -> None:
    """Fill ``energy``, ``latency_ms`` and ``analysis``; an unusable profile is the user's
    error and raises, anything else only skips its own section.

    Latency and the analysis's sensitivities are measured within budgets that scale with
    ``quantization_seconds`` (import to export), so the extras cost about what the job did.
    """
    latency_budget, analysis_budget = extras_budgets(quantization_seconds)
    profile = EnergyProfile.load(energy_profile)
    sample = _one_sample(state, data)
    if not sample:
        reason = "no data and the graph inputs have no fixed shape: nothing to run"
        report["energy"] = {"skipped": reason}
        report["latency_ms"] = {"skipped_reason": reason}
    else:
        report["energy"] = timer.run(
            "energy", lambda: energy_report(state.model, sim.executor, sim, sample, profile)
        )
        batches = (1,) if data is not None and data.one_at_a_time else (1, 32)
        report["latency_ms"] = timer.run(
            "latency", lambda: _latency(float_model, qdq, sample, batches, latency_budget)
        )
    if data is None:
        report["analysis"] = {"skipped": "no calibration or evaluation data: nothing to compare"}
        return
    batch_feeds = [
        {name: np.asarray(array, order="C") for name, array in feeds.items()}
        for feeds, _ in data.batches(ANALYSIS_SAMPLES, ANALYSIS_SAMPLES)
    ]
    report["analysis"] = timer.run(
        "analysis",
        lambda: analyze_layers(
            sim, batch_feeds, state.model, qdq, state.float_weights,
            time_budget_s=analysis_budget, batched=not data.one_at_a_time,
        ),
    )  # fmt: skip


def _latency(
    float_model: onnx.ModelProto,
    qdq: onnx.ModelProto,
    sample: dict[str, np.ndarray],
    batches: tuple[int, ...],
    budget_s: float,
) -> dict[str, Any]:
    try:
        return measure_latency(float_model, qdq, sample, batch_sizes=batches, budget_s=budget_s)
    except Exception as error:  # ONNX Runtime refusing the float original must not fail a job
        return {"skipped_reason": f"ONNX Runtime could not time the models: {error}"[:500]}
