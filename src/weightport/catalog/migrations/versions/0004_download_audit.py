"""download audit log

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("coalesce_key", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.String(length=63), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("resource", sa.String(length=512), nullable=False),
        sa.Column("revision", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("file", sa.String(length=1024), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=512), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_records")),
    )
    op.create_index(
        op.f("ix_audit_records_coalesce_key"), "audit_records", ["coalesce_key"], unique=False
    )
    op.create_index(op.f("ix_audit_records_last_at"), "audit_records", ["last_at"], unique=False)
    op.create_index(
        "ix_audit_records_account_first",
        "audit_records",
        ["account_id", "first_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_audit_records_account_first", table_name="audit_records")
    op.drop_index(op.f("ix_audit_records_last_at"), table_name="audit_records")
    op.drop_index(op.f("ix_audit_records_coalesce_key"), table_name="audit_records")
    op.drop_table("audit_records")
