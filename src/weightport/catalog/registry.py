"""Fireworks model resources in the catalog: lifecycle, files, listing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import (
    Executable,
    Select,
    bindparam,
    func,
    literal_column,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from weightport.catalog import accounts
from weightport.catalog.db_errors import Violation, violation
from weightport.catalog.schema import ApiKey, FineTune, Model, ModelFile, utcnow
from weightport.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

MODEL_ID = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,126}[a-z0-9])?$")

KINDS = frozenset(
    {
        "HF_BASE_MODEL",
        "HF_PEFT_ADDON",
        "HF_TEFT_ADDON",
        "FLUMINA_BASE_MODEL",
        "FLUMINA_ADDON",
        "DRAFT_ADDON",
        "FIRE_AGENT",
        "LIVE_MERGE",
        "CUSTOM_MODEL",
        "EMBEDDING_MODEL",
        "SNAPSHOT_MODEL",
    }
)
UPLOADING, READY = "UPLOADING", "READY"
MAX_OFFSET = 2**63 - 1

#: Model fields the catalog stores in their own columns; everything else goes to ``extra``.
COLUMN_FIELDS = {
    "displayName": "display_name",
    "description": "description",
    "kind": "kind",
    "baseModelDetails": "base_model_details",
    "peftDetails": "peft_details",
}
#: Fields a caller can never set: they are the server's to decide.
READ_ONLY_FIELDS = frozenset({"name", "state", "status", "createTime", "updateTime", "createdBy"})

ORDER_FIELDS = {
    "name": Model.model_id,
    "createTime": Model.created_at,
    "create_time": Model.created_at,
    "updateTime": Model.updated_at,
    "update_time": Model.updated_at,
    "displayName": Model.display_name,
    "display_name": Model.display_name,
    "state": Model.state,
    "kind": Model.kind,
}
FILTER_FIELDS = {
    "state": Model.state,
    "kind": Model.kind,
    "displayName": Model.display_name,
    "display_name": Model.display_name,
    "name": Model.model_id,
}
_FILTER_TERM = re.compile(r'^\s*([A-Za-z_]+)\s*(=|!=)\s*"([^"]*)"\s*$')


def resource_name(account_id: str, model_id: str) -> str:
    return f"accounts/{account_id}/models/{model_id}"


def validate_model_id(model_id: str) -> str:
    if not MODEL_ID.match(model_id):
        raise InvalidArgument(
            f"invalid model id {model_id!r}: use 1-128 lowercase letters, digits, '-', '.' "
            "and '_', starting and ending with a letter or digit"
        )
    return model_id


def get_model(session: Session, account_id: str, model_id: str, *, lock: bool = False) -> Model:
    """The model, or :class:`NotFound`.

    ``lock`` is for changes that depend on what was read (a model turning READY only if
    every file landed): the row stays locked until the transaction ends, so a concurrent
    change of the same model on any replica waits instead of interleaving. (On SQLite the
    write transaction already holds the database's one write lock.)
    """
    if not MODEL_ID.match(model_id):
        # Ids are checked at creation: one that fails the check names no model (and may hold
        # characters, such as NUL, that PostgreSQL cannot even compare).
        raise NotFound(f'model "{resource_name(account_id, model_id)}" not found')
    query = select(Model).where(Model.account_id == account_id, Model.model_id == model_id)
    model = session.scalar(query.with_for_update() if lock else query)
    if model is None:
        raise NotFound(f'model "{resource_name(account_id, model_id)}" not found')
    return model


class DownloadableFile(NamedTuple):
    """A landed file of a READY model, as a download needs it."""

    path: str
    declared_size: int
    sha256: str


@dataclass(frozen=True)
class DownloadableModel:
    """A READY model's landed files as columns, in path order: a listing of hundreds of files
    reads no more than this, and the driver's plain tuples cost a fraction of ORM objects or
    of a value object per file."""

    account_id: str
    model_id: str
    paths: tuple[str, ...]
    sizes: tuple[int, ...]
    sha256s: tuple[str, ...]

    def file(self, path: str) -> DownloadableFile | None:
        """The landed file at ``path``, if the model has one."""
        try:
            i = self.paths.index(path)
        except ValueError:
            return None
        return DownloadableFile(path, self.sizes[i], self.sha256s[i])


_MODEL = (Model.account_id == bindparam("account")) & (Model.model_id == bindparam("model"))
_LANDED = (ModelFile.model_pk == Model.pk) & ModelFile.sha256.is_not(None)
_FILE_COLUMNS = (ModelFile.path, ModelFile.declared_size, ModelFile.sha256)

# Built once: constructing a statement costs more than SQLite takes to run it, on the path
# every getDownloadEndpoint takes. The model's state and its landed files in path order: a
# row per file, or one whose file columns are NULL. One statement for state and files is a
# round trip less on PostgreSQL, and one snapshot.
_DOWNLOADABLE = (
    select(Model.state, *_FILE_COLUMNS)
    .outerjoin(ModelFile, _LANDED)
    .where(_MODEL)
    .order_by(ModelFile.path)
)
# The whole read of a listing in one statement: first the presented API key and the state of
# the model (NULL without one), then a row per landed file (the other columns NULL, not the
# key's repeated: on SQLite, building those values per row cost as much as a second query).
_KEY_WIDTH = len(accounts.KEY_COLUMNS) + 1
_NO_FILE = [null().label(column.key) for column in _FILE_COLUMNS]
_DOWNLOADABLE_AS: Executable = union_all(
    select(*accounts.KEY_COLUMNS, Model.state, *_NO_FILE)
    .select_from(ApiKey)
    .outerjoin(Model, _MODEL)
    .where(ApiKey.secret_sha256 == bindparam("digest")),
    select(*[null() for _ in range(_KEY_WIDTH)], *_FILE_COLUMNS)
    .join_from(Model, ModelFile, _LANDED)
    .where(_MODEL),
).order_by(literal_column("path").nulls_first())


def get_downloadable(session: Session, account_id: str, model_id: str) -> DownloadableModel:
    """The model's files, if they may be downloaded (it is READY); FAILED_PRECONDITION if not."""
    if not MODEL_ID.match(model_id):
        raise NotFound(f'model "{resource_name(account_id, model_id)}" not found')
    rows = _plain_rows(session, _DOWNLOADABLE, {"account": account_id, "model": model_id})
    state = rows[0][0] if rows else None
    files = rows if rows and rows[0][1] is not None else []
    return _downloadable(state, files, 1, account_id, model_id)


def get_downloadable_as(
    session: Session, secret: str, account_id: str, model_id: str
) -> tuple[accounts.Caller, DownloadableModel]:
    """Who presents the API key ``secret``, and :func:`get_downloadable`, in one statement
    (every download starts here). :class:`~weightport.errors.Unauthenticated` for a bad key;
    a key of another account finds the model missing, whether it exists or not."""
    params = {"digest": accounts.presented_digest(secret), "account": account_id}
    params["model"] = model_id if MODEL_ID.match(model_id) else ""
    rows = _plain_rows(session, _DOWNLOADABLE_AS, params)
    # The key's row sorts first (no path); without one, the key matched nothing.
    head = rows[0] if rows and rows[0][0] is not None else None
    caller = accounts.caller_from(head)
    if caller.account_id != account_id:
        raise NotFound(f'"accounts/{account_id}/models/{model_id}" not found')
    assert head is not None
    return caller, _downloadable(head[_KEY_WIDTH - 1], rows[1:], _KEY_WIDTH, account_id, model_id)


def _plain_rows(session: Session, statement: Executable, params: dict[str, str]) -> list[Any]:
    result = session.connection().execute(statement, params)
    # The driver's plain tuples: SQLAlchemy's Row objects would cost more than the query
    # (0.25 ms for 200 files), and these columns need no conversion from either driver.
    rows = list(result.cursor.fetchall())
    result.close()
    return rows


def _downloadable(
    state: str | None, files: list[Any], offset: int, account_id: str, model_id: str
) -> DownloadableModel:
    """The listing of a model in ``state`` (``None``: no such model) whose landed files are
    ``files``, rows with path, size and sha256 from column ``offset`` on."""
    if state is None:
        raise NotFound(f'model "{resource_name(account_id, model_id)}" not found')
    if state != READY:
        raise FailedPrecondition(
            f'model "{resource_name(account_id, model_id)}" is {state}: call '
            "validateUpload once every file has landed"
        )
    if not files:
        return DownloadableModel(account_id, model_id, (), (), ())
    paths, sizes, sha256s = tuple(zip(*files, strict=True))[offset : offset + 3]
    return DownloadableModel(account_id, model_id, paths, sizes, sha256s)


def _apply_fields(model: Model, fields: Mapping[str, Any]) -> None:
    for key, value in fields.items():
        if key in READ_ONLY_FIELDS:
            continue
        column = COLUMN_FIELDS.get(key)
        if column is None:
            model.extra = {**model.extra, key: value}
            continue
        if column in ("display_name", "description"):
            if not isinstance(value, str):
                raise InvalidArgument(f"{key} must be a string")
            if "\x00" in value:
                raise InvalidArgument(f"{key} must not contain NUL characters")
            limit = 64 if column == "display_name" else 1000
            if len(value) >= limit:
                raise InvalidArgument(f"{key} must be shorter than {limit} characters")
        elif column == "kind":
            if not isinstance(value, str) or value not in KINDS:
                raise InvalidArgument(f"unknown kind {value!r}; one of {', '.join(sorted(KINDS))}")
        elif value is not None and not isinstance(value, dict):
            raise InvalidArgument(f"{key} must be an object")
        setattr(model, column, value)


def create_model(
    session: Session, account_id: str, model_id: str, fields: Mapping[str, Any]
) -> Model:
    validate_model_id(model_id)
    exists = session.scalar(
        select(Model.pk).where(Model.account_id == account_id, Model.model_id == model_id)
    )
    if exists is not None:
        raise AlreadyExists(f'model "{resource_name(account_id, model_id)}" already exists')
    model = Model(account_id=account_id, model_id=model_id, state=UPLOADING, extra={})
    _apply_fields(model, fields)
    session.add(model)
    try:
        session.flush()
    except IntegrityError as exc:
        # Two creates of one id both passed the check above: the unique constraint decides.
        if violation(exc) is not Violation.UNIQUE:
            raise
        raise AlreadyExists(
            f'model "{resource_name(account_id, model_id)}" already exists'
        ) from None
    return model


def update_model(
    session: Session, account_id: str, model_id: str, fields: Mapping[str, Any]
) -> Model:
    model = get_model(session, account_id, model_id, lock=True)
    _apply_fields(model, fields)
    model.updated_at = utcnow()
    session.flush()
    return model


def delete_model(session: Session, account_id: str, model_id: str) -> list[str]:
    """Delete a model; returns the blob keys it referenced (the caller may collect them).

    A model that fine-tunes use as their base cannot be deleted (FAILED_PRECONDITION naming
    them): their merged downloads are computed from it. Checkpoints registered from a model
    keep their own references to its blobs, so deleting that model does not affect them.
    """
    model = get_model(session, account_id, model_id, lock=True)
    _refuse_if_base_model(session, model)
    keys = [f.sha256 for f in model.files if f.sha256]
    session.delete(model)
    try:
        session.flush()
    except IntegrityError as exc:
        # A fine-tune registered on this model between the check and the delete.
        if violation(exc) is not Violation.FOREIGN_KEY:
            raise
        raise FailedPrecondition(
            f'model "{resource_name(account_id, model_id)}" became the base model of a '
            "fine-tune while it was being deleted, so it was kept"
        ) from None
    return keys


def _refuse_if_base_model(session: Session, model: Model) -> None:
    users = list(
        session.scalars(
            select(FineTune.id).where(FineTune.base_model_pk == model.pk).order_by(FineTune.id)
        )
    )
    if users:
        shown = ", ".join(users[:10]) + (f" and {len(users) - 10} more" if len(users) > 10 else "")
        raise FailedPrecondition(
            f'model "{resource_name(model.account_id, model.model_id)}" is the base model of '
            f"fine-tune(s) {shown}, which depend on it; it cannot be deleted while they exist"
        )


@dataclass(frozen=True)
class Page:
    models: list[Model]
    next_page_token: str
    total_size: int


def _parse_filter(query: Select[Model], text: str) -> Select[Model]:
    if not text.strip():
        return query
    for term in re.split(r"\s+AND\s+", text.strip()):
        match = _FILTER_TERM.match(term)
        if match is None or match.group(1) not in FILTER_FIELDS:
            raise InvalidArgument(
                f"unsupported filter {term.strip()!r}: weightport supports "
                '`field = "value"` and `field != "value"` joined by AND, on '
                + ", ".join(sorted(FILTER_FIELDS))
            )
        field, op, value = match.groups()
        if "\x00" in value:
            raise InvalidArgument("filter values must not contain NUL characters")
        column = FILTER_FIELDS[field]
        if field == "name" and value.startswith("accounts/"):
            value = value.rsplit("/", 1)[-1]
        query = query.where(column == value if op == "=" else column != value)
    return query


def _parse_order(query: Select[Model], text: str) -> Select[Model]:
    terms = [t.strip() for t in text.split(",") if t.strip()] or ["name"]
    for term in terms:
        parts = term.split()
        if not 1 <= len(parts) <= 2 or parts[0] not in ORDER_FIELDS:
            raise InvalidArgument(
                f"unsupported orderBy {term!r}; fields: {', '.join(sorted(ORDER_FIELDS))}"
            )
        direction = parts[1].lower() if len(parts) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise InvalidArgument(f"orderBy direction must be asc or desc, not {parts[1]!r}")
        column = ORDER_FIELDS[parts[0]]
        query = query.order_by(column.desc() if direction == "desc" else column.asc())
    return query.order_by(Model.pk)


def list_models(
    session: Session,
    account_id: str,
    *,
    page_size: int = 50,
    page_token: str = "",
    order_by: str = "",
    filter_text: str = "",
    search: str = "",
) -> Page:
    """One page of an account's models. Page tokens are opaque offsets (see
    :func:`page_token_at`). ``search`` keeps models whose id or display name contains it,
    ignoring case."""
    if page_size < 0:
        raise InvalidArgument("pageSize must not be negative")
    page_size = min(page_size or 50, 200)
    try:
        offset = int(page_token) if page_token else 0
    except ValueError:
        raise InvalidArgument(f"invalid pageToken {page_token!r}") from None
    # Tokens are offsets this server handed out: anything past a 63-bit integer (which the
    # database could not even bind) is not one.
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidArgument(f"invalid pageToken {page_token!r}")
    base = _parse_filter(select(Model).where(Model.account_id == account_id), filter_text)
    if search:
        base = base.where(
            or_(
                Model.model_id.icontains(search, autoescape=True),
                Model.display_name.icontains(search, autoescape=True),
            )
        )
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    models = list(session.scalars(_parse_order(base, order_by).offset(offset).limit(page_size)))
    next_offset = offset + len(models)
    return Page(models, str(next_offset) if next_offset < total else "", total)


def page_token_at(offset: int) -> str:
    """The page token of the page that starts at ``offset`` (for numbered pages)."""
    return str(offset) if offset > 0 else ""
