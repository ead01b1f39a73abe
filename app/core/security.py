"""API keys and /ui session tokens: random tokens shown once (or kept only in an HttpOnly
cookie); only their sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "qaas_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    # A 256-bit random token needs no slow hash: sha256 cannot be brute-forced back to it.
    return hashlib.sha256(key.encode()).hexdigest()


def new_session_token() -> str:
    # No prefix: a session token must never be mistaken for (or accepted as) an API key.
    return secrets.token_urlsafe(32)


def hash_session_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
