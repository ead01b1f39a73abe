"""jobs: training and validation datasets (the qat step) and a custom energy profile

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

Types are spelled out here (not imported from app/) so this file keeps meaning what it meant
when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
DATASET_COLUMNS = ("training_id", "validation_id")


def upgrade() -> None:
    # Batch mode: SQLite adds a foreign key only by copying the table; Postgres just ALTERs.
    with op.batch_alter_table("jobs") as batch:
        for column in DATASET_COLUMNS:
            batch.add_column(sa.Column(column, sa.String(32), nullable=True))
            batch.create_foreign_key(
                f"fk_jobs_{column}_datasets", "datasets", [column], ["id"], ondelete="SET NULL"
            )
        batch.add_column(sa.Column("energy_profile", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("energy_profile")
        for column in reversed(DATASET_COLUMNS):
            batch.drop_constraint(f"fk_jobs_{column}_datasets", type_="foreignkey")
            batch.drop_column(column)
