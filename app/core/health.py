"""Liveness and readiness: /readyz answers 503 unless the database and the broker answer."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from app.core.context import Context
from app.core.deps import ContextDep
from app.core.errors import ServiceUnavailable, error_responses

router = APIRouter(tags=["health"])


def check_ready(context: Context) -> dict[str, str]:
    try:
        with context.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        raise ServiceUnavailable(f"database unreachable: {type(error).__name__}") from None
    try:
        context.queue.ping()
    except Exception as error:
        raise ServiceUnavailable(f"broker unreachable: {type(error).__name__}") from None
    return {"status": "ready", "database": "ok", "broker": "ok"}


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses(503))
def readyz(context: ContextDep) -> dict[str, str]:
    return check_ready(context)
