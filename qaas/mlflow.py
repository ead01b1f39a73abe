"""A finished qaas job as an MLflow run: the spec as parameters, the report's figures as
metrics, the downloaded files as artifacts. Needs the extra: ``pip install
'qaas-service[mlflow]'`` (mlflow-skinny: the tracking client only, no server, no torch).

Works on plain data, so it runs anywhere the job's JSON and files are: after
``qaas download JOB_ID -o out/`` (or ``job.download(dir)``) in a CI job, say::

    from qaas.mlflow import log_job
    run_id = log_job(job_json, Path("out"), tracking_uri="sqlite:///mlflow.db")

``job_json`` is the job as ``GET /v1/jobs/{id}`` returns it. ``report.json`` in
``artifacts_dir``, when there, adds sizes, energy, latency and the accuracy drop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FINISHED = ("succeeded", "failed", "cancelled")
# Per pass of MLflow's batch call (its limits: 100 parameters, 1000 metrics).
PARAMS_PER_BATCH = 100
METRIC_SECTIONS = ("float", "simulated", "onnxruntime", "simulation_vs_onnxruntime")
METRIC_KEYS = ("top1", "sqnr_db", "top1_agreement", "cosine", "worst_channel_sqnr_db")
JOB_PARAMS = (
    "model_id",
    "calibration_id",
    "evaluation_id",
    "training_id",
    "validation_id",
    "max_accuracy_drop",
)


def log_job(
    job_json: Mapping[str, Any],
    artifacts_dir: Path | None,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
) -> str:
    """Log ``job_json`` (and the files in ``artifacts_dir``) as a new run of ``experiment``
    (default ``qaas``, made when missing); returns the run id. ``tracking_uri`` defaults to
    MLflow's own (``MLFLOW_TRACKING_URI``)."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError("qaas.mlflow needs MLflow: pip install 'qaas-service[mlflow]'") from None
    status = job_json.get("status")
    if status not in FINISHED:
        raise ValueError(f"job {job_json.get('id')} is {status}; log it once it has finished")
    report = _report(artifacts_dir)
    client = MlflowClient(tracking_uri=tracking_uri)
    name = experiment or "qaas"
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    job_id = str(job_json["id"])
    tags = {
        "qaas.job_id": job_id,
        "qaas.status": str(status),
        "qaas.engine_version": str(report.get("versions", {}).get("engine", "")),
    }
    run = client.create_run(experiment_id, run_name=run_name or f"qaas-{job_id[:8]}", tags=tags)
    run_id: str = run.info.run_id
    try:
        params = [Param(key, value) for key, value in parameters(job_json).items()]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[start : start + PARAMS_PER_BATCH])
        stamp = _millis(job_json.get("finished_at"))
        figures = metrics(job_json, report)
        client.log_batch(
            run_id,
            metrics=[Metric(key, value, stamp, 0) for key, value in figures.items()],
            tags=[RunTag(key, value) for key, value in tags.items()],
        )
        if artifacts_dir is not None:
            client.log_artifacts(run_id, str(artifacts_dir))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED" if status == "succeeded" else "FAILED")
    return run_id


def parameters(job_json: Mapping[str, Any]) -> dict[str, str]:
    """The spec (``quantization``) flattened with dots, and the job's inputs; lists joined by
    commas; unset values left out."""
    found: dict[str, str] = {}
    for key, value in _flatten(job_json.get("quantization") or {}, ""):
        found[key] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    for key in JOB_PARAMS:
        if job_json.get(key) is not None:
            found[f"job.{key}"] = str(job_json[key])
    return {key: value for key, value in found.items() if value not in ("", "None")}


def metrics(job_json: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, float]:
    """The figures a comparison of runs wants: fidelity per pass, the top-1 drop (a fraction,
    as ``accuracy_target.top1_drop``), sizes, energy, latency, step times."""
    measured = report.get("metrics") or job_json.get("metrics") or {}
    found: dict[str, float] = {}
    for section in METRIC_SECTIONS:
        for key in (*METRIC_KEYS, "max_abs_diff"):
            _put(found, f"{section}.{key}", (measured.get(section) or {}).get(key))
    reference = (measured.get("float") or {}).get("top1")
    achieved = (measured.get("onnxruntime") or {}).get("top1")
    if isinstance(reference, int | float) and isinstance(achieved, int | float):
        found["top1_drop"] = round(float(reference) - float(achieved), 6)
    for key in ("float", "quantized", "ratio", "quantized_file"):
        _put(found, f"size_bytes.{key}", (report.get("size_bytes") or {}).get(key))
    for key in ("float_pj", "quantized_pj", "ratio"):
        _put(found, f"energy.{key}", (report.get("energy") or {}).get(key))
    for batch, value in ((report.get("latency_ms") or {}).get("speedup") or {}).items():
        _put(found, f"latency.speedup.{batch}", value)
    for key in ("params", "macs"):
        _put(found, f"model.{key}", (report.get("model") or {}).get(key))
    for step in job_json.get("steps") or report.get("steps") or []:
        _put(found, f"step_seconds.{_metric_name(str(step.get('name')))}", step.get("seconds"))
    return found


def _report(artifacts_dir: Path | None) -> dict[str, Any]:
    path = artifacts_dir / "report.json" if artifacts_dir is not None else None
    if path is None or not path.is_file():
        return {}
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def _flatten(value: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping):
            yield from _flatten(item, f"{name}.")
        else:
            yield name, item


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _put(found: dict[str, float], key: str, value: Any) -> None:
    if _number(value):
        found[key] = float(value)


def _metric_name(text: str) -> str:
    """MLflow names allow letters, digits, ``_ - . / `` and spaces."""
    return re.sub(r"[^\w\-./ ]", "_", text)


def _millis(moment: Any) -> int:
    if isinstance(moment, str):
        return int(datetime.fromisoformat(moment).timestamp() * 1000)
    return int(datetime.now(UTC).timestamp() * 1000)
