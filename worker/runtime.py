"""Per-process resources for tasks: made lazily in the process that uses them, so a forked
pool child never shares its parent's database connections."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.db import make_engine, make_sessionmaker
from app.core.storage import LocalStorage


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: LocalStorage
    pid: int

    @classmethod
    def build(cls, settings: Settings, *, pooled: bool = True) -> Runtime:
        engine = make_engine(settings, pooled=pooled)
        storage = LocalStorage(
            settings.artifact_root, min_free_bytes=settings.storage_min_free_bytes
        )
        storage.ensure()
        return cls(settings, engine, make_sessionmaker(engine), storage, os.getpid())


_runtime: Runtime | None = None


def get_runtime(settings: Settings) -> Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        if _runtime is not None:
            _runtime.engine.dispose(close=False)  # inherited across fork: drop, don't close
        _runtime = Runtime.build(settings)
    return _runtime


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
