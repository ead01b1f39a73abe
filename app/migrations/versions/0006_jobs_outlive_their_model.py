"""jobs: a finished job outlives its model (jobs.model_id ON DELETE SET NULL, was CASCADE), so
deleting a model frees its quota without taking the quantized results made from it

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-18

Types are spelled out here (not imported from app/) so this file keeps meaning what it meant
when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK = "fk_jobs_model_id_models"


def upgrade() -> None:
    # Batch mode: SQLite changes a foreign key or nullability only by copying the table.
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(FK, type_="foreignkey")
        batch.alter_column("model_id", existing_type=sa.String(32), nullable=True)
        batch.create_foreign_key(FK, "models", ["model_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    # The old schema cannot hold a job without its model: those rows go, as the old CASCADE
    # would have taken them (their artifact files stay on storage).
    op.execute("DELETE FROM jobs WHERE model_id IS NULL")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(FK, type_="foreignkey")
        batch.alter_column("model_id", existing_type=sa.String(32), nullable=False)
        batch.create_foreign_key(FK, "models", ["model_id"], ["id"], ondelete="CASCADE")
