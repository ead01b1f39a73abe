"""The reaper, against Postgres: a job whose worker vanished (lease ran out) is queued again,
or failed visibly once it has used up its attempts; a queued job never started is resent;
with a retention period, old rows and their files go, but never what an active job needs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.auth.service import AuthService
from app.core.config import Settings
from app.core.db import make_engine, make_sessionmaker, run_migrations, transaction, utcnow
from app.core.storage_s3 import open_storage
from app.datasets.tables import Dataset
from app.jobs.tables import Job
from app.models_.tables import Model
from tests.service.conftest import scratch_database, stored_under
from worker.reaper import expire, reap
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
    reap(runtime, lambda job_id, pool: sent.append(job_id))
    assert lost in sent and forgotten in sent
    assert exhausted not in sent and alive not in sent
    with sessions() as session:
        assert session.get(Job, lost).status == "queued"
        failed = session.get(Job, exhausted)
        assert failed.status == "failed" and failed.error_kind == "worker_lost"
        assert session.get(Job, alive).status == "running"
    # nothing is sent twice for the same state
    reap(runtime, lambda job_id, pool: sent.append(job_id))
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
    counts = reap(runtime, lambda job_id, pool: sent.append(job_id))
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


class Stored:
    """Rows with files on storage, created ``days_ago``, for the retention sweep."""

    def __init__(self, sessions, storage):
        self.sessions, self.storage = sessions, storage
        with transaction(sessions) as session:
            tenant, _ = AuthService(session=session).create_key(tenant_name=f"ret-{utcnow()}")
            self.tenant_id = tenant.id

    def _file(self, key: str) -> str:
        path = self.storage.new_staging_dir("stored-") / "file"
        path.write_bytes(b"x")
        self.storage.put_file(path, key)  # whichever backend the run uses
        self.storage.remove_staging(path.parent)
        return key

    def model(self, days_ago: float) -> str:
        with transaction(self.sessions) as session:
            model = Model(
                tenant_id=self.tenant_id, filename="m.onnx", storage_key="", size_bytes=1,
                sha256="0" * 64, source_format="onnx", opset=17, inputs=[], notes=[],
                created_at=utcnow() - timedelta(days=days_ago),
            )  # fmt: skip
            session.add(model)
            session.flush()
            model.storage_key = self._file(f"models/{model.id}/original")
            return model.id

    def dataset(self, days_ago: float) -> str:
        with transaction(self.sessions) as session:
            dataset = Dataset(
                tenant_id=self.tenant_id, filename="d.npz", storage_key="", size_bytes=1,
                expanded_bytes=1, sha256="0" * 64, arrays={},
                created_at=utcnow() - timedelta(days=days_ago),
            )  # fmt: skip
            session.add(dataset)
            session.flush()
            dataset.storage_key = self._file(f"datasets/{dataset.id}/data.npz")
            return dataset.id

    def job(self, days_ago: float, model_id: str, status: str, **fields) -> str:
        with transaction(self.sessions) as session:
            job = Job(
                tenant_id=self.tenant_id, model_id=model_id, spec={}, request_hash="h",
                status=status, created_at=utcnow() - timedelta(days=days_ago), **fields,
            )  # fmt: skip
            session.add(job)
            session.flush()
            self._file(f"jobs/{job.id}/artifacts/model.quant.onnx")
            return job.id


def test_retention_deletes_what_is_old_and_keeps_what_active_jobs_need(own_db):
    settings, sessions = own_db
    storage = open_storage(settings)
    stored = Stored(sessions, storage)
    old_model, busy_model, new_model = stored.model(40), stored.model(40), stored.model(1)
    old_data, busy_data = stored.dataset(40), stored.dataset(40)
    old_done = stored.job(40, old_model, "succeeded", calibration_id=old_data)
    old_failed = stored.job(40, busy_model, "failed")
    old_queued = stored.job(40, busy_model, "queued")
    running = stored.job(1, new_model, "running", evaluation_id=busy_data)
    new_done = stored.job(1, busy_model, "cancelled")

    kept_forever = Runtime.build(settings, pooled=False)  # retention_days unset
    assert not any(expire(kept_forever).values())
    runtime = Runtime.build(settings.model_copy(update={"retention_days": 30}), pooled=False)
    assert expire(runtime) == {"jobs": 2, "models": 1, "datasets": 1}

    gone = [(Job, old_done), (Job, old_failed), (Model, old_model), (Dataset, old_data)]
    kept = [(Job, old_queued), (Job, running), (Job, new_done), (Model, busy_model),
            (Model, new_model), (Dataset, busy_data)]  # fmt: skip
    with sessions() as session:
        assert all(session.get(table, row_id) is None for table, row_id in gone)
        assert all(session.get(table, row_id) is not None for table, row_id in kept)
    for key in (f"jobs/{old_done}", f"models/{old_model}", f"datasets/{old_data}"):
        assert not stored_under(storage, key), key
    for key in (f"jobs/{new_done}", f"models/{busy_model}", f"datasets/{busy_data}"):
        assert stored_under(storage, key), key
    assert not any(expire(runtime).values())  # nothing more to do
    kept_forever.engine.dispose()
    runtime.engine.dispose()


def test_retention_work_per_sweep_is_bounded(own_db, monkeypatch):
    settings, sessions = own_db
    stored = Stored(sessions, open_storage(settings))
    models = [stored.model(40) for _ in range(3)]
    monkeypatch.setattr("worker.reaper.RETENTION_BATCH", 2)
    runtime = Runtime.build(settings.model_copy(update={"retention_days": 30}), pooled=False)
    assert expire(runtime)["models"] == 2
    assert expire(runtime)["models"] == 1
    with sessions() as session:
        assert all(session.get(Model, model_id) is None for model_id in models)
    runtime.engine.dispose()
