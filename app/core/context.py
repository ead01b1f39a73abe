"""What a process shares between requests: settings, the DB engine, storage, the checker
pool and the job queue. Built once by ``create_app`` (or a CLI command), after any fork."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.db import POOL_CONNECTIONS, make_engine, make_sessionmaker
from app.core.inspector import Inspector
from app.core.storage import LocalStorage


class JobQueue:
    """Sends job ids to the workers; only ever called after the job's row is committed."""

    def __init__(self, settings: Settings) -> None:
        from worker.celery_app import ensure_broker_folders, make_celery

        ensure_broker_folders(settings)
        self.settings = settings
        self.celery = make_celery(settings)

    def enqueue(self, job_id: str) -> None:
        self.celery.send_task("jobs.run", args=[job_id], queue=self.settings.queue)

    def ping(self) -> None:
        """Raise unless the broker answers (for /readyz)."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
            client = getattr(connection.default_channel, "client", None)
            if client is not None and hasattr(client, "ping"):  # Redis connects lazily
                client.ping()


@dataclass
class Context:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: LocalStorage
    inspector: Inspector
    queue: Any
    # Requests wait here, not in a worker thread, for one of the pool's connections: a thread
    # blocked on the pool while every connection's request waits for a thread is a deadlock
    # (many concurrent requests, e.g. submissions queued on a tenant's lock, met it).
    session_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(POOL_CONNECTIONS)
    )

    @classmethod
    def build(cls, settings: Settings) -> Context:
        engine = make_engine(settings)
        storage = LocalStorage(
            settings.artifact_root, min_free_bytes=settings.storage_min_free_bytes
        )
        storage.ensure()
        inspector = Inspector(
            processes=settings.inspect_processes,
            per_tenant=settings.inspect_per_tenant,
            memory_bytes=settings.inspect_memory_bytes,
            timeout_s=settings.inspect_timeout_s,
            keep_out=(settings.resolved_data_dir, settings.artifact_root),
            sandbox=settings.sandbox,
        )
        return cls(
            settings, engine, make_sessionmaker(engine), storage, inspector, JobQueue(settings)
        )

    def close(self) -> None:
        self.inspector.close()
        self.engine.dispose()
