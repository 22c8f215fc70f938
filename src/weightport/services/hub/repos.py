"""Which catalog resource a Hub repository id names, and its branches.

``A/M`` is the model ``accounts/A/models/M``; failing that, the fine-tune of account ``A``
whose id is ``M`` (``ft-…``) or whose output name is ``M`` or ``<owner>/M`` (the newest such
job, if several share a name). A model wins over a fine-tune of the same name. Only the
caller's own account is searched: another account's repository is answered exactly like a
missing one.

Branches: a model has ``main``. A fine-tune has ``step-N`` for each checkpoint — the merged
model for a LoRA checkpoint, the full weights otherwise — and ``adapter-step-N`` for each
LoRA checkpoint; ``main`` and ``adapter`` are the final checkpoint's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from weightport.catalog import finetunes, registry
from weightport.catalog.schema import Checkpoint, CheckpointFile, FineTune, Model, ModelFile
from weightport.errors import RepoNotFound
from weightport.services.hub.revisions import (
    ADAPTER,
    MAIN,
    Revision,
    RevisionKind,
    StoredFile,
    find_revision,
    make_revision,
    step_name,
)


@dataclass(frozen=True)
class Repo:
    """A repository as the Hub surface shows it: plain values, safe outside a session."""

    repo_id: str
    account: str
    created_at: datetime
    updated_at: datetime
    revisions: tuple[Revision, ...]  # branches: main first, then by step

    @property
    def name(self) -> str:
        return self.repo_id.split("/", 1)[1]

    def revision(self, wanted: str) -> Revision:
        """The branch or commit ``wanted``; :class:`RevisionNotFound` otherwise."""
        return find_revision(self.revisions, wanted, repo_id=self.repo_id)


def not_found(repo_id: str) -> RepoNotFound:
    # One message for missing and foreign repositories alike: nothing to probe with.
    return RepoNotFound(f"Repository {repo_id} not found")


def find_repo(session: Session, account: str, repo_id: str) -> Repo:
    """The repository ``repo_id`` as ``account`` sees it; :class:`RepoNotFound` otherwise.

    Reads only the columns it needs (a few narrow queries, no ORM object graphs): every
    HEAD of every file goes through here.
    """
    namespace, _, name = repo_id.partition("/")
    if namespace != account or not name or "/" in name:
        raise not_found(repo_id)
    model = session.execute(
        select(Model.pk, Model.state, Model.created_at, Model.updated_at).where(
            Model.account_id == account, Model.model_id == name
        )
    ).first()
    if model is not None:
        if model.state != registry.READY:
            raise RepoNotFound(f"Repository {repo_id} is still uploading (model not READY)")
        main = make_revision(MAIN, RevisionKind.FILES, _model_files(session, model.pk))
        return Repo(repo_id, account, model.created_at, model.updated_at, (main,))
    job = _find_fine_tune(session, account, name)
    if job is None:
        raise not_found(repo_id)
    return _fine_tune_repo(session, repo_id, job)


@dataclass(frozen=True)
class _Job:
    """The columns of a fine-tune the Hub view needs."""

    id: str
    base_model_pk: int
    training_type: str
    created_at: datetime
    updated_at: datetime


def _find_fine_tune(session: Session, account: str, name: str) -> _Job | None:
    if finetunes.FT_ID.match(name):
        chosen = FineTune.id == name
    else:
        chosen = or_(
            FineTune.model_output_name == name,
            FineTune.model_output_name.endswith("/" + name, autoescape=True),
        )
    columns = (
        FineTune.id,
        FineTune.base_model_pk,
        FineTune.training_type,
        FineTune.created_at,
        FineTune.updated_at,
    )
    query = select(*columns).where(FineTune.account_id == account, chosen)
    newest = query.order_by(FineTune.created_at.desc(), FineTune.id).limit(1)
    row = session.execute(newest).first()
    return None if row is None else _Job(*row)


def _model_files(session: Session, model_pk: int) -> list[StoredFile]:
    rows = session.execute(
        select(ModelFile.path, ModelFile.declared_size, ModelFile.sha256).where(
            ModelFile.model_pk == model_pk, ModelFile.sha256.is_not(None)
        )
    )
    return [StoredFile(path, size, sha256) for path, size, sha256 in rows if sha256]


def _checkpoints(
    session: Session, ft_id: str
) -> dict[tuple[int, str], dict[str, list[StoredFile]]]:
    """(step, kind) -> artifact -> files, by step."""
    rows = session.execute(
        select(
            Checkpoint.step,
            Checkpoint.kind,
            CheckpointFile.artifact,
            CheckpointFile.path,
            CheckpointFile.size,
            CheckpointFile.sha256,
        )
        .join(CheckpointFile, CheckpointFile.checkpoint_pk == Checkpoint.pk)
        .where(Checkpoint.fine_tune_id == ft_id)
        .order_by(Checkpoint.step, CheckpointFile.path)
    )
    found: dict[tuple[int, str], dict[str, list[StoredFile]]] = {}
    for step, kind, artifact, path, size, sha256 in rows:
        found.setdefault((step, kind), {}).setdefault(artifact, []).append(
            StoredFile(path, size, sha256)
        )
    return found


def _fine_tune_repo(session: Session, repo_id: str, job: _Job) -> Repo:
    base_model = session.execute(
        select(Model.account_id, Model.model_id).where(Model.pk == job.base_model_pk)
    ).one()
    base = _model_files(session, job.base_model_pk)
    base_repo = f"{base_model.account_id}/{base_model.model_id}"
    lora = job.training_type == finetunes.LORA
    steps: list[Revision] = []
    adapters: list[Revision] = []
    final_step: Revision | None = None
    final_adapter: Revision | None = None
    for (step, kind), files in _checkpoints(session, job.id).items():
        adapter = files.get(finetunes.ADAPTER, []) if lora else []
        weights = files.get(finetunes.MODEL, [])
        if adapter:
            # As the Together download does: a LoRA checkpoint's model is base + adapter.
            merged = make_revision(
                step_name(step), RevisionKind.MERGED, adapter, base=base, step=step
            )
            steps.append(merged)
            alone = make_revision(
                step_name(step, adapter=True),
                RevisionKind.ADAPTER,
                adapter,
                base_repo=base_repo,
                step=step,
            )
            adapters.append(alone)
        elif weights:
            merged = make_revision(step_name(step), RevisionKind.FILES, weights, step=step)
            steps.append(merged)
        else:
            continue
        if kind == finetunes.FINAL:
            final_step, final_adapter = steps[-1], adapters[-1] if adapter else None
    named: list[Revision] = []
    if final_step is not None:
        named.append(replace(final_step, name=MAIN))
    if final_adapter is not None:
        named.append(replace(final_adapter, name=ADAPTER))
    revisions = (*named, *steps, *adapters)
    account = repo_id.split("/", 1)[0]
    return Repo(repo_id, account, job.created_at, job.updated_at, revisions)
