"""Branches of a Hub repository and their commits: content-derived, immutable, 40 hex.

Clients cache by commit (``snapshots/<sha>/``, a tree listing kept forever, ``refs/main``
pointing at a sha), and trust a cached file without asking again only when the revision is
exactly 40 lowercase hex. So a commit here is a digest of everything that decides the bytes
of the revision's files, and nothing else:

- a model, or a Full fine-tune's checkpoint: each file's path and sha256;
- a merged LoRA revision: the base model's files, the adapter's files and the merge recipe
  (the merged bytes are a pure function of those, see :mod:`weightport.merge.view`);
- an adapter revision: the adapter's files and the base repository id, which its served
  ``adapter_config.json`` names.

Equal content gives an equal commit (``main`` and the final ``step-N`` share one), and any
change of bytes gives a new one. Branch names are plain lowercase words and digits, so they
survive every client's quoting, are valid cache folder names on every OS, and can never be
mistaken for a commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from weightport.errors import RevisionNotFound
from weightport.services.finetune_archives import MERGE_RECIPE

MAIN = "main"
ADAPTER = "adapter"
#: Part of every commit: bump it when the same inputs would be served as other bytes.
COMMIT_FORMAT = "weightport-hub-commit/1"


class RevisionKind(Enum):
    """How a revision's files come to be."""

    FILES = "files"  # stored files as they are: a model, a Full fine-tune's checkpoint
    MERGED = "merged"  # base + LoRA adapter, merged on the fly
    ADAPTER = "adapter"  # a LoRA adapter, its adapter_config.json naming the base repo


@dataclass(frozen=True)
class StoredFile:
    """A stored file of a revision's inputs: its path, size and sha256 (the blob key)."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Revision:
    """One branch of a repository and the inputs its files are made from.

    ``files`` are the files served as they are (FILES), or the adapter's files (MERGED,
    ADAPTER); ``base`` the base model's files (MERGED); ``base_repo`` the repository id the
    adapter's config is made to name (ADAPTER); ``step`` the checkpoint's step, if any.
    """

    name: str
    kind: RevisionKind
    sha: str
    files: tuple[StoredFile, ...]
    base: tuple[StoredFile, ...] = ()
    base_repo: str = ""
    step: int | None = None


def step_name(step: int, *, adapter: bool = False) -> str:
    """The branch of the checkpoint at ``step``: ``step-N``, or ``adapter-step-N``."""
    return f"{'adapter-' if adapter else ''}step-{step}"


def _listing(files: Iterable[StoredFile]) -> list[list[str]]:
    return sorted([f.path, f.sha256] for f in files)


def commit_sha(
    kind: RevisionKind,
    files: Iterable[StoredFile],
    base: Iterable[StoredFile] = (),
    base_repo: str = "",
) -> str:
    """The commit of a revision made of these inputs (see the module docstring)."""
    parts: list[object] = [COMMIT_FORMAT, kind.value, _listing(files)]
    if kind is RevisionKind.MERGED:
        parts += [MERGE_RECIPE, _listing(base)]
    elif kind is RevisionKind.ADAPTER:
        parts.append(base_repo)
    # JSON: an unambiguous encoding, so no separator can be smuggled in through a path.
    text = json.dumps(parts, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:40]


def make_revision(
    name: str,
    kind: RevisionKind,
    files: Sequence[StoredFile],
    *,
    base: Sequence[StoredFile] = (),
    base_repo: str = "",
    step: int | None = None,
) -> Revision:
    """A revision with its commit computed from its inputs."""
    sha = commit_sha(kind, files, base, base_repo)
    return Revision(name, kind, sha, tuple(files), tuple(base), base_repo, step)


def find_revision(revisions: Sequence[Revision], wanted: str, *, repo_id: str) -> Revision:
    """The revision a client names: a branch (also as ``refs/heads/<branch>``) or a commit.

    Raises :class:`RevisionNotFound` listing the branches that exist.
    """
    name = wanted.removeprefix("refs/heads/")
    for revision in revisions:
        if revision.name == name or revision.sha == wanted:
            return revision
    known = ", ".join(r.name for r in revisions) or "none yet"
    hint = " (no final checkpoint yet)" if name == MAIN else ""
    raise RevisionNotFound(f"Invalid rev id: {wanted}{hint}; branches of {repo_id}: {known}")
