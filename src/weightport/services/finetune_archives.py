"""Which archive a Together download asks for, and its plan: a pure function of the catalog.

``checkpoint`` / ``checkpoint_step`` take the values the Together clients send: ``merged`` and
``adapter`` for LoRA jobs, ``model_output_path`` for the final output (a LoRA job's is its
merged model), ``default``/``model`` leniently; a step overrides and must exist, except that
``checkpoint_step=0`` on a job without a checkpoint at step 0 means the final checkpoint, as
Together's clients document ("0 or omitted downloads the final model").
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from weightport.archive import ArchiveMember, ArchivePlan, stored_archive
from weightport.catalog import finetunes
from weightport.catalog.schema import Checkpoint, FineTune
from weightport.errors import FailedPrecondition, InvalidArgument
from weightport.merge.view import merged_files
from weightport.storage.base import BlobSource, BlobStore

MERGED, ADAPTER, MODEL = "merged", "adapter", "model"
CHECKPOINT_VALUES = ("merged", "adapter", "model_output_path", "default", "model")


@dataclass(frozen=True)
class Selection:
    """The artifact to archive: ``merged``, ``adapter`` or ``model``, at one checkpoint."""

    artifact: str
    checkpoint: Checkpoint
    top: str


def _parse_step(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        step = int(raw)
    except ValueError:
        raise InvalidArgument(
            f"checkpoint_step must be an integer, not {raw!r}", param="checkpoint_step"
        ) from None
    if step < 0:
        raise InvalidArgument("checkpoint_step must not be negative", param="checkpoint_step")
    return step


def _top(job: FineTune, artifact: str, checkpoint: Checkpoint) -> str:
    name = job.model_output_name.rsplit("/", 1)[-1]
    if artifact == ADAPTER:
        name += "-adapter"
    if checkpoint.kind != finetunes.FINAL:
        name += f"-step-{checkpoint.step}"
    return name


def select_artifact(job: FineTune, checkpoint: str | None, step_raw: str | None) -> Selection:
    """Resolve the download parameters against a job, with a clear 400 for every misuse."""
    if checkpoint is not None and checkpoint not in CHECKPOINT_VALUES:
        raise InvalidArgument(
            f"checkpoint must be one of merged, adapter, model_output_path, not {checkpoint!r}",
            param="checkpoint",
        )
    step = _parse_step(step_raw)
    final = next((c for c in job.checkpoints if c.kind == finetunes.FINAL), None)
    chosen = next((c for c in job.checkpoints if c.step == step), None)
    if step == 0 and chosen is None:
        step = None  # Together: "0 or omitted downloads the final model", unless step 0 exists
    if step is not None:
        if chosen is None:
            steps = ", ".join(str(c.step) for c in job.checkpoints) or "none"
            raise InvalidArgument(
                f"fine-tune {job.id} has no checkpoint at step {step}; available steps: {steps}",
                param="checkpoint_step",
            )
    elif final is None:
        raise FailedPrecondition(
            f"fine-tune {job.id} has no final checkpoint yet (status {job.status}); "
            "download an intermediate step with checkpoint_step"
        )
    else:
        chosen = final
    return _artifact_at(job, chosen, checkpoint, by_step=step is not None)


def _artifact_at(
    job: FineTune, chosen: Checkpoint, checkpoint: str | None, *, by_step: bool
) -> Selection:
    """Which artifact of the chosen checkpoint a ``checkpoint=`` value names."""
    artifacts = {f.artifact for f in chosen.files}
    lora = job.training_type == finetunes.LORA
    if lora:
        if checkpoint == "adapter" or (checkpoint is None and by_step):
            artifact = ADAPTER
        elif finetunes.ADAPTER in artifacts:
            artifact = MERGED
        else:
            artifact = MODEL
    else:
        if checkpoint in ("merged", "adapter"):
            raise InvalidArgument(
                f"fine-tune {job.id} is a Full fine-tune: it has no {checkpoint} checkpoint; "
                "use checkpoint=model_output_path",
                param="checkpoint",
            )
        artifact = MODEL
    wanted = finetunes.MODEL if artifact == MODEL else finetunes.ADAPTER
    if wanted not in artifacts:
        raise InvalidArgument(
            f"the checkpoint at step {chosen.step} of {job.id} holds no {wanted} files",
            param="checkpoint",
        )
    return Selection(artifact, chosen, _top(job, artifact, chosen))


def selections_at(job: FineTune, checkpoint: Checkpoint) -> list[Selection]:
    """Every distinct archive the download serves for this checkpoint, asked for by its step
    with each ``checkpoint=`` value: what a page lists for it. Unlike :func:`select_artifact`
    it does not scan the job's other checkpoints (a page asks for all of them)."""
    found: dict[str, Selection] = {}
    for value in ("merged", "adapter", "model_output_path"):
        try:
            selection = _artifact_at(job, checkpoint, value, by_step=True)
        except InvalidArgument:
            continue  # this checkpoint holds no such files, or the job type has no such thing
        found.setdefault(selection.artifact, selection)
    return list(found.values())


def _sources(
    store: BlobStore, checkpoint_files: Mapping[str, tuple[str, int]]
) -> dict[str, BlobSource]:
    return {path: BlobSource(store, sha, size) for path, (sha, size) in checkpoint_files.items()}


