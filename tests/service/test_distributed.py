"""The distributed deployment for real: Postgres, Redis, an API server process and a
``celery -A worker.celery_app worker`` process. End to end through HTTP, the Python client and
the CLI; a worker killed mid-job; cancel and deletion of a running job; the tenant isolation
matrix."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from app.client import QaasClient, QaasError
from app.jobs.tables import Job
from tests.service.conftest import (
    REPO,
    own_deployment,
    poll_job,
    published_names,
    start_api,
    start_worker,
    stop_process,
    stored_under,
    upload,
    wait_for,
)

ARTIFACTS = {"model.quant.onnx", "encodings.json", "report.json", "report.html"}


# a database and a queue of this module's own: its worker runs only this module's jobs
settings, storage, api, sessions = own_deployment()


@pytest.fixture(scope="module")
def worker(settings, tmp_path_factory):
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    # Every progress report sleeps a little, so a test can act while a job runs.
    process = start_worker(settings, log, phase_delay_s=0.3)
    yield process
    stop_process(process)
    assert process.returncode is not None


@pytest.fixture(scope="module")
def server(settings, tmp_path_factory):
    """The API as its own process (uvicorn), as a deployment runs it."""
    process, url = start_api(settings, tmp_path_factory.mktemp("api") / "api.log")
    yield url
    stop_process(process)


@pytest.fixture(scope="module")
def owner(sessions):
    from app.auth.service import AuthService
    from app.core.db import transaction

    with transaction(sessions) as session:
        _, key = AuthService(session=session).create_key(tenant_name="owner-a")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def finished(api, worker, owner, tiny_model, tiny_data):
    """A W8A8 job with calibration and labelled evaluation data, run to the end."""
    calibration, evaluation = tiny_data
    model = upload(api, "/v1/models", tiny_model, owner).json()
    calib = upload(api, "/v1/datasets", calibration, owner).json()
    evals = upload(api, "/v1/datasets", evaluation, owner).json()
    body = {
        "model_id": model["id"],
        "calibration_id": calib["id"],
        "evaluation_id": evals["id"],
        "quantization": {"weight_bits": 8, "activation_bits": 8},
        "max_accuracy_drop": 0.5,
    }
    job = api.post("/v1/jobs", json=body, headers=owner).json()
    job = poll_job(api, job["id"], owner, timeout=180)
    return {"model": model, "calibration": calib, "evaluation": evals, "job": job}


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_end_to_end_http(api, owner, finished, storage, tmp_path):
    job = finished["job"]
    assert job["status"] == "succeeded", job
    assert job["error"] is None and job["progress"] == 1.0 and job["phase"] == "done"
    assert {step["name"] for step in job["steps"]} >= {"load", "calibration", "export", "save"}
    assert {a["name"] for a in job["artifacts"]} == ARTIFACTS
    report = api.get(f"/v1/jobs/{job['id']}/report", headers=owner).json()
    assert report["metrics"]["onnxruntime"]["sqnr_db"] > 20
    assert report["metrics"]["simulation_vs_onnxruntime"]["top1_agreement"] >= 0.9
    assert report["accuracy_target"]["met"] in (True, False)

    url = f"/v1/jobs/{job['id']}/artifacts/model.quant.onnx"
    response = api.get(url, headers=owner)
    digest = hashlib.sha256(response.content).hexdigest()
    assert response.headers["etag"] == f'"{digest}"'
    assert api.get(url, headers={**owner, "If-None-Match": f'"{digest}"'}).status_code == 304
    part = api.get(url, headers={**owner, "Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == response.content[:10]
    path = tmp_path / "model.quant.onnx"
    path.write_bytes(response.content)
    x = np.random.default_rng(1).standard_normal((4, 1, 8, 8)).astype(np.float32)
    assert run_onnx(path, x).shape == (4, 10)
    assert {p.split("/")[0] for p in stored_under(storage, f"jobs/{job['id']}")} == {"artifacts"}


def test_python_client_and_cli(server, owner, worker, tiny_model, tiny_data, tmp_path):
    key = owner["Authorization"].split()[1]
    calibration, evaluation = tiny_data
    with QaasClient(server, key) as client:
        model = client.upload_model(tiny_model)
        data = client.upload_dataset(calibration)
        job = client.submit(model["id"], calibration_id=data["id"], idempotency_key="client-1")
        again = client.submit(model["id"], calibration_id=data["id"], idempotency_key="client-1")
        assert again["id"] == job["id"]
        job = client.wait(job["id"], timeout=180)
        assert job["status"] == "succeeded"
        files = client.download(job["id"], tmp_path / "client")
    assert set(files) == ARTIFACTS

    env = {**os.environ, "QAAS_URL": server, "QAAS_API_KEY": key, "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "cli"
    submit = subprocess.run(
        [sys.executable, "-m", "app.cli", "submit", str(tiny_model), "--calibration",
         str(calibration), "--evaluation", str(evaluation), "--weights", "int8",
         "--activations", "int8", "--wait", "--timeout", "180", "-o", str(out), "--json"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    result = json.loads(submit.stdout)
    assert result["status"] == "succeeded"
    assert {p.name for p in out.iterdir()} == ARTIFACTS
    status = subprocess.run(
        [sys.executable, "-m", "app.cli", "status", result["id"], "--json"],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )  # fmt: skip
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded"
    missing = subprocess.run(
        [sys.executable, "-m", "app.cli", "download", "0" * 32, "-o", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )  # fmt: skip
    assert missing.returncode == 2 and "not found" in missing.stderr


def submit_slow_job(api, headers, finished):
    body = {
        "model_id": finished["model"]["id"],
        "calibration_id": finished["calibration"]["id"],
        "evaluation_id": finished["evaluation"]["id"],
    }
    job = api.post("/v1/jobs", json=body, headers=headers).json()

    def running():
        current = api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
        return (
            current if current["status"] == "running" and current["phase"] != "starting" else None
        )

    return wait_for(running, 120, "the job to run")


def test_worker_killed_mid_job_is_redelivered(api, owner, finished, sessions, settings, storage):
    job = submit_slow_job(api, owner, finished)
    with sessions() as session:
        row = session.get(Job, job["id"])
        pid = int(row.worker.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)  # the pool process running the task, mid-job
    done = poll_job(api, job["id"], owner, timeout=180)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    with sessions() as session:
        row = session.get(Job, job["id"])
        assert row.lease_expires_at is None and row.finished_at is not None
        assert int(row.worker.rsplit(":", 1)[1]) != pid
    assert {p.split("/")[0] for p in stored_under(storage, f"jobs/{job['id']}")} == {"artifacts"}
    assert published_names(storage, f"jobs/{job['id']}/artifacts") == ARTIFACTS
    assert not list((settings.artifact_root / ".staging").glob(f"job-{job['id']}-*"))


def test_cancel_a_running_job(api, owner, finished, storage, sessions):
    job = submit_slow_job(api, owner, finished)
    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel", headers=owner).json()
    assert cancelled["status"] == "cancelled"

    def worker_let_go():
        with sessions() as session:
            row = session.get(Job, job["id"])
            return row.status == "cancelled" and row.lease_expires_at is None

    wait_for(worker_let_go, 30, "the cancelled row to settle")
    assert api.get(f"/v1/jobs/{job['id']}", headers=owner).json()["status"] == "cancelled"
    assert not stored_under(storage, f"jobs/{job['id']}/artifacts")


def test_delete_a_running_job(api, owner, finished, settings, storage, worker):
    """Cancelled, then gone: the worker stops at its next report and leaves no artifacts."""
    job = submit_slow_job(api, owner, finished)
    staging = settings.artifact_root / ".staging"
    wait_for(lambda: list(staging.glob(f"job-{job['id']}-*")), 30, "the job's staging folder")
    assert api.delete(f"/v1/jobs/{job['id']}", headers=owner).status_code == 204
    assert api.get(f"/v1/jobs/{job['id']}", headers=owner).status_code == 404
    wait_for(
        lambda: not list(staging.glob(f"job-{job['id']}-*")), 30, "the worker to let the job go"
    )
    assert not stored_under(storage, f"jobs/{job['id']}")
    assert worker.poll() is None  # the vanished row did not take the worker down
    # The model and data it used were not deleted with it, and the next job runs.
    assert api.get(f"/v1/models/{finished['model']['id']}", headers=owner).status_code == 200
    body = {"model_id": finished["model"]["id"], "quantization": {"activation_bits": None}}
    after = api.post("/v1/jobs", json=body, headers=owner).json()
    assert poll_job(api, after["id"], owner, timeout=180)["status"] == "succeeded"


def test_client_and_cli_delete(server, owner, worker, tiny_model, tiny_data, storage):
    key = owner["Authorization"].split()[1]
    with QaasClient(server, key) as client:
        model = client.upload_model(tiny_model)
        data = client.upload_dataset(tiny_data[0])
        job = client.submit(model["id"], calibration_id=data["id"])
        job = client.wait(job["id"], timeout=180)
        assert job["status"] == "succeeded"
        client.delete_job(job["id"])
        client.delete_dataset(data["id"])
        with pytest.raises(QaasError) as missing:
            client.job(job["id"])
        assert missing.value.status == 404
    assert not stored_under(storage, f"jobs/{job['id']}")
    assert not stored_under(storage, f"datasets/{data['id']}")

    env = {**os.environ, "QAAS_URL": server, "QAAS_API_KEY": key, "PYTHONWARNINGS": "ignore"}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "delete", *args],
            capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
        )  # fmt: skip

    deleted = cli("model", model["id"], "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {"kind": "model", "id": model["id"], "deleted": True}
    assert not stored_under(storage, f"models/{model['id']}")
    again = cli("model", model["id"])
    assert again.returncode == 2 and "not found" in again.stderr


def test_tenant_isolation_matrix(api, owner, make_tenant, finished, tiny_model):
    """Tenant B can neither see nor touch anything of A's, on every endpoint: always 404."""
    intruder = make_tenant()
    model, dataset, job = finished["model"], finished["calibration"], finished["job"]
    own_model = upload(api, "/v1/models", tiny_model, intruder).json()
    reads = [
        f"/v1/models/{model['id']}",
        f"/v1/datasets/{dataset['id']}",
        f"/v1/jobs/{job['id']}",
        f"/v1/jobs/{job['id']}/artifacts",
        f"/v1/jobs/{job['id']}/report",
        *[f"/v1/jobs/{job['id']}/artifacts/{name}" for name in ARTIFACTS],
    ]
    for path in reads:
        assert api.get(path, headers=intruder).status_code == 404, path
        assert api.get(path, headers=owner).status_code == 200, path
    assert api.post(f"/v1/jobs/{job['id']}/cancel", headers=intruder).status_code == 404
    for path in reads[:3]:
        assert api.delete(path, headers=intruder).status_code == 404, path
    uses = [
        {"model_id": model["id"], "calibration_id": dataset["id"]},
        {"model_id": own_model["id"], "calibration_id": dataset["id"]},
        {"model_id": own_model["id"], "quantization": {"activation_bits": None},
         "evaluation_id": dataset["id"]},
    ]  # fmt: skip
    for body in uses:
        response = api.post("/v1/jobs", json=body, headers=intruder)
        assert response.status_code == 404, (body, response.text)
    for listing in ("/v1/models", "/v1/datasets", "/v1/jobs"):
        ids = {item["id"] for item in api.get(listing, headers=intruder).json()}
        assert ids.isdisjoint({model["id"], dataset["id"], job["id"]}), listing
    assert api.get(f"/v1/jobs/{job['id']}", headers=owner).json()["status"] == "succeeded"
