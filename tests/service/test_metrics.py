"""``/metrics``: Prometheus' own parser reads it, and a job run by a real worker shows up in
it (by state, its steps' durations, its upload bytes); a token closes it when configured."""

from __future__ import annotations

import socket
import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from tests.service.conftest import (
    own_deployment,
    poll_job,
    start_worker,
    stop_process,
    upload,
    wait_for,
)

# a database and a queue of this module's own: its worker runs only this module's jobs
settings, storage, api, sessions = own_deployment()


def scrape(client, headers=None) -> dict[str, dict[tuple, float]]:
    """{metric name: {sorted label items: value}} for every sample."""
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


@pytest.fixture(scope="module")
def finished_job(api, settings, sessions, tiny_model, tiny_data, tmp_path_factory):
    from app.auth.service import AuthService
    from app.core.db import transaction

    with transaction(sessions) as session:
        _, key = AuthService(session=session).create_key(tenant_name="metrics-owner")
    headers = {"Authorization": f"Bearer {key}"}
    log = tmp_path_factory.mktemp("metrics") / "worker.log"
    # Slowed progress reports: the job runs long enough to be scraped while it runs.
    worker = start_worker(settings, log, phase_delay_s=0.3)
    try:
        model = upload(api, "/v1/models", tiny_model, headers).json()
        calibration = upload(api, "/v1/datasets", tiny_data[0], headers).json()
        body = {"model_id": model["id"], "calibration_id": calibration["id"]}
        job = api.post("/v1/jobs", json=body, headers=headers).json()

        def running():
            shown = api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
            return shown["status"] == "running" and shown["phase"] not in (None, "starting")

        wait_for(running, 120, "the job to run")
        while_running = scrape(api), time.time()
        job = poll_job(api, job["id"], headers, timeout=240)
    finally:
        stop_process(worker)
    assert job["status"] == "succeeded", job
    return {"job": job, "model": model, "calibration": calibration, "running": while_running}


def test_metrics_parse_and_show_a_finished_job(api, finished_job):
    samples = scrape(api)  # no token configured: open, no key needed
    jobs = {dict(labels)["status"]: value for labels, value in samples["qaas_jobs"].items()}
    assert set(jobs) == {"queued", "running", "succeeded", "failed", "cancelled"}
    assert jobs["succeeded"] >= 1
    depth = {dict(labels)["queue"]: value for labels, value in samples["qaas_queue_depth"].items()}
    assert set(depth) == {"cpu", "gpu"} and sum(depth.values()) == jobs["queued"]
    assert samples["qaas_job_run_seconds_count"][(("status", "succeeded"),)] >= 1

    job_steps = {step["name"]: step["seconds"] for step in finished_job["job"]["steps"]}
    counts = {dict(k)["step"]: v for k, v in samples["qaas_job_step_seconds_count"].items()}
    sums = {dict(k)["step"]: v for k, v in samples["qaas_job_step_seconds_sum"].items()}
    for name in ("calibration", "export"):
        assert counts[name] >= 1 and sums[name] >= job_steps[name]

    stored = {dict(k)["kind"]: v for k, v in samples["qaas_upload_bytes"].items()}
    assert stored["model"] >= finished_job["model"]["size_bytes"]
    assert stored["dataset"] >= finished_job["calibration"]["size_bytes"]
    assert samples["qaas_queue_oldest_age_seconds"][()] >= 0


def test_metrics_while_a_job_runs(settings, finished_job):
    samples, scraped_at = finished_job["running"]
    assert samples["qaas_jobs"][(("status", "running"),)] >= 1
    beats = samples["qaas_worker_last_heartbeat_timestamp_seconds"]
    assert any(dict(labels)["worker"].startswith(socket.gethostname()) for labels in beats)
    newest = max(beats.values())
    assert scraped_at - settings.job_lease_s - 2 <= newest <= scraped_at + 1
    assert samples["qaas_jobs_lease_expired"][()] == 0


def test_metrics_token(settings, finished_job):
    guarded = settings.model_copy(update={"metrics_token": "scrape-me"})
    with TestClient(create_app(guarded)) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        samples = scrape(client, {"Authorization": "Bearer scrape-me"})
        assert samples["qaas_jobs"][(("status", "succeeded"),)] >= 1
