"""The issue's "done when", as a ``pip install`` user meets it: the wheel installed in a fresh
venv, its ``qaas serve`` started from an empty folder (conftest.py's ``served``), and a script
run by that venv's python that drives the service through the SDK alone: upload, submit with a
``callback_url``, wait, download, list by status, log the job to MLflow. Around it, this
process checks what the script cannot vouch for: a real HTTP receiver gets the webhook and its
signature verifies by a plain HMAC (not the service's own code), ``/metrics`` counts the job,
``model.quant.onnx`` runs in onnxruntime and the MLflow runs read back from their store."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from mlflow.tracking import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from tests.packaging.conftest import clean_env

WEBHOOK_WAIT_S = 30
SCRIPT_TIMEOUT_S = 120
ARTIFACTS = {"model.quant.onnx", "report.json"}

# Run by the installed venv's python: only what `pip install qaas-service[mlflow]` gives.
SCRIPT = """
import json, sys
from pathlib import Path

import qaas
from qaas.mlflow import log_job

model, calibration, callback, out, tracking = sys.argv[1:6]
with qaas.Client() as client:
    job = client.submit(
        client.upload_model(model),
        calibration=client.upload_dataset(calibration),
        callback_url=callback,
        pipeline="cle",
    )
    job.wait(timeout=90, progress=False, poll_interval=0.2)
    files = job.download(out)
    found = {
        "qaas": qaas.__file__,
        "job": job.model_dump(mode="json"),
        "files": sorted(files),
        "succeeded": [j.id for j in client.jobs(status="succeeded")],
        "failed": [j.id for j in client.jobs(status="failed")],
        "run": log_job(job.model_dump(mode="json"), Path(out), tracking_uri=tracking),
        "sdk_run": job.log_to_mlflow(tracking_uri=tracking, experiment="qaas-sdk"),
    }
print(json.dumps(found))
"""


class Receiver(BaseHTTPRequestHandler):
    """Keeps each POST (headers, raw body) on the server's queue; answers 204."""

    server: ReceiverServer

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.put((self.path, dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class ReceiverServer(ThreadingHTTPServer):
    received: queue.Queue[tuple[str, dict[str, str], bytes]]


@pytest.fixture
def receiver() -> Iterator[ReceiverServer]:
    server = ReceiverServer(("127.0.0.1", 0), Receiver)
    server.received = queue.Queue()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def signature_ok(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks, by hand: base64 HMAC-SHA256 of "{id}.{timestamp}.{body}", keyed
    with the secret's bytes after ``whsec_``; the header may list several ``v1,`` values."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [part.split(",", 1) for part in headers["webhook-signature"].split()]
    return any(v == "v1" and hmac.compare_digest(s, expected) for v, s in offered)


def test_end_to_end_from_the_wheel(served, installed, receiver, tiny_model, tiny_data, tmp_path):
    url, key = served
    auth = {"Authorization": f"Bearer {key}"}
    script = tmp_path / "use_qaas.py"
    script.write_text(SCRIPT)
    out, tracking = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    callback = f"http://127.0.0.1:{receiver.server_address[1]}/hooks/qaas"
    env = {**clean_env(), "QAAS_URL": url, "QAAS_API_KEY": key}
    ran = subprocess.run(
        [str(installed), str(script), str(tiny_model), str(tiny_data[0]), callback, str(out),
         tracking],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )  # fmt: skip
    assert ran.returncode == 0, f"the SDK script failed:\n{ran.stdout}\n{ran.stderr}"
    found = json.loads(ran.stdout.splitlines()[-1])
    job = found["job"]
    assert found["qaas"].startswith(str(installed.parent.parent)), found["qaas"]

    # the job and its files
    assert job["status"] == "succeeded", job
    assert job["callback_url"] == callback
    assert set(found["files"]) >= ARTIFACTS, found["files"]
    quantized = out / "model.quant.onnx"
    session = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {"input": np.zeros((2, 1, 8, 8), np.float32)})
    assert result.shape == (2, 10)

    # listing by status: through the SDK, and the server's own filter (the SDK filters too)
    assert job["id"] in found["succeeded"] and job["id"] not in found["failed"]
    for status, present in (("succeeded", True), ("failed", False)):
        listed = httpx.get(f"{url}/v1/jobs", params={"status": status}, headers=auth)
        assert listed.status_code == 200, listed.text
        assert (job["id"] in [j["id"] for j in listed.json()]) is present, (status, listed.text)

    # the webhook, signed with the tenant's secret
    path, headers, body = receiver.received.get(timeout=WEBHOOK_WAIT_S)
    headers = {name.lower(): value for name, value in headers.items()}
    assert path == "/hooks/qaas"
    secret = httpx.get(f"{url}/v1/webhook-secret", headers=auth)
    assert secret.status_code == 200, secret.text
    assert signature_ok(secret.json()["secret"], headers, body), headers
    assert not signature_ok("whsec_" + base64.b64encode(b"x" * 24).decode(), headers, body)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 300
    event = json.loads(body)
    assert event["type"] == "job.succeeded" and event["data"]["id"] == job["id"]
    assert headers["webhook-id"] == f"msg_{job['id']}"
    assert wait_for_delivery(url, auth, job["id"]) == "delivered"

    # /metrics, as Prometheus reads it
    scraped = httpx.get(f"{url}/metrics")
    assert scraped.status_code == 200, scraped.text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }
    assert samples[("qaas_jobs", (("status", "succeeded"),))] >= 1
    assert samples[("qaas_job_run_seconds_count", (("status", "succeeded"),))] >= 1
    assert samples[("qaas_uploads", (("kind", "model"),))] >= 1

    # the MLflow runs, read back from their store
    report = json.loads((out / "report.json").read_text())
    client = MlflowClient(tracking_uri=tracking)
    for run_id, experiment in ((found["run"], "qaas"), (found["sdk_run"], "qaas-sdk")):
        run = client.get_run(run_id)
        assert client.get_experiment(run.info.experiment_id).name == experiment
        assert run.info.status == "FINISHED"
        assert run.data.tags["qaas.job_id"] == job["id"]
        params = run.data.params
        assert params["weight_bits"] == str(job["quantization"]["weight_bits"]) == "8"
        assert params["pipeline"] == "cle" and params["job.model_id"] == job["model_id"]
        metrics = run.data.metrics
        size = report["size_bytes"]["quantized_file"]
        assert metrics["size_bytes.quantized_file"] == size == quantized.stat().st_size
        logged = {a.path for a in client.list_artifacts(run_id)}
        assert logged >= ARTIFACTS, logged


def wait_for_delivery(url: str, auth: dict[str, str], job_id: str) -> str | None:
    """The job records the delivery just after the receiver answered."""
    deadline = time.monotonic() + WEBHOOK_WAIT_S
    while True:
        status = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth).json()["webhook_status"]
        if status != "pending" or time.monotonic() > deadline:
            return status
        time.sleep(0.2)
