"""The job queue: the task's name, the Celery app configured from ``Settings``, and sending a
job id to it. The API enqueues through this module and the worker registers its task under
``RUN_JOB`` from here, so the API never imports the worker.

Two queues, one per worker pool (``app.jobs.routing``): ``QAAS_QUEUE`` itself is the cpu
pool's, so a single-queue deployment keeps working unchanged, and ``<QAAS_QUEUE>.gpu`` the gpu
pool's. A CPU worker consumes the first (``-Q qaas``, or no ``-Q``: the default queue), a worker
on a CUDA machine the second and usually the first too (``-Q qaas.gpu,qaas``).

Delivery is at-least-once: late acks, a lost worker's message requeued, one message
prefetched; the job row (not the broker) decides whether work is done.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.core.config import Settings

RUN_JOB = "jobs.run"
GPU_SUFFIX = ".gpu"


def queue_name(settings: Settings, pool: str = "cpu") -> str:
    """The Celery queue of worker pool ``pool`` ("cpu" or "gpu")."""
    if pool == "gpu":
        return settings.queue + GPU_SUFFIX
    if pool == "cpu":
        return settings.queue
    raise ValueError(f"unknown worker pool {pool!r}: cpu or gpu")


def pool_of_queue(settings: Settings, queue: str) -> str | None:
    """The pool a Celery queue serves, or None for a queue that is neither."""
    for pool in ("cpu", "gpu"):
        if queue == queue_name(settings, pool):
            return pool
    return None


def broker_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        # Above the hard time limit, or Redis gives a running job to a second worker.
        "visibility_timeout": settings.visibility_timeout_s,
    }
    if settings.celery_broker_url.startswith("filesystem"):
        folder = settings.broker_folder
        options.update(
            data_folder_in=str(folder / "queue"),
            data_folder_out=str(folder / "queue"),
            processed_folder=str(folder / "processed"),
            # fanout exchanges' bindings (Celery's remote control); kombu's default is a
            # "control" folder in whatever directory the process started in
            control_folder=str(folder / "control"),
            store_processed=False,
            polling_interval=0.5,
        )
    return options


def ensure_broker_folders(settings: Settings) -> None:
    """The filesystem broker's folders; made by whoever sends or consumes, not at import."""
    if settings.celery_broker_url.startswith("filesystem"):
        for sub in ("queue", "processed", "control"):
            (settings.broker_folder / sub).mkdir(parents=True, exist_ok=True)


def make_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
    """One configuration for the sender (API, reaper) and the consumer (worker)."""
    app = Celery("qaas", broker=settings.celery_broker_url, include=include or [])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.job_time_limit_s,
        task_time_limit=settings.job_hard_time_limit_s,
        task_default_queue=settings.queue,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    app.conf.qaas_settings = settings
    return app


class JobQueue:
    """Sends job ids to the workers; only ever called after the job's row is committed."""

    def __init__(self, settings: Settings, celery: Celery | None = None) -> None:
        ensure_broker_folders(settings)
        self.settings = settings
        self.celery = celery or make_celery(settings)

    def enqueue(self, job_id: str, pool: str = "cpu") -> None:
        self.celery.send_task(RUN_JOB, args=[job_id], queue=queue_name(self.settings, pool))

    def ping(self) -> None:
        """Raise unless the broker answers (for /readyz)."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
            client = getattr(connection.default_channel, "client", None)
            if client is not None and hasattr(client, "ping"):  # Redis connects lazily
                client.ping()
