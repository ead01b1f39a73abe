from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from app.auth.tables import ApiKey


class TenantOut(BaseModel):
    id: str
    name: str


class ApiKeyOut(BaseModel):
    """A key as listed: never the key or its hash, only the prefix to recognise it by."""

    id: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: ApiKey) -> ApiKeyOut:
        return cls(
            id=row.id, prefix=row.prefix, created_at=row.created_at, revoked_at=row.revoked_at
        )


class ApiKeyCreated(ApiKeyOut):
    key: str  # shown this once; only its hash is stored
