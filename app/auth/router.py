from fastapi import APIRouter

from app.auth.schemas import TenantOut
from app.core.deps import TenantDep

router = APIRouter(prefix="/v1", tags=["auth"])


@router.get("/me", response_model=TenantOut)
def whoami(tenant: TenantDep) -> TenantOut:
    """The tenant the API key belongs to: a cheap way for a client to check its key."""
    return TenantOut(id=tenant.id, name=tenant.name)
