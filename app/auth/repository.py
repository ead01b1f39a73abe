from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.auth.tables import ApiKey, AuthFailure, Tenant, UiSession


class AuthRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def tenant_by_name(self, name: str) -> Tenant | None:
        return self.session.scalar(select(Tenant).where(Tenant.name == name))

    def active_key_for_hash(self, key_hash: str) -> tuple[ApiKey, Tenant] | None:
        """The unrevoked key with this hash and its tenant, read fresh on every request: a
        revoked key is refused from the next request on, in every API process."""
        row = self.session.execute(
            select(ApiKey, Tenant)
            .join(Tenant, ApiKey.tenant_id == Tenant.id)
            .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        ).first()
        return None if row is None else (row[0], row[1])

    def key(self, key_id: str) -> ApiKey | None:
        return self.session.get(ApiKey, key_id)

    def keys(self, *, tenant_id: str | None = None) -> list[tuple[ApiKey, str]]:
        """Keys with their tenant's name, oldest first; all tenants' when ``tenant_id`` is None."""
        query = select(ApiKey, Tenant.name).join(Tenant, ApiKey.tenant_id == Tenant.id)
        if tenant_id is not None:
            query = query.where(ApiKey.tenant_id == tenant_id)
        rows = self.session.execute(query.order_by(ApiKey.created_at, ApiKey.id))
        return [(key, name) for key, name in rows]

    def add(self, row: Tenant | ApiKey) -> None:
        self.session.add(row)
        self.session.flush()


class UiSessionRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: UiSession) -> None:
        self.session.add(row)
        self.session.flush()

    def tenant_for_token_hash(self, token_hash: str, *, now: datetime) -> Tenant | None:
        """The session's tenant while it is unexpired and its key unrevoked, else None."""
        return self.session.scalar(
            select(Tenant)
            .join(UiSession, UiSession.tenant_id == Tenant.id)
            .join(ApiKey, ApiKey.id == UiSession.api_key_id)
            .where(
                UiSession.token_hash == token_hash,
                UiSession.expires_at > now,
                ApiKey.revoked_at.is_(None),
            )
        )

    def delete_by_token_hash(self, token_hash: str) -> None:
        self.session.execute(delete(UiSession).where(UiSession.token_hash == token_hash))

    def delete_of_key(self, api_key_id: str) -> None:
        self.session.execute(delete(UiSession).where(UiSession.api_key_id == api_key_id))

    def delete_expired(self, *, now: datetime) -> None:
        self.session.execute(delete(UiSession).where(UiSession.expires_at <= now))


class AuthFailureRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def latest(self, client: str, *, since: datetime, limit: int) -> list[datetime]:
        """Up to ``limit`` failure times of ``client`` after ``since``, newest first."""
        return list(
            self.session.scalars(
                select(AuthFailure.failed_at)
                .where(AuthFailure.client == client, AuthFailure.failed_at > since)
                .order_by(AuthFailure.failed_at.desc())
                .limit(limit)
            )
        )

    def add(self, client: str, *, at: datetime) -> None:
        self.session.add(AuthFailure(client=client, failed_at=at))
        self.session.flush()

    def delete_before(self, moment: datetime) -> None:
        self.session.execute(delete(AuthFailure).where(AuthFailure.failed_at <= moment))
