"""What each checkpoint of a fine-tune can be downloaded as: the archives the Together API
serves for it, their sizes as that API would serve them now, and the matching commands.

Nothing is decided here that the API decides: :func:`selections_at` says which archives a
step offers (the API's own artifact choice), the plan cache summarises their plans (a merged
shard's size follows from the base's safetensors headers, so it is known before any
merging), and :func:`usable_build` says whether a cached compressed build or the stored
encoding is served.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from weightport.catalog import finetunes
from weightport.catalog.schema import ArchiveBuild, Checkpoint, FineTune
from weightport.server.console.commands import Command, finetune_commands
from weightport.server.context import ServerContext
from weightport.services.archive_builds import usable_build
from weightport.services.finetune_archives import ADAPTER, MERGED, MODEL, selections_at
from weightport.services.together_resources import archive_json

#: For each artifact: the API's ``checkpoint=`` value that asks for it, and its label.
ARTIFACTS = {
    MERGED: ("merged", "Merged model"),
    ADAPTER: ("adapter", "LoRA adapter"),
    MODEL: ("model_output_path", "Full model"),
}


@dataclass(frozen=True)
class ArchiveDownload:
    """One archive of one checkpoint."""

    artifact: str
    label: str
    #: The API's ``checkpoint=`` value for it.
    checkpoint: str
    filename: str
    #: Bytes a download gets now (the compressed build's size once one is served).
    size: int
    compressed: bool
    plan_digest: str
    #: Its compressed build (``archive_json``), if one was ever started.
    build: dict[str, Any] | None
    #: The console's own download link (the signed-in browser's session is the credential).
    link: str
    commands: list[Command]


@dataclass(frozen=True)
class CheckpointRow:
    checkpoint: Checkpoint
    #: ``ft-…`` for the final checkpoint, ``ft-…:STEP`` for the others (as the CLIs take it).
    ref: str
    downloads: list[ArchiveDownload]


def _ref(job: FineTune, checkpoint: Checkpoint) -> str:
    return job.id if checkpoint.kind == finetunes.FINAL else f"{job.id}:{checkpoint.step}"


def checkpoint_rows(
    ctx: ServerContext,
    base: str,
    job: FineTune,
    builds: Sequence[ArchiveBuild],
    checkpoints: Iterable[Checkpoint],
    *,
    with_commands: bool,
) -> list[CheckpointRow]:
    """The given checkpoints, newest step first, with their downloads and, if asked, their
    commands (blocking: a merged plan the cache lacks reads safetensors headers)."""
    by_digest = {b.plan_digest: b for b in builds}
    encoding = ctx.settings.archive_encoding
    rows = []
    for checkpoint in sorted(checkpoints, key=lambda c: c.step, reverse=True):
        ref = _ref(job, checkpoint)
        downloads = []
        for selection in selections_at(job, checkpoint):
            plan = ctx.plans.summary(ctx.store, job, selection)
            build = by_digest.get(plan.digest)
            served = usable_build(encoding, build)
            value, label = ARTIFACTS[selection.artifact]
            filename = f"{selection.top}.tar.zst"
            query = f"checkpoint={value}&step={checkpoint.step}"  # both plain tokens
            commands = (
                finetune_commands(
                    base,
                    ref,
                    value,
                    filename,
                    id_prefix=f"cmd-{checkpoint.step}-{selection.artifact}-",
                )
                if with_commands
                else []
            )
            downloads.append(
                ArchiveDownload(
                    artifact=selection.artifact,
                    label=label,
                    checkpoint=value,
                    filename=filename,
                    size=served.size if served and served.size else plan.stored_size,
                    compressed=served is not None,
                    plan_digest=plan.digest,
                    build=archive_json(build) if build is not None else None,
                    link=f"/console/fine-tunes/{job.id}/download?{query}",
                    commands=commands,
                )
            )
        rows.append(CheckpointRow(checkpoint, ref, downloads))
    return rows
