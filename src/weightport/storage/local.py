"""The local blob store: content-addressed files under one root directory.

Layout::

    root/blobs/<aa>/<bb>/<sha256 hex>   committed blobs (mode 0644), aa/bb = first hex pairs
    root/tmp/upload-<random>.part       uploads in progress (mode 0600), same filesystem

An upload writes a unique temp file while hashing it, then fsyncs it and ``os.replace``\\ s
it under its sha256 (and fsyncs the directory), so a blob is either absent or complete
under its key — never partial, even if the process dies mid-write. Identical content is
stored once. Stale temp files left by a crash are removed by :meth:`LocalStore.cleanup_temp`.

Reads go through a small thread-safe cache of open file descriptors: opening and closing a
file costs about as much as reading 128 KiB from the page cache, and the archive view reads
many small ranges of the same blobs.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from weightport.errors import InsufficientStorage, InvalidArgument, StorageError
from weightport.storage.base import BlobInfo
from weightport.storage.checked_upload import CheckedUpload
from weightport.storage.files import read_exactly

_KEY_RE = re.compile(r"[0-9a-f]{64}")
_TEMP_PREFIX = "upload-"
_TEMP_SUFFIX = ".part"


def check_key(key: str) -> str:
    """Return ``key`` if it is a blob address (64 lowercase hex digits), else raise."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise InvalidArgument(f"not a blob key (64 lowercase hex digits): {key!r}")
    return key


def _write_failure(what: str, exc: OSError) -> StorageError:
    """The error for a failed write: :class:`InsufficientStorage` when the disk is full."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"{what}: the blob store's disk is full; nothing was stored")
    return StorageError(f"{what}: {exc.strerror}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs_durable(path: Path, stop: Path) -> None:
    """Create ``path`` (below ``stop``), fsyncing each parent that gained an entry."""
    if path == stop or path.is_dir():
        return
    _make_dirs_durable(path.parent, stop)
    try:
        path.mkdir()
    except FileExistsError:
        return
    _fsync_dir(path.parent)


class _OpenFile:
    __slots__ = ("evicted", "fd", "refs")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 0
        self.evicted = False


class _FdCache:
    """A bounded LRU of read-only descriptors, reference-counted so that an evicted
    descriptor is closed only after the last reader lets go (a descriptor number closed
    under a reader could be reused for another file and serve the wrong bytes)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._open: OrderedDict[str, _OpenFile] = OrderedDict()

    def acquire(self, key: str, locate: Callable[[str], Path]) -> _OpenFile:
        """The open descriptor of ``key``, opening ``locate(key)`` only when none is cached:
        a cached key was located (and so validated) when it was opened, and building the
        path on every read cost ~5% of a merged read's CPU."""
        with self._lock:
            entry = self._open.get(key)
            if entry is not None:
                self._open.move_to_end(key)
                entry.refs += 1
                return entry
        # Open outside the lock; a racing opener for the same key just closes its copy.
        fd = os.open(locate(key), os.O_RDONLY | os.O_CLOEXEC)
        with self._lock:
            entry = self._open.get(key)
            if entry is None:
                entry = _OpenFile(fd)
                self._open[key] = entry
                fd = -1
            # Count this reader before trimming, so the entry it holds is never closed.
            entry.refs += 1
            while len(self._open) > self._capacity:
                _, old = self._open.popitem(last=False)
                self._retire(old)
        if fd != -1:
            os.close(fd)
        return entry

    def release(self, entry: _OpenFile) -> None:
        with self._lock:
            entry.refs -= 1
            if entry.evicted and entry.refs == 0:
                os.close(entry.fd)

    def evict(self, key: str) -> None:
        with self._lock:
            entry = self._open.pop(key, None)
            if entry is not None:
                self._retire(entry)

    def close_all(self) -> None:
        with self._lock:
            while self._open:
                _, entry = self._open.popitem()
                self._retire(entry)

    def _retire(self, entry: _OpenFile) -> None:
        entry.evicted = True
        if entry.refs == 0:
            os.close(entry.fd)


