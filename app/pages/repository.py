"""The jobs list page's reads: the tenant's jobs with the page's filters, and the file names
of their models, in two queries whatever the number of rows."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.jobs.tables import Job, JobStatus
from app.models_.tables import Model

STATUSES = tuple(status.value for status in JobStatus)


class JobPageRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def jobs(
        self, tenant_id: str, *, status: str | None = None, model: str | None = None, limit: int
    ) -> list[Job]:
        """Newest first; ``model`` matches part of the model's file name (case-insensitive)."""
        query = select(Job).where(Job.tenant_id == tenant_id)
        if status:
            query = query.where(Job.status == status)
        if model:
            query = query.join(Model, Model.id == Job.model_id).where(
                Model.filename.ilike(f"%{_like_escaped(model)}%", escape="\\")
            )
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        return list(self.session.scalars(query))

    def model_names(self, tenant_id: str, model_ids: Iterable[str | None]) -> dict[str, str]:
        """Model id -> file name, for the ids still there (a deleted model is simply absent)."""
        ids = {model_id for model_id in model_ids if model_id}
        if not ids:
            return {}
        rows = self.session.execute(
            select(Model.id, Model.filename).where(Model.tenant_id == tenant_id, Model.id.in_(ids))
        )
        return {model_id: filename for model_id, filename in rows}


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
