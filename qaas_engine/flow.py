"""The ``quantize`` flow: import -> prepare -> float steps -> calibrate -> quantized steps ->
export -> evaluate, with every phase timed and every figure in the report."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from qaas_engine.data import Dataset
from qaas_engine.evaluation import FidelityMeter
from qaas_engine.export.encodings import aimet_encodings
from qaas_engine.export.qdq import export_qdq
from qaas_engine.graph.executor import default_opset
from qaas_engine.importer import ImportedModel, import_model
from qaas_engine.pipeline import (
    PipelineState,
    Progress,
    Timer,
    build_sim,
    build_state,
    check_pipeline_order,
    run_steps,
    to_torch,
)
from qaas_engine.quant.sim import QuantSim
from qaas_engine.reporting.collect import EnergyProfileSource, add_report_sections
from qaas_engine.reporting.energy import EnergyProfile
from qaas_engine.reporting.html import render_html
from qaas_engine.spec import QuantSpec
from qaas_engine.stats import count_params, float_bytes, macs_per_sample, quantized_bytes
from qaas_engine.version import __version__

QUANTIZED_MODEL_FILE = "model.quant.onnx"
ENCODINGS_FILE = "encodings.json"
REPORT_FILE = "report.json"
REPORT_HTML_FILE = "report.html"


@dataclass
class QuantizationResult:
    quantized_model: onnx.ModelProto
    encodings: dict[str, Any]
    report: dict[str, Any]

    def save(self, outdir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write the artifacts; each file appears whole or not at all."""
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        payloads = {
            QUANTIZED_MODEL_FILE: self.quantized_model.SerializeToString(),
            ENCODINGS_FILE: json.dumps(self.encodings, indent=2).encode(),
            REPORT_FILE: json.dumps(self.report, indent=2).encode(),
            REPORT_HTML_FILE: render_html(self.report).encode(),
        }
        written = {}
        for name, payload in payloads.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=outdir)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, outdir / name)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            written[name] = outdir / name
        return written


def quantize(
    model: ImportedModel | str | os.PathLike[str],
    spec: QuantSpec,
    *,
    calibration: Dataset | None = None,
    evaluation: Dataset | None = None,
    training: Dataset | None = None,
    validation: Dataset | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    energy_profile: EnergyProfileSource = None,
) -> QuantizationResult:
    """Quantize a model per ``spec``; evaluation data only measures, it never calibrates.

    ``spec.pipeline == ("auto",)`` searches the pipelines cheapest first for one that meets
    ``spec.max_accuracy_drop`` on validation data (see :mod:`qaas_engine.auto`).
    ``should_stop`` is polled between layers and epochs; when it answers True the run ends with
    :class:`~qaas_engine.errors.Cancelled`. ``energy_profile`` (a JSON file, a dict or an
    :class:`EnergyProfile`) prices the energy report; the default is the 45 nm table.
    """
    check_pipeline_order(spec.pipeline)
    profile = EnergyProfile.load(energy_profile)  # a bad profile fails before any work
    timer = Timer(progress=progress)
    imported = (
        model
        if isinstance(model, ImportedModel)
        else timer.run("import", lambda: import_model(model))
    )
    data = PipelineData(calibration, training, validation)
    if spec.is_auto:
        from qaas_engine.auto import auto_quantize

        return auto_quantize(
            imported, spec, data, evaluation, timer, profile, progress, should_stop
        )
    state, sim, qdq = run_pipeline(imported, spec, data, timer, profile, progress, should_stop)
    return finish(imported, state, sim, qdq, timer, evaluation, profile)


@dataclass(frozen=True)
class PipelineData:
    """The datasets steps learn from; the evaluation set is kept apart and only measures."""

    calibration: Dataset | None = None
    training: Dataset | None = None
    validation: Dataset | None = None


