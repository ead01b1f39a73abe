"""jobs: pool, routing and device (worker pools); workers: each live worker's queues, device
and last heartbeat

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27

Types are spelled out here (not imported from app/) so this file keeps meaning what it meant
when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("pool", sa.String(8), nullable=True))
    op.add_column("jobs", sa.Column("routing", JSON, nullable=True))
    op.add_column("jobs", sa.Column("device", sa.String(200), nullable=True))
    op.create_table(
        "workers",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("hostname", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", JSON, nullable=False),
        sa.Column("consumes_gpu", sa.Boolean(), nullable=False),
        sa.Column("device", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_workers_last_seen_at", "workers", ["last_seen_at"])


def downgrade() -> None:
    op.drop_index("ix_workers_last_seen_at", table_name="workers")
    op.drop_table("workers")
    # Batch mode: SQLite drops a column only by copying the table.
    with op.batch_alter_table("jobs") as batch:
        for column in ("device", "routing", "pool"):
            batch.drop_column(column)
