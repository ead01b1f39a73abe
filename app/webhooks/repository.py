"""Webhooks' SQL: tenants' secrets, and the jobs whose webhook is due. A dispatcher claims a
delivery by moving ``webhook_next_at`` past its request's timeout (compare-and-set), so any
number of workers may dispatch without sending one attempt twice."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.core.db import utcnow
from app.jobs.tables import TERMINAL, Job
from app.webhooks.tables import WebhookSecret

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


class WebhookSecretRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, tenant_id: str) -> WebhookSecret | None:
        return self.session.get(WebhookSecret, tenant_id, populate_existing=True)

    def insert_unless_exists(self, tenant_id: str, secret: str) -> None:
        """Two first uses at once (an API read and a delivery) must end with one secret."""
        values = {"tenant_id": tenant_id, "secret": secret, "created_at": utcnow()}
        dialect = self.session.get_bind().dialect.name
        if dialect == "postgresql":
            statement: Any = postgresql.insert(WebhookSecret).on_conflict_do_nothing()
        elif dialect == "sqlite":
            statement = sqlite.insert(WebhookSecret).on_conflict_do_nothing()
        else:
            statement = insert(WebhookSecret)
        self.session.execute(statement.values(**values))

    def replace(self, tenant_id: str, secret: str) -> None:
        self.session.execute(
            update(WebhookSecret)
            .where(WebhookSecret.tenant_id == tenant_id)
            .values(secret=secret, created_at=utcnow())
            .execution_options(synchronize_session=False)
        )


class DeliveryRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def due(self, now: datetime, limit: int) -> list[str]:
        """Finished jobs whose webhook is pending and not claimed or waiting for a retry."""
        query = (
            select(Job.id)
            .where(Job.webhook_status == PENDING)
            .where(Job.status.in_([status.value for status in TERMINAL]))
            .where(or_(Job.webhook_next_at.is_(None), Job.webhook_next_at <= now))
            .order_by(Job.finished_at)
            .limit(limit)
        )
        return list(self.session.scalars(query))

    def claim(self, job_id: str, now: datetime, hold_s: float) -> bool:
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.webhook_status == PENDING)
            .where(or_(Job.webhook_next_at.is_(None), Job.webhook_next_at <= now))
            .values(webhook_next_at=now + timedelta(seconds=hold_s))
            .execution_options(synchronize_session=False)
        )
        result: Any = self.session.execute(statement)
        return bool(result.rowcount == 1)

    def record(
        self, job_id: str, attempt: dict[str, Any], status: str, next_at: datetime | None
    ) -> bool:
        """Append ``attempt`` and set what comes next; False when the job was deleted."""
        job = self.session.get(Job, job_id, populate_existing=True, with_for_update=True)
        if job is None or job.webhook_status != PENDING:
            return False
        job.deliveries = [*(job.deliveries or []), attempt]
        job.webhook_status = status
        job.webhook_next_at = next_at
        self.session.flush()
        return True
