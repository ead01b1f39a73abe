"""ui_sessions: server-side /ui logins (only a token's hash, the key they came from, an expiry);
auth_failures: recent wrong API keys per client address, for the login throttle

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-18

Types are spelled out here (not imported from app/) so this file keeps meaning what it meant
when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column(
            "tenant_id",
            sa.String(32),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "api_key_id",
            sa.String(32),
            sa.ForeignKey("api_keys.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False, index=True),
    )
    op.create_table(
        "auth_failures",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("failed_at", sa.DateTime(), nullable=False, index=True),
    )
    op.create_index("ix_auth_failures_client_failed_at", "auth_failures", ["client", "failed_at"])


def downgrade() -> None:
    op.drop_index("ix_auth_failures_client_failed_at", table_name="auth_failures")
    op.drop_table("auth_failures")
    op.drop_table("ui_sessions")
