"""A model's upload lifecycle in the catalog: declare its files, land their bytes, READY.

**Concurrency.** Every step that changes an ``UPLOADING`` model starts with one statement: an
UPDATE of the model row guarded by ``state = 'UPLOADING'`` (:func:`_claim`). On SQLite that
statement takes the database's write lock, on PostgreSQL the row's lock; either way the reads
after it see the latest committed declaration, and no other declare, land or validate of the
model can interleave until the transaction ends. The database decides — no process-local lock.

**Integrity.** A declaration may carry each file's sha256 (weightport's ``filenameToSha256``
extension to ``getUploadEndpoint``). Then the upload URL binds it, the PUT's bytes are checked
against it before they are stored, landing refuses other bytes, and READY requires every file
to match. A re-declaration that changes a file's size or sha256 gives it a new generation (the
model's ``upload_epoch``), so URLs minted for an older declaration can no longer land bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from weightport.catalog.registry import READY, UPLOADING, get_model, resource_name
from weightport.catalog.schema import Model, ModelFile, utcnow
from weightport.errors import FailedPrecondition, InvalidArgument
from weightport.paths import validate_relative_path

MAX_FILES = 10_000
_SHA256 = re.compile(r"[0-9a-f]{64}")


def parse_sizes(filename_to_size: Any) -> dict[str, int]:
    """Validate ``filenameToSize``: relative paths to sizes given as numbers or strings."""
    if not isinstance(filename_to_size, dict) or not filename_to_size:
        raise InvalidArgument("filenameToSize must be a non-empty object of path -> size")
    if len(filename_to_size) > MAX_FILES:
        raise InvalidArgument(f"a model may have at most {MAX_FILES} files")
    sizes: dict[str, int] = {}
    for path, raw in filename_to_size.items():
        validate_relative_path(path)
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise InvalidArgument(f"size of {path!r} must be an integer or a decimal string")
        try:
            size = int(raw)
        except ValueError:
            raise InvalidArgument(f"size of {path!r} is not an integer: {raw!r}") from None
        if size < 0:
            raise InvalidArgument(f"size of {path!r} must not be negative")
        sizes[path] = size
    _check_prefix_clashes(sizes)
    return sizes


def parse_digests(filename_to_sha256: Any, sizes: Mapping[str, int]) -> dict[str, str]:
    """Validate the optional ``filenameToSha256``: declared paths to lowercase sha256 hex."""
    if filename_to_sha256 is None:
        return {}
    if not isinstance(filename_to_sha256, dict):
        raise InvalidArgument("filenameToSha256 must be an object of path -> sha256 (hex)")
    digests: dict[str, str] = {}
    for path, raw in filename_to_sha256.items():
        if path not in sizes:
            raise InvalidArgument(
                f"filenameToSha256 names {path!r}, which filenameToSize does not declare"
            )
        digest = raw.lower() if isinstance(raw, str) else ""
        if not _SHA256.fullmatch(digest):
            raise InvalidArgument(f"sha256 of {path!r} must be 64 hex digits, not {raw!r}")
        digests[path] = digest
    return digests


def _check_prefix_clashes(sizes: Mapping[str, int]) -> None:
    # "a" and "a/b" cannot both be files of one directory tree.
    names = set(sizes)
    for path in names:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in names:
                raise InvalidArgument(f"{path!r} is inside {'/'.join(parts[:i])!r}, a file")


def _claim(session: Session, account_id: str, model_id: str, *, new_epoch: bool) -> Model | None:
    """Lock the model for an upload step and load it fresh; ``None`` unless UPLOADING."""
    values: dict[str, Any] = {"updated_at": utcnow()}
    if new_epoch:
        values["upload_epoch"] = Model.upload_epoch + 1
    result = cast(
        CursorResult[Any],
        session.execute(
            update(Model)
            .where(
                Model.account_id == account_id,
                Model.model_id == model_id,
                Model.state == UPLOADING,
            )
            .values(values)
            .execution_options(synchronize_session=False)
        ),
    )
    if result.rowcount == 0:
        return None
    query = select(Model).where(Model.account_id == account_id, Model.model_id == model_id)
    return session.scalars(query.execution_options(populate_existing=True)).one()


def _claim_or_refuse(
    session: Session, account_id: str, model_id: str, *, new_epoch: bool = False
) -> Model:
    model = _claim(session, account_id, model_id, new_epoch=new_epoch)
    if model is None:
        state = get_model(session, account_id, model_id).state  # NotFound if it is gone
        raise FailedPrecondition(
            f'model "{resource_name(account_id, model_id)}" is {state}; its files are '
            "immutable. Create a new model to upload different files."
        )
    return model


def declare_files(
    session: Session,
    account_id: str,
    model_id: str,
    sizes: Mapping[str, int],
    digests: Mapping[str, str] | None = None,
) -> list[ModelFile]:
    """Replace the model's file list with ``sizes`` (callers re-send the full map).

    A file re-declared unchanged keeps what already landed and its generation, so an
    interrupted push resumes without re-sending bytes and uploads in flight still land. A
    changed size or sha256 (``digests``) gives the file a new generation, and drops landed
    bytes that no longer fit.
    """
    model = _claim_or_refuse(session, account_id, model_id, new_epoch=True)
    epoch, digests = model.upload_epoch, digests or {}
    current = {f.path: f for f in model.files}
    for path, stale in current.items():
        if path not in sizes:
            model.files.remove(stale)
    for path, size in sizes.items():
        expected = digests.get(path)
        file = current.get(path)
        if file is None:
            model.files.append(
                ModelFile(path=path, declared_size=size, expected_sha256=expected, generation=epoch)
            )
        elif (file.declared_size, file.expected_sha256) != (size, expected):
            fits = file.declared_size == size and expected in (None, file.sha256)
            file.declared_size, file.expected_sha256, file.generation = size, expected, epoch
            if not fits:
                file.sha256 = None
    session.flush()
    return sorted(model.files, key=lambda f: f.path)


def land_file(
    session: Session,
    account_id: str,
    model_id: str,
    path: str,
    generation: int,
    sha256: str,
    size: int,
) -> None:
    """Record that a declared file's bytes are in the store (refused unless they fit)."""
    model = _claim_or_refuse(session, account_id, model_id)
    file = _declared(model, path, generation)
    if size != file.declared_size:
        raise InvalidArgument(f"{path!r}: got {size} bytes, declared {file.declared_size}")
    if file.expected_sha256 is not None and sha256 != file.expected_sha256:
        raise FailedPrecondition(
            f"{path!r}: the uploaded bytes have sha256 {sha256}, but {file.expected_sha256} "
            "was declared"
        )
    file.sha256 = sha256


