"""Folder listings of a revision, in the shape of a git tree with LFS files.

Every file whose sha256 is known is listed as an LFS file: ``lfs.oid`` is the sha256 (what
``hf cache verify`` checks such files against) and ``oid`` is the git id of its LFS pointer
text, as on the Hub. A merged shard's sha256 is not known before it is merged, so it is a
plain entry whose ``oid`` is its ETag. A folder's ``oid`` is a digest of its children.
Entries come sorted by path, a folder before what it holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from weightport.errors import EntryNotFound
from weightport.services.hub.files import RepoFile, RevisionFiles


@dataclass(frozen=True)
class TreeEntry:
    """A file or folder of a listing. ``lfs_sha256`` is set for LFS files only."""

    path: str
    is_dir: bool
    size: int
    oid: str
    lfs_sha256: str | None = None

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.lfs_sha256 or "", self.size))


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer text of a file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def git_blob_id(data: bytes) -> str:
    """git's object id of a blob with these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _file_entry(file: RepoFile) -> TreeEntry:
    if file.sha256 is None:
        return TreeEntry(file.path, False, file.size, file.etag)
    oid = git_blob_id(lfs_pointer(file.sha256, file.size))
    return TreeEntry(file.path, False, file.size, oid, file.sha256)


def _folders(files: RevisionFiles) -> dict[str, list[RepoFile]]:
    """Every folder ("" is the root) with the files anywhere below it."""
    below: dict[str, list[RepoFile]] = {"": list(files)}
    for file in files:
        parts = file.path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            below.setdefault("/".join(parts[:depth]), []).append(file)
    return below


def _folder_entry(path: str, contents: Iterable[RepoFile]) -> TreeEntry:
    digest = hashlib.sha1(usedforsecurity=False)
    for file in contents:
        digest.update(f"{file.path}\0{file.etag}\0".encode())
    return TreeEntry(path, True, 0, digest.hexdigest())


def _child(folder: str, path: str) -> str:
    """The name under ``folder`` of the immediate child that leads to ``path``."""
    rest = path[len(folder) + 1 :] if folder else path
    head = rest.split("/", 1)[0]
    return f"{folder}/{head}" if folder else head


def list_tree(files: RevisionFiles, folder: str, *, recursive: bool) -> list[TreeEntry]:
    """The entries under ``folder`` ("" for the root): all of them, or only its children.

    Raises :class:`EntryNotFound` if ``folder`` is not a folder of the revision.
    """
    folder = folder.strip("/")
    below = _folders(files)
    if folder not in below:
        raise EntryNotFound(
            f"Entry not found: {folder} is not a folder at commit {files.sha}", commit=files.sha
        )
    entries: dict[str, TreeEntry] = {}
    for file in below[folder]:
        name = _child(folder, file.path)
        if name == file.path:
            entries[name] = _file_entry(file)
            continue
        if name not in entries:
            entries[name] = _folder_entry(name, below[name])
        if recursive:
            sub = name
            while sub != file.path:
                sub = _child(sub, file.path)
                if sub not in entries:
                    entries[sub] = (
                        _file_entry(file) if sub == file.path else _folder_entry(sub, below[sub])
                    )
    return [entries[name] for name in sorted(entries, key=lambda p: p.split("/"))]


def paths_info(files: RevisionFiles, paths: Iterable[str]) -> list[TreeEntry]:
    """Entries for those of ``paths`` that exist (files or folders), in the order asked."""
    below = _folders(files)
    found: list[TreeEntry] = []
    seen: set[str] = set()
    for raw in paths:
        path = raw.strip("/")
        if path in seen or not path:
            continue
        seen.add(path)
        try:
            found.append(_file_entry(files.get(path)))
        except EntryNotFound:
            if path in below:
                found.append(_folder_entry(path, below[path]))
    return found
