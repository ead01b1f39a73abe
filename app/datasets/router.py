from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.core.deps import ContextDep, SessionDep, TenantDep, owned
from app.core.errors import error_responses
from app.core.listing import LIST_RESPONSES, PageDep, cut_page
from app.core.uploads import RAW_BODY_OPENAPI, body_stream, declared_length, display_name
from app.datasets.repository import DatasetRepository
from app.datasets.schemas import DatasetOut
from app.datasets.service import DatasetService
from app.datasets.tables import Dataset

router = APIRouter(
    prefix="/v1/datasets", tags=["datasets"], responses=error_responses(401, 429, 503)
)
DatasetDep = Annotated[Dataset, owned(DatasetRepository, "dataset_id")]


def _service(session: SessionDep, context: ContextDep) -> DatasetService:
    return DatasetService(
        session=session,
        settings=context.settings,
        storage=context.storage,
        inspector=context.inspector,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    openapi_extra=RAW_BODY_OPENAPI,
    responses=error_responses(408, 413, 415, 422, 507),
    summary="Upload calibration or evaluation data (.npz keyed by model input names) as the "
    "raw request body",
)
async def upload_dataset(
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    context: ContextDep,
    filename: Annotated[str | None, Query(max_length=255)] = None,
) -> DatasetOut:
    dataset = await _service(session, context).upload(
        tenant_id=tenant.id,
        filename=display_name(filename, "data.npz"),
        body=body_stream(request, example="data.npz"),
        declared_length=declared_length(request),
    )
    return DatasetOut.model_validate(dataset)


@router.get("", response_model=list[DatasetOut], responses=LIST_RESPONSES)
def list_datasets(
    request: Request, response: Response, tenant: TenantDep, session: SessionDep, page: PageDep
) -> list[DatasetOut]:
    """The tenant's datasets, newest first, a page at a time (X-Next-Cursor names the next)."""
    rows = DatasetRepository(session).page(
        tenant.id, limit=page.limit + 1, created_after=page.created_after, after=page.after
    )
    return [DatasetOut.model_validate(row) for row in cut_page(rows, page, request, response)]


@router.get("/{dataset_id}", response_model=DatasetOut, responses=error_responses(404))
def get_dataset(dataset: DatasetDep) -> DatasetOut:
    return DatasetOut.model_validate(dataset)


@router.delete(
    "/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404, 409)
)
def delete_dataset(dataset: DatasetDep, session: SessionDep, context: ContextDep) -> None:
    """Delete the dataset and its file, freeing its quota at once. 409 while a queued or running
    job needs it; finished jobs that used it keep their artifacts (the id becomes null)."""
    _service(session, context).delete(dataset=dataset)
