"""A worker's per-job overhead and its share of the machine: each job gets this host's cores
divided among the live workers' job slots (``worker.threads``), and a job's progress reaches
its row at most once per ``PROGRESS_WRITE_INTERVAL_S``, the last report flushed while the
child is quiet."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from app.core.db import transaction, utcnow
from app.jobs.tables import Job, Worker
from qaas_engine import sessions as engine_sessions
from tests.service.conftest import REPO
from worker import runner, threads
from worker.runner import Attempt, JobInputs, claim, run_job
from worker.runtime import Runtime


@pytest.fixture
def runtime(settings):
    built = Runtime.build(settings, pooled=False)
    yield built
    built.engine.dispose()


@pytest.fixture
def submit(api, make_tenant, tiny_model, tiny_data):
    tenant = make_tenant()

    def put(route, path) -> str:
        response = api.post(
            route,
            params={"filename": path.name},
            content=path.read_bytes(),
            headers={**tenant, "Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 201, response.text
        return response.json()["id"]

    body = {
        "model_id": put("/v1/models", tiny_model),
        "calibration_id": put("/v1/datasets", tiny_data[0]),
    }

    def job() -> str:
        response = api.post("/v1/jobs", json=body, headers=tenant)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def state(job_id: str) -> dict:
        return api.get(f"/v1/jobs/{job_id}", headers=tenant).json()

    job.state = state  # type: ignore[attr-defined]
    return job


def test_share_divides_the_cores_among_the_slots():
    assert threads.share(8, 1) == 8
    assert threads.share(8, 2) == 4
    assert threads.share(8, 3) == 2  # the remainder idles rather than oversubscribe
    assert threads.share(2, 4) == 1  # never fewer than one
    assert threads.share(2, 0) == 2


def test_machine_cores_honours_a_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert threads.machine_cores(quota) == affinity
    quota.write_text("100000 100000\n")
    assert threads.machine_cores(quota) == 1
    quota.write_text("50000 100000\n")  # half a core: still one thread
    assert threads.machine_cores(quota) == 1
    quota.write_text(f"{(affinity + 8) * 100000} 100000\n")  # a quota above the affinity
    assert threads.machine_cores(quota) == affinity
    assert threads.machine_cores(tmp_path / "absent") == affinity


def test_the_worker_names_the_engines_variable():
    assert threads.THREADS_ENV == engine_sessions.THREADS_ENV


def test_slots_count_the_live_workers_on_this_host(runtime):
    heartbeat = runtime.settings.worker_heartbeat_s
    here, tag = socket.gethostname(), uuid.uuid4().hex[:6]

    def live_rows_here() -> int:  # other tests' workers may be running on this host too
        since = utcnow() - timedelta(seconds=threads.FRESH_HEARTBEATS * heartbeat)
        with transaction(runtime.sessions) as session:
            return int(session.scalar(
                select(func.count()).where(Worker.hostname == here, Worker.last_seen_at >= since)
            ) or 0)  # fmt: skip

    old = utcnow() - timedelta(seconds=threads.FRESH_HEARTBEATS * heartbeat + 5)
    rows = [
        Worker(name=f"a-{tag}", hostname=here, pid=1, queues=[], device="cpu",
               last_seen_at=utcnow()),
        Worker(name=f"b-{tag}", hostname=here, pid=2, queues=[], device="cpu",
               last_seen_at=utcnow()),
        Worker(name=f"dead-{tag}", hostname=here, pid=3, queues=[], device="cpu",
               last_seen_at=old),
        Worker(name=f"far-{tag}", hostname=f"elsewhere-{tag}", pid=4, queues=[], device="cpu",
               last_seen_at=utcnow()),
    ]  # fmt: skip
    before = live_rows_here()
    with transaction(runtime.sessions) as session:
        session.add_all(rows)
    try:
        with transaction(runtime.sessions) as session:
            nodes = threads.slots_on_host(session, heartbeat, 1)
            assert live_rows_here() - before == 2  # the dead row and the far one do not count
            assert nodes == before + 2
            assert threads.slots_on_host(session, heartbeat, 3) == 3 * nodes
    finally:
        with transaction(runtime.sessions) as session:
            for row in rows:
                found = session.get(Worker, row.name)
                if found is not None:
                    session.delete(found)


def test_claim_gives_the_job_its_share_unless_qaas_threads_is_set(runtime, submit, monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    inputs = claim(runtime, submit(), "threads-test", concurrency=2)
    assert isinstance(inputs, JobInputs)
    with transaction(runtime.sessions) as session:
        slots = threads.slots_on_host(session, runtime.settings.worker_heartbeat_s, 2)
    assert inputs.threads == threads.share(threads.machine_cores(), slots)
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    inputs = claim(runtime, submit(), "threads-test")
    assert isinstance(inputs, JobInputs) and inputs.threads is None  # the engine reads it


def test_use_threads_pins_the_engine_and_torch():
    code = (
        "import json, torch\n"
        "from worker.limited import use_threads\n"
        "from qaas_engine.sessions import thread_count\n"
        "use_threads(1)\n"
        "print(json.dumps([thread_count(), torch.get_num_threads()]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("QAAS_THREADS", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True,
                          capture_output=True, text=True)  # fmt: skip
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [1, 1]


def test_a_job_writes_its_row_a_few_times_not_once_per_phase(runtime, submit):
    updates: list[str] = []

    def count(conn, cursor, statement, *_):
        if statement.lstrip().upper().startswith("UPDATE JOBS"):
            updates.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        job_id = submit()
        started = time.monotonic()
        assert run_job(runtime, job_id, "writes-test").status == "succeeded"
        elapsed = time.monotonic() - started
    finally:
        event.remove(runtime.engine, "before_cursor_execute", count)
    job = submit.state(job_id)
    assert job["status"] == "succeeded" and job["phase"] == "done"
    assert {"calibration", "export", "save"} <= {step["name"] for step in job["steps"]}
    # the claim, the outcome, the first report at once, then at most one per interval (a
    # lease beat would be one more: none within 20 s)
    allowed = 3 + int(elapsed / runner.PROGRESS_WRITE_INTERVAL_S) + 1
    assert len(updates) <= allowed, (len(updates), elapsed)


def test_held_back_progress_is_written_while_the_child_is_quiet(runtime, submit, monkeypatch):
    monkeypatch.setattr(runner, "PROGRESS_WRITE_INTERVAL_S", 0.2)
    inputs = claim(runtime, submit(), "flush-test")
    assert isinstance(inputs, JobInputs)
    attempt = Attempt(runtime, inputs)

    def row() -> Job:
        with transaction(runtime.sessions) as session:
            found = session.get(Job, inputs.job_id)
            assert found is not None
            return found

    attempt.progress("load", 0.0)  # the first report: written at once
    assert row().phase == "load"
    attempt.progress("import", 0.5)  # within the interval: held back
    assert row().phase == "load"
    time.sleep(0.25)
    attempt.check()  # what run_limited calls while the child is quiet
    written = row()
    assert (written.phase, written.progress) == ("import", 0.5)
    assert [step["name"] for step in written.steps] == ["load", "import"]
    attempt.check()  # nothing new: no write
    assert not attempt.unwritten
