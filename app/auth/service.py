"""Tenants and their API keys; a key is shown once, only its hash is kept."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.auth.repository import AuthRepository
from app.auth.tables import ApiKey, Tenant
from app.core.errors import Unauthorized
from app.core.security import hash_api_key, new_api_key


class AuthService:
    def __init__(self, *, session: Session) -> None:
        self.repository = AuthRepository(session)

    def create_key(self, *, tenant_name: str) -> tuple[Tenant, str]:
        """A new key for ``tenant_name``, creating the tenant on first use."""
        tenant = self.repository.tenant_by_name(tenant_name)
        if tenant is None:
            tenant = Tenant(name=tenant_name)
            self.repository.add(tenant)
        key = new_api_key()
        self.repository.add(ApiKey(tenant_id=tenant.id, key_hash=hash_api_key(key), prefix=key[:9]))
        return tenant, key

    def authenticate(self, *, key: str | None) -> Tenant:
        if not key:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        tenant = self.repository.tenant_for_key_hash(hash_api_key(key))
        if tenant is None:
            raise Unauthorized("invalid API key")
        return tenant
