"""Tenants and their API keys; a key is shown once, only its hash is kept."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.auth.repository import AuthRepository, UiSessionRepository
from app.auth.tables import ApiKey, Tenant
from app.core.db import utcnow
from app.core.errors import NotFound, Unauthorized
from app.core.security import hash_api_key, new_api_key


class AuthService:
    def __init__(self, *, session: Session) -> None:
        self.repository = AuthRepository(session)
        self.ui_sessions = UiSessionRepository(session)

    def create_key(self, *, tenant_name: str) -> tuple[Tenant, str]:
        """A new key for ``tenant_name``, creating the tenant on first use."""
        tenant = self.repository.tenant_by_name(tenant_name)
        if tenant is None:
            tenant = Tenant(name=tenant_name)
            self.repository.add(tenant)
        _, key = self.add_key(tenant_id=tenant.id)
        return tenant, key

    def add_key(self, *, tenant_id: str) -> tuple[ApiKey, str]:
        """A new key for an existing tenant: the row, and the key itself (shown only now)."""
        key = new_api_key()
        row = ApiKey(tenant_id=tenant_id, key_hash=hash_api_key(key), prefix=key[:9])
        self.repository.add(row)
        return row, key

    def keys(
        self, *, tenant_id: str | None = None, tenant_name: str | None = None
    ) -> list[tuple[ApiKey, str]]:
        """Keys (revoked ones too) with their tenant's name; one tenant's when one is named."""
        if tenant_name is not None:
            tenant = self.repository.tenant_by_name(tenant_name)
            if tenant is None:
                raise NotFound(f"no tenant named {tenant_name!r}")
            tenant_id = tenant.id
        return self.repository.keys(tenant_id=tenant_id)

    def revoke_key(self, *, key_id: str, tenant_id: str | None = None) -> ApiKey:
        """Revoke a key (again is a no-op) and end the /ui sessions made from it. With
        ``tenant_id``, another tenant's key is NotFound, as if it did not exist."""
        key = self.repository.key(key_id)
        if key is None or (tenant_id is not None and key.tenant_id != tenant_id):
            raise NotFound(f"no API key {key_id}")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
        self.ui_sessions.delete_of_key(key.id)
        self.repository.session.flush()
        return key

    def verify(self, *, key: str | None) -> tuple[ApiKey, Tenant]:
        """The key's row and tenant; Unauthorized when missing, unknown or revoked."""
        if not key:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        found = self.repository.active_key_for_hash(hash_api_key(key))
        if found is None:
            raise Unauthorized("invalid API key")
        return found

    def authenticate(self, *, key: str | None) -> Tenant:
        return self.verify(key=key)[1]
