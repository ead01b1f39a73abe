"""Throttle wrong API keys per client address: past ``auth_failure_limit`` failures within
``auth_failure_window_s``, that address gets 429 with Retry-After until the oldest of them
leaves the window, whatever key it sends (else a guess that happens to be right would still
be told apart from a wrong one).

The failures live in the database (``auth_failures``), not in process memory or Redis: every
API process shares the database in every deployment (SQLite embedded, Postgres distributed),
so one code path serves both, where Redis exists only in the distributed one (and the embedded
broker is a folder). It stays cheap: a request with a key costs one indexed look-up that finds
nothing for a well-behaved client; only failures write, and each prunes rows past the window.
Missing keys and valid keys never count.

Behind a reverse proxy ``request.client.host`` is the proxy: run uvicorn with
``--proxy-headers --forwarded-allow-ips=<proxy>`` so that each client is told apart.
"""

from __future__ import annotations

import math
from datetime import timedelta

from fastapi import Request
from sqlalchemy.orm import Session

from app.auth.repository import AuthFailureRepository
from app.auth.service import AuthService
from app.auth.tables import ApiKey, Tenant
from app.core.config import Settings
from app.core.context import Context
from app.core.db import transaction, utcnow
from app.core.errors import TooManyRequests, Unauthorized


class AuthThrottle:
    def __init__(self, *, session: Session, settings: Settings) -> None:
        self.repository = AuthFailureRepository(session)
        self.limit = settings.auth_failure_limit
        self.window = timedelta(seconds=settings.auth_failure_window_s)

    def check(self, *, client: str) -> None:
        """Raise TooManyRequests while ``client`` has ``limit`` failures in the window."""
        now = utcnow()
        latest = self.repository.latest(client, since=now - self.window, limit=self.limit)
        if len(latest) >= self.limit:
            wait = (latest[-1] + self.window - now).total_seconds()
            raise TooManyRequests(
                f"too many wrong API keys from this address; try again in {math.ceil(wait)} s",
                retry_after_s=math.ceil(wait),
            )

    def record_failure(self, *, client: str) -> None:
        now = utcnow()
        self.repository.delete_before(now - self.window)
        self.repository.add(client, at=now)


def client_address(request: Request) -> str:
    return (request.client.host if request.client else "unknown")[:64]


def verify_throttled(
    *, session: Session, context: Context, client: str, key: str | None
) -> tuple[ApiKey, Tenant]:
    """``AuthService.verify`` behind the throttle. A wrong key is recorded in a transaction of
    its own and committed at once: the request's transaction is rolled back by the 401."""
    if not key:
        return AuthService(session=session).verify(key=key)  # missing: 401, not a guess
    AuthThrottle(session=session, settings=context.settings).check(client=client)
    try:
        return AuthService(session=session).verify(key=key)
    except Unauthorized:
        with transaction(context.sessions) as own:
            AuthThrottle(session=own, settings=context.settings).record_failure(client=client)
        raise
