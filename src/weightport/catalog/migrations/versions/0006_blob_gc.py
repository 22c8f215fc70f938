"""garbage collection: stored blobs, leases, archive build blob index

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_blobs",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("unreferenced_since", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_stored_blobs")),
    )
    op.create_index(
        op.f("ix_stored_blobs_unreferenced_since"),
        "stored_blobs",
        ["unreferenced_since"],
        unique=False,
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_index(
        op.f("ix_archive_builds_blob_sha256"), "archive_builds", ["blob_sha256"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_archive_builds_blob_sha256"), table_name="archive_builds")
    op.drop_table("leases")
    op.drop_index(op.f("ix_stored_blobs_unreferenced_since"), table_name="stored_blobs")
    op.drop_table("stored_blobs")
