"""datasets: the bytes an archive expands to (the storage quota counts these, not the
compressed size)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Types are spelled out here (not imported from app/) so this file keeps meaning what it meant
when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows were stored uncompressed by numpy.savez more often than not: their size is
    # the best figure there is without reopening every archive.
    op.add_column("datasets", sa.Column("expanded_bytes", sa.BigInteger(), nullable=True))
    op.execute("UPDATE datasets SET expanded_bytes = size_bytes")
    with op.batch_alter_table("datasets") as batch:
        batch.alter_column("expanded_bytes", existing_type=sa.BigInteger(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("expanded_bytes")
