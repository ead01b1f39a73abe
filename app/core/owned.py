"""Rows a tenant owns (models, datasets, jobs): the SQL every such table shares. Another
tenant's row reads exactly as a missing one (404), so ids cannot be probed across tenants; the
request dependency that loads one for the caller is ``app.core.deps.owned``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import ColumnElement, and_, delete, or_, select
from sqlalchemy.orm import Session

from app.core.db import Base
from app.core.errors import NotFound

Row = TypeVar("Row", bound=Base)


class TenantRepository(Generic[Row]):
    """A subclass names its ``table`` (mapped with ``id``, ``tenant_id`` and ``created_at``)
    and the ``noun`` its errors use, and adds the queries only its domain has."""

    table: ClassVar[type[Any]]
    noun: ClassVar[str]

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: Row) -> Row:
        self.session.add(row)
        self.session.flush()
        return row

    def get_for_tenant(self, row_id: str, tenant_id: str) -> Row | None:
        table = self.table
        return self.session.scalar(
            select(table).where(table.id == row_id, table.tenant_id == tenant_id)
        )

    def owned(self, row_id: str, tenant_id: str) -> Row:
        """The tenant's row, or NotFound: another tenant's row is indistinguishable from none."""
        row = self.get_for_tenant(row_id, tenant_id)
        if row is None:
            raise NotFound(f"{self.noun} {row_id} not found")
        return row

    def list_for_tenant(self, tenant_id: str, limit: int) -> list[Row]:
        table = self.table
        query = (
            select(table)
            .where(table.tenant_id == tenant_id)
            .order_by(table.created_at.desc())
            .limit(limit)
        )
        return list(self.session.scalars(query))

    def page(
        self,
        tenant_id: str,
        *,
        limit: int,
        created_after: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        where: Sequence[ColumnElement[bool]] = (),
    ) -> list[Row]:
        """Newest first, ties broken by id, so a keyset ``after`` (the previous page's last
        row) neither skips nor repeats rows that share a creation time."""
        table = self.table
        query = select(table).where(table.tenant_id == tenant_id, *where)
        if created_after is not None:
            query = query.where(table.created_at > created_after)
        if after is not None:
            created_at, row_id = after
            query = query.where(
                or_(
                    table.created_at < created_at,
                    and_(table.created_at == created_at, table.id < row_id),
                )
            )
        query = query.order_by(table.created_at.desc(), table.id.desc()).limit(limit)
        return list(self.session.scalars(query))

    def lock(self, row_id: str) -> Row | None:
        """The row, locked until commit (Postgres): a job naming it waits on the lock to insert,
        so no job can start using it between the in-use check and the delete."""
        query = (
            select(self.table)
            .where(self.table.id == row_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return self.session.scalar(query)

    def delete(self, row_id: str) -> bool:
        """False when the row was already gone (deleted concurrently)."""
        statement = delete(self.table).where(self.table.id == row_id)
        statement = statement.execution_options(synchronize_session=False)
        return self.session.execute(statement).rowcount == 1
