"""Shared upload plumbing: a safe display name and the request body as an async stream."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.bodies import allow_large_body
from app.core.config import Settings
from app.core.errors import InvalidInput, UnsupportedMediaType
from app.core.quotas import Quotas
from app.core.storage import StagedFile, Storage

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def display_name(filename: str | None, default: str) -> str:
    """Only a label: storage paths never use it."""
    name = _UNSAFE.sub("_", (filename or "").rsplit("/", 1)[-1]).strip("._")[:200]
    return name or default


def declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput("Content-Length is not a number") from None


def body_stream(request: Request, *, example: str) -> AsyncIterator[bytes]:
    """The upload as it arrives; its size is capped by ``receive_within_quota``, not by the
    JSON cap every other body has. ``example`` names a file for the 415's curl line."""
    refuse_form_body(request, example)
    allow_large_body(request)
    return request.stream()


def refuse_form_body(request: Request, example: str) -> None:
    """A multipart form (``curl -F file=@x``, what most people try first) wraps the file in
    boundaries and part headers; checked as a model or dataset it would fail with an error
    about its content. Say what to send instead, before a byte is read."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not media_type.startswith("multipart/"):
        return
    raise UnsupportedMediaType(
        f"{media_type} bodies (curl -F) are not accepted: send the file as the raw request "
        f'body, e.g. curl --data-binary @{example} -H "Authorization: Bearer $QAAS_API_KEY" '
        f"'{request.base_url}{request.url.path.lstrip('/')}?filename={example}'"
    )


RAW_BODY_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


async def receive_within_quota(
    *,
    session: Session,
    settings: Settings,
    storage: Storage,
    tenant_id: str,
    body: AsyncIterator[bytes],
    declared_length: int | None,
    limit: int,
    what: str,
) -> StagedFile:
    """Stream an upload to staging under the smaller of the size limit and the tenant's quota;
    models and datasets share this, so both refuse the same way (413 naming which cap)."""
    allowance = await run_in_threadpool(
        Quotas(session=session, settings=settings).upload_allowance,
        tenant_id=tenant_id,
        limit=limit,
        declared_length=declared_length,
    )
    return await storage.receive(
        body,
        max_bytes=allowance,
        declared_length=declared_length,
        what=what if allowance == limit else f"{what} (quota left)",
    )
