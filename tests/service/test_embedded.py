"""The embedded default started exactly as the README says — ``qaas serve`` with no settings
but a data folder — then used through the CLI: SQLite, a filesystem broker, local storage."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.service.conftest import REPO, free_port, is_ready, poll_job, wait_for


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    home = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("QAAS_") and key != "PYTHONPATH"
    }
    env.update(QAAS_DATA_DIR=str(home / "qaas-data"), QAAS_MAX_MODEL_BYTES="1000000")
    log_path = home / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=home,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    wait_for(lambda: is_ready(url), 90, "qaas serve")
    match = wait_for(
        lambda: re.search(r"QAAS_API_KEY=(\S+)", log_path.read_text()), 10, "the printed key"
    )
    yield {"url": url, "key": match.group(1), "home": home, "env": env, "log": log_path}
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    leftover = subprocess.run(["pgrep", "-f", f"qaas-serve-{process.pid}@"], capture_output=True)
    assert leftover.stdout == b"", "qaas serve left its worker running"


def test_embedded_serve_submit_wait_download(embedded, tiny_model, tiny_data, tmp_path):
    data = embedded["home"] / "qaas-data"
    assert (data / "qaas.db").is_file() and (data / "local-api-key").is_file()
    env = {**embedded["env"], "QAAS_URL": embedded["url"], "QAAS_API_KEY": embedded["key"]}
    calibration, evaluation = tiny_data
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "submit", str(tiny_model), "--calibration",
         str(calibration), "--evaluation", str(evaluation), "--wait", "--timeout", "180",
         "-o", str(out), "--json"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + embedded["log"].read_text()[-3000:]
    job = json.loads(result.stdout)
    assert job["status"] == "succeeded"
    assert {p.name for p in out.iterdir()} == {
        "model.quant.onnx",
        "encodings.json",
        "report.json",
        "report.html",
    }
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["onnxruntime"]["sqnr_db"] > 20
    session = ort.InferenceSession(
        str(out / "model.quant.onnx"), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(2).standard_normal((2, 1, 8, 8)).astype(np.float32)
    assert session.run(None, {"input": x})[0].shape == (2, 10)

    again = tmp_path / "again"
    download = subprocess.run(
        [sys.executable, "-m", "app.cli", "download", job["id"], "-o", str(again)],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )  # fmt: skip
    assert download.returncode == 0, download.stderr
    assert (again / "model.quant.onnx").read_bytes() == (out / "model.quant.onnx").read_bytes()


def test_embedded_oversized_upload_is_413_before_reading(embedded):
    storage = embedded["home"] / "qaas-data" / "storage"
    staging, models = storage / ".staging", storage / "models"
    before = sorted(p.name for p in staging.iterdir())
    models_before = sorted(p.name for p in models.iterdir()) if models.exists() else []
    response = httpx.post(
        f"{embedded['url']}/v1/models",
        content=b"\0" * 3_000_000,
        headers={"Authorization": f"Bearer {embedded['key']}"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert sorted(p.name for p in staging.iterdir()) == before
    models_after = sorted(p.name for p in models.iterdir()) if models.exists() else []
    assert models_after == models_before


def test_keys_create_against_the_same_settings(embedded):
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--tenant", "ci"],
        capture_output=True, text=True, timeout=120, env=embedded["env"], cwd=embedded["home"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"qaas_\S+", key)
    me = httpx.get(f"{embedded['url']}/v1/me", headers={"X-API-Key": key}, timeout=10).json()
    assert me["name"] == "ci"


def test_embedded_delete(embedded, tiny_model, tiny_data):
    """On SQLite too: a finished job outlives its model (the foreign key sets null), and each
    deletion takes the files with it."""
    storage = embedded["home"] / "qaas-data" / "storage"
    client = httpx.Client(
        base_url=embedded["url"],
        headers={"Authorization": f"Bearer {embedded['key']}"},
        timeout=60,
    )
    model = client.post("/v1/models", content=tiny_model.read_bytes()).json()
    data = client.post("/v1/datasets", content=tiny_data[0].read_bytes()).json()
    body = {"model_id": model["id"], "quantization": {"activation_bits": None}}
    job = client.post("/v1/jobs", json=body).json()
    done = poll_job(client, job["id"], {}, timeout=180)
    assert done["status"] == "succeeded", done
    for route in (f"/v1/models/{model['id']}", f"/v1/datasets/{data['id']}"):
        assert client.delete(route).status_code == 204
        assert client.get(route).status_code == 404
    assert not (storage / "models" / model["id"]).exists()
    assert not (storage / "datasets" / data["id"]).exists()
    kept = client.get(f"/v1/jobs/{job['id']}").json()
    assert kept["model_id"] is None and kept["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{job['id']}/artifacts/report.json").status_code == 200
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert not (storage / "jobs" / job["id"]).exists()
    client.close()
