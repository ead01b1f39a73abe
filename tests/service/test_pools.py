"""Worker pools against Postgres, Redis and real worker processes: a worker records its queues
and device; a QAT job submitted while only a CPU worker runs completes on cpu and says why; a
worker that consumes the gpu queue without a CUDA device takes what is there but is not counted
as a gpu worker; with a gpu worker seen, learning jobs go to gpu and /metrics shows the depth
per pool; the reaper moves a job waiting for a gpu worker that is gone to cpu."""

from __future__ import annotations

import socket
import subprocess
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.db import make_engine, make_sessionmaker, run_migrations, transaction, utcnow
from app.core.queue import JobQueue, queue_name
from app.jobs.tables import Job, Worker
from app.main import create_app
from app.serve import worker_argv
from tests.service.conftest import (
    REPO,
    poll_job,
    scratch_database,
    service_env,
    start_worker,
    stop_process,
    wait_for,
)
from tests.service.test_metrics import scrape
from tests.service.test_reaper import make_job
from tests.service.test_training_jobs import qat_body, submit, uploaded
from worker.reaper import reap
from worker.runtime import Runtime


@pytest.fixture(scope="module")
def pools_settings(settings, redis_client):
    """Every learning job is large enough for the gpu pool: only the workers decide."""
    result = settings.model_copy(update={"gpu_min_parameters": 0})
    yield result
    redis_client.delete(queue_name(result, "gpu"))


@pytest.fixture(scope="module")
def pools_api(pools_settings):
    with TestClient(create_app(pools_settings)) as client:
        yield client


@pytest.fixture
def qat_ids(pools_api, make_tenant, tiny_model, tiny_data, tmp_path_factory):
    import numpy as np

    tenant = make_tenant()
    rng = np.random.default_rng(2)
    training = tmp_path_factory.mktemp("pools") / "training.npz"
    np.savez(
        training,
        input=rng.standard_normal((32, 1, 8, 8)).astype(np.float32),
        labels=rng.integers(0, 10, 32),
    )
    ids = {
        "model_id": uploaded(pools_api, tiny_model, tenant, "/v1/models"),
        "calibration_id": uploaded(pools_api, tiny_data[0], tenant),
        "training_id": uploaded(pools_api, training, tenant),
    }
    return tenant, ids


def worker_row(sessions, prefix: str) -> Worker | None:
    with sessions() as session:
        query = select(Worker).where(Worker.name.startswith(prefix))
        return session.scalars(query).first()


def fresh_gpu_workers(sessions, settings) -> list[str]:
    since = utcnow() - timedelta(seconds=settings.gpu_worker_fresh_s)
    with sessions() as session:
        query = select(Worker.name).where(Worker.consumes_gpu, Worker.last_seen_at >= since)
        return list(session.scalars(query))


def test_a_qat_job_submitted_while_only_a_cpu_worker_runs_completes_on_cpu_and_says_why(
    pools_api, pools_settings, sessions, qat_ids, tmp_path
):
    tenant, ids = qat_ids
    assert fresh_gpu_workers(sessions, pools_settings) == []
    worker = start_worker(pools_settings, tmp_path / "worker.log")
    try:
        row = wait_for(lambda: worker_row(sessions, "test-"), 60, "the worker's row")
        assert row.queues == [pools_settings.queue] and row.consumes_gpu is False
        assert row.device == "cpu" and row.hostname == socket.gethostname()
        queued = submit(pools_api, tenant, qat_body(ids))
        assert queued["routing"] == {
            "queue": "cpu",
            "reason": f"no gpu worker seen in the last {pools_settings.gpu_worker_fresh_s:g} s",
        }
        job = poll_job(pools_api, queued["id"], tenant, timeout=180)
        assert job["status"] == "succeeded", (job["error"], (tmp_path / "worker.log").read_text())
        assert "qat" in job["step_reports"]
        assert job["routing"] == queued["routing"]  # the reason stays on the finished job
        assert job["device"] == "cpu"
        assert job["worker"].startswith(socket.gethostname() + ":")
        # measured by the job's own process, which the worker's counters cannot see
        assert queued["cpu_seconds"] is None and 0 < job["cpu_seconds"] < 180
        workers = {dict(k)["queue"]: v for k, v in scrape(pools_api)["qaas_workers"].items()}
        assert workers.get("cpu", 0) >= 1
    finally:
        stop_process(worker)
    # A worker that stops removes its row: routing stops counting it at once.
    assert worker_row(sessions, row.name) is None


