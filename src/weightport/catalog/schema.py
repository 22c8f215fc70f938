"""The catalog's tables (SQLAlchemy 2 declarative). Portable: SQLite and PostgreSQL.

Times are stored as timezone-aware UTC; JSON columns hold the parts of API resources that
weightport passes through without interpreting (e.g. Fireworks ``baseModelDetails``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores naive text; we re-attach UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: UtcDateTime()}


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key. Only the sha256 of the secret is stored; the secret is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    account: Mapped[Account] = relationship()


class Model(Base):
    """A Fireworks model resource ``accounts/{account}/models/{model_id}``."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("account_id", "model_id"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(32), default="HF_BASE_MODEL")
    state: Mapped[str] = mapped_column(String(32), default="UPLOADING")
    base_model_details: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    peft_details: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    #: Other Model fields given at create/update, passed through as given (contextLength…).
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Bumped by every getUploadEndpoint; a file (re)declared by that call takes it as its
    #: generation, so a generation is never reused for a model, even for a re-added path.
    upload_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    files: Mapped[list[ModelFile]] = relationship(
        back_populates="model",
        cascade="all, delete-orphan",
        order_by="ModelFile.path",
        lazy="selectin",
    )


class ModelFile(Base):
    """One file of a model: declared at getUploadEndpoint, landed by the signed PUT."""

    __tablename__ = "model_files"
    __table_args__ = (UniqueConstraint("model_pk", "path"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_pk: Mapped[int] = mapped_column(ForeignKey("models.pk", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(1024))
    declared_size: Mapped[int] = mapped_column(BigInteger)
    #: sha256 of the landed bytes (= blob key); None until the upload has landed.
    sha256: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    #: The sha256 the uploader declared (getUploadEndpoint's filenameToSha256), if it did:
    #: only bytes with this digest may land.
    expected_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    #: Upload generation: bumps when getUploadEndpoint re-declares the file, so a slow PUT
    #: against an older URL cannot overwrite a newer declaration.
    generation: Mapped[int] = mapped_column(Integer, default=1)

    model: Mapped[Model] = relationship(back_populates="files")


class FineTune(Base):
    """A Together fine-tune job ``ft-<uuid>`` and what it produced."""

    __tablename__ = "fine_tunes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    base_model_pk: Mapped[int] = mapped_column(ForeignKey("models.pk", ondelete="RESTRICT"))
    model_output_name: Mapped[str] = mapped_column(String(512))
    #: "Lora" or "Full".
    training_type: Mapped[str] = mapped_column(String(16))
    lora_r: Mapped[int | None] = mapped_column(Integer, default=None)
    lora_alpha: Mapped[float | None] = mapped_column(default=None)
    #: Together status: pending, running, completed, ...
    status: Mapped[str] = mapped_column(String(32), default="completed")
    suffix: Mapped[str] = mapped_column(String(255), default="")
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    base_model: Mapped[Model] = relationship(lazy="joined")
    checkpoints: Mapped[list[Checkpoint]] = relationship(
        back_populates="fine_tune",
        cascade="all, delete-orphan",
        order_by="Checkpoint.step",
        lazy="selectin",
    )


class Checkpoint(Base):
    """What a fine-tune saved at one step: adapter files and/or full weights."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("fine_tune_id", "step"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fine_tune_id: Mapped[str] = mapped_column(ForeignKey("fine_tunes.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    #: "intermediate" or "final".
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    fine_tune: Mapped[FineTune] = relationship(back_populates="checkpoints")
    files: Mapped[list[CheckpointFile]] = relationship(
        back_populates="checkpoint",
        cascade="all, delete-orphan",
        order_by="CheckpointFile.path",
        lazy="selectin",
    )


class CheckpointFile(Base):
    __tablename__ = "checkpoint_files"
    __table_args__ = (UniqueConstraint("checkpoint_pk", "artifact", "path"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    checkpoint_pk: Mapped[int] = mapped_column(
        ForeignKey("checkpoints.pk", ondelete="CASCADE"), index=True
    )
    #: "adapter" (PEFT adapter directory) or "model" (full HF model directory).
    artifact: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)

    checkpoint: Mapped[Checkpoint] = relationship(back_populates="files")


class ConsoleSession(Base):
    """A web console sign-in. The browser holds a random token; the catalog only its sha256.

    Kept in the catalog rather than in process memory so every replica sees it and signing
    out ends it everywhere; the key it was opened with is re-checked on every request.
    """

    __tablename__ = "console_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)

    key: Mapped[ApiKey] = relationship()


class ArchiveBuild(Base):
    """A compressed archive built once and cached in the blob store, keyed by plan digest."""

    __tablename__ = "archive_builds"

    plan_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    level: Mapped[int] = mapped_column(Integer)
    #: What the archive is of, for progress reports (the digest is what identifies it).
    fine_tune_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    step: Mapped[int | None] = mapped_column(Integer, default=None)
    artifact: Mapped[str | None] = mapped_column(String(16), default=None)
    #: pending, building, ready, failed (``services.archive_builds.BuildState``)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    #: The process building it (``host:pid:nonce``) while ``building``; leases let another
    #: replica re-take a build whose owner stopped renewing (it died).
    owner: Mapped[str] = mapped_column(String(255), default="", server_default="")
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    #: Claims so far; a build whose owners keep dying is failed after a few.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    done_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    #: The built archive's blob (a reference garbage collection honours).
    blob_sha256: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    index: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditRecord(Base):
    """One download in the audit log: who (account, key, client) got what, when, how much.

    ``action`` is ``urls`` for an API call that handed out signed URLs and ``download`` for
    bytes served. Requests with the same ``coalesce_key`` (the same key, client address,
    action and file) within the ``audit_window`` of the record's last activity add to it, so
    the ranges of one parallel or resumed download make one record. No foreign keys: records
    outlive the keys and accounts they name, until retention removes them.
    """

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    coalesce_key: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[str] = mapped_column(String(63))
    key_id: Mapped[str] = mapped_column(String(32))
    #: ``accounts/A/models/M`` or a fine-tune id (``ft-…``).
    resource: Mapped[str] = mapped_column(String(512))
    #: A fine-tune's checkpoint step; empty for models.
    revision: Mapped[str] = mapped_column(String(64), default="")
    #: ``file`` (a model's file), ``merged``, ``adapter`` or ``model`` (fine-tune archives).
    kind: Mapped[str] = mapped_column(String(16))
    #: The file's path or the archive's name; empty when URLs for a whole model were handed out.
    file: Mapped[str] = mapped_column(String(1024), default="")
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    client: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(512), default="")
    first_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class StoredBlob(Base):
    """Garbage collection's row for one blob of the store.

    ``unreferenced_since`` is when a collection first found nothing in the catalog naming the
    blob (``None``: referenced, or being referenced right now). Code that records a new
    reference to a blob it has just stored upserts this row in the same transaction, and the
    collector deletes the row in the transaction that deletes the blob: the row is where the
    two take turns (see :mod:`weightport.services.gc`).
    """

    __tablename__ = "stored_blobs"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    unreferenced_since: Mapped[datetime | None] = mapped_column(default=None, index=True)


class Lease(Base):
    """A named lease held by one process until it expires (one garbage collector at a time
    among all replicas)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column()


Index("ix_models_account_created", Model.account_id, Model.created_at)
Index("ix_audit_records_account_first", AuditRecord.account_id, AuditRecord.first_at)
Index("ix_fine_tunes_account_created", FineTune.account_id, FineTune.created_at)
#: Builders look for work (pending, or building with an expired lease) on every sweep.
Index("ix_archive_builds_state_lease", ArchiveBuild.state, ArchiveBuild.lease_until)
