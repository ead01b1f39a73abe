"""Shared upload plumbing: a safe display name and the request body as an async stream."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from fastapi import Request

from app.core.errors import InvalidInput

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


def body_stream(request: Request) -> AsyncIterator[bytes]:
    return request.stream()


RAW_BODY_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
