"""archive build claims: owner, lease, attempts

Builds are claimed through the catalog so any number of replicas can share them: the owner
renews a lease while it builds, and another replica re-takes a build whose lease ran out.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 13:54:00.651507
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("archive_builds", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("owner", sa.String(length=255), server_default="", nullable=False)
        )
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_index(
            "ix_archive_builds_state_lease", ["state", "lease_until"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("archive_builds", schema=None) as batch_op:
        batch_op.drop_index("ix_archive_builds_state_lease")
        batch_op.drop_column("attempts")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("owner")