def run_pipeline(
    imported: ImportedModel,
    spec: QuantSpec,
    data: PipelineData,
    timer: Timer,
    profile: EnergyProfile,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[PipelineState, QuantSim, onnx.ModelProto]:
    """Prepare, float steps, calibration, quantized steps and export: the model, not the report."""
    state = timer.run("prepare", lambda: build_state(imported, spec, data.calibration, progress))
    if should_stop is not None:
        state.should_stop = should_stop
    state.training, state.validation = data.training, data.validation
    state.energy_profile = profile
    run_steps(state, "float", timer)
    # Quantized steps (bias correction, AdaRound) rewrite weights in place; the float reference
    # every metric compares against is the model as it stands here.
    state.float_weights = dict(state.executor.weights)
    sim = build_sim(state, timer)
    run_steps(state, "quantized", timer)
    qdq = timer.run("export", lambda: export_qdq(state.model, sim))
    onnx.checker.check_model(qdq)
    return state, sim, qdq


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
    encodings = aimet_encodings(sim, __version__)
    measured_on = evaluation if evaluation is not None else state.calibration
    metrics = timer.run("evaluation", lambda: evaluate(state, sim, qdq, measured_on))
    metrics["dataset"] = (
        "evaluation"
        if evaluation is not None
        else "calibration"
        if state.calibration is not None
        else None
    )
    report = build_report(imported, state, sim, qdq, metrics, timer)
    report["warnings"] = gap_warnings(metrics)
    add_report_sections(
        report, float_model=imported.model, state=state, sim=sim, qdq=qdq, data=measured_on,
        timer=timer, energy_profile=profile,
    )  # fmt: skip
    return QuantizationResult(qdq, encodings, report)


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def evaluate(
    state: PipelineState, sim: QuantSim, qdq: onnx.ModelProto, data: Dataset | None
) -> dict[str, Any]:
    """Float, simulated and ONNX Runtime outputs side by side on the same batches."""
    if data is None:
        empty = {"top1": None, "sqnr_db": None, "top1_agreement": None, "cosine": None}
        return {
            "float": dict(empty),
            "simulated": dict(empty),
            "onnxruntime": dict(empty),
            "simulation_vs_onnxruntime": dict(empty),
            "note": "no calibration or evaluation data given: nothing to measure",
        }
    session = ort_session(qdq)
    output = state.executor.output_names[0]
    meters = {key: FidelityMeter() for key in ("float", "simulated", "onnxruntime", "gap")}
    total = data.num_samples
    done = 0
    with torch.no_grad():
        for feeds, labels in data.batches(state.spec.batch_size):
            tensors = to_torch(feeds)
            reference = state.executor.run(tensors, weights=state.float_weights)[output]
            reference = reference.float().numpy()
            simulated = sim.run(tensors, outputs=[output])[output].float().numpy()
            runtime = session.run([output], feeds)[0].astype(np.float32)
            meters["float"].update(reference, reference, labels)
            meters["simulated"].update(reference, simulated, labels)
            meters["onnxruntime"].update(reference, runtime, labels)
            meters["gap"].update(simulated, runtime, None)
            done += len(labels) if labels is not None else 1
            state.progress("evaluation", min(1.0, done / total))
    gap = meters["gap"].result()
    gap["max_abs_diff"] = meters["gap"].max_abs_diff
    return {
        "float": meters["float"].result(reference_itself=True),
        "simulated": meters["simulated"].result(),
        "onnxruntime": meters["onnxruntime"].result(),
        "simulation_vs_onnxruntime": gap,
        "output": output,
    }


SIM_RUNTIME_AGREEMENT_FLOOR = 0.99


def gap_warnings(metrics: dict[str, Any]) -> list[str]:
    """Say so loudly when ONNX Runtime does not compute what the simulation computed."""
    agreement = metrics.get("simulation_vs_onnxruntime", {}).get("top1_agreement")
    if agreement is None or agreement >= SIM_RUNTIME_AGREEMENT_FLOOR:
        return []
    return [
        f"ONNX Runtime agrees with the simulation on only {agreement:.1%} of top-1 predictions; "
        "the runtime's optimized kernels compute something else (seen with 16-bit weights and "
        "16-bit activations in onnxruntime's graph optimizer): check metrics.onnxruntime"
    ]


def build_report(
    imported: ImportedModel,
    state: PipelineState,
    sim: QuantSim,
    qdq: onnx.ModelProto,
    metrics: dict[str, Any],
    timer: Timer,
) -> dict[str, Any]:
    macs = None
    sample = _first_sample(state)
    if sample is not None:
        macs = sum(macs_per_sample(state.model, state.executor, sample).values())
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
            "quantized_file": qdq.ByteSize(),
        },
        "metrics": metrics,
        "steps": timer.steps,
        "step_reports": state.step_reports,
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
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }


def _first_sample(state: PipelineState) -> dict[str, torch.Tensor] | None:
    if state.calibration is None:
        return None
    feeds, _ = next(state.calibration.batches(1))
    return to_torch(feeds)
