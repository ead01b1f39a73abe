from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, func, or_, select

from app.core.owned import TenantRepository
from app.datasets.tables import Dataset
from app.jobs.repository import ACTIVE, DATASET_COLUMNS
from app.jobs.tables import Job


class DatasetRepository(TenantRepository[Dataset]):
    table = Dataset
    noun = "dataset"

    def expired(self, created_before: datetime, limit: int) -> list[str]:
        """Ids of datasets created before ``created_before`` that no queued or running job
        needs, oldest first (retention)."""
        names_it = or_(*(column == Dataset.id for column in DATASET_COLUMNS))
        in_use = select(Job.id).where(Job.status.in_(ACTIVE), names_it)
        query = (
            select(Dataset.id)
            .where(Dataset.created_at < created_before, ~exists(in_use))
            .order_by(Dataset.created_at)
            .limit(limit)
        )
        return list(self.session.scalars(query))

    def stored_bytes(self, tenant_id: str) -> int:
        """What the tenant's datasets occupy once expanded: the quota counts this."""
        query = select(func.coalesce(func.sum(Dataset.expanded_bytes), 0)).where(
            Dataset.tenant_id == tenant_id
        )
        return int(self.session.scalar(query) or 0)
