from fastapi import APIRouter, Response, status

from app.auth.schemas import ApiKeyCreated, ApiKeyOut, TenantOut
from app.auth.service import AuthService
from app.core.deps import SessionDep, TenantDep
from app.core.errors import error_responses

router = APIRouter(prefix="/v1", tags=["auth"], responses=error_responses(401, 429, 503))


@router.get("/me", response_model=TenantOut)
def whoami(tenant: TenantDep) -> TenantOut:
    """The tenant the API key belongs to: a cheap way for a client to check its key."""
    return TenantOut(id=tenant.id, name=tenant.name)


@router.get("/keys", response_model=list[ApiKeyOut])
def list_keys(tenant: TenantDep, session: SessionDep) -> list[ApiKeyOut]:
    """The calling tenant's keys, revoked ones included (with ``revoked_at``)."""
    rows = AuthService(session=session).keys(tenant_id=tenant.id)
    return [ApiKeyOut.from_row(key) for key, _ in rows]


@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
def create_key(tenant: TenantDep, session: SessionDep, response: Response) -> ApiKeyCreated:
    """A new key for the calling tenant; ``key`` is in this answer only (rotate: create the new
    key, switch to it, then revoke the old one)."""
    row, key = AuthService(session=session).add_key(tenant_id=tenant.id)
    response.headers["Cache-Control"] = "no-store"
    return ApiKeyCreated(**ApiKeyOut.from_row(row).model_dump(), key=key)


@router.delete("/keys/{key_id}", response_model=ApiKeyOut, responses=error_responses(404))
def revoke_key(key_id: str, tenant: TenantDep, session: SessionDep) -> ApiKeyOut:
    """Revoke one of the calling tenant's keys: refused from the next request on, and the /ui
    sessions made with it end. Revoking the key this request uses is allowed."""
    key = AuthService(session=session).revoke_key(key_id=key_id, tenant_id=tenant.id)
    return ApiKeyOut.from_row(key)
