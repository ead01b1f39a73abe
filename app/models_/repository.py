from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from app.jobs.repository import ACTIVE
from app.jobs.tables import Job
from app.models_.tables import Model


class ModelRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, model: Model) -> Model:
        self.session.add(model)
        self.session.flush()
        return model

    def get_for_tenant(self, model_id: str, tenant_id: str) -> Model | None:
        return self.session.scalar(
            select(Model).where(Model.id == model_id, Model.tenant_id == tenant_id)
        )

    def lock(self, model_id: str) -> Model | None:
        """The row, locked until commit (Postgres): a job naming it waits on the lock to insert,
        so no job can start using it between the in-use check and the delete."""
        query = (
            select(Model)
            .where(Model.id == model_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return self.session.scalar(query)

    def delete(self, model_id: str) -> bool:
        statement = (
            delete(Model).where(Model.id == model_id).execution_options(synchronize_session=False)
        )
        return self.session.execute(statement).rowcount == 1

    def expired(self, created_before: datetime, limit: int) -> list[str]:
        """Ids of models created before ``created_before`` that no queued or running job
        needs, oldest first (retention)."""
        in_use = select(Job.id).where(Job.status.in_(ACTIVE), Job.model_id == Model.id)
        query = (
            select(Model.id)
            .where(Model.created_at < created_before, ~exists(in_use))
            .order_by(Model.created_at)
            .limit(limit)
        )
        return list(self.session.scalars(query))

    def list_for_tenant(self, tenant_id: str, limit: int) -> list[Model]:
        query = (
            select(Model)
            .where(Model.tenant_id == tenant_id)
            .order_by(Model.created_at.desc())
            .limit(limit)
        )
        return list(self.session.scalars(query))

    def stored_bytes(self, tenant_id: str) -> int:
        query = select(func.coalesce(func.sum(Model.size_bytes), 0)).where(
            Model.tenant_id == tenant_id
        )
        return int(self.session.scalar(query) or 0)
