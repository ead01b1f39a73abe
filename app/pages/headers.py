"""Headers on every /ui response: no other site may frame a page (clickjacking a logged-in
user into pressing a button). ``frame-ancestors 'none'`` is appended to each page's own CSP;
``X-Frame-Options: DENY`` covers browsers that ignore frame-ancestors."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FRAME_ANCESTORS = "frame-ancestors 'none'"
PREFIX = "/ui"


class PageFrameHeaders:
    """Pure ASGI (no BaseHTTPMiddleware): file responses stream through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                csp = headers.get("content-security-policy")
                headers["Content-Security-Policy"] = (
                    f"{csp}; {FRAME_ANCESTORS}" if csp else FRAME_ANCESTORS
                )
                headers["X-Frame-Options"] = "DENY"
            await send(message)

        await self.app(scope, receive, send_with_headers)
