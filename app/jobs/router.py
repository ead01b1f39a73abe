from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status

from app.core.bodies import json_body_openapi, read_json
from app.core.deps import ContextDep, SessionDep, TenantDep, owned
from app.core.errors import error_responses
from app.core.listing import LIST_RESPONSES, PageDep, cut_page
from app.jobs.progress import queue_positions
from app.jobs.repository import JobRepository
from app.jobs.schemas import JobCreate, JobOut
from app.jobs.service import JobService
from app.jobs.tables import Job, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 429, 503))
JobDep = Annotated[Job, owned(JobRepository, "job_id")]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    openapi_extra=json_body_openapi(JobCreate),
    responses=error_responses(408, 409, 413, 422),
)
async def submit_job(
    request: Request,
    response: Response,
    tenant: TenantDep,
    session: SessionDep,
    context: ContextDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobOut:
    """Queue a quantization job. Send an Idempotency-Key to make retries safe."""
    body = await read_json(request, JobCreate)  # after the key is checked, never before
    job, created = await JobService(session=session, context=context).submit(
        tenant_id=tenant.id, request=body, idempotency_key=idempotency_key
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return JobOut.from_row(job)


@router.get("", response_model=list[JobOut], responses=LIST_RESPONSES)
def list_jobs(
    request: Request,
    response: Response,
    tenant: TenantDep,
    session: SessionDep,
    page: PageDep,
    status: Annotated[list[JobStatus] | None, Query(description="repeat for several")] = None,
) -> list[JobOut]:
    """The tenant's jobs, newest first, a page at a time (X-Next-Cursor names the next)."""
    rows = JobRepository(session).page_with_status(
        tenant.id,
        statuses=[s.value for s in status or ()],
        limit=page.limit + 1,
        created_after=page.created_after,
        after=page.after,
    )
    shown = cut_page(rows, page, request, response)
    positions = queue_positions(session, shown)
    return [JobOut.from_row(job, positions) for job in shown]


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(404))
def get_job(job: JobDep) -> JobOut:
    return JobOut.from_row(job)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=error_responses(404, 409))
def cancel_job(job_id: str, tenant: TenantDep, session: SessionDep, context: ContextDep) -> JobOut:
    job = JobService(session=session, context=context).cancel(tenant_id=tenant.id, job_id=job_id)
    return JobOut.from_row(job)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
def delete_job(job_id: str, tenant: TenantDep, session: SessionDep, context: ContextDep) -> None:
    """Delete the job and its artifacts; a queued or running job is cancelled first."""
    JobService(session=session, context=context).delete(tenant_id=tenant.id, job_id=job_id)
