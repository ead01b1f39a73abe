from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.datasets.tables import Dataset


class DatasetRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, dataset: Dataset) -> Dataset:
        self.session.add(dataset)
        self.session.flush()
        return dataset

    def get_for_tenant(self, dataset_id: str, tenant_id: str) -> Dataset | None:
        return self.session.scalar(
            select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id)
        )

    def list_for_tenant(self, tenant_id: str, limit: int) -> list[Dataset]:
        query = (
            select(Dataset)
            .where(Dataset.tenant_id == tenant_id)
            .order_by(Dataset.created_at.desc())
            .limit(limit)
        )
        return list(self.session.scalars(query))

    def stored_bytes(self, tenant_id: str) -> int:
        query = select(func.coalesce(func.sum(Dataset.expanded_bytes), 0)).where(
            Dataset.tenant_id == tenant_id
        )
        return int(self.session.scalar(query) or 0)
