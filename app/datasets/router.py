from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from app.core.deps import ContextDep, SessionDep, TenantDep, owned, owned_rows
from app.core.uploads import RAW_BODY_OPENAPI, body_stream, declared_length, display_name
from app.datasets.repository import DatasetRepository
from app.datasets.schemas import DatasetOut
from app.datasets.service import DatasetService
from app.datasets.tables import Dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
DatasetDep = Annotated[Dataset, owned(DatasetRepository, "dataset_id")]
DatasetsDep = Annotated[list[Dataset], owned_rows(DatasetRepository)]


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
        body=body_stream(request),
        declared_length=declared_length(request),
    )
    return DatasetOut.model_validate(dataset)


@router.get("", response_model=list[DatasetOut])
def list_datasets(datasets: DatasetsDep) -> list[DatasetOut]:
    return [DatasetOut.model_validate(d) for d in datasets]


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset: DatasetDep) -> DatasetOut:
    return DatasetOut.model_validate(dataset)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(dataset: DatasetDep, session: SessionDep, context: ContextDep) -> None:
    """Delete the dataset and its file, freeing its quota at once. 409 while a queued or running
    job needs it; finished jobs that used it keep their artifacts (the id becomes null)."""
    _service(session, context).delete(dataset=dataset)
