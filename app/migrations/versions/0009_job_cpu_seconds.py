"""jobs: cpu_seconds, the CPU time of the job's own quantization process

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28

The worker runs each job in a child forked from its forkserver, which ignores SIGCHLD; the
kernel then drops the child's resource usage instead of adding it to the worker's, so no
process-level counter sees what a job cost. The child measures itself and the row keeps it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("cpu_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite drops a column only by copying the table.
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cpu_seconds")
