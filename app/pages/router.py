"""Web pages for people: log in with an API key, watch jobs, open each job's report.html."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from app.artifacts.service import ArtifactService
from app.auth.sessions import UiSessionService
from app.auth.throttle import client_address, verify_throttled
from app.core.deps import ContextDep, SessionDep
from app.core.errors import Forbidden, Unauthorized
from app.jobs.service import JobService
from app.pages.csrf import check_origin, check_token, form_token, new_secret, read_form
from app.pages.deps import (
    LEGACY_KEY_COOKIE,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    OptionalPageSessionDep,
    PageTenantDep,
    clear_page_cookie,
    set_page_cookie,
)
from app.pages.views import jobs_page, login_page

router = APIRouter(prefix="/ui", tags=["pages"], include_in_schema=False)
REPORT_NAME = "report.html"
# The report is generated from user-named layers: no script may run in it, nothing may load.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@router.get("")
def index() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return _login_page(request)


@router.post("/login")
async def login(request: Request, session: SessionDep, context: ContextDep) -> Response:
    """Check the key as the API would (throttled alike), then start a server-side session;
    the cookie gets only the session's token."""
    form = await read_form(request)
    try:
        check_origin(request)
        check_token(form, request.cookies.get(LOGIN_CSRF_COOKIE))
    except Forbidden as error:
        return _login_page(request, error.detail, status_code=error.status_code)
    try:
        api_key, _ = verify_throttled(
            session=session, context=context, client=client_address(request),
            key=form.get("key", "").strip(),
        )  # fmt: skip
    except Unauthorized as error:
        return _login_page(request, error.detail, status_code=401)
    token = UiSessionService(session=session).start(
        api_key=api_key, ttl_s=context.settings.session_ttl_s,
        replacing=request.cookies.get(SESSION_COOKIE),
    )  # fmt: skip
    response = RedirectResponse("/ui/jobs", status_code=303)
    set_page_cookie(request, response, SESSION_COOKIE, token)
    clear_page_cookie(response, LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, page: OptionalPageSessionDep, session: SessionDep) -> Response:
    """End the session on the server (its cookie replayed later logs nobody in)."""
    check_origin(request)
    if page is not None:
        check_token(await read_form(request), page.token)
        UiSessionService(session=session).end(token=page.token)
    response = RedirectResponse("/ui/login", status_code=303)
    clear_page_cookie(response, SESSION_COOKIE)
    return response


def _login_page(
    request: Request, message: str | None = None, status_code: int = 200
) -> HTMLResponse:
    """The login form, its CSRF token made from the pre-login cookie (set here if absent)."""
    secret = request.cookies.get(LOGIN_CSRF_COOKIE) or new_secret()
    response = HTMLResponse(login_page(form_token(secret), message), status_code=status_code)
    set_page_cookie(request, response, LOGIN_CSRF_COOKIE, secret)
    if LEGACY_KEY_COOKIE in request.cookies:
        clear_page_cookie(response, LEGACY_KEY_COOKIE)
    return response


@router.get("/jobs", response_class=HTMLResponse)
def jobs(page: OptionalPageSessionDep) -> Response:
    if page is None:
        return RedirectResponse("/ui/login", status_code=303)
    nonce = secrets.token_urlsafe(16)
    csp = (
        f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:"
    )
    html = jobs_page(page.tenant.name, nonce, page.csrf_token)
    return HTMLResponse(html, headers={"Content-Security-Policy": csp})


@router.get("/jobs.json")
def jobs_json(tenant: PageTenantDep, session: SessionDep, context: ContextDep) -> list[dict]:
    """What the jobs page shows, read from the job rows like the API's job list."""
    rows = JobService(session=session, context=context).list(tenant_id=tenant.id)
    return [_job_summary(job) for job in rows]


@router.get("/jobs/{job_id}/report")
def job_report(job_id: str, tenant: PageTenantDep, session: SessionDep, context: ContextDep):
    service = ArtifactService(session=session, storage=context.storage)
    artifact = service.file(tenant_id=tenant.id, job_id=job_id, name=REPORT_NAME)
    headers = {"Content-Security-Policy": REPORT_CSP, "ETag": artifact.etag}
    return FileResponse(artifact.path, media_type="text/html", headers=headers)


def _job_summary(job: Any) -> dict[str, Any]:
    has_report = any(a["name"] == REPORT_NAME for a in job.artifacts or [])
    return {
        "id": job.id,
        "status": job.status,
        "phase": job.phase,
        "progress": job.progress,
        "created_at": job.created_at.isoformat(),
        "error": job.error_kind and f"{job.error_kind}: {job.error_detail or ''}"[:200],
        "report_url": f"/ui/jobs/{job.id}/report" if has_report else None,
    }
