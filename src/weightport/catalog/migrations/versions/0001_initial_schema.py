"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 01:15:02.924446
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
    )
    op.create_table(
        "archive_builds",
        sa.Column("plan_digest", sa.String(length=64), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("fine_tune_id", sa.String(length=64), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("artifact", sa.String(length=16), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("done_bytes", sa.BigInteger(), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("blob_sha256", sa.String(length=64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("index", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("plan_digest", name=op.f("pk_archive_builds")),
    )
    with op.batch_alter_table("archive_builds", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_archive_builds_fine_tune_id"), ["fine_tune_id"], unique=False
        )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=63), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_api_keys_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("secret_sha256", name=op.f("uq_api_keys_secret_sha256")),
    )
    op.create_table(
        "models",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=63), nullable=False),
        sa.Column("model_id", sa.String(length=255), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("base_model_details", sa.JSON(), nullable=True),
        sa.Column("peft_details", sa.JSON(), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_models_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_models")),
        sa.UniqueConstraint("account_id", "model_id", name=op.f("uq_models_account_id")),
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index(
            "ix_models_account_created", ["account_id", "created_at"], unique=False
        )

    op.create_table(
        "fine_tunes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=63), nullable=False),
        sa.Column("base_model_pk", sa.Integer(), nullable=False),
        sa.Column("model_output_name", sa.String(length=512), nullable=False),
        sa.Column("training_type", sa.String(length=16), nullable=False),
        sa.Column("lora_r", sa.Integer(), nullable=True),
        sa.Column("lora_alpha", sa.Double(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("suffix", sa.String(length=255), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_fine_tunes_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["base_model_pk"],
            ["models.pk"],
            name=op.f("fk_fine_tunes_base_model_pk_models"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fine_tunes")),
    )
    with op.batch_alter_table("fine_tunes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fine_tunes_account_created", ["account_id", "created_at"], unique=False
        )

    op.create_table(
        "model_files",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_pk", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("declared_size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_pk"],
            ["models.pk"],
            name=op.f("fk_model_files_model_pk_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_model_files")),
        sa.UniqueConstraint("model_pk", "path", name=op.f("uq_model_files_model_pk")),
    )
    with op.batch_alter_table("model_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_files_model_pk"), ["model_pk"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_files_sha256"), ["sha256"], unique=False)

    op.create_table(
        "checkpoints",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("fine_tune_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["fine_tune_id"],
            ["fine_tunes.id"],
            name=op.f("fk_checkpoints_fine_tune_id_fine_tunes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_checkpoints")),
        sa.UniqueConstraint("fine_tune_id", "step", name=op.f("uq_checkpoints_fine_tune_id")),
    )
    op.create_table(
        "checkpoint_files",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("checkpoint_pk", sa.Integer(), nullable=False),
        sa.Column("artifact", sa.String(length=16), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_pk"],
            ["checkpoints.pk"],
            name=op.f("fk_checkpoint_files_checkpoint_pk_checkpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_checkpoint_files")),
        sa.UniqueConstraint(
            "checkpoint_pk", "artifact", "path", name=op.f("uq_checkpoint_files_checkpoint_pk")
        ),
    )
    with op.batch_alter_table("checkpoint_files", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_checkpoint_files_checkpoint_pk"), ["checkpoint_pk"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_checkpoint_files_sha256"), ["sha256"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("checkpoint_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_checkpoint_files_sha256"))
        batch_op.drop_index(batch_op.f("ix_checkpoint_files_checkpoint_pk"))

    op.drop_table("checkpoint_files")
    op.drop_table("checkpoints")
    with op.batch_alter_table("model_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_files_sha256"))
        batch_op.drop_index(batch_op.f("ix_model_files_model_pk"))

    op.drop_table("model_files")
    with op.batch_alter_table("fine_tunes", schema=None) as batch_op:
        batch_op.drop_index("ix_fine_tunes_account_created")

    op.drop_table("fine_tunes")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index("ix_models_account_created")

    op.drop_table("models")
    op.drop_table("api_keys")
    op.drop_table("archive_builds")
    op.drop_table("accounts")
