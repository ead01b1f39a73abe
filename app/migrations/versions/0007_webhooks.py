"""jobs: callback_url and its webhook's state (webhook_status, webhook_next_at, deliveries);
webhook_secrets: each tenant's signing secret

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

Types are spelled out here (not imported from app/) so this file keeps meaning what it meant
when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("callback_url", sa.String(2048), nullable=True))
    op.add_column("jobs", sa.Column("webhook_status", sa.String(16), nullable=True))
    op.add_column("jobs", sa.Column("webhook_next_at", sa.DateTime(), nullable=True))
    op.add_column("jobs", sa.Column("deliveries", JSON, nullable=True))
    op.create_index("ix_jobs_webhook_status", "jobs", ["webhook_status"])
    op.create_table(
        "webhook_secrets",
        sa.Column(
            "tenant_id",
            sa.String(32),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("webhook_secrets")
    op.drop_index("ix_jobs_webhook_status", table_name="jobs")
    # Batch mode: SQLite drops a column only by copying the table.
    with op.batch_alter_table("jobs") as batch:
        for column in ("deliveries", "webhook_next_at", "webhook_status", "callback_url"):
            batch.drop_column(column)
