"""Request bodies: a size cap and read timeouts enforced while a body is read, and the JSON-body
helper that lets a route check the API key before it reads a byte.

FastAPI reads and parses a declared body parameter before it runs any dependency, so a route
taking ``body: JobCreate`` held whatever it was sent in memory before the key was checked. Routes
with a JSON body take the tenant dependency and call ``read_json`` afterwards instead.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import PayloadTooLarge, RequestTimeout

GUARD_SCOPE_KEY = "qaas.body_guard"
ModelT = TypeVar("ModelT", bound=BaseModel)


class BodyGuard:
    """ASGI middleware: every request body is read through a ``GuardedBody``, and a response
    sent before its request body was read to the end says ``Connection: close``, so the server
    drops the connection instead of reading (and discarding) the rest of the body."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = GuardedBody(scope, receive, max_bytes=self.max_bytes, timeout_s=self.timeout_s)
        scope[GUARD_SCOPE_KEY] = body

        async def send_closing_if_unread(message: Message) -> None:
            if message["type"] == "http.response.start" and not body.complete:
                message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        await self.app(scope, body.receive, send_closing_if_unread)


CLOSE = (b"connection", b"close")


class GuardedBody:
    """One request's body as the app reads it. Past ``max_bytes`` reading raises 413 (at once
    when Content-Length says so); waiting longer than ``timeout_s`` for the next chunk, or, for
    a capped body, longer than ``timeout_s`` for the whole of it, raises 408. Uploads lift the
    cap (``allow_large_body``) and keep the per-chunk timeout."""

    def __init__(self, scope: Scope, receive: Receive, *, max_bytes: int, timeout_s: float):
        self._receive = receive
        self.max_bytes: int | None = max_bytes
        self.timeout_s = timeout_s
        self.received = 0
        self.declared = declared_length(scope)
        chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
        self.complete = not chunked and not self.declared
        self.deadline: float | None = None

    async def receive(self) -> Message:
        if self.complete:
            # Nothing left to read: a streaming response may wait here for a disconnect.
            return await self._receive()
        if self.max_bytes is not None and (self.declared or 0) > self.max_bytes:
            raise self._too_large()
        loop = asyncio.get_running_loop()
        wait = self.timeout_s
        if self.max_bytes is not None:
            if self.deadline is None:
                self.deadline = loop.time() + self.timeout_s
            wait = min(wait, self.deadline - loop.time())
        try:
            message = await asyncio.wait_for(self._receive(), max(wait, 0.0))
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self.timeout_s:g} s; "
                "send it without pauses"
            ) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
            if self.max_bytes is not None and self.received > self.max_bytes:
                self.complete = False  # the rest is left unread
                raise self._too_large()
        else:  # http.disconnect: the client is gone, nothing more will come
            self.complete = True
        return message

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is over the limit of {self.max_bytes} bytes")


def declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses such a request before the app sees it
    return None


def allow_large_body(request: Request) -> None:
    """Lift the JSON cap for a route that streams its body to disk under a limit of its own
    (model and dataset uploads); the per-chunk read timeout still applies."""
    guard = request.scope.get(GUARD_SCOPE_KEY)
    if guard is not None:
        guard.max_bytes = None


async def read_json(request: Request, schema: type[ModelT]) -> ModelT:
    """The body validated as ``schema``, read under the cap and timeouts of ``BodyGuard``. Call
    it after the tenant dependency; a bad body gets the 422 a declared body parameter got."""
    raw = await request.body()
    try:
        return schema.model_validate_json(raw)
    except ValidationError as error:
        errors = [
            {**item, "loc": ("body", *item.get("loc", ()))}
            for item in error.errors(include_url=False, include_input=False)
        ]
        raise RequestValidationError(errors) from None


def json_body_openapi(schema: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body a route reads itself with ``read_json``: the
    schema inlined, as a route's own ``$defs`` cannot be referenced from the OpenAPI document."""
    full = schema.model_json_schema()
    definitions = full.pop("$defs", {})
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline(full, definitions)}},
        }
    }


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = definitions[node["$ref"].rsplit("/", 1)[-1]]
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return {**_inline(target, definitions), **_inline(siblings, definitions)}
    return {key: _inline(value, definitions) for key, value in node.items()}
