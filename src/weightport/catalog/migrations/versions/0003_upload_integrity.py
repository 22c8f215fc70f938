"""upload integrity: declared sha256 per file, a per-model upload epoch

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "models", sa.Column("upload_epoch", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("model_files", sa.Column("expected_sha256", sa.String(length=64), nullable=True))
    # Start each epoch past every generation already handed out, so none is reused.
    op.execute(
        "UPDATE models SET upload_epoch = COALESCE("
        "(SELECT MAX(generation) FROM model_files WHERE model_files.model_pk = models.pk), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("model_files") as batch:
        batch.drop_column("expected_sha256")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("upload_epoch")
