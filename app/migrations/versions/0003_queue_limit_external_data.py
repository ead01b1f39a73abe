"""jobs: when a job last entered the queue (the queue-time limit counts from it); models: the
external-data files uploaded alongside a model

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-11

Types are spelled out here (not imported from app/) so this file keeps meaning what it meant
when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # Added nullable, filled from what the rows already say, then made NOT NULL (batch mode:
    # SQLite changes nullability only by copying the table).
    op.add_column("jobs", sa.Column("queued_at", sa.DateTime(), nullable=True))
    op.execute("UPDATE jobs SET queued_at = enqueued_at")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("queued_at", existing_type=sa.DateTime(), nullable=False)
    op.add_column("models", sa.Column("external_data", JSON, nullable=True))
    op.execute("UPDATE models SET external_data = '[]'")
    with op.batch_alter_table("models") as batch:
        batch.alter_column("external_data", existing_type=JSON, nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("external_data")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("queued_at")
