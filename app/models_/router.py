from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.core.bundles import BUNDLE_CONTENT_TYPE
from app.core.deps import ContextDep, SessionDep, TenantDep, owned
from app.core.errors import error_responses
from app.core.listing import LIST_RESPONSES, PageDep, cut_page
from app.core.uploads import RAW_BODY_OPENAPI, body_stream, declared_length, display_name
from app.models_.repository import ModelRepository
from app.models_.schemas import ModelOut
from app.models_.service import ModelService
from app.models_.tables import Model

router = APIRouter(prefix="/v1/models", tags=["models"], responses=error_responses(401, 429, 503))
ModelDep = Annotated[Model, owned(ModelRepository, "model_id")]
MODEL_BODY_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            **RAW_BODY_OPENAPI["requestBody"]["content"],
            BUNDLE_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _service(session: SessionDep, context: ContextDep) -> ModelService:
    return ModelService(
        session=session,
        settings=context.settings,
        storage=context.storage,
        inspector=context.inspector,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelOut,
    openapi_extra=MODEL_BODY_OPENAPI,
    responses=error_responses(408, 413, 415, 422, 507),
    summary="Upload an ONNX model or torch.export archive (.pt2) as the raw request body",
    description="With `Content-Type: application/x-tar` the body is an uncompressed tar of one "
    "`.onnx` model and the external-data files its initializers name (paths relative to the "
    "model), stored beside it.",
)
async def upload_model(
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    context: ContextDep,
    filename: Annotated[str | None, Query(max_length=255)] = None,
) -> ModelOut:
    model = await _service(session, context).upload(
        tenant_id=tenant.id,
        filename=display_name(filename, "model"),
        body=body_stream(request, example="model.onnx"),
        declared_length=declared_length(request),
        bundle=is_bundle(request),
    )
    return ModelOut.model_validate(model)


def is_bundle(request: Request) -> bool:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media_type == BUNDLE_CONTENT_TYPE


@router.get("", response_model=list[ModelOut], responses=LIST_RESPONSES)
def list_models(
    request: Request, response: Response, tenant: TenantDep, session: SessionDep, page: PageDep
) -> list[ModelOut]:
    """The tenant's models, newest first, a page at a time (X-Next-Cursor names the next)."""
    rows = ModelRepository(session).page(
        tenant.id, limit=page.limit + 1, created_after=page.created_after, after=page.after
    )
    return [ModelOut.model_validate(row) for row in cut_page(rows, page, request, response)]


@router.delete(
    "/{model_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404, 409)
)
def delete_model(model: ModelDep, session: SessionDep, context: ContextDep) -> None:
    """Delete the model and its files, freeing its quota at once. 409 while a queued or running
    job needs it; finished jobs made from it keep their artifacts (their model_id becomes null)."""
    _service(session, context).delete(model=model)


@router.get("/{model_id}", response_model=ModelOut, responses=error_responses(404))
def get_model(model: ModelDep) -> ModelOut:
    return ModelOut.model_validate(model)