def test_a_worker_consuming_the_gpu_queue_without_cuda_is_no_gpu_worker(
    pools_api, pools_settings, sessions, qat_ids, tmp_path, redis_client
):
    """It takes what is in the gpu queue, but routing does not count it: the learning jobs go
    to cpu (which it consumes too) and say why."""
    tenant, ids = qat_ids
    name = f"gpu-{uuid.uuid4().hex[:6]}"
    queues = f"{queue_name(pools_settings, 'gpu')},{queue_name(pools_settings, 'cpu')}"
    log = (tmp_path / "gpu-worker.log").open("wb")
    worker = subprocess.Popen(
        worker_argv(queues, f"{name}@%h"),
        cwd=REPO,
        env=service_env(pools_settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        row = wait_for(lambda: worker_row(sessions, name), 60, "the gpu worker's row")
        assert sorted(row.queues) == sorted(queues.split(","))
        assert row.device == "cpu" and row.consumes_gpu is False  # this machine has no CUDA
        plain = {"model_id": ids["model_id"], "calibration_id": ids["calibration_id"]}
        post_training = submit(pools_api, tenant, plain)
        assert post_training["routing"]["reason"].startswith("post-training pipeline")
        queued = submit(pools_api, tenant, qat_body(ids))
        assert queued["routing"]["queue"] == "cpu"
        assert queued["routing"]["reason"].startswith("no gpu worker seen")
        # What is in the gpu queue (sent while a gpu worker lived) it takes.
        gpu_queue = queue_name(pools_settings, "gpu")
        JobQueue(pools_settings).enqueue(queued["id"], "gpu")
        wait_for(lambda: redis_client.llen(gpu_queue) == 0, 60, "the gpu queue to be consumed")
        for each in (queued, post_training):
            job = poll_job(pools_api, each["id"], tenant, timeout=180)
            assert job["status"] == "succeeded", job["error"]
            # It computed where the worker could: this machine has no CUDA device.
            assert job["device"] == "cpu"
            assert job["worker"].startswith(socket.gethostname() + ":")
    finally:
        stop_process(worker)
        log.close()
    assert worker_row(sessions, name) is None


def test_queue_depth_is_per_pool(pools_api, pools_settings, sessions, qat_ids):
    tenant, ids = qat_ids
    with transaction(sessions) as session:  # a gpu worker seen just now, in the rows
        session.add(
            Worker(name=f"seen-{uuid.uuid4().hex[:6]}", hostname="elsewhere", pid=1,
                   queues=[queue_name(pools_settings, "gpu")], consumes_gpu=True,
                   device="cuda:0 (NVIDIA H100 80GB HBM3)")
        )  # fmt: skip
    try:
        before = scrape(pools_api)["qaas_queue_depth"][(("queue", "gpu"),)]
        queued = submit(pools_api, tenant, qat_body(ids))
        assert queued["routing"]["queue"] == "gpu"
        samples = scrape(pools_api)
        assert samples["qaas_queue_depth"][(("queue", "gpu"),)] == before + 1
        gpu = (("device", "cuda:0 (NVIDIA H100 80GB HBM3)"), ("queue", "gpu"))
        assert samples["qaas_workers"][gpu] >= 1
        assert pools_api.post(f"/v1/jobs/{queued['id']}/cancel", headers=tenant).status_code == 200
    finally:
        with transaction(sessions) as session:
            for row in session.scalars(select(Worker).where(Worker.hostname == "elsewhere")):
                session.delete(row)


@pytest.fixture
def own_db(tmp_path):
    """A database of its own, so no running worker's reaper or heartbeat touches it."""
    with scratch_database("qaas_pools") as url:
        from app.core.config import Settings

        settings = Settings(data_dir=tmp_path, database_url=url, gpu_worker_fresh_s=30.0)
        run_migrations(settings)
        engine = make_engine(settings, pooled=False)
        yield settings, make_sessionmaker(engine)
        engine.dispose()


def test_the_reaper_moves_a_gpu_job_to_cpu_once_no_gpu_worker_is_left(own_db):
    settings, sessions = own_db
    hour_ago = utcnow() - timedelta(hours=1)
    routed = {"queue": "gpu", "reason": "qat on about 2,000,000 parameters"}
    waiting = make_job(sessions, status="queued", enqueued_at=hour_ago, pool="gpu", routing=routed)
    runtime = Runtime.build(settings, pooled=False)
    sent: list[tuple[str, str]] = []
    with transaction(sessions) as session:  # a gpu worker that stopped beating a minute ago
        session.add(
            Worker(name="gone@gpu-host", hostname="gpu-host", pid=1, queues=["qaas.gpu"],
                   consumes_gpu=True, device="cuda:0 (NVIDIA H100)",
                   last_seen_at=utcnow() - timedelta(seconds=60))
        )  # fmt: skip
    counts = reap(runtime, lambda job_id, pool: sent.append((job_id, pool)))
    assert sent == [(waiting, "cpu")] and counts["rerouted"] == 1
    with sessions() as session:
        job = session.get(Job, waiting)
        assert job.pool == "cpu" and job.routing == {
            "queue": "cpu",
            "reason": "moved from the gpu queue: no gpu worker seen in the last 30 s",
        }
    # A gpu worker alive: a gpu job is resent to gpu.
    again = make_job(sessions, status="queued", enqueued_at=hour_ago, pool="gpu", routing=routed)
    with transaction(sessions) as session:
        session.get(Worker, "gone@gpu-host").last_seen_at = utcnow()
    sent.clear()
    counts = reap(runtime, lambda job_id, pool: sent.append((job_id, pool)))
    assert sent == [(again, "gpu")] and counts["rerouted"] == 0
    runtime.engine.dispose()
