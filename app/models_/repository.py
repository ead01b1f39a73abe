from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

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
