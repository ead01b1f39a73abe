from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, func, select

from app.core.owned import TenantRepository
from app.jobs.repository import ACTIVE
from app.jobs.tables import Job
from app.models_.tables import Model


class ModelRepository(TenantRepository[Model]):
    table = Model
    noun = "model"

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

    def stored_bytes(self, tenant_id: str) -> int:
        query = select(func.coalesce(func.sum(Model.size_bytes), 0)).where(
            Model.tenant_id == tenant_id
        )
        return int(self.session.scalar(query) or 0)
