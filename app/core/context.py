"""What a process shares between requests: settings, the DB engine, storage, the checker
pool and the job queue. Built once by ``create_app`` (or a CLI command), after any fork."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.db import POOL_CONNECTIONS, make_engine, make_sessionmaker
from app.core.inspector import Inspector
from app.core.queue import JobQueue
from app.core.storage import Storage
from app.core.storage_s3 import open_storage


@dataclass
class Context:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    inspector: Inspector
    queue: JobQueue
    # Requests wait here, not in a worker thread, for one of the pool's connections: a thread
    # blocked on the pool while every connection's request waits for a thread is a deadlock
    # (many concurrent requests, e.g. submissions queued on a tenant's lock, met it).
    session_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(POOL_CONNECTIONS)
    )

    @classmethod
    def build(cls, settings: Settings) -> Context:
        engine = make_engine(settings)
        storage = open_storage(settings)
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
