from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.tables import ApiKey, Tenant


class AuthRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def tenant_by_name(self, name: str) -> Tenant | None:
        return self.session.scalar(select(Tenant).where(Tenant.name == name))

    def tenant_for_key_hash(self, key_hash: str) -> Tenant | None:
        return self.session.scalar(
            select(Tenant)
            .join(ApiKey, ApiKey.tenant_id == Tenant.id)
            .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )

    def add(self, row: Tenant | ApiKey) -> None:
        self.session.add(row)
        self.session.flush()
