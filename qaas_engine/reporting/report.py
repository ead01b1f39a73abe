"""The report of one quantization: measure on the evaluation data, then assemble every figure.

Shared by a plain pipeline run (``flow``) and by ``auto`` for the configuration it chose.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from qaas_engine.artifacts.result import QuantizationResult
from qaas_engine.cost.energy import EnergyProfile
from qaas_engine.cost.shapes import macs_per_sample
from qaas_engine.data import Dataset
from qaas_engine.evaluation import artifact_warnings, evaluate, gap_warnings
from qaas_engine.export.encodings import aimet_encodings
from qaas_engine.fidelity import fidelity_report, metric_per_output
from qaas_engine.fixed_inputs import redeclare_fixed_inputs
from qaas_engine.graph.kernels import default_opset
from qaas_engine.importer import ImportedModel
from qaas_engine.quant.sim import QuantSim
from qaas_engine.reporting.collect import add_report_sections
from qaas_engine.reporting.size import count_params, float_bytes, quantized_bytes
from qaas_engine.spec import (
    CALIBRATION_CHECK_MACS,
    CALIBRATION_CHECK_MIN_SAMPLES,
    CALIBRATION_CHECK_SAMPLES,
)
from qaas_engine.state import PipelineState, Timer
from qaas_engine.version import __version__
from qaas_engine.weights_apart import serialized_bytes


def finish(
    imported: ImportedModel,
    state: PipelineState,
    sim: QuantSim,
    qdq: onnx.ModelProto,
    timer: Timer,
    evaluation: Dataset | None,
    profile: EnergyProfile,
) -> QuantizationResult:
    """Measure on the evaluation data (else the calibration data) and write the report."""
    redeclare_fixed_inputs(qdq, imported.fixed_inputs)
    encodings = aimet_encodings(sim, __version__)
    measured_on = evaluation if evaluation is not None else state.calibration
    on_calibration = evaluation is None
    macs = model_macs(state) if on_calibration else None  # the report's figure: one shapes run
    limit = sim.spec.evaluation_limit(on_calibration_data=on_calibration, macs_per_sample=macs or 0)
    metrics = timer.run(
        "evaluation",
        lambda: evaluate(state, sim, qdq, measured_on, limit, sim.spec.simulation_limit()),
    )
    if on_calibration and limit is not None and limit < CALIBRATION_CHECK_SAMPLES:
        metrics["samples"]["limit"] = {
            "samples": limit,
            "why": f"the default check on calibration data measures at most "
            f"{CALIBRATION_CHECK_MACS:.0e} multiply-accumulates' worth (at least "
            f"{CALIBRATION_CHECK_MIN_SAMPLES} samples; {macs:,} per sample here); "
            "--evaluation-samples N or all measures more",
        }
    metrics["dataset"] = (
        "evaluation"
        if evaluation is not None
        else "calibration"
        if state.calibration is not None
        else None
    )
    report = build_report(imported, state, sim, qdq, metrics, timer)
    report["warnings"] = gap_warnings(metrics)
    report["strict_bits"] = sim.spec.strict_bits
    report["rules"] = list(state.rules)  # each rule that fired: where, what it did, why
    add_report_sections(
        report, float_model=imported.model, state=state, sim=sim, qdq=qdq, data=measured_on,
        timer=timer, energy_profile=profile, quantization_seconds=quantization_seconds(timer),
    )  # fmt: skip
    report["warnings"] += artifact_warnings(report)
    if metrics.get("outputs"):
        labelled = measured_on is not None and measured_on.labels is not None
        top1_first = labelled or sim.spec.max_accuracy_drop is not None
        judged = metric_per_output(sim.spec, list(metrics["outputs"]), top1_first=top1_first)
        report["fidelity"] = fidelity_report(metrics, sim.spec, judged)
    return QuantizationResult(qdq, encodings, report)


def quantization_seconds(timer: Timer) -> float:
    """What the quantization itself took (import to export): the report's extras are sized by it."""
    return sum(step["seconds"] for step in timer.steps if step["name"] != "evaluation")


def build_report(
    imported: ImportedModel,
    state: PipelineState,
    sim: QuantSim,
    qdq: onnx.ModelProto,
    metrics: dict[str, Any],
    timer: Timer,
) -> dict[str, Any]:
    macs = model_macs(state)
    size_float = float_bytes(state.executor)
    size_quant = quantized_bytes(sim)
    placement = sim.placement
    return {
        "engine": "qaas",
        "spec": sim.spec.model_dump(mode="json"),
        "model": {
            "source_format": imported.source_format,
            "opset": {"original": imported.original_opset, "used": default_opset(state.model)},
            "inputs": state.executor.input_names,
            "outputs": state.executor.output_names,
            "params": count_params(state.executor),
            "macs": macs,
            "nodes": len(state.model.graph.node),
            "notes": imported.notes,
        },
        "size_bytes": {
            "float": size_float,
            "quantized": size_quant,
            "ratio": round(size_float / size_quant, 3) if size_quant else None,
            # the files themselves: what the user uploads and downloads (model.quant.onnx)
            "float_file": serialized_bytes(imported.model),
            "quantized_file": serialized_bytes(qdq),
        },
        "metrics": metrics,
        "steps": timer.steps,
        "engines": dict(sim.engines),
        "step_reports": state.step_reports,
        "target": state.kernels.describe() if state.kernels is not None else None,
        "quantizers": {
            "weights": len(sim.weight_encodings),
            "biases_int32": len(sim.bias_encodings),
            "activations": len(sim.activation_encodings),
            "shared_with_input": len(placement.shared),
            "fused_into_consumer": placement.fused,
            "kept_float": sim.skipped,
        },
        "versions": {
            "engine": __version__,
            "torch": _torch_version(),
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }


def model_macs(state: PipelineState) -> int | None:
    """Multiply-accumulates of one calibration sample (None without calibration data)."""
    sample = _first_sample(state)
    if sample is None:
        return None
    return sum(macs_per_sample(state.model, state.executor, sample).values())


def _torch_version() -> str | None:
    """torch's version without importing it (a post-training job never loads it)."""
    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def _first_sample(state: PipelineState) -> dict[str, np.ndarray] | None:
    if state.calibration is None:
        return None
    feeds, _ = next(state.calibration.batches(1))
    return {name: np.asarray(array, order="C") for name, array in feeds.items()}


def accuracy_target(metrics: dict[str, Any], max_drop: float | None) -> dict[str, Any] | None:
    """Did ONNX Runtime's top-1 stay within ``max_drop`` (a fraction) of the float model's?"""
    if max_drop is None:
        return None
    reference = metrics.get("float", {}).get("top1")
    achieved = metrics.get("onnxruntime", {}).get("top1")
    if reference is None or achieved is None:
        return {
            "max_top1_drop": max_drop,
            "top1_drop": None,
            "met": None,
            "note": "needs labelled evaluation data to be measured",
        }
    drop = round(reference - achieved, 6)
    return {"max_top1_drop": max_drop, "top1_drop": drop, "met": drop <= max_drop}
