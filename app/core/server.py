"""The HTTP protocol the API runs under: uvicorn's h11 protocol with a header-read timeout.

uvicorn has no such timeout: ``timeout_keep_alive`` runs only between requests and stops at the
first byte of the next one, and nothing runs on a new connection, so a client may hold a
connection by sending nothing, or its headers a byte at a time, for ever. This protocol closes a
connection whose request line and headers have not all arrived within
``QAAS_HEADER_READ_TIMEOUT_S`` of it opening (or of the previous response ending), answering 408
when part of a request had come. Header size is bounded by h11 already (a header block still
incomplete past uvicorn's ``h11_max_incomplete_event_size``, 16 KiB, is a 400). Body reads are
timed by ``app.core.bodies.BodyGuard``.

``qaas serve`` uses it; with plain uvicorn pass ``--http app.core.server:HeaderTimeoutProtocol``
(uvicorn >= 0.36 takes an import string there).
"""

from __future__ import annotations

import asyncio
import json
from functools import cache
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.core.config import Settings


@cache
def configured_timeout_s() -> float:
    return Settings().header_read_timeout_s


def timeout_response(seconds: float) -> bytes:
    body = json.dumps(
        {
            "error": "request_timeout",
            "detail": f"the request headers did not arrive within {seconds:g} s",
        }
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class HeaderTimeoutProtocol(H11Protocol):
    """A timer runs whenever the connection waits for a request's headers."""

    header_timeout_s: float | None = None  # None: QAAS_HEADER_READ_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timer: asyncio.TimerHandle | None = None
        self.seconds = self.header_timeout_s or configured_timeout_s()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._update_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._update_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _waiting_for_headers(self) -> bool:
        idle = self.cycle is None or self.cycle.response_complete
        return idle and self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _update_header_timer(self) -> None:
        if not self._waiting_for_headers():
            self._cancel_header_timer()
        elif self.header_timer is None:  # keep the first deadline: a trickle does not reset it
            self.header_timer = self.loop.call_later(self.seconds, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if not self._waiting_for_headers():
            return
        if self.conn.trailing_data[0]:  # part of a request came: say why it is dropped
            self.transport.write(timeout_response(self.seconds))
        self.transport.close()


def protocol_with_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class with ``seconds`` bound, for a server that holds its own settings."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": seconds})
