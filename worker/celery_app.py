"""The Celery app, configured from the same ``Settings`` as the API.

``celery -A worker.celery_app worker`` in the distributed mode; ``qaas serve`` starts the same
worker in the embedded mode. Delivery is at-least-once: late acks, a lost worker's message
requeued, one message prefetched; the job row (not the broker) decides whether work is done.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.core.config import Settings


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
            store_processed=False,
            polling_interval=0.5,
        )
    return options


def ensure_broker_folders(settings: Settings) -> None:
    """The filesystem broker's folders; made by whoever sends or consumes, not at import."""
    if settings.celery_broker_url.startswith("filesystem"):
        for sub in ("queue", "processed"):
            (settings.broker_folder / sub).mkdir(parents=True, exist_ok=True)


def make_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
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


celery_app = make_celery(Settings(), include=["worker.tasks"])
app = celery_app
