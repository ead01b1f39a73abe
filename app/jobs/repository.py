"""Jobs' SQL. Every state change is a compare-and-set UPDATE that says which state (and which
attempt) it expects; callers learn from the row count whether they won."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update

from app.auth.tables import Tenant
from app.core.db import utcnow
from app.core.owned import TenantRepository
from app.jobs.tables import TERMINAL, Job, JobStatus

ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
DATASET_COLUMNS = (Job.calibration_id, Job.evaluation_id, Job.training_id, Job.validation_id)


class JobRepository(TenantRepository[Job]):
    table = Job
    noun = "job"

    # reads
    def get(self, job_id: str) -> Job | None:
        return self.session.get(Job, job_id, populate_existing=True)

    def by_idempotency_key(self, tenant_id: str, key: str) -> Job | None:
        return self.session.scalar(
            select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
        )

    def lock_tenant_submissions(self, tenant_id: str) -> None:
        """Hold the tenant's row until this transaction ends, so that counting its jobs and
        inserting one is a single step: concurrent submissions wait here in turn."""
        if self.session.get_bind().dialect.name == "sqlite":
            # No row locks: a write that changes nothing takes the database's write lock (the
            # first write begins pysqlite's transaction), and other writers wait for the commit.
            self.session.execute(
                update(Tenant).where(Tenant.id == tenant_id).values(name=Tenant.name)
            )
            return
        # NO KEY UPDATE: submissions wait for each other, but not inserts elsewhere whose
        # foreign key to the tenant takes KEY SHARE (uploads, keys).
        lock = select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)
        self.session.execute(lock)

    def page_with_status(
        self,
        tenant_id: str,
        *,
        statuses: Sequence[str] | None,
        limit: int,
        created_after: datetime | None = None,
        after: tuple[datetime, str] | None = None,
    ) -> list[Job]:
        """A page of the tenant's jobs (``page``), only those in ``statuses`` when given."""
        where = [Job.status.in_(statuses)] if statuses else []
        return self.page(
            tenant_id, limit=limit, created_after=created_after, after=after, where=where
        )

    def count_active(self, tenant_id: str) -> int:
        query = select(func.count()).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
        return int(self.session.scalar(query) or 0)

    def submissions_since(
        self, tenant_id: str, since: datetime, limit: int
    ) -> tuple[int, datetime | None]:
        """(how many, the oldest) of the tenant's first ``limit`` jobs created since ``since``,
        counted in Postgres: fetching the rows cost the API a row each, twice per submission."""
        first = (
            select(Job.created_at.label("created_at"))
            .where(Job.tenant_id == tenant_id, Job.created_at >= since)
            .order_by(Job.created_at)
            .limit(limit)
            .subquery()
        )
        row = self.session.execute(
            select(func.count(), func.min(first.c.created_at)).select_from(first)
        ).one()
        return int(row[0]), row[1]

    def active_using_model(self, model_id: str, limit: int = 10) -> list[str]:
        """Ids of queued or running jobs that will read this model."""
        query = (
            select(Job.id)
            .where(Job.model_id == model_id, Job.status.in_(ACTIVE))
            .order_by(Job.created_at)
            .limit(limit)
        )
        return list(self.session.scalars(query))

    def active_using_dataset(self, dataset_id: str, limit: int = 10) -> list[str]:
        """Ids of queued or running jobs that will read this dataset, in any role."""
        query = (
            select(Job.id)
            .where(or_(*(column == dataset_id for column in DATASET_COLUMNS)))
            .where(Job.status.in_(ACTIVE))
            .order_by(Job.created_at)
            .limit(limit)
        )
        return list(self.session.scalars(query))

    def finished_before(self, created_before: datetime, limit: int) -> list[str]:
        """Ids of finished jobs created before ``created_before``, oldest first (retention)."""
        query = (
            select(Job.id)
            .where(Job.status.in_([status.value for status in TERMINAL]))
            .where(Job.created_at < created_before)
            .order_by(Job.created_at)
            .limit(limit)
        )
        return list(self.session.scalars(query))

    # compare-and-set transitions
    def _cas(self, job_id: str, conditions: list[Any], values: dict[str, Any]) -> bool:
        statement = (
            update(Job)
            .where(Job.id == job_id, *conditions)
            .values(updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )
        return self.session.execute(statement).rowcount == 1

    def cancel(self, job_id: str) -> bool:
        now = utcnow()
        return self._cas(
            job_id,
            [Job.status.in_(ACTIVE)],
            {
                "status": JobStatus.CANCELLED,
                "finished_at": now,
                "lease_expires_at": None,
                "error_kind": "cancelled",
                "error_detail": "cancelled by request",
            },
        )

    def claim(
        self,
        job_id: str,
        *,
        attempts: int,
        worker: str,
        lease_s: float,
        device: str | None = None,
    ) -> bool:
        """queued -> running, or take over a running job whose lease ran out."""
        now = utcnow()
        return self._cas(
            job_id,
            [
                Job.attempts == attempts,
                or_(
                    Job.status == JobStatus.QUEUED,
                    (Job.status == JobStatus.RUNNING) & (Job.lease_expires_at < now),
                ),
            ],
            {
                "status": JobStatus.RUNNING,
                "attempts": attempts + 1,
                "worker": worker,
                "device": device,
                "cpu_seconds": None,
                "lease_expires_at": now + timedelta(seconds=lease_s),
                "started_at": now,
                "phase": "starting",
                "progress": 0.0,
                "steps": [],
            },
        )

    def heartbeat(self, job_id: str, attempt: int, lease_s: float, **values: Any) -> bool:
        """Extend the lease (and record progress); False once the job is cancelled or taken."""
        return self._cas(
            job_id,
            [Job.status == JobStatus.RUNNING, Job.attempts == attempt],
            {"lease_expires_at": utcnow() + timedelta(seconds=lease_s), **values},
        )

    def finish(self, job_id: str, attempt: int, status: JobStatus, **values: Any) -> bool:
        return self._cas(
            job_id,
            [Job.status == JobStatus.RUNNING, Job.attempts == attempt],
            {"status": status, "finished_at": utcnow(), "lease_expires_at": None, **values},
        )

    def fail_active(self, job_id: str, attempts: int, kind: str, detail: str) -> bool:
        """Fail a queued or running job seen at ``attempts`` (gave up on it)."""
        return self._cas(
            job_id,
            [Job.status.in_(ACTIVE), Job.attempts == attempts],
            {
                "status": JobStatus.FAILED,
                "finished_at": utcnow(),
                "lease_expires_at": None,
                "error_kind": kind,
                "error_detail": detail,
            },
        )

    def requeue(self, job_id: str, attempts: int) -> bool:
        """running (dead worker) -> queued, so another worker picks it up."""
        now = utcnow()
        return self._cas(
            job_id,
            [Job.status == JobStatus.RUNNING, Job.attempts == attempts],
            {
                "status": JobStatus.QUEUED,
                "lease_expires_at": None,
                "enqueued_at": now,
                "queued_at": now,
            },
        )

    def set_route(self, job_id: str, pool: str, routing: dict[str, Any]) -> bool:
        """Send a queued job to another pool (the reaper, when its gpu pool has gone)."""
        return self._cas(
            job_id, [Job.status == JobStatus.QUEUED], {"pool": pool, "routing": routing}
        )

    def mark_resent(self, job_id: str, enqueued_at: datetime) -> bool:
        return self._cas(
            job_id,
            [Job.status == JobStatus.QUEUED, Job.enqueued_at == enqueued_at],
            {"enqueued_at": utcnow()},
        )

    # reaper queries
    def stale_running(self, expired_before: datetime, limit: int = 100) -> list[Job]:
        query = (
            select(Job)
            .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < expired_before)
            .limit(limit)
        )
        return list(self.session.scalars(query))

    def queued_since(self, queued_before: datetime, limit: int = 100) -> list[Job]:
        """Queued jobs that entered the queue before ``queued_before`` (waited too long)."""
        query = (
            select(Job)
            .where(Job.status == JobStatus.QUEUED, Job.queued_at < queued_before)
            .limit(limit)
        )
        return list(self.session.scalars(query))

    def unstarted_queued(self, enqueued_before: datetime, limit: int = 100) -> list[Job]:
        query = (
            select(Job)
            .where(Job.status == JobStatus.QUEUED, Job.enqueued_at < enqueued_before)
            .limit(limit)
        )
        return list(self.session.scalars(query))
