from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import FileResponse

from app.artifacts.responses import artifact_response
from app.artifacts.schemas import Artifact
from app.artifacts.service import ArtifactService
from app.core.deps import ContextDep, SessionDep, TenantDep
from app.core.errors import error_responses

router = APIRouter(
    prefix="/v1/jobs/{job_id}",
    tags=["artifacts"],
    # 409: the job has not succeeded (yet); artifacts exist once it does.
    responses=error_responses(401, 404, 409, 429, 503),
)


def _service(session: SessionDep, context: ContextDep) -> ArtifactService:
    return ArtifactService(session=session, storage=context.storage)


@router.get("/artifacts", response_model=list[Artifact])
def list_artifacts(
    job_id: str, tenant: TenantDep, session: SessionDep, context: ContextDep
) -> list[Artifact]:
    entries = _service(session, context).list(tenant_id=tenant.id, job_id=job_id)
    return [Artifact(**entry) for entry in entries]


@router.get(
    "/artifacts/{name}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {}, 304: {}, 307: {}},
)
def download_artifact(
    job_id: str,
    name: str,
    tenant: TenantDep,
    session: SessionDep,
    context: ContextDep,
    if_none_match: Annotated[str | None, Header()] = None,
    range: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Streamed; ETag is the file's sha256; Range requests are honoured. With an object store
    and ``QAAS_PRESIGNED_DOWNLOADS=1``: a 307 to a short-lived presigned URL instead."""
    artifact = _service(session, context).file(tenant_id=tenant.id, job_id=job_id, name=name)
    headers = {"ETag": artifact.etag, "X-Content-SHA256": artifact.sha256}
    if if_none_match and artifact.etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    return artifact_response(
        context.storage,
        context.settings,
        artifact,
        media_type=_media_type(name),
        headers=headers,
        range_header=range,
    )


MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json"}


def _media_type(name: str) -> str:
    """report.html is for browsers; everything else downloads as bytes."""
    return MEDIA_TYPES.get(name[name.rfind(".") :], "application/octet-stream")


@router.get("/report")
def get_report(
    job_id: str, tenant: TenantDep, session: SessionDep, context: ContextDep
) -> dict[str, Any]:
    return _service(session, context).report(tenant_id=tenant.id, job_id=job_id)
