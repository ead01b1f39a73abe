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
from app.core.storage import Storage
from app.core.storage_s3 import open_storage


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    pid: int

    @classmethod
    def build(cls, settings: Settings, *, pooled: bool = True) -> Runtime:
        engine = make_engine(settings, pooled=pooled)
        storage = open_storage(settings)
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