#: Names the merge arithmetic: bump it whenever the same base and adapter would give other
#: merged bytes, so every identity and commit derived from it changes with them.
MERGE_RECIPE = "merged/1"


def merged_identity(
    path: str, base: Mapping[str, BlobSource], adapter: Mapping[str, BlobSource]
) -> str:
    """sha256 hex naming the bytes of merged file ``path`` (a pure function of its inputs)."""
    text = "\0".join(
        [MERGE_RECIPE, path]
        + [f"{p}={s.key}" for p, s in sorted(base.items())]
        + [f"{p}={s.key}" for p, s in sorted(adapter.items())]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def build_plan(store: BlobStore, job: FineTune, selection: Selection) -> ArchivePlan:
    """The archive plan for a selection (reads safetensors headers for merged views)."""
    files = selection.checkpoint.files
    if selection.artifact == MERGED:
        base = _sources(
            store, {f.path: (f.sha256, f.declared_size) for f in job.base_model.files if f.sha256}
        )
        adapter = _sources(
            store, {f.path: (f.sha256, f.size) for f in files if f.artifact == finetunes.ADAPTER}
        )
        members = []
        for path, source in merged_files(base, adapter).items():
            identity = (
                source.key
                if isinstance(source, BlobSource)
                else merged_identity(path, base, adapter)
            )
            members.append(ArchiveMember(path, source, identity))
        return ArchivePlan.build(selection.top, members)
    kind = finetunes.ADAPTER if selection.artifact == ADAPTER else finetunes.MODEL
    return ArchivePlan.build(
        selection.top,
        [
            ArchiveMember(f.path, BlobSource(store, f.sha256, f.size), f.sha256)
            for f in files
            if f.artifact == kind
        ],
    )


@dataclass(frozen=True)
class PlanSummary:
    """What a page shows of an archive without holding its plan: identity and stored size."""

    digest: str
    stored_size: int


class PlanCache:
    """Recent plans by (checkpoint, artifact): the probe, the GET and resumes reuse one plan
    (and a merged view's warm tensor cache). Summaries of many more plans are kept too: a
    fine-tune page lists every archive of every step, and a merged plan costs ~10-20 ms of
    header parsing (a 291-tensor base, a 448-tensor adapter) where a summary costs nothing.
    :meth:`drop_idle` lets the memory of plans nobody asked for lately go (merged views
    cache a few blocks of merged weights each); summaries are small and stay.

    Keys never go stale: a checkpoint's files and its base model's are immutable.
    """

    def __init__(
        self,
        capacity: int = 32,
        summaries: int = 16384,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._plans: OrderedDict[tuple[int, str], tuple[ArchivePlan, float]] = OrderedDict()
        self._summaries: OrderedDict[tuple[int, str], PlanSummary] = OrderedDict()
        self._capacity = capacity
        self._summary_capacity = summaries
        self._clock = clock
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._plans)

    def get(self, store: BlobStore, job: FineTune, selection: Selection) -> ArchivePlan:
        key = (selection.checkpoint.pk, selection.artifact)
        with self._lock:
            hit = self._plans.get(key)
            if hit is not None:
                self._plans[key] = (hit[0], self._clock())
                self._plans.move_to_end(key)
                return hit[0]
        plan = build_plan(store, job, selection)
        summary = PlanSummary(plan.digest, stored_archive(plan).size)
        with self._lock:
            self._plans[key] = (plan, self._clock())
            while len(self._plans) > self._capacity:
                self._plans.popitem(last=False)
            self._remember(key, summary)
        return plan

    def summary(self, store: BlobStore, job: FineTune, selection: Selection) -> PlanSummary:
        """The digest and stored size of a selection's archive (planned once, then cached)."""
        key = (selection.checkpoint.pk, selection.artifact)
        with self._lock:
            found = self._summaries.get(key)
            if found is not None:
                self._summaries.move_to_end(key)
                return found
        plan = self.get(store, job, selection)  # remembers the summary
        return PlanSummary(plan.digest, stored_archive(plan).size)

    def _remember(self, key: tuple[int, str], summary: PlanSummary) -> None:
        self._summaries[key] = summary
        self._summaries.move_to_end(key)
        while len(self._summaries) > self._summary_capacity:
            self._summaries.popitem(last=False)

    def drop_idle(self, idle_s: float) -> int:
        """Forget plans not asked for in ``idle_s`` seconds; returns how many. (Downloads
        still running keep their own reference: they are not disturbed.)"""
        cutoff = self._clock() - idle_s
        with self._lock:
            stale = [key for key, (_, used) in self._plans.items() if used <= cutoff]
            for key in stale:
                del self._plans[key]
        return len(stale)


def prebuild_selections(job: FineTune) -> list[Selection]:
    """What ``archive_prebuild`` compresses: each step's own artifact, and for the final LoRA
    checkpoint both the adapter and the merged model."""
    chosen: list[Selection] = []
    for checkpoint in job.checkpoints:
        step = str(checkpoint.step)
        if job.training_type == finetunes.LORA:
            chosen.append(select_artifact(job, "adapter", step))
            if checkpoint.kind == finetunes.FINAL:
                chosen.append(select_artifact(job, "merged", step))
        else:
            chosen.append(select_artifact(job, "model_output_path", step))
    return chosen
