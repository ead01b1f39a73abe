"""Server-side /ui sessions. The browser's cookie holds a random token, never the API key: a
stolen cookie dies with logout, expiry or the key's revocation, and the key itself is never
stored in the browser. Only the token's sha256 is kept, so a database read cannot log in."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from app.auth.repository import UiSessionRepository
from app.auth.tables import ApiKey, Tenant, UiSession
from app.core.db import utcnow
from app.core.security import hash_session_token, new_session_token


class UiSessionService:
    def __init__(self, *, session: Session) -> None:
        self.repository = UiSessionRepository(session)

    def start(self, *, api_key: ApiKey, ttl_s: float, replacing: str | None = None) -> str:
        """A new session for the key's tenant; returns the token (for the cookie only). A new
        token at every login (never the one the browser came with, ``replacing``, which ends:
        no session fixation, no orphaned session left behind by a second login)."""
        now = utcnow()
        self.repository.delete_expired(now=now)  # keeps the table to the live sessions
        if replacing:
            self.end(token=replacing)
        token = new_session_token()
        self.repository.add(
            UiSession(
                token_hash=hash_session_token(token),
                tenant_id=api_key.tenant_id,
                api_key_id=api_key.id,
                created_at=now,
                expires_at=now + timedelta(seconds=ttl_s),
            )
        )
        return token

    def tenant(self, *, token: str) -> Tenant | None:
        """Checked on every request, not cached: expiry, logout and revocation act at once."""
        return self.repository.tenant_for_token_hash(hash_session_token(token), now=utcnow())

    def end(self, *, token: str) -> None:
        self.repository.delete_by_token_hash(hash_session_token(token))
