"""CSRF defence for the /ui forms, two layers:

- Origin (else Referer) must name this host on every POST: a browser always sends Origin on
  a cross-site POST, so another site's form is refused before anything else is read. Without
  either header (not a browser, or a very old one) the token alone decides. The host is the
  ``Host`` header: a reverse proxy must pass it through (nginx: ``proxy_set_header Host
  $host``).
- A token in a hidden field, derived from a secret the page's cookie holds (the session
  token once logged in; a random pre-login cookie on the login form, so login CSRF is refused
  too). Another site cannot read the HttpOnly, SameSite=Strict cookie, so it cannot compute
  the field; the field reveals nothing of the cookie (sha256).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qs, urlsplit

from fastapi import Request

from app.core.errors import Forbidden

MAX_FORM_BODY = 4096
FIELD = "csrf"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def form_token(secret: str) -> str:
    """The hidden field's value for forms made under ``secret``."""
    return hashlib.sha256(b"qaas-ui-csrf:" + secret.encode()).hexdigest()


async def read_form(request: Request) -> dict[str, str]:
    """The first value of each field of a small urlencoded form (no multipart needed)."""
    body = (await request.body())[:MAX_FORM_BODY].decode(errors="replace")
    return {name: values[0] for name, values in parse_qs(body).items()}


def check_origin(request: Request) -> None:
    """Forbidden unless Origin (or, without it, Referer) is this host."""
    host = request.headers.get("host", "").lower()
    for header in ("origin", "referer"):
        value = request.headers.get(header)
        if value is not None:
            if urlsplit(value).netloc.lower() != host or not host:
                raise Forbidden(f"cross-site form post refused ({header} is not this site)")
            return


def check_token(form: dict[str, str], secret: str | None) -> None:
    """Forbidden unless the form's token was made under ``secret`` (the cookie's)."""
    sent = form.get(FIELD, "")
    if not secret or not hmac.compare_digest(sent.encode(), form_token(secret).encode()):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page and retry")
