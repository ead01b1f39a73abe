"""Pages of a tenant's rows for the list endpoints: newest first, ``created_after``, ``limit``
and an opaque keyset cursor. The answer stays a JSON array (scripts index into it); the next
page is named in ``X-Next-Cursor`` and an RFC 8288 ``Link: <...>; rel="next"`` header."""

# No ``from __future__ import annotations``: FastAPI reads ``page_request``'s annotations.

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Query, Request, Response

from app.core.errors import AppError, error_responses

DEFAULT_LIMIT, MAX_LIMIT = 50, 200
NEXT_CURSOR_HEADER = "X-Next-Cursor"


class Listed(Protocol):
    """What a listed row has: the keyset a cursor names."""

    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


T = TypeVar("T", bound=Listed)


class InvalidCursor(AppError):
    status_code, code = 400, "invalid_cursor"


@dataclass(frozen=True)
class PageRequest:
    limit: int
    created_after: datetime | None = None
    # The last row of the previous page: (created_at, id); this page starts strictly after it.
    after: tuple[datetime, str] | None = None


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = f"{created_at.astimezone(UTC).isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(
            "cursor is not one this API gave out; pass the X-Next-Cursor of the previous "
            "page unchanged, or leave cursor out to start from the newest"
        ) from None
    if created_at.tzinfo is None or not row_id:
        raise InvalidCursor("cursor is incomplete; leave it out to start from the newest")
    return created_at, row_id


def page_request(
    created_after: Annotated[
        datetime | None,
        Query(description="ISO 8601; only items created after it (UTC when no zone is given)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")] = (
        DEFAULT_LIMIT
    ),
    cursor: Annotated[
        str | None,
        Query(max_length=400, description="X-Next-Cursor of the previous page"),
    ] = None,
) -> PageRequest:
    if created_after is not None and created_after.tzinfo is None:
        created_after = created_after.replace(tzinfo=UTC)
    after = decode_cursor(cursor) if cursor else None
    return PageRequest(limit=limit, created_after=created_after, after=after)


PageDep = Annotated[PageRequest, Depends(page_request)]


def cut_page(rows: list[T], page: PageRequest, request: Request, response: Response) -> list[T]:
    """``rows`` as fetched (up to ``limit + 1``): the first ``limit`` of them, and the headers
    naming the next page when there was one more."""
    if len(rows) <= page.limit:
        return rows
    shown = rows[: page.limit]
    last = shown[-1]
    cursor = encode_cursor(last.created_at, last.id)
    response.headers[NEXT_CURSOR_HEADER] = cursor
    response.headers["Link"] = f'<{request.url.include_query_params(cursor=cursor)}>; rel="next"'
    return shown


NEXT_PAGE_HEADERS = {
    NEXT_CURSOR_HEADER: {
        "description": "present when more items exist: pass it as `cursor` for the next page",
        "schema": {"type": "string"},
    },
    "Link": {
        "description": 'RFC 8288 `<url>; rel="next"`, present with X-Next-Cursor',
        "schema": {"type": "string"},
    },
}
# ``responses=`` of a list route: the next-page headers, and 400 for a cursor it did not give.
LIST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"headers": NEXT_PAGE_HEADERS},
    **error_responses(400),
}
