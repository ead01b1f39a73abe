from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, exists, func, or_, select
from sqlalchemy.orm import Session

from app.datasets.tables import Dataset
from app.jobs.repository import ACTIVE, DATASET_COLUMNS
from app.jobs.tables import Job


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

    def lock(self, dataset_id: str) -> Dataset | None:
        """The row, locked until commit (Postgres): a job naming it waits on the lock to insert,
        so no job can start using it between the in-use check and the delete."""
        query = (
            select(Dataset)
            .where(Dataset.id == dataset_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return self.session.scalar(query)

    def delete(self, dataset_id: str) -> bool:
        statement = delete(Dataset).where(Dataset.id == dataset_id)
        statement = statement.execution_options(synchronize_session=False)
        return self.session.execute(statement).rowcount == 1

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
