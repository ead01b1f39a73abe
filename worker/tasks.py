"""Celery tasks: thin wiring from a job id to ``worker.runner``."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Task
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from app.core.config import Settings
from app.core.queue import RUN_JOB, JobQueue, ensure_broker_folders
from app.observability.logs import configure_logging, log_context
from worker import limited
from worker.celery_app import celery_app
from worker.pools import WorkerBeat, detect_device
from worker.reaper import Reaper
from worker.runner import DATABASE_UNAVAILABLE, run_job
from worker.runtime import Runtime, get_runtime, worker_name
from worker.webhooks import Dispatcher

log = logging.getLogger("qaas.worker")
_reaper: Reaper | None = None
_dispatcher: Dispatcher | None = None
_beat: WorkerBeat | None = None
# Found once in the main process before the pool forks (``_worker_init``); children inherit it.
_device = "cpu"
_concurrency = 1  # the pool's size, also found in ``_worker_init``
DATABASE_RETRY_S = 3.0


def _settings() -> Settings:
    return celery_app.conf.qaas_settings


@celery_app.task(
    name=RUN_JOB,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    ignore_result=True,
)
def run(self: Task, job_id: str) -> str:
    """Run job ``job_id``; safe to deliver twice (the job row decides)."""
    with log_context(job_id=job_id):
        try:
            outcome = run_job(
                get_runtime(_settings()), job_id, worker_name(), _device, _concurrency
            )
        except DATABASE_UNAVAILABLE as error:
            # The database is restarting: try again shortly rather than drop the message (the
            # reaper would resend it, but only after requeue_after_s).
            log.warning("job %s: database unavailable (%s); retrying", job_id, type(error).__name__)
            raise self.retry(countdown=DATABASE_RETRY_S) from None
        if outcome.retry_in is not None:
            raise self.retry(countdown=outcome.retry_in)
        log.info("job %s: %s", job_id, outcome.status)
        return outcome.status


@worker_init.connect
def _worker_init(sender: Any = None, **_: Any) -> None:
    global _device, _concurrency
    ensure_broker_folders(_settings())
    _device = detect_device()
    _concurrency = int(getattr(sender, "concurrency", None) or 1)
    log.info("worker computes on %s, %d job(s) at a time", _device, _concurrency)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(**_: Any) -> None:
    configure_logging(_settings())  # QAAS_LOG_FORMAT=json: Celery's handlers write JSON too


@worker_process_init.connect
def _process_init(**_: Any) -> None:
    get_runtime(_settings())  # a fresh engine in each pool child, never one from the parent
    # In a thread: Celery gives process init a few seconds, the forkserver's imports take more.
    threading.Thread(target=limited.warm_up, name="qaas-forkserver-warm-up", daemon=True).start()


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    global _reaper, _dispatcher, _beat
    # No pooled connections in the parent: pool children are forked from it later too.
    settings = _settings()
    runtime = Runtime.build(settings, pooled=False)
    _reaper = Reaper(runtime, JobQueue(settings, celery_app).enqueue)
    _reaper.start()
    _dispatcher = Dispatcher(runtime)
    _dispatcher.start()
    queues = list(celery_app.amqp.queues.consume_from or [settings.queue])
    node = getattr(sender, "hostname", None) or worker_name()
    _beat = WorkerBeat(runtime, node, queues, _device)
    _beat.start()


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    for thread in (_reaper, _dispatcher, _beat):
        if thread is not None:
            thread.stopped.set()
    if _beat is not None:
        _beat.join(timeout=5.0)  # removes this worker's row, so routing stops counting it
