"""Log lines that say which job and tenant they concern. ``QAAS_LOG_FORMAT=json`` (opt-in; the
default stays the readable text a person at a terminal expects) writes one JSON object per
line: ``time``, ``level``, ``logger``, ``message``, ``job_id`` and ``tenant_id`` when known,
``exc`` for a trace.

The ids come from a context variable that holds one mutable dict per request or task:
``log_context`` opens it, ``bind`` adds to it. Mutating (rather than setting the variable) is
what lets a FastAPI dependency that runs on a worker thread (in a copy of the context) bind
the tenant for the rest of the request."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.config import Settings

FIELDS = ("job_id", "tenant_id")
_fields: ContextVar[dict[str, str] | None] = ContextVar("qaas_log_fields", default=None)
# Loggers that servers set up with their own handlers: reformatted too, so every line is JSON.
SERVER_LOGGERS = (
    *("uvicorn", "uvicorn.error", "uvicorn.access"),
    *("celery", "celery.task", "multiprocessing"),  # Celery's pool logs as multiprocessing
)


@contextmanager
def log_context(**fields: str) -> Iterator[dict[str, str]]:
    current = {**(_fields.get() or {}), **fields}
    token = _fields.set(current)
    try:
        yield current
    finally:
        _fields.reset(token)


def bind(**fields: str) -> None:
    """Add ids to the current request's or task's log fields (a no-op outside one)."""
    current = _fields.get()
    if current is not None:
        current.update(fields)


def current_fields() -> dict[str, str]:
    return dict(_fields.get() or {})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _fields.get() or {}
        for name in FIELDS:
            value = getattr(record, name, None) or context.get(name)
            if value:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    """The root logger for ``settings.log_format``; in JSON mode also the servers' own
    handlers (uvicorn, Celery), which do not propagate to the root."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if settings.log_format != "json":
        return
    root.setLevel(min(root.level or level, level))
    for logger in (root, *(logging.getLogger(name) for name in SERVER_LOGGERS)):
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())


class LogContextMiddleware:
    """Each HTTP request gets its own log fields (``bind`` fills them in: tenant, job)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with log_context():
            await self.app(scope, receive, send)
