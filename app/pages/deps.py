"""Browser auth for the pages: a server-side session whose random token is the cookie.

A browser cannot send ``Authorization`` on a link click, and a key in a URL ends up in history
and logs; so the login form posts the key once, the server checks it exactly as the API does
and answers with a session token in a cookie that scripts cannot read (HttpOnly) and other
sites cannot make the browser send (SameSite=Strict). The key itself never reaches the
browser's storage; the session ends at logout, after ``QAAS_SESSION_TTL_S``, or when its key
is revoked, all checked on every request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Cookie, Depends, Request, Response

from app.auth.sessions import UiSessionService
from app.auth.tables import Tenant
from app.core.deps import SessionDep
from app.core.errors import Unauthorized
from app.pages.csrf import form_token

SESSION_COOKIE = "qaas_session"
# Before login there is no session to derive the login form's CSRF token from: this cookie
# holds a random secret for it instead (login CSRF: logging a victim in as the attacker).
LOGIN_CSRF_COOKIE = "qaas_login_csrf"
COOKIE_PATH = "/ui"
# Before sessions the cookie held the API key itself: the login page deletes any left over.
LEGACY_KEY_COOKIE = "qaas_key"


@dataclass(frozen=True)
class PageSession:
    tenant: Tenant
    token: str

    @property
    def csrf_token(self) -> str:
        return form_token(self.token)


def optional_page_session(
    session: SessionDep, qaas_session: Annotated[str | None, Cookie()] = None
) -> PageSession | None:
    """The cookie's live session, or None (the page then shows the login form)."""
    if not qaas_session:
        return None
    tenant = UiSessionService(session=session).tenant(token=qaas_session)
    return None if tenant is None else PageSession(tenant, qaas_session)


OptionalPageSessionDep = Annotated[PageSession | None, Depends(optional_page_session)]


def page_tenant(page: OptionalPageSessionDep) -> Tenant:
    if page is None:
        raise Unauthorized("not logged in: open /ui/login and give your API key")
    return page.tenant


PageTenantDep = Annotated[Tenant, Depends(page_tenant)]


def set_page_cookie(request: Request, response: Response, name: str, value: str) -> None:
    """HttpOnly (no script reads it), SameSite=Strict (no other site sends it), /ui only, and
    Secure when served over https."""
    response.set_cookie(
        name, value, path=COOKIE_PATH, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip


def clear_page_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, httponly=True, samesite="strict")
