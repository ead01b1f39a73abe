"""``qaas.mlflow.log_job`` against real local MLflow stores (the SQLite store MLflow now
recommends, and the file store, which it keeps behind MLFLOW_ALLOW_FILE_STORE), read back with
MlflowClient. The job is a real one: the engine's run on the tiny model, serialized by the
API's own JobOut."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from mlflow.tracking import MlflowClient

from app.jobs.schemas import JobOut
from app.jobs.tables import Job
from qaas.mlflow import log_job
from qaas_engine import job as engine_job
from qaas_engine.spec import QuantSpec

ARTIFACTS = {"model.quant.onnx", "encodings.json", "report.json", "report.html"}


@pytest.fixture(scope="module")
def finished(tiny_model, tiny_data, tmp_path_factory):
    """A succeeded job's JSON, as GET /v1/jobs/{id} shows it, and its downloaded files."""
    out = tmp_path_factory.mktemp("job-files")
    calibration, evaluation = tiny_data
    spec = QuantSpec(pipeline=["cle", "bias_correction"])
    saved = engine_job.run(
        tiny_model,
        {"calibration": calibration, "evaluation": evaluation},
        spec,
        out,
        max_accuracy_drop=0.5,
    )
    now = datetime.now(UTC)
    row = Job(
        id="0123456789abcdef0123456789abcdef",
        status="succeeded",
        phase="done",
        progress=1.0,
        attempts=1,
        model_id="m" * 32,
        calibration_id="c" * 32,
        evaluation_id="e" * 32,
        spec=spec.model_dump(mode="json"),
        max_accuracy_drop=0.5,
        steps=saved.report["steps"],
        step_reports=saved.report.get("step_reports", {}),
        metrics=saved.report["metrics"],
        artifacts=[],
        created_at=now,
        started_at=now,
        finished_at=now,
        updated_at=now,
    )
    return JobOut.from_row(row).model_dump(mode="json"), out, saved.report


@pytest.fixture(params=["sqlite", "file"])
def tracking_uri(request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the SQLite store keeps artifacts in ./mlruns
    if request.param == "file":
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        return (tmp_path / "store").as_uri()
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_finished_job_logged_and_read_back(finished, tracking_uri, tmp_path):
    job_json, files, report = finished
    run_id = log_job(job_json, files, tracking_uri=tracking_uri, experiment="ci-quantization")

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "ci-quantization"
    assert run.info.status == "FINISHED" and run.info.run_name == "qaas-01234567"
    assert run.data.tags["qaas.job_id"] == job_json["id"]
    assert run.data.tags["qaas.engine_version"] == report["versions"]["engine"]

    params = run.data.params
    assert params["weight_bits"] == "8" and params["activation_bits"] == "8"
    assert params["pipeline"] == "cle,bias_correction"
    assert params["job.model_id"] == "m" * 32 and params["job.max_accuracy_drop"] == "0.5"

    figures = run.data.metrics
    measured = report["metrics"]
    assert figures["onnxruntime.top1"] == pytest.approx(measured["onnxruntime"]["top1"])
    assert figures["onnxruntime.sqnr_db"] == pytest.approx(measured["onnxruntime"]["sqnr_db"])
    assert figures["top1_drop"] == pytest.approx(report["accuracy_target"]["top1_drop"])
    assert figures["size_bytes.quantized_file"] == report["size_bytes"]["quantized_file"]
    assert figures["energy.ratio"] == pytest.approx(report["energy"]["ratio"])
    assert figures["step_seconds.export"] >= 0

    assert {item.path for item in client.list_artifacts(run_id)} == ARTIFACTS
    copy = client.download_artifacts(run_id, "report.json", str(tmp_path))
    assert json.loads(open(copy).read()) == json.loads((files / "report.json").read_text())


def test_unfinished_job_refused(finished, tmp_path):
    job_json = {**finished[0], "status": "running"}
    store = tmp_path / "mlflow.db"
    with pytest.raises(ValueError, match="running"):
        log_job(job_json, None, tracking_uri=f"sqlite:///{store}")
    assert not store.exists()  # refused before anything was made


def test_sdk_job_logs_itself(finished, tmp_path, monkeypatch):
    """``qaas.Job.log_to_mlflow`` with the folder its files were downloaded to: the same run."""
    from qaas import Job as SdkJob

    monkeypatch.chdir(tmp_path)
    job_json, files, _ = finished
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = SdkJob.model_validate(job_json).log_to_mlflow(files, tracking_uri=uri, run_name="r")
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "r" and run.data.tags["qaas.job_id"] == job_json["id"]
    assert run.data.params["pipeline"] == "cle,bias_correction"
    assert {item.path for item in client.list_artifacts(run_id)} == ARTIFACTS
