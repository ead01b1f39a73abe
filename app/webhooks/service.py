"""Tenants' webhook secrets: made on first use (the tenant reading it, or the first delivery),
replaced on rotation (deliveries from then on are signed with the new one only)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.webhooks.repository import WebhookSecretRepository
from app.webhooks.signing import new_secret
from app.webhooks.tables import WebhookSecret


class WebhookSecretService:
    def __init__(self, *, session: Session) -> None:
        self.repository = WebhookSecretRepository(session)

    def get(self, *, tenant_id: str) -> WebhookSecret:
        row = self.repository.get(tenant_id)
        if row is None:
            self.repository.insert_unless_exists(tenant_id, new_secret())
            row = self.repository.get(tenant_id)
        assert row is not None  # inserted by us or by a concurrent first use
        return row

    def rotate(self, *, tenant_id: str) -> WebhookSecret:
        self.get(tenant_id=tenant_id)
        self.repository.replace(tenant_id, new_secret())
        row = self.repository.get(tenant_id)
        assert row is not None
        return row