def check_landable(
    session: Session, account_id: str, model_id: str, path: str, generation: int
) -> None:
    """Refuse what :func:`land_file` would refuse for the model's state or an outdated URL —
    asked before an upload stores a byte, so a replayed URL costs the store nothing."""
    model = get_model(session, account_id, model_id)
    if model.state != UPLOADING:
        raise FailedPrecondition(
            f'model "{resource_name(account_id, model_id)}" is {model.state}; its files are '
            "immutable. Create a new model to upload different files."
        )
    _declared(model, path, generation)


def _declared(model: Model, path: str, generation: int) -> ModelFile:
    file = next((f for f in model.files if f.path == path), None)
    if file is None or file.generation != generation:
        raise FailedPrecondition(
            f"{path!r} is no longer declared with this upload URL; call getUploadEndpoint again"
        )
    return file


def unfinished_files(model: Model) -> list[str]:
    """Declared files whose bytes have not landed (or do not match their declared sha256)."""
    return [
        f.path for f in model.files if f.sha256 is None or f.expected_sha256 not in (None, f.sha256)
    ]


def require_complete(model: Model) -> None:
    """Raise FAILED_PRECONDITION naming what is missing unless every declared file landed."""
    if not model.files:
        raise FailedPrecondition("no files declared yet: call getUploadEndpoint and upload first")
    missing = unfinished_files(model)
    if missing:
        shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
        raise FailedPrecondition(f"{len(missing)} file(s) not uploaded yet: {shown}")


def mark_ready(session: Session, account_id: str, model_id: str) -> Model:
    """UPLOADING → READY once every declared file has landed; READY stays READY."""
    model = _claim(session, account_id, model_id, new_epoch=False)
    if model is None:
        current = get_model(session, account_id, model_id)
        if current.state == READY:
            return current
        raise FailedPrecondition(
            f'model "{resource_name(account_id, model_id)}" is {current.state}, not UPLOADING'
        )
    require_complete(model)
    model.state = READY
    session.flush()
    return model
