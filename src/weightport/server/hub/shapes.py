"""The JSON bodies of the Hub API: repo info, tree entries, refs.

Dates are ``YYYY-MM-DDTHH:MM:SS.mmmZ``: the clients' parser accepts nothing else (an
``+00:00`` offset makes ``ModelInfo`` raise). Nothing here names Xet (no ``xetHash``):
a client that sees it switches to a protocol this server does not speak.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from weightport.services.hub.files import RevisionFiles
from weightport.services.hub.repos import Repo
from weightport.services.hub.revisions import Revision, RevisionKind
from weightport.services.hub.tree import TreeEntry, paths_info


def hub_date(moment: datetime) -> str:
    """``moment`` as the Hub writes dates (UTC, milliseconds, ``Z``)."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def tree_entry_json(entry: TreeEntry, last_commit: dict[str, str] | None = None) -> dict[str, Any]:
    """One entry of a tree listing or paths-info answer."""
    body: dict[str, Any] = {
        "type": "directory" if entry.is_dir else "file",
        "oid": entry.oid,
        "size": entry.size,
        "path": entry.path,
    }
    if entry.lfs_sha256 is not None:
        body["lfs"] = {
            "oid": entry.lfs_sha256,
            "size": entry.size,
            "pointerSize": entry.pointer_size,
        }
    if last_commit is not None:
        body["lastCommit"] = last_commit
    return body


def last_commit_json(repo: Repo, revision: Revision) -> dict[str, str]:
    """The ``lastCommit`` of expanded tree entries: every file's is the revision's commit."""
    return {"id": revision.sha, "title": f"{revision.name}", "date": hub_date(repo.updated_at)}


def _tags(revision: Revision) -> list[str]:
    if revision.kind is RevisionKind.ADAPTER:
        return ["peft", "lora", "safetensors"]
    return ["transformers", "safetensors"]


def model_info_json(
    repo: Repo, revision: Revision, files: RevisionFiles, *, blobs: bool
) -> dict[str, Any]:
    """``GET /api/models/{repo}[/revision/{rev}]``: what ``ModelInfo`` reads.

    ``sha`` is the revision's commit; ``siblings`` list every file (with sizes, blob ids and
    LFS details when ``blobs``).
    """
    siblings: list[dict[str, Any]] = []
    entries = {e.path: e for e in paths_info(files, (f.path for f in files))} if blobs else {}
    for file in files:
        sibling: dict[str, Any] = {"rfilename": file.path}
        if blobs:
            entry = entries[file.path]
            sibling.update(size=file.size, blobId=entry.oid)
            if entry.lfs_sha256 is not None:
                sibling["lfs"] = {
                    "sha256": entry.lfs_sha256,
                    "size": entry.size,
                    "pointerSize": entry.pointer_size,
                }
        siblings.append(sibling)
    return {
        "_id": repo.repo_id,
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.account,
        "sha": revision.sha,
        "lastModified": hub_date(repo.updated_at),
        "createdAt": hub_date(repo.created_at),
        "private": True,
        "gated": False,
        "disabled": False,
        "tags": _tags(revision),
        "downloads": 0,
        "likes": 0,
        "library_name": "peft" if revision.kind is RevisionKind.ADAPTER else "transformers",
        "siblings": siblings,
        "weightport": {
            "revision": revision.name,
            "kind": revision.kind.value,
            "step": revision.step,
        },
    }


def refs_json(repo: Repo) -> dict[str, Any]:
    """``GET /api/models/{repo}/refs``: every branch and its commit."""
    branches = [
        {"name": r.name, "ref": f"refs/heads/{r.name}", "targetCommit": r.sha}
        for r in repo.revisions
    ]
    return {"branches": branches, "converts": [], "tags": [], "pullRequests": []}