class LocalUpload(CheckedUpload):
    """A blob being written to a temp file; see :meth:`LocalStore.begin_upload`."""

    def __init__(
        self,
        store: LocalStore,
        *,
        expected_sha256: str | None,
        expected_size: int | None,
    ) -> None:
        super().__init__(expected_sha256=expected_sha256, expected_size=expected_size)
        self._store = store
        self.temp_path = store.root / "tmp" / f"{_TEMP_PREFIX}{secrets.token_hex(12)}{_TEMP_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            self._fd = os.open(self.temp_path, flags, 0o600)
        except OSError as exc:
            raise _write_failure("starting upload failed", exc) from exc

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``. Raises :class:`InvalidArgument` (and aborts) past the expected size."""
        view = self._accept(data)
        pos = 0
        try:
            while pos < len(view):
                pos += os.write(self._fd, view[pos:])
        except OSError as exc:
            self.abort()
            raise _write_failure("writing upload failed", exc) from exc
        self._written += len(view)

    def commit(self) -> BlobInfo:
        """Make the blob visible under its sha256 and return it; calling again returns it again.

        Raises :class:`InvalidArgument` (and aborts) when the content is not the expected
        size or sha256: the sender sent other bytes than it declared.
        """
        if self._result is not None:
            return self._result
        key = self._verified_key()
        try:
            os.fsync(self._fd)
            os.fchmod(self._fd, 0o644)
        except OSError as exc:
            self.abort()
            raise _write_failure("flushing upload failed", exc) from exc
        os.close(self._fd)
        self._fd = -1
        try:
            self._store._install(self.temp_path, key, self._written)
        except OSError as exc:
            self.abort()
            raise _write_failure(f"storing blob {key} failed", exc) from exc
        self._result = BlobInfo(key=key, size=self._written)
        return self._result

    def abort(self) -> None:
        """Drop the temp file. Safe to call twice; does nothing after a commit."""
        if self._result is not None or self._aborted:
            return
        self._aborted = True
        if self._fd != -1:
            os.close(self._fd)
            self._fd = -1
        self.temp_path.unlink(missing_ok=True)


class LocalStore:
    """Content-addressed blobs under ``root``; implements ``BlobStore`` and ``LocalPaths``.

    ``open_files`` bounds the descriptors kept open for reads (0: open per read).
    """

    def __init__(self, root: Path, *, open_files: int = 64) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        if open_files < 0:
            raise InvalidArgument(f"open_files must be >= 0, not {open_files}")
        self._fds = _FdCache(open_files)

    def local_path(self, key: str) -> Path:
        """Where the blob ``key`` lives (whether or not it exists); the key is validated."""
        check_key(key)
        return self._blobs / key[:2] / key[2:4] / key

    def head(self, key: str) -> BlobInfo | None:
        """The blob's size, or ``None`` if there is no such blob."""
        try:
            st = os.stat(self.local_path(key))
        except FileNotFoundError:
            return None
        return BlobInfo(key=key, size=st.st_size)

    def readinto(self, key: str, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the blob's bytes from ``offset``.

        Raises :class:`StorageError` if the blob is missing or shorter than
        ``offset + len(buf)`` (the catalog said those bytes exist: an internal error).
        """
        try:
            entry = self._fds.acquire(key, self.local_path)
        except FileNotFoundError:
            raise StorageError(f"blob {key} is missing from the local store") from None
        try:
            read_exactly(entry.fd, offset, buf, name=f"blob {key}")
        finally:
            self._fds.release(entry)

    def begin_upload(
        self, *, expected_sha256: str | None = None, expected_size: int | None = None
    ) -> LocalUpload:
        """Start writing a blob. Use as a context manager; call ``commit()`` to keep it.

        ``expected_sha256`` / ``expected_size`` make ``commit`` (and an oversize ``write``)
        raise :class:`InvalidArgument` when the content differs from what was declared.
        """
        if expected_sha256 is not None:
            check_key(expected_sha256)
        if expected_size is not None and expected_size < 0:
            raise InvalidArgument(f"negative expected size {expected_size}")
        return LocalUpload(self, expected_sha256=expected_sha256, expected_size=expected_size)

    def delete(self, key: str) -> None:
        """Remove a blob; a missing blob is not an error."""
        self.local_path(key).unlink(missing_ok=True)
        # After the unlink, so a reader racing the delete cannot re-cache the old file.
        self._fds.evict(key)

    def list(self) -> Iterator[BlobInfo]:
        """Every committed blob (files elsewhere under ``blobs/`` are ignored)."""
        for first in _scan(self._blobs):
            if not first.is_dir(follow_symlinks=False):
                continue
            for second in _scan(Path(first.path)):
                if not second.is_dir(follow_symlinks=False):
                    continue
                for entry in _scan(Path(second.path)):
                    key = entry.name
                    if not (
                        _KEY_RE.fullmatch(key)
                        and key[:2] == first.name
                        and key[2:4] == second.name
                        and entry.is_file(follow_symlinks=False)
                    ):
                        continue
                    try:
                        size = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # deleted while listing
                    yield BlobInfo(key=key, size=size)

    def cleanup_temp(self, older_than_s: float, *, now: float | None = None) -> int:
        """Remove temp files not modified for ``older_than_s`` seconds; return how many.

        Meant for server start: uploads interrupted by a crash leave their temp files.
        A live upload touches its file on every write, so only stalled ones qualify.
        """
        cutoff = (time.time() if now is None else now) - older_than_s
        removed = 0
        with os.scandir(self._tmp) as entries:
            for entry in entries:
                if not (entry.name.startswith(_TEMP_PREFIX) and entry.name.endswith(_TEMP_SUFFIX)):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    def close(self) -> None:
        """Close cached file descriptors (reads reopen them as needed)."""
        self._fds.close_all()

    def _install(self, temp: Path, key: str, size: int) -> None:
        """Move a finished, fsynced temp file under ``key`` unless an equal blob is there."""
        dest = self.local_path(key)
        try:
            if os.stat(dest).st_size == size:
                temp.unlink()  # identical content already stored: keep one copy
                return
        except FileNotFoundError:
            pass
        # Missing, or damaged (wrong size): a fresh copy replaces it atomically.
        _make_dirs_durable(dest.parent, self._blobs)
        os.replace(temp, dest)
        _fsync_dir(dest.parent)
        self._fds.evict(key)


def _scan(path: Path) -> list[os.DirEntry[str]]:
    """The entries of a directory, or none if it vanished (a concurrent delete)."""
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return []
        raise
