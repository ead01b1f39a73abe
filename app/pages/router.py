"""Web pages for people: log in with an API key, watch jobs, open each job's report.html."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from app.artifacts.service import ArtifactService
from app.auth.service import AuthService
from app.core.deps import ContextDep, SessionDep
from app.core.errors import Unauthorized
from app.jobs.service import JobService
from app.pages.deps import COOKIE_NAME, COOKIE_PATH, OptionalPageTenantDep, PageTenantDep
from app.pages.views import jobs_page, login_page

router = APIRouter(prefix="/ui", tags=["pages"], include_in_schema=False)
REPORT_NAME = "report.html"
# The report is generated from user-named layers: no script may run in it, nothing may load.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
MAX_LOGIN_BODY = 4096


@router.get("")
def index() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form() -> HTMLResponse:
    return HTMLResponse(login_page())


@router.post("/login")
async def login(request: Request, session: SessionDep) -> Response:
    """Check the key as the API would, then keep it in an HttpOnly, SameSite=Strict cookie."""
    body = (await request.body())[:MAX_LOGIN_BODY].decode(errors="replace")
    key = (parse_qs(body).get("key") or [""])[0].strip()
    try:
        AuthService(session=session).authenticate(key=key)
    except Unauthorized as error:
        return HTMLResponse(login_page(error.detail), status_code=401)
    response = RedirectResponse("/ui/jobs", status_code=303)
    response.set_cookie(
        COOKIE_NAME, key, path=COOKIE_PATH, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


@router.post("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH)
    return response


@router.get("/jobs", response_class=HTMLResponse)
def jobs(tenant: OptionalPageTenantDep) -> Response:
    if tenant is None:
        return RedirectResponse("/ui/login", status_code=303)
    nonce = secrets.token_urlsafe(16)
    csp = (
        f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:"
    )
    return HTMLResponse(jobs_page(tenant.name, nonce), headers={"Content-Security-Policy": csp})


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
