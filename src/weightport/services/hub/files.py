"""The files of a revision: what each is, where its bytes come from, and its ETag.

Every ETag is lowercase hex, so it is a safe file name on every OS (clients name cache blobs
after it), and known without reading the file:

- stored files: their sha256 — what clients compare a ``local_dir`` file against;
- merged shards: 40 hex naming the merge's inputs and recipe. Deliberately not 64 hex, so no
  client mistakes it for the content's sha256 (which is not known until merged); shard sizes
  come from the base's header, so they are known too;
- an adapter's rewritten ``adapter_config.json``: the sha256 of the served bytes.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from weightport.errors import EntryNotFound
from weightport.merge.view import merged_files
from weightport.services.finetune_archives import merged_identity
from weightport.services.hub.revisions import Revision, RevisionKind, StoredFile
from weightport.storage.base import BlobSource, BlobStore, ByteSource, MemorySource

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class RepoFile:
    """One file of a revision.

    ``sha256`` is the content's sha256 when known without computing the bytes (it is not for
    merged shards); ``blob`` is the stored blob's key when the bytes are exactly that blob
    (so the server may send it zero-copy or hand out the store's URL).
    """

    path: str
    size: int
    etag: str
    sha256: str | None
    source: ByteSource
    blob: str | None = None


class RevisionFiles:
    """A revision's files (``sha`` is its commit), sorted by path."""

    __slots__ = ("_by_path", "files", "sha")

    def __init__(self, sha: str, files: Iterable[RepoFile]) -> None:
        self.sha = sha
        self.files = tuple(sorted(files, key=lambda f: f.path))
        self._by_path = {f.path: f for f in self.files}

    def __iter__(self) -> Iterator[RepoFile]:
        return iter(self.files)

    def get(self, path: str) -> RepoFile:
        """The file at ``path``; :class:`EntryNotFound` (naming the commit) otherwise."""
        found = self._by_path.get(path)
        if found is None:
            raise EntryNotFound(f"Entry not found: {path} at commit {self.sha}", commit=self.sha)
        return found


def _stored(store: BlobStore, file: StoredFile) -> RepoFile:
    source = BlobSource(store, file.sha256, file.size)
    return RepoFile(file.path, file.size, file.sha256, file.sha256, source, blob=file.sha256)


def _sources(store: BlobStore, files: Sequence[StoredFile]) -> dict[str, BlobSource]:
    return {f.path: BlobSource(store, f.sha256, f.size) for f in files}


def _merged(store: BlobStore, revision: Revision) -> list[RepoFile]:
    base = _sources(store, revision.base)
    adapter = _sources(store, revision.files)
    found: list[RepoFile] = []
    for path, source in merged_files(base, adapter).items():
        if isinstance(source, BlobSource):
            found.append(RepoFile(path, source.size, source.key, source.key, source, source.key))
        else:
            etag = merged_identity(path, base, adapter)[:40]
            found.append(RepoFile(path, source.size, etag, None, source))
    return found


def adapter_config_for(raw: bytes, base_repo: str) -> bytes | None:
    """``adapter_config.json`` naming ``base_repo`` as its base, or None if it already does.

    Loaders that build the base from the adapter alone (peft's ``AutoPeftModel``) then fetch
    it from this same endpoint, whatever path the trainer recorded.
    """
    config = json.loads(raw)
    if not isinstance(config, dict) or config.get("base_model_name_or_path") == base_repo:
        return None
    config["base_model_name_or_path"] = base_repo
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _adapter(store: BlobStore, revision: Revision) -> list[RepoFile]:
    found: list[RepoFile] = []
    for file in revision.files:
        if file.path == ADAPTER_CONFIG:
            raw = bytearray(file.size)
            store.readinto(file.sha256, 0, memoryview(raw))
            rewritten = adapter_config_for(bytes(raw), revision.base_repo)
            if rewritten is not None:
                sha = hashlib.sha256(rewritten).hexdigest()
                found.append(RepoFile(file.path, len(rewritten), sha, sha, MemorySource(rewritten)))
                continue
        found.append(_stored(store, file))
    return found


def revision_files(store: BlobStore, revision: Revision) -> RevisionFiles:
    """The files of ``revision`` (merged views read the base's safetensors headers)."""
    if revision.kind is RevisionKind.MERGED:
        found = _merged(store, revision)
    elif revision.kind is RevisionKind.ADAPTER:
        found = _adapter(store, revision)
    else:
        found = [_stored(store, f) for f in revision.files]
    return RevisionFiles(revision.sha, found)


class RevisionFilesCache:
    """Recent revisions' files by commit. A commit names its bytes forever, so an entry is
    never stale; keeping merged shards alive keeps their warm tensor caches for the HEAD,
    the GET and the resumes that follow each other."""

    def __init__(self, capacity: int = 32) -> None:
        self._entries: OrderedDict[str, RevisionFiles] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, store: BlobStore, revision: Revision) -> RevisionFiles:
        with self._lock:
            found = self._entries.get(revision.sha)
            if found is not None:
                self._entries.move_to_end(revision.sha)
                return found
        found = revision_files(store, revision)
        with self._lock:
            self._entries[revision.sha] = found
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return found
