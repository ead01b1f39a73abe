"""Browser auth for the pages: the API key held in an HttpOnly cookie set by the login form.

A browser cannot send ``Authorization`` on a link click, and a key in a URL ends up in history
and logs; so the login form posts the key once and the server keeps it in a cookie that scripts
cannot read (HttpOnly) and other sites cannot make the browser send (SameSite=Strict). The key is
checked exactly as the API checks it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Cookie, Depends

from app.auth.service import AuthService
from app.auth.tables import Tenant
from app.core.deps import SessionDep
from app.core.errors import Unauthorized

COOKIE_NAME = "qaas_key"
COOKIE_PATH = "/ui"


def optional_page_tenant(
    session: SessionDep, qaas_key: Annotated[str | None, Cookie()] = None
) -> Tenant | None:
    """The tenant of the cookie's key, or None (the page then shows the login form)."""
    if not qaas_key:
        return None
    try:
        return AuthService(session=session).authenticate(key=qaas_key)
    except Unauthorized:
        return None


def page_tenant(tenant: Annotated[Tenant | None, Depends(optional_page_tenant)]) -> Tenant:
    if tenant is None:
        raise Unauthorized("not logged in: open /ui/login and give your API key")
    return tenant


OptionalPageTenantDep = Annotated[Tenant | None, Depends(optional_page_tenant)]
PageTenantDep = Annotated[Tenant, Depends(page_tenant)]
