"""initial schema: tenants, API keys, models, datasets, jobs

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Types are spelled out here (not imported from app/) so this file keeps meaning what it meant
when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _id() -> sa.Column:
    return sa.Column("id", sa.String(32), primary_key=True)


def _tenant() -> sa.Column:
    return sa.Column(
        "tenant_id",
        sa.String(32),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )


def _created() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(), nullable=False)


def _upload() -> list[sa.Column]:
    return [
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("storage_key", sa.String(500), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "tenants",
        _id(),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        _created(),
    )
    op.create_table(
        "api_keys",
        _id(),
        _tenant(),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        _created(),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
    )
    op.create_table(
        "models",
        _id(),
        _tenant(),
        *_upload(),
        sa.Column("source_format", sa.String(16), nullable=False),
        sa.Column("opset", sa.Integer(), nullable=False),
        sa.Column("inputs", JSON, nullable=False),
        sa.Column("notes", JSON, nullable=False),
        _created(),
    )
    op.create_table(
        "datasets",
        _id(),
        _tenant(),
        *_upload(),
        sa.Column("arrays", JSON, nullable=False),
        _created(),
    )
    op.create_table(
        "jobs",
        _id(),
        _tenant(),
        sa.Column(
            "model_id",
            sa.String(32),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "calibration_id", sa.String(32), sa.ForeignKey("datasets.id", ondelete="SET NULL")
        ),
        sa.Column(
            "evaluation_id", sa.String(32), sa.ForeignKey("datasets.id", ondelete="SET NULL")
        ),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("max_accuracy_drop", sa.Float(), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("phase", sa.String(64), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("error_kind", sa.String(32), nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        sa.Column("steps", JSON, nullable=False),
        sa.Column("step_reports", JSON, nullable=False),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("report", JSON, nullable=True),
        sa.Column("artifacts", JSON, nullable=False),
        _created(),
        sa.Column("enqueued_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("tenant_id", "idempotency_key"),
    )


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("datasets")
    op.drop_table("models")
    op.drop_table("api_keys")
    op.drop_table("tenants")
