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
from weightport.catalog.schema import Checkpoint, FineTune, Model
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
    """The repository ``repo_id`` as ``account`` sees it; :class:`RepoNotFound` otherwise."""
    namespace, _, name = repo_id.partition("/")
    if namespace != account or not name or "/" in name:
        raise not_found(repo_id)
    model = session.scalar(select(Model).where(Model.account_id == account, Model.model_id == name))
    if model is not None:
        if model.state != registry.READY:
            raise RepoNotFound(f"Repository {repo_id} is still uploading (model not READY)")
        return _model_repo(repo_id, model)
    job = _find_fine_tune(session, account, name)
    if job is None:
        raise not_found(repo_id)
    return _fine_tune_repo(repo_id, job)


def _find_fine_tune(session: Session, account: str, name: str) -> FineTune | None:
    if finetunes.FT_ID.match(name):
        job = session.get(FineTune, name)
        return job if job is not None and job.account_id == account else None
    named = or_(
        FineTune.model_output_name == name,
        FineTune.model_output_name.endswith("/" + name, autoescape=True),
    )
    query = select(FineTune).where(FineTune.account_id == account, named)
    return session.scalars(query.order_by(FineTune.created_at.desc(), FineTune.id).limit(1)).first()


def _model_files(model: Model) -> list[StoredFile]:
    return [StoredFile(f.path, f.declared_size, f.sha256) for f in model.files if f.sha256]


def _model_repo(repo_id: str, model: Model) -> Repo:
    main = make_revision(MAIN, RevisionKind.FILES, _model_files(model))
    return Repo(repo_id, model.account_id, model.created_at, model.updated_at, (main,))


def _checkpoint_files(checkpoint: Checkpoint, artifact: str) -> list[StoredFile]:
    return [
        StoredFile(f.path, f.size, f.sha256) for f in checkpoint.files if f.artifact == artifact
    ]


def _fine_tune_repo(repo_id: str, job: FineTune) -> Repo:
    base_model = job.base_model
    base = _model_files(base_model)
    base_repo = f"{base_model.account_id}/{base_model.model_id}"
    lora = job.training_type == finetunes.LORA
    steps: list[Revision] = []
    adapters: list[Revision] = []
    final_step: Revision | None = None
    final_adapter: Revision | None = None
    for checkpoint in job.checkpoints:
        step = checkpoint.step
        adapter = _checkpoint_files(checkpoint, finetunes.ADAPTER) if lora else []
        weights = _checkpoint_files(checkpoint, finetunes.MODEL)
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
        if checkpoint.kind == finetunes.FINAL:
            final_step, final_adapter = steps[-1], adapters[-1] if adapter else None
    named: list[Revision] = []
    if final_step is not None:
        named.append(replace(final_step, name=MAIN))
    if final_adapter is not None:
        named.append(replace(final_adapter, name=ADAPTER))
    revisions = (*named, *steps, *adapters)
    return Repo(repo_id, job.account_id, job.created_at, job.updated_at, revisions)
