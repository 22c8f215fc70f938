"""Together fine-tune jobs and their checkpoints in the catalog.

A checkpoint's files point at blobs in the same content-addressed store as models, so a
checkpoint registered from an uploaded model costs no bytes.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from weightport.catalog import registry
from weightport.catalog.schema import Checkpoint, CheckpointFile, FineTune, utcnow
from weightport.errors import AlreadyExists, InvalidArgument, NotFound
from weightport.paths import validate_relative_path

LORA, FULL = "Lora", "Full"
INTERMEDIATE, FINAL = "intermediate", "final"
#: Steps are stored as 32-bit integers on every backend.
MAX_STEP = 2**31 - 1
ADAPTER, MODEL = "adapter", "model"
FT_ID = re.compile(r"^ft-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_OUTPUT_NAME = 512  # its column's width
OUTPUT_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?$")


@dataclass(frozen=True)
class FileRef:
    """A file already in the store, to attach to a checkpoint."""

    artifact: str
    path: str
    size: int
    sha256: str


def validate_step(step: object) -> int:
    """``step`` if it is an integer a checkpoint can have, else :class:`InvalidArgument`."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise InvalidArgument(
            f"checkpoint step must be an integer from 0 to {MAX_STEP}, not {step!r}", param="step"
        )
    return step


def new_id() -> str:
    return f"ft-{uuid.uuid4()}"


def get_fine_tune(session: Session, account_id: str, ft_id: str, *, lock: bool = False) -> FineTune:
    """The job, if it belongs to the account; other accounts' jobs are "not found" too.

    ``lock`` keeps the job's row locked until the transaction ends (see
    :func:`weightport.catalog.registry.get_model`).
    """
    if not FT_ID.match(ft_id):
        raise NotFound(f"Fine-tune job {ft_id} not found", param="ft_id")
    # OF the job's own table: its base model comes in by an outer join, which PostgreSQL
    # cannot lock.
    job = session.get(FineTune, ft_id, with_for_update={"of": FineTune} if lock else None)
    if job is None or job.account_id != account_id:
        raise NotFound(f"Fine-tune job {ft_id} not found", param="ft_id")
    return job


def list_fine_tunes(session: Session, account_id: str) -> list[FineTune]:
    query = select(FineTune).where(FineTune.account_id == account_id)
    return list(session.scalars(query.order_by(FineTune.created_at, FineTune.id)))


def create_fine_tune(
    session: Session,
    account_id: str,
    *,
    base_model_id: str,
    training_type: str,
    lora_r: int | None = None,
    lora_alpha: float | None = None,
    model_output_name: str = "",
    suffix: str = "",
    ft_id: str = "",
) -> FineTune:
    base = registry.get_model(session, account_id, base_model_id)
    if base.state != registry.READY:
        raise InvalidArgument(f"base model {base_model_id!r} is {base.state}, not READY")
    if training_type not in (LORA, FULL):
        raise InvalidArgument(f"training_type must be {LORA} or {FULL}, not {training_type!r}")
    if training_type == LORA and (not lora_r or not lora_alpha):
        raise InvalidArgument("a LoRA fine-tune needs lora_r and lora_alpha")
    if suffix and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", suffix):
        raise InvalidArgument(f"suffix {suffix!r}: use up to 64 letters, digits, '.', '_', '-'")
    ft_id = ft_id or new_id()
    if not FT_ID.match(ft_id):
        raise InvalidArgument(f"invalid fine-tune id {ft_id!r}: expected ft-<uuid>")
    if session.get(FineTune, ft_id) is not None:
        raise AlreadyExists(f"fine-tune {ft_id} already exists")
    if not model_output_name:
        tag = f"-{suffix}" if suffix else ""
        model_output_name = f"{account_id}/{base_model_id}{tag}-{ft_id[3:11]}"
    if len(model_output_name) > MAX_OUTPUT_NAME or not OUTPUT_NAME.match(model_output_name):
        raise InvalidArgument(
            f"model_output_name {model_output_name!r}: use 'owner/name' (at most "
            f"{MAX_OUTPUT_NAME} characters) with letters, "
            "digits, '.', '_' and '-'"
        )
    job = FineTune(
        id=ft_id,
        account_id=account_id,
        base_model_pk=base.pk,
        model_output_name=model_output_name,
        training_type=training_type,
        lora_r=lora_r if training_type == LORA else None,
        lora_alpha=lora_alpha if training_type == LORA else None,
        status="running",
        suffix=suffix,
        extra={},
    )
    session.add(job)
    session.flush()
    return job


def add_checkpoint(
    session: Session,
    account_id: str,
    ft_id: str,
    *,
    step: int,
    kind: str,
    files: Sequence[FileRef],
) -> Checkpoint:
    """Attach a checkpoint; a final checkpoint completes the job."""
    # Locked: "one final checkpoint" is checked here, not by a constraint.
    job = get_fine_tune(session, account_id, ft_id, lock=True)
    validate_step(step)
    if kind not in (INTERMEDIATE, FINAL):
        raise InvalidArgument(f"checkpoint kind must be {INTERMEDIATE} or {FINAL}")
    if any(c.step == step for c in job.checkpoints):
        raise AlreadyExists(f"{ft_id} already has a checkpoint at step {step}")
    if kind == FINAL and any(c.kind == FINAL for c in job.checkpoints):
        raise AlreadyExists(f"{ft_id} already has a final checkpoint")
    final = next((c for c in job.checkpoints if c.kind == FINAL), None)
    if final is not None and step > final.step:
        raise InvalidArgument(f"step {step} is after the final checkpoint (step {final.step})")
    if not files:
        raise InvalidArgument("a checkpoint needs at least one file")
    artifacts = {f.artifact for f in files}
    if not artifacts <= {ADAPTER, MODEL}:
        raise InvalidArgument(f"artifact must be {ADAPTER} or {MODEL}")
    if job.training_type == FULL and ADAPTER in artifacts:
        raise InvalidArgument("a Full fine-tune's checkpoints hold full weights, not adapters")
    checkpoint = Checkpoint(step=step, kind=kind)
    for ref in files:
        validate_relative_path(ref.path)
        checkpoint.files.append(
            CheckpointFile(artifact=ref.artifact, path=ref.path, size=ref.size, sha256=ref.sha256)
        )
    job.checkpoints.append(checkpoint)
    if kind == FINAL:
        job.status = "completed"
    job.updated_at = utcnow()
    session.flush()
    return checkpoint
