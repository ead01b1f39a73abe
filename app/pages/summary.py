"""What the pages show of a job, read from its row (spec, report, metrics, artifacts,
timestamps): plain values, formatted in ``views``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.jobs.tables import Job

REPORT_NAME = "report.html"
MODEL_FILE = "model.quant.onnx"


@dataclass(frozen=True)
class JobSummary:
    id: str
    status: str
    phase: str | None
    progress: float
    model_name: str | None  # None: the model was deleted after the job (the job outlives it)
    pipeline: list[str]
    target: str | None
    accuracy_delta: float | None  # top-1 points, quantized (ONNX Runtime) minus float
    accuracy_measure: str | None  # what the delta is in: "top-1" or "agreement"
    energy_ratio: float | None  # float energy / quantized energy (modelled)
    artifact_bytes: int | None  # model.quant.onnx, the file a user downloads
    duration_s: float | None  # started to finished (or to now while running)
    created_at: datetime
    error: str | None
    has_report: bool
    kernel_mode: str | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)


def summarize(job: Job, model_name: str | None, now: datetime) -> JobSummary:
    report = job.report or {}
    spec = job.spec or {}
    artifacts = list(job.artifacts or [])
    sizes = {a["name"]: a.get("size_bytes") for a in artifacts}
    delta, measure = accuracy_delta(report.get("metrics") or job.metrics or {})
    target = report.get("target") or {}
    return JobSummary(
        id=job.id,
        status=job.status,
        phase=job.phase,
        progress=job.progress or 0.0,
        model_name=model_name,
        pipeline=list(spec.get("pipeline") or []),
        target=target.get("target") or spec.get("target"),
        kernel_mode=target.get("kernel_mode"),
        accuracy_delta=delta,
        accuracy_measure=measure,
        energy_ratio=(report.get("energy") or {}).get("ratio"),
        artifact_bytes=sizes.get(MODEL_FILE),
        duration_s=duration(job, now),
        created_at=job.created_at,
        error=f"{job.error_kind}: {job.error_detail or ''}" if job.error_kind else None,
        has_report=REPORT_NAME in sizes,
        artifacts=artifacts,
    )


def accuracy_delta(metrics: dict[str, Any]) -> tuple[float | None, str | None]:
    """Points the quantized model (as ONNX Runtime ran it) lost or gained against float: top-1
    with labels, else top-1 agreement with the float model."""
    float_m, runtime = metrics.get("float") or {}, metrics.get("onnxruntime") or {}
    if float_m.get("top1") is not None and runtime.get("top1") is not None:
        return round(100.0 * (runtime["top1"] - float_m["top1"]), 2), "top-1"
    if runtime.get("top1_agreement") is not None:
        return round(100.0 * (runtime["top1_agreement"] - 1.0), 2), "agreement"
    return None, None


def duration(job: Job, now: datetime) -> float | None:
    if job.started_at is None:
        return None
    end = job.finished_at or now
    return max((end - job.started_at).total_seconds(), 0.0)
