"""Finds jobs whose worker died (lease ran out) and queues them again, or fails them visibly
after too many attempts; fails jobs that waited in the queue past its limit; resends queued
jobs whose message never led to a start; and, with ``QAAS_RETENTION_DAYS``, deletes what is
older than that. Runs in every worker's main process; compare-and-set (and row locks for
deletion) makes concurrent reapers harmless."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from app.core.config import Settings
from app.core.db import after_commit, transaction, utcnow
from app.core.deletion import Deletion
from app.core.errors import Conflict
from app.datasets.repository import DatasetRepository
from app.jobs.repository import JobRepository
from app.jobs.routing import CPU, GPU, Route, gpu_workers_seen
from app.jobs.tables import Job
from app.models_.repository import ModelRepository
from worker.runtime import Runtime

log = logging.getLogger("qaas.reaper")
# Retention deletes at most this many rows of each kind per sweep (a backlog drains over several
# sweeps, each a short transaction), and sweeps at most this often.
RETENTION_BATCH = 100
RETENTION_INTERVAL_S = 60.0


Enqueue = Callable[[str, str], None]  # (job id, pool)


def reap(runtime: Runtime, enqueue: Enqueue) -> dict[str, int]:
    settings = runtime.settings
    now = utcnow()
    counts = {"requeued": 0, "failed": 0, "resent": 0, "queue_timeout": 0, "rerouted": 0}
    with transaction(runtime.sessions) as session:
        jobs = JobRepository(session)
        gpu_alive: list[int] = []  # asked at most once a pass, when a gpu job comes up

        def pool_for(job: Job) -> str:
            """The job's pool; a gpu job goes to cpu once no gpu worker is left to take it."""
            if job.pool != GPU:
                return CPU
            if not gpu_alive:
                gpu_alive.append(gpu_workers_seen(session, settings))
            if gpu_alive[0]:
                return GPU
            route = Route(
                CPU,
                f"moved from the gpu queue: no gpu worker seen in the last "
                f"{settings.gpu_worker_fresh_s:g} s",
            )
            jobs.set_route(job.id, route.pool, route.as_json())
            counts["rerouted"] += 1
            return CPU

        # One extra lease of grace: a redelivered task gets the first chance to take over.
        for job in jobs.stale_running(now - timedelta(seconds=settings.job_lease_s)):
            ran_for = (now - job.started_at).total_seconds() if job.started_at else 0.0
            if ran_for > settings.job_hard_time_limit_s:
                if jobs.fail_active(
                    job.id,
                    job.attempts,
                    "timeout",
                    f"the job ran past the server's time limit of {settings.job_time_limit_s} s",
                ):
                    counts["failed"] += 1
            elif job.attempts >= settings.job_max_attempts:
                if jobs.fail_active(
                    job.id,
                    job.attempts,
                    "worker_lost",
                    f"the job was started {job.attempts} times and its worker was lost each "
                    "time (killed, out of memory, or restarted)",
                ):
                    counts["failed"] += 1
            elif jobs.requeue(job.id, job.attempts):
                pool = pool_for(job)
                after_commit(session, lambda job_id=job.id, pool=pool: enqueue(job_id, pool))
                counts["requeued"] += 1
        for job in jobs.queued_since(now - timedelta(seconds=settings.queue_time_limit_s)):
            if jobs.fail_active(
                job.id, job.attempts, "queue_timeout", queue_timeout_detail(job, settings, now)
            ):
                counts["queue_timeout"] += 1
        cutoff = now - timedelta(seconds=settings.requeue_after_s)
        for job in jobs.unstarted_queued(cutoff):
            if jobs.mark_resent(job.id, job.enqueued_at):
                pool = pool_for(job)
                after_commit(session, lambda job_id=job.id, pool=pool: enqueue(job_id, pool))
                counts["resent"] += 1
    if any(counts.values()):
        log.warning("reaper: %s", counts)
    return counts


def expire(runtime: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Delete models, datasets and finished jobs created more than ``retention_days`` ago.
    Jobs go first, then models and datasets that no queued or running job needs (checked
    again under a row lock, as for a deletion through the API). Rows go in the transaction,
    files after it commits (``app.core.deletion``)."""
    days = runtime.settings.retention_days
    counts = {"jobs": 0, "models": 0, "datasets": 0}
    if days is None:
        return counts
    cutoff = (now or utcnow()) - timedelta(days=days)
    with transaction(runtime.sessions) as session:
        deletion = Deletion(session=session, storage=runtime.storage)
        for job_id in JobRepository(session).finished_before(cutoff, RETENTION_BATCH):
            counts["jobs"] += deletion.job(job_id)
    with transaction(runtime.sessions) as session:
        deletion = Deletion(session=session, storage=runtime.storage)
        for model_id in ModelRepository(session).expired(cutoff, RETENTION_BATCH):
            counts["models"] += _unless_in_use(deletion.model, model_id)
    with transaction(runtime.sessions) as session:
        deletion = Deletion(session=session, storage=runtime.storage)
        for dataset_id in DatasetRepository(session).expired(cutoff, RETENTION_BATCH):
            counts["datasets"] += _unless_in_use(deletion.dataset, dataset_id)
    if any(counts.values()):
        log.info("retention (%g days): deleted %s", days, counts)
    return counts


def _unless_in_use(delete: Callable[[str], bool], row_id: str) -> int:
    try:
        return int(delete(row_id))
    except Conflict:  # a job was submitted for it since the query: keep it
        return 0


def queue_timeout_detail(job: Job, settings: Settings, now: datetime) -> str:
    waited = (now - job.queued_at).total_seconds()
    return (
        f"the job waited {waited:.0f} s in the queue, more than the limit of "
        f"{settings.queue_time_limit_s:g} s, and was not started: no worker was free in time. "
        "Submit it again (or ask the operator for more workers)"
    )


def waited_too_long(job: Job, settings: Settings, now: datetime) -> bool:
    return (now - job.queued_at).total_seconds() > settings.queue_time_limit_s


class Reaper(threading.Thread):
    def __init__(self, runtime: Runtime, enqueue: Enqueue) -> None:
        super().__init__(name="qaas-reaper", daemon=True)
        self.runtime = runtime
        self.enqueue = enqueue
        self.stopped = threading.Event()

    def run(self) -> None:
        next_retention = 0.0
        while True:
            try:
                reap(self.runtime, self.enqueue)
            except Exception:
                log.exception("reaper pass failed; trying again next interval")
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + RETENTION_INTERVAL_S
                try:
                    expire(self.runtime)
                except Exception:
                    log.exception("retention sweep failed; trying again later")
            if self.stopped.wait(self.runtime.settings.reaper_interval_s):
                return
