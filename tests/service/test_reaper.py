"""The reaper, against Postgres: a job whose worker vanished (lease ran out) is queued again,
or failed visibly once it has used up its attempts; a queued job never started is resent."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.auth.service import AuthService
from app.core.config import Settings
from app.core.db import make_engine, make_sessionmaker, run_migrations, transaction, utcnow
from app.jobs.tables import Job
from app.models_.tables import Model
from tests.service.conftest import scratch_database
from worker.reaper import reap
from worker.runner import run_job
from worker.runtime import Runtime


@pytest.fixture
def own_db(tmp_path):
    """A database of its own, so no running worker's reaper sees these rows."""
    with scratch_database("qaas_reaper") as url:
        settings = Settings(data_dir=tmp_path, database_url=url, job_lease_s=3.0)
        run_migrations(settings)
        engine = make_engine(settings, pooled=False)
        yield settings, make_sessionmaker(engine)
        engine.dispose()


def make_job(sessions, **fields) -> str:
    with transaction(sessions) as session:
        tenant, _ = AuthService(session=session).create_key(tenant_name=f"reaper-{utcnow()}")
        model = Model(
            tenant_id=tenant.id, filename="m.onnx", storage_key="models/x/original",
            size_bytes=1, sha256="0" * 64, source_format="onnx", opset=17, inputs=[], notes=[],
        )  # fmt: skip
        session.add(model)
        session.flush()
        job = Job(tenant_id=tenant.id, model_id=model.id, spec={}, request_hash="h", **fields)
        session.add(job)
        session.flush()
        return job.id


def test_reaper_requeues_fails_and_resends(own_db):
    settings, sessions = own_db
    long_ago = utcnow() - timedelta(seconds=60)
    lost = make_job(sessions, status="running", attempts=1, lease_expires_at=long_ago,
                    started_at=long_ago)  # fmt: skip
    exhausted = make_job(sessions, status="running", attempts=settings.job_max_attempts,
                         lease_expires_at=long_ago, started_at=long_ago)  # fmt: skip
    alive = make_job(sessions, status="running", attempts=1, started_at=long_ago,
                     lease_expires_at=utcnow() + timedelta(seconds=60))  # fmt: skip
    forgotten = make_job(sessions, status="queued", enqueued_at=utcnow() - timedelta(hours=1))
    sent: list[str] = []
    runtime = Runtime.build(settings, pooled=False)
    reap(runtime, sent.append)
    assert lost in sent and forgotten in sent
    assert exhausted not in sent and alive not in sent
    with sessions() as session:
        assert session.get(Job, lost).status == "queued"
        failed = session.get(Job, exhausted)
        assert failed.status == "failed" and failed.error_kind == "worker_lost"
        assert session.get(Job, alive).status == "running"
    reap(runtime, sent.append)  # nothing is sent twice for the same state
    assert sent.count(lost) == 1 and sent.count(forgotten) == 1
    runtime.engine.dispose()


def test_queue_wait_and_run_time_have_separate_limits(own_db):
    settings, sessions = own_db
    settings = settings.model_copy(update={"queue_time_limit_s": 60.0})
    hour_ago = utcnow() - timedelta(hours=1)
    # Queued an hour ago; its message was resent a moment ago: the wait still counts.
    stale = make_job(sessions, status="queued", queued_at=hour_ago, enqueued_at=utcnow())
    fresh = make_job(sessions, status="queued")
    # Running for an hour, lease alive: the queue limit is not its business.
    alive = utcnow() + timedelta(seconds=60)
    running = make_job(sessions, status="running", attempts=1, queued_at=hour_ago,
                       started_at=hour_ago, lease_expires_at=alive)  # fmt: skip
    runtime = Runtime.build(settings, pooled=False)
    sent: list[str] = []
    counts = reap(runtime, sent.append)
    assert counts["queue_timeout"] == 1 and stale not in sent
    with sessions() as session:
        failed = session.get(Job, stale)
        assert failed.status == "failed" and failed.error_kind == "queue_timeout"
        assert "in the queue" in failed.error_detail and "60 s" in failed.error_detail
        assert session.get(Job, fresh).status == "queued"
        assert session.get(Job, running).status == "running"
    runtime.engine.dispose()


def test_a_late_message_does_not_start_a_job_that_waited_too_long(own_db):
    settings, sessions = own_db
    settings = settings.model_copy(update={"queue_time_limit_s": 60.0})
    late = make_job(sessions, status="queued", queued_at=utcnow() - timedelta(hours=1))
    runtime = Runtime.build(settings, pooled=False)
    assert run_job(runtime, late, "test-worker").status == "queue timeout"
    with sessions() as session:
        job = session.get(Job, late)
        assert job.status == "failed" and job.error_kind == "queue_timeout"
        assert job.attempts == 0 and job.started_at is None
    runtime.engine.dispose()
