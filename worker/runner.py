"""One attempt at one job: claim the row, run the engine with a progress callback and a lease
heartbeat, publish the artifacts, and record the outcome — every row change a compare-and-set,
so a duplicate delivery, a cancel or a takeover after a lost worker can never clobber it."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError

from app.artifacts.service import artifacts_key
from app.core.db import transaction, utcnow
from app.core.errors import InsufficientStorage, is_storage_full
from app.core.storage import StorageUnavailable, file_sha256, job_folder
from app.datasets.tables import Dataset
from app.jobs.repository import JobRepository
from app.jobs.routing import job_device
from app.jobs.tables import TERMINAL, JobStatus
from app.models_.tables import Model
from app.observability.logs import bind
from worker.limited import STORAGE_FILLED_UP, ChildJob, JobFailed, Limits, run_limited
from worker.reaper import queue_timeout_detail, waited_too_long
from worker.runtime import Runtime
from worker.threads import job_threads

log = logging.getLogger("qaas.worker")
PROGRESS_WRITE_INTERVAL_S = 1.0
# How long an attempt keeps trying to record its outcome while the database is away (a restart
# or failover); past this it gives up and the reaper takes the job over once its lease is out.
FINISH_RETRY_S = 120.0
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)


class JobAborted(Exception):
    """The row is no longer ours: cancelled, or taken over after our lease ran out."""


@dataclass(frozen=True)
class Outcome:
    status: str
    retry_in: float | None = None


@dataclass(frozen=True)
class JobInputs:
    """What an attempt needs, read from the rows once, while claiming."""

    job_id: str
    attempt: int
    # Storage keys: fetched (from an object store, into the worker's cache) when the attempt
    # runs, so an unreachable store fails the job as 'storage_unavailable'.
    model_key: str
    model_companions: tuple[str, ...]  # external-data files beside the model
    data_keys: dict[str, str | None]
    spec: dict[str, Any]
    max_accuracy_drop: float | None
    energy_profile: dict[str, Any] | None
    threads: int | None = None  # the job's share of this host's cores (``worker.threads``)


def run_job(
    runtime: Runtime, job_id: str, worker: str, device: str = "cpu", concurrency: int = 1
) -> Outcome:
    """``device``: the worker's torch device ("cpu" or "cuda:0 (<name>)", ``worker.pools``);
    ``concurrency``: the jobs this worker runs at once (its pool size)."""
    inputs_or_outcome = claim(runtime, job_id, worker, device, concurrency)
    if isinstance(inputs_or_outcome, Outcome):
        return inputs_or_outcome
    return Attempt(runtime, inputs_or_outcome).execute()


def claim(
    runtime: Runtime, job_id: str, worker: str, device: str = "cpu", concurrency: int = 1
) -> JobInputs | Outcome:
    settings = runtime.settings
    with transaction(runtime.sessions) as session:
        jobs = JobRepository(session)
        job = jobs.get(job_id)
        if job is None:  # deleted (or never committed): nothing to run, nothing to write
            log.warning("job %s: no such row; message dropped", job_id)
            return Outcome("missing")
        bind(tenant_id=job.tenant_id)
        if job.status in TERMINAL:
            return Outcome(f"already {job.status}")
        now = utcnow()
        if job.status == JobStatus.RUNNING and job.lease_expires_at and job.lease_expires_at > now:
            # Running elsewhere, or its worker just died: look again once the lease is over.
            return Outcome("busy", retry_in=(job.lease_expires_at - now).total_seconds() + 0.5)
        if job.status == JobStatus.QUEUED and waited_too_long(job, settings, now):
            # Its message arrived before the reaper noticed: start nothing this late.
            jobs.fail_active(
                job.id, job.attempts, "queue_timeout", queue_timeout_detail(job, settings, now)
            )
            return Outcome("queue timeout")
        if job.attempts >= settings.job_max_attempts:
            jobs.fail_active(
                job.id,
                job.attempts,
                "worker_lost",
                f"the job was started {job.attempts} times and its worker was lost each time "
                "(killed, out of memory, or past the hard time limit)",
            )
            return Outcome("gave up")
        model = session.get(Model, job.model_id) if job.model_id is not None else None
        if model is None:
            # Deletion refuses a model an active job needs; this is a race that slipped past.
            jobs.fail_active(
                job.id, job.attempts, "invalid_input", "the job's model was deleted before it ran"
            )
            return Outcome("model deleted")
        if not jobs.claim(
            job.id,
            attempts=job.attempts,
            worker=worker,
            lease_s=settings.job_lease_s,
            device=job_device(job.spec, job.training_id is not None, device),
        ):
            return Outcome("claimed by another worker")

        def key_of(dataset_id: str | None) -> str | None:
            if dataset_id is None:
                return None
            dataset = session.get(Dataset, dataset_id)
            return dataset.storage_key if dataset else None

        return JobInputs(
            job_id=job.id,
            attempt=job.attempts + 1,
            model_key=model.storage_key,
            model_companions=tuple(entry["name"] for entry in model.external_data or []),
            data_keys={
                "calibration": key_of(job.calibration_id),
                "evaluation": key_of(job.evaluation_id),
                "training": key_of(job.training_id),
                "validation": key_of(job.validation_id),
            },
            spec=job.spec,
            max_accuracy_drop=job.max_accuracy_drop,
            energy_profile=job.energy_profile,
            threads=job_threads(session, settings.worker_heartbeat_s, concurrency),
        )


class Heartbeat(threading.Thread):
    """Extends the lease every third of it; notices a cancel between progress reports."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(name=f"heartbeat-{attempt.inputs.job_id}", daemon=True)
        self.attempt = attempt
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = self.attempt.runtime.settings.job_lease_s / 3
        while not self.stopped.wait(interval):
            try:
                if not self.attempt.record():
                    self.attempt.aborted.set()
                    return
            except Exception:  # a DB blip: the next beat tries again
                log.warning("job %s: heartbeat failed", self.attempt.inputs.job_id, exc_info=True)


