"""Errors that carry their HTTP status, and the one envelope every error response uses."""

from __future__ import annotations

import errno
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("qaas.api")
DATABASE_RETRY_AFTER_S = 5
STORAGE_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class ErrorBody(BaseModel):
    """The one body every error response has (documented on each operation)."""

    error: str = Field(description="a stable code to branch on, e.g. not_found, quota_exceeded")
    detail: str = Field(description="what went wrong and what to do about it, for a person")


# What each status means in this API, for the OpenAPI document (``error_responses``).
ERROR_MEANINGS = {
    400: "a malformed request, e.g. a cursor this API did not give out",
    401: "no API key, or a wrong or revoked one",
    404: "no such item for this tenant (another tenant's id reads the same)",
    408: "the request body stalled or took too long; the connection is closed",
    409: "the item's state forbids it (the detail names the state or the jobs in the way)",
    413: "the body is over its size limit or the tenant's storage quota",
    415: "a multipart form: send the file itself as the raw request body",
    422: "invalid parameters, body or upload; the detail says what to fix",
    429: "too many wrong keys, submissions or active jobs; retry after Retry-After seconds",
    503: "the database or the broker is unavailable; retry after Retry-After seconds",
    507: "the server's storage is full and nothing was stored; retry after Retry-After seconds",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route or router: each status with the envelope schema."""
    return {
        status: {
            "model": ErrorBody,
            "description": ERROR_MEANINGS[status],
            **({"headers": RETRY_AFTER} if status in (429, 503, 507) else {}),
        }
        for status in statuses
    }


class AppError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class Unauthorized(AppError):
    status_code, code = 401, "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    status_code, code = 403, "forbidden"


class NotFound(AppError):
    status_code, code = 404, "not_found"


class RequestTimeout(AppError):
    """The client sent its request body too slowly; the connection is closed after this."""

    status_code, code = 408, "request_timeout"


class Conflict(AppError):
    status_code, code = 409, "conflict"


class PayloadTooLarge(AppError):
    status_code, code = 413, "payload_too_large"


class QuotaExceeded(PayloadTooLarge):
    code = "quota_exceeded"


class UnsupportedMediaType(AppError):
    status_code, code = 415, "unsupported_media_type"


class TooManyRequests(AppError):
    status_code, code = 429, "too_many_requests"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_s))})


class InvalidInput(AppError):
    """The upload or spec is at fault; the detail says what to fix."""

    status_code, code = 422, "invalid_input"


class InsufficientStorage(AppError):
    """The server's storage is full: nothing was stored; the client may try again later."""

    status_code, code = 507, "storage_full"

    def __init__(self, detail: str, *, retry_after_s: int = 60) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


def is_storage_full(error: BaseException) -> bool:
    """A write failed for want of space (or quota): the storage's fault, not the request's."""
    return isinstance(error, OSError) and error.errno in STORAGE_FULL_ERRNOS


class ServiceUnavailable(AppError):
    status_code, code = 503, "unavailable"


def envelope(status: int, code: str, detail: str, headers: dict[str, str] | None = None):
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, error: AppError) -> JSONResponse:
        return envelope(error.status_code, error.code, error.detail, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        return envelope(422, "invalid_request", describe_validation(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return envelope(error.status_code, code, str(error.detail), error.headers)

    async def _database_down(request: Request, error: Exception) -> JSONResponse:
        # A database restart or failover: say so and when to retry, rather than a bare 500.
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, error)
        return envelope(
            503,
            ServiceUnavailable.code,
            "the database is unavailable; try again shortly",
            {"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )

    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(InterfaceError, _database_down)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, error: OSError) -> JSONResponse:
        if not is_storage_full(error):
            return await _internal(request, error)
        # A write that the free-space floor did not foresee (another process filled the disk).
        log.warning("storage full on %s %s: %s", request.method, request.url.path, error)
        full = InsufficientStorage(
            "the server's storage is full; nothing was stored. Try again later; if it persists, "
            "the operator must free space in the storage folder (QAAS_STORAGE_DIR)"
        )
        return envelope(full.status_code, full.code, full.detail, full.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, error: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return envelope(500, "internal", "internal error; the server log has the trace")


def describe_validation(errors: list) -> str:
    """Pydantic's error list as one line a person can act on."""
    parts = []
    for item in errors[:5]:
        loc = [str(p) for p in item.get("loc", ()) if p not in ("body",)]
        where = ".".join(loc)
        parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return "; ".join(parts) or "invalid request"
