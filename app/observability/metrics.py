"""``GET /metrics`` in Prometheus' text format, computed from the database at scrape time.

Why from the database: the API and the workers are separate processes, on separate machines
in the distributed mode, and the job rows are already the truth about every job.
prometheus_client's multiprocess mode would aggregate only the processes of one host that
share a folder, and counters kept in memory start again at each restart; a query answers the
same whichever API process is scraped. The price: figures describe the rows that exist, so
deleting jobs (or retention) lowers them; they are gauges and summaries of stored rows, not
counters since the start of time.

Auth: open while ``QAAS_METRICS_TOKEN`` is unset (the figures are totals, never per tenant);
else the scraper sends ``Authorization: Bearer <token>`` (Prometheus' ``authorization``).
"""

from __future__ import annotations

import hmac
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db import utcnow
from app.core.deps import ContextDep, SessionDep
from app.core.errors import Unauthorized
from app.datasets.tables import Dataset
from app.jobs.routing import CPU, POOLS
from app.jobs.tables import TERMINAL, Job, JobStatus, Worker
from app.models_.tables import Model

router = APIRouter(tags=["operations"])


class DatabaseCollector(Collector):
    """Every figure from one read of the rows (one scrape, one short read-only session)."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self.session = session
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._steps()
        yield from self._uploads()
        yield from self._workers()
        yield from self._webhooks()

    def _jobs(self) -> Iterator[Metric]:
        by_status = dict(
            self.session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        )
        jobs = GaugeMetricFamily("qaas_jobs", "Jobs stored, by status", labels=["status"])
        for each in JobStatus:
            jobs.add_metric([each.value], by_status.get(each.value, 0))
        yield jobs
        errors = GaugeMetricFamily(
            "qaas_job_errors", "Failed or cancelled jobs stored, by error kind", labels=["kind"]
        )
        query = (
            select(Job.error_kind, func.count())
            .where(Job.error_kind.is_not(None))
            .group_by(Job.error_kind)
        )
        for kind, count in self.session.execute(query).all():
            errors.add_metric([str(kind)], count)
        yield errors
        # One series per worker pool; sum(qaas_queue_depth) is the unlabelled figure of old.
        depth = GaugeMetricFamily(
            "qaas_queue_depth", "Jobs waiting for a worker, by pool", labels=["queue"]
        )
        waiting = dict.fromkeys(POOLS, 0)
        query = select(Job.pool, func.count()).where(Job.status == JobStatus.QUEUED)
        for pool, count in self.session.execute(query.group_by(Job.pool)).all():
            key = pool if pool in waiting else CPU  # rows from before pools: the one queue
            waiting[key] += count
        for pool in POOLS:
            depth.add_metric([pool], waiting[pool])
        yield depth
        oldest = self.session.scalar(
            select(func.min(Job.queued_at)).where(Job.status == JobStatus.QUEUED)
        )
        age = (utcnow() - _aware(oldest)).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "qaas_queue_oldest_age_seconds", "How long the oldest queued job has waited", age
        )
        durations = SummaryMetricFamily(
            "qaas_job_run_seconds", "Finished jobs' running time, by status", labels=["status"]
        )
        finished = select(Job.status, Job.started_at, Job.finished_at).where(
            Job.status.in_([s.value for s in TERMINAL]), Job.started_at.is_not(None)
        )
        counts: Counter[str] = Counter()
        sums: defaultdict[str, float] = defaultdict(float)
        for outcome, started_at, finished_at in self.session.execute(finished).all():
            if started_at is not None and finished_at is not None:
                counts[outcome] += 1
                sums[outcome] += (_aware(finished_at) - _aware(started_at)).total_seconds()
        for name in sorted(counts):
            durations.add_metric([name], counts[name], sums[name])
        yield durations

    def _steps(self) -> Iterator[Metric]:
        """Per step of the report (``steps``: name, seconds) over the succeeded jobs."""
        summary = SummaryMetricFamily(
            "qaas_job_step_seconds", "Succeeded jobs' step durations", labels=["step"]
        )
        counts: Counter[str] = Counter()
        sums: defaultdict[str, float] = defaultdict(float)
        query = select(Job.steps).where(Job.status == JobStatus.SUCCEEDED)
        for steps in self.session.scalars(query):
            for step in steps or []:
                if isinstance(step.get("seconds"), int | float):
                    counts[step["name"]] += 1
                    sums[step["name"]] += float(step["seconds"])
        for name in sorted(counts):
            summary.add_metric([name], counts[name], sums[name])
        yield summary

    def _uploads(self) -> Iterator[Metric]:
        stored = GaugeMetricFamily(
            "qaas_upload_bytes", "Bytes of uploads stored, models and datasets", labels=["kind"]
        )
        count = GaugeMetricFamily("qaas_uploads", "Uploads stored", labels=["kind"])
        for kind, table in (("model", Model), ("dataset", Dataset)):
            number, size = self.session.execute(
                select(func.count(), func.coalesce(func.sum(table.size_bytes), 0))
            ).one()
            stored.add_metric([kind], int(size))
            count.add_metric([kind], number)
        yield stored
        yield count

    def _workers(self) -> Iterator[Metric]:
        """Workers heartbeat through their running jobs' leases (each beat sets the lease to
        now + QAAS_JOB_LEASE_S): an idle worker holds no lease and does not appear."""
        beats = GaugeMetricFamily(
            "qaas_worker_last_heartbeat_timestamp_seconds",
            "Last heartbeat of each worker that is running a job (unix time)",
            labels=["worker"],
        )
        query = (
            select(Job.worker, func.max(Job.lease_expires_at))
            .where(Job.status == JobStatus.RUNNING, Job.worker.is_not(None))
            .group_by(Job.worker)
        )
        lease_s = self.settings.job_lease_s
        for worker, lease_end in self.session.execute(query).all():
            if lease_end is not None:
                beats.add_metric([str(worker)], _aware(lease_end).timestamp() - lease_s)
        yield beats
        expired = self.session.scalar(
            select(func.count()).where(
                Job.status == JobStatus.RUNNING, Job.lease_expires_at < utcnow()
            )
        )
        workers = GaugeMetricFamily(
            "qaas_workers",
            "Workers that heartbeat within QAAS_GPU_WORKER_FRESH_S, by pool consumed and device",
            labels=["queue", "device"],
        )
        since = utcnow() - timedelta(seconds=self.settings.gpu_worker_fresh_s)
        seen: Counter[tuple[str, str]] = Counter()
        rows = select(Worker.consumes_gpu, Worker.device).where(Worker.last_seen_at >= since)
        for consumes_gpu, device in self.session.execute(rows).all():
            seen["gpu" if consumes_gpu else CPU, str(device)] += 1
        for (pool, device), count in sorted(seen.items()):
            workers.add_metric([pool, device], count)
        yield workers
        yield GaugeMetricFamily(
            "qaas_jobs_lease_expired",
            "Running jobs whose worker missed its heartbeat (the reaper will requeue them)",
            value=expired or 0,
        )

    def _webhooks(self) -> Iterator[Metric]:
        webhooks = GaugeMetricFamily(
            "qaas_webhooks", "Jobs' webhooks, by delivery state", labels=["state"]
        )
        query = (
            select(Job.webhook_status, func.count())
            .where(Job.webhook_status.is_not(None))
            .group_by(Job.webhook_status)
        )
        for state, count in self.session.execute(query).all():
            webhooks.add_metric([str(state)], count)
        yield webhooks


def _aware(moment: datetime) -> datetime:
    """UTCDateTime gives aware values; aggregates (min/max) bypass it and come back naive."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def check_token(settings: Settings, authorization: str | None) -> None:
    expected = settings.metrics_token
    if expected is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), expected):
        raise Unauthorized("/metrics wants Authorization: Bearer <QAAS_METRICS_TOKEN>")


@router.get("/metrics", include_in_schema=False)
def metrics(
    context: ContextDep,
    session: SessionDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """Prometheus scrape target, in the text format every Prometheus reads (0.0.4)."""
    check_token(context.settings, authorization)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(session, context.settings))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)