class Attempt:
    def __init__(self, runtime: Runtime, inputs: JobInputs) -> None:
        self.runtime = runtime
        self.inputs = inputs
        self.aborted = threading.Event()
        self.phase = "starting"
        self.fraction = 0.0
        self.steps: list[dict[str, Any]] = []
        self.last_write = -PROGRESS_WRITE_INTERVAL_S  # the first report is written at once
        self.unwritten = False  # progress reported since the last write
        self.steps_written = 0
        self.lock = threading.Lock()

    # row updates
    def record(self, **values: Any) -> bool:
        with self.lock, transaction(self.runtime.sessions) as session:
            return JobRepository(session).heartbeat(
                self.inputs.job_id,
                self.inputs.attempt,
                self.runtime.settings.job_lease_s,
                phase=self.phase,
                progress=round(self.fraction, 4),
                **values,
            )

    def finish(self, status: JobStatus, **values: Any) -> bool:
        """Record the outcome, waiting out a database restart: the work is done, don't lose it."""
        deadline = time.monotonic() + FINISH_RETRY_S
        while True:
            try:
                with self.lock, transaction(self.runtime.sessions) as session:
                    return JobRepository(session).finish(
                        self.inputs.job_id, self.inputs.attempt, status, **values
                    )
            except DATABASE_UNAVAILABLE:
                if time.monotonic() > deadline:
                    raise
                log.warning("job %s: database unavailable; retrying", self.inputs.job_id)
                time.sleep(1.0)

    def progress(self, phase: str, fraction: float) -> None:
        """The engine's progress callback: raises once we are aborted. The row is written at
        most every ``PROGRESS_WRITE_INTERVAL_S``, a phase change included (a small job passes
        a dozen phases in a fraction of a second: a commit for each was most of its database
        load); what is held back ``check`` writes while the child is quiet, so a long phase
        shows within the interval of its start."""
        if self.aborted.is_set():
            raise JobAborted()
        changed = phase != self.phase
        self.phase, self.fraction = phase, max(0.0, min(1.0, fraction))
        if changed:
            self.steps.append({"name": phase, "started_at": utcnow().isoformat()})
        self.unwritten = True
        self._write_if_due()

    def _write_if_due(self) -> None:
        now = time.monotonic()
        if not self.unwritten or now - self.last_write < PROGRESS_WRITE_INTERVAL_S:
            return
        self.last_write = now
        values = {"steps": list(self.steps)} if len(self.steps) != self.steps_written else {}
        try:
            recorded = self.record(**values)
        except DATABASE_UNAVAILABLE:
            # A database restart must not fail the job: keep computing; the heartbeat
            # retries, and if the lease runs out meanwhile a later write notices the takeover.
            log.warning("job %s: progress not recorded (database unavailable)", self.inputs.job_id)
            return
        self.unwritten = False
        self.steps_written = len(values.get("steps", self.steps))
        if not recorded:
            self.aborted.set()
            raise JobAborted()

    # the attempt
    def execute(self) -> Outcome:
        job_id = self.inputs.job_id
        self._remove_stale_staging()
        heartbeat = Heartbeat(self)
        heartbeat.start()
        try:
            return self._run_and_publish()
        except JobAborted:
            log.info("job %s attempt %s: stopped (cancelled or taken over)", job_id, self.attempt)
            return Outcome("aborted")
        except DATABASE_UNAVAILABLE:
            raise  # not the job's fault: the task retries, or the reaper takes over
        except Exception as error:
            kind, detail = self._failure(error)
            self.finish(JobStatus.FAILED, error_kind=kind, error_detail=detail)
            return Outcome("failed")
        finally:
            # The heartbeat runs until the outcome is recorded: finish() may wait out a
            # database restart, and the lease must not lapse meanwhile.
            heartbeat.stopped.set()

    def _run_and_publish(self) -> Outcome:
        """Quantize into a staging folder, publish it whole, record success."""
        job_id = self.inputs.job_id
        self.progress("load", 0.0)
        self.runtime.storage.ensure_space(0, "the job's artifacts")
        staged = self.runtime.storage.new_staging_dir(f"job-{job_id}-{self.inputs.attempt}-")
        published = False
        try:
            child = self._child_job(staged)
            saved = run_limited(child, self._limits(), self.progress, self.check)
            manifest = [
                {
                    "name": name,
                    "size_bytes": (staged / name).stat().st_size,
                    "sha256": file_sha256(staged / name),
                }
                for name in saved["written"]
            ]
            report = saved["report"]
            self.check()
            self.runtime.storage.publish_dir(staged, artifacts_key(job_id))
            published = True
        finally:
            if not published:
                self.runtime.storage.remove_staging(staged)
        recorded = self.finish(
            JobStatus.SUCCEEDED,
            phase="done",
            progress=1.0,
            steps=report["steps"],
            step_reports=report.get("step_reports", {}),
            metrics=report["metrics"],
            report=report,
            artifacts=manifest,
            cpu_seconds=saved.get("cpu_s"),
        )
        return Outcome("succeeded") if recorded else self._lost_at_finish()

    def _failure(self, error: Exception) -> tuple[str, str]:
        """The row's ``error_kind`` and ``error_detail`` for what stopped the job."""
        job_id = self.inputs.job_id
        if isinstance(error, SoftTimeLimitExceeded):
            limit = self.runtime.settings.job_time_limit_s
            return "timeout", f"the job ran past the server's time limit of {limit} s"
        if isinstance(error, InsufficientStorage):
            return "storage_full", error.detail
        if isinstance(error, StorageUnavailable):
            return "storage_unavailable", error.detail
        if isinstance(error, JobFailed):
            if error.kind != "internal":
                return error.kind, error.detail
            # the child printed the trace to the worker's log
            log.error("job %s attempt %s: %s", job_id, self.attempt, error.detail)
            return "internal", f"{error.detail}; the worker log has the trace for job {job_id}"
        if is_storage_full(error):
            return "storage_full", STORAGE_FILLED_UP
        log.exception("job %s attempt %s: internal error", job_id, self.attempt)
        return (
            "internal",
            f"internal error ({type(error).__name__}); the worker log has the trace for job "
            f"{job_id}",
        )

    def _remove_stale_staging(self) -> None:
        """Folders that earlier attempts of this job left when their worker died."""
        for folder in self.runtime.storage.staging.glob(f"job-{self.inputs.job_id}-*"):
            shutil.rmtree(folder, ignore_errors=True)

    @property
    def attempt(self) -> int:
        return self.inputs.attempt

    def check(self) -> None:
        """Called while the child computes quietly: stop once the row is no longer ours, and
        write the progress the throttle held back."""
        if self.aborted.is_set():
            raise JobAborted()
        self._write_if_due()

    def _limits(self) -> Limits:
        settings = self.runtime.settings
        return Limits(settings.job_memory_bytes, settings.job_compute_timeout_s)

    def _child_job(self, staged: Path) -> ChildJob:
        inputs, settings, storage = self.inputs, self.runtime.settings, self.runtime.storage
        return ChildJob(
            model_path=storage.local_file(inputs.model_key, inputs.model_companions),
            data_paths={
                role: storage.local_file(key) if key else None
                for role, key in inputs.data_keys.items()
            },
            spec=inputs.spec,
            energy_profile=inputs.energy_profile,
            staged=staged,
            storage_root=self.runtime.storage.root,
            storage_min_free_bytes=self.runtime.storage.min_free_bytes,
            sandbox=settings.sandbox,
            keep_out=(settings.resolved_data_dir, self.runtime.storage.root),
            max_dataset_expanded_bytes=settings.max_dataset_expanded_bytes,
            max_accuracy_drop=inputs.max_accuracy_drop,
            threads=inputs.threads,
        )

    def _lost_at_finish(self) -> Outcome:
        """Our final compare-and-set lost: if the job was cancelled, remove what we published;
        if it was deleted meanwhile (its files perhaps removed before we published), remove its
        whole folder, so a deleted job leaves nothing behind."""
        with transaction(self.runtime.sessions) as session:
            job = JobRepository(session).get(self.inputs.job_id)
            status = job.status if job else None
        if job is None:
            self.runtime.storage.delete_tree(job_folder(self.inputs.job_id))
            return Outcome("lost to deletion")
        if status == JobStatus.CANCELLED:
            self.runtime.storage.delete_tree(artifacts_key(self.inputs.job_id))
        return Outcome(f"lost to {status}")
