"""Web pages for people: log in with an API key, watch jobs, open each job's report.html."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.artifacts.responses import artifact_response
from app.artifacts.service import ArtifactService
from app.auth.sessions import UiSessionService
from app.auth.throttle import client_address, verify_throttled
from app.core.deps import ContextDep, SessionDep
from app.core.errors import Forbidden, InvalidInput, Unauthorized
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
from app.pages.job_views import job_page, jobs_list_page
from app.pages.repository import STATUSES, JobPageRepository
from app.pages.summary import JobSummary, summarize
from app.pages.views import login_page

router = APIRouter(prefix="/ui", tags=["pages"], include_in_schema=False)
REPORT_NAME = "report.html"
# The report is generated from user-named layers: no script may run in it, nothing may load.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
# The job pages are server-rendered: no script at all, forms only to this site.
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'"
LIST_LIMIT = 200


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
def jobs(
    page: OptionalPageSessionDep,
    session: SessionDep,
    status: Annotated[str | None, Query()] = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """The jobs list, filtered by the query string (a plain GET form: no script needed)."""
    if page is None:
        return RedirectResponse("/ui/login", status_code=303)
    filters = {"status": _status_filter(status), "model": (model or "").strip()}
    rows = _summaries(session, page.tenant.id, filters)
    html = jobs_list_page(page.tenant.name, page.csrf_token, rows, filters)
    return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/jobs.json")
def jobs_json(
    tenant: PageTenantDep,
    session: SessionDep,
    status: Annotated[str | None, Query()] = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
) -> list[dict]:
    """What the jobs page shows, as data (the same filters)."""
    filters = {"status": _status_filter(status), "model": (model or "").strip()}
    return [_json_summary(job) for job in _summaries(session, tenant.id, filters)]


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_detail(
    job_id: str, page: OptionalPageSessionDep, session: SessionDep, context: ContextDep
) -> Response:
    """One job: step timeline, warnings, artifacts with download links, error detail."""
    if page is None:
        return RedirectResponse("/ui/login", status_code=303)
    job = JobService(session=session, context=context).get(tenant_id=page.tenant.id, job_id=job_id)
    names = JobPageRepository(session).model_names(page.tenant.id, [job.model_id])
    summary = summarize(job, names.get(job.model_id or ""), datetime.now(UTC))
    row = {"report": job.report, "steps": job.steps, "spec": job.spec}
    html = job_page(page.csrf_token, summary, row)
    return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/jobs/{job_id}/artifacts/{name}")
def job_artifact(
    job_id: str, name: str, tenant: PageTenantDep, session: SessionDep, context: ContextDep
) -> Response:
    """A download link that works from the browser session (the API wants the key header)."""
    service = ArtifactService(session=session, storage=context.storage)
    artifact = service.file(tenant_id=tenant.id, job_id=job_id, name=name)
    headers = {"Content-Security-Policy": REPORT_CSP, "ETag": artifact.etag}
    return artifact_response(
        context.storage, context.settings, artifact,
        media_type="application/octet-stream", headers=headers,
    )  # fmt: skip


@router.get("/jobs/{job_id}/report")
def job_report(job_id: str, tenant: PageTenantDep, session: SessionDep, context: ContextDep):
    service = ArtifactService(session=session, storage=context.storage)
    artifact = service.file(tenant_id=tenant.id, job_id=job_id, name=REPORT_NAME)
    headers = {"Content-Security-Policy": REPORT_CSP, "ETag": artifact.etag}
    return artifact_response(
        context.storage, context.settings, artifact,
        media_type="text/html", headers=headers, attachment=False,
    )  # fmt: skip


def _status_filter(status: str | None) -> str:
    if status and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    return status or ""


def _summaries(session: Any, tenant_id: str, filters: dict[str, str]) -> list[JobSummary]:
    repository = JobPageRepository(session)
    rows = repository.jobs(
        tenant_id, status=filters["status"] or None, model=filters["model"] or None,
        limit=LIST_LIMIT,
    )  # fmt: skip
    names = repository.model_names(tenant_id, [job.model_id for job in rows])
    now = datetime.now(UTC)
    return [summarize(job, names.get(job.model_id or ""), now) for job in rows]


def _json_summary(summary: JobSummary) -> dict[str, Any]:
    data = asdict(summary)
    data["created_at"] = summary.created_at.isoformat()
    data["error"] = summary.error and summary.error[:200]
    data["report_url"] = f"/ui/jobs/{summary.id}/report" if summary.has_report else None
    data["page_url"] = f"/ui/jobs/{summary.id}"
    return data
