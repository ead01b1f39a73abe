from fastapi import APIRouter, Response

from app.core.deps import SessionDep, TenantDep
from app.core.errors import error_responses
from app.webhooks.schemas import WebhookSecretOut
from app.webhooks.service import WebhookSecretService

router = APIRouter(
    prefix="/v1/webhook-secret", tags=["webhooks"], responses=error_responses(401, 429, 503)
)


@router.get("", response_model=WebhookSecretOut)
def get_secret(tenant: TenantDep, session: SessionDep, response: Response) -> WebhookSecretOut:
    """The secret your webhooks are signed with (Standard Webhooks; made on first use)."""
    row = WebhookSecretService(session=session).get(tenant_id=tenant.id)
    response.headers["Cache-Control"] = "no-store"
    return WebhookSecretOut(secret=row.secret, created_at=row.created_at)


@router.post("", response_model=WebhookSecretOut)
def rotate_secret(tenant: TenantDep, session: SessionDep, response: Response) -> WebhookSecretOut:
    """Replace the secret: every delivery from now on, retries included, is signed with the
    new one only."""
    row = WebhookSecretService(session=session).rotate(tenant_id=tenant.id)
    response.headers["Cache-Control"] = "no-store"
    return WebhookSecretOut(secret=row.secret, created_at=row.created_at)
