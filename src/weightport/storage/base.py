"""Storage as small protocols (after obspec): one capability each.

Every store implements :class:`BlobStore` (head, read, write, delete, list). Stores that
can do more say so by also implementing a capability protocol, checked with ``isinstance``
against the protocol, never against a concrete store class:

- :class:`LocalPaths` — the blob is a file on this machine (the server may ``sendfile`` it);
- :class:`Presigner` — the store hands out its own time-limited URLs (S3 presigned GET/PUT),
  so file bytes need not pass through weightport at all;
- :class:`StagedUploads` — bytes that arrived by such a URL wait under a staging name until
  weightport has hashed them and made them a blob.

Blobs are immutable and addressed by the lowercase hex sha256 of their bytes. Byte ranges
inside the code are half-open ``[start, end)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob: its address (sha256 hex) and size in bytes."""

    key: str
    size: int


class BlobUpload(Protocol):
    """An upload in progress. Nothing is visible under any key until :meth:`commit`."""

    @property
    def written(self) -> int: ...

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def commit(self) -> BlobInfo:
        """Finish: verify, make the blob visible atomically under its sha256, return it."""
        ...

    def abort(self) -> None:
        """Drop everything written; safe to call more than once and after commit."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Abort unless committed."""
        ...


class BlobStore(Protocol):
    """The one protocol every blob store implements."""

    def head(self, key: str) -> BlobInfo | None:
        """The blob's info, or ``None`` if there is no such blob."""
        ...

    def readinto(self, key: str, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` entirely with the blob's bytes starting at ``offset``.

        Raises :class:`weightport.errors.StorageError` if the blob is missing or shorter, or
        the read fails; :class:`weightport.errors.InvalidArgument` for a negative offset.
        """
        ...

    def begin_upload(
        self, *, expected_sha256: str | None = None, expected_size: int | None = None
    ) -> BlobUpload:
        """Start writing a new blob; its key is known only when it is committed.

        With ``expected_sha256``/``expected_size`` the upload refuses other content with
        :class:`weightport.errors.InvalidArgument` (a sender's mistake, not a storage fault).
        """
        ...

    def delete(self, key: str) -> None:
        """Remove a blob; removing a missing blob is not an error."""
        ...

    def list(self) -> Iterator[BlobInfo]:
        """Every committed blob, in no particular order."""
        ...

    def cleanup_temp(self, older_than_s: float, *, now: float | None = None) -> int:
        """Remove uploads in progress (and staged objects) untouched for ``older_than_s``
        seconds: what crashes and abandoned uploads leave behind. Returns how many."""
        ...


@runtime_checkable
class LocalPaths(Protocol):
    """Capability: blobs are regular files on this machine."""

    def local_path(self, key: str) -> Path: ...


@runtime_checkable
class Presigner(Protocol):
    """Capability: the store signs its own URLs; clients then talk to the store directly.

    Such a URL cannot be revoked before it expires: callers keep lifetimes short.
    """

    def presign_get(self, key: str, *, expires_in: int, disposition: str | None = None) -> str:
        """A URL that GETs the blob ``key`` (with Range) for ``expires_in`` seconds; the
        answer carries ``Content-Disposition: disposition`` when given (a browser's file
        name)."""
        ...

    def presign_put(self, name: str, *, expires_in: int) -> str:
        """A URL that PUTs one object to the staging name ``name`` (see
        :class:`StagedUploads`), for ``expires_in`` seconds."""
        ...


@runtime_checkable
class StagedUploads(Protocol):
    """Capability: objects written straight to the store wait under a staging name.

    Nothing is a blob until :meth:`commit_staged` has read it back, hashed it and stored it
    under its sha256. Staging names are the caller's (``[A-Za-z0-9._/-]``, no ``..``).
    """

    def staged_size(self, name: str) -> int | None:
        """The size of what arrived under ``name``, or ``None`` if nothing did."""
        ...

    def commit_staged(self, name: str, *, expected_size: int) -> BlobInfo:
        """Hash the staged object by a streamed read and make it the blob of that sha256
        (kept once if already stored). The staged object stays until
        :meth:`discard_staged`, so work lost to a crash can be redone.

        Raises :class:`weightport.errors.InvalidArgument` (and removes it) if its size is
        not ``expected_size``; :class:`weightport.errors.StorageError` if it is missing.
        """
        ...

    def discard_staged(self, name: str) -> None:
        """Remove a staged object; a missing one is not an error."""
        ...


class ByteSource(Protocol):
    """Random-access bytes of a known size: a stored blob, or a computed view (a merged shard).

    The archive view reads its members through this, so it does not care where bytes live.
    """

    @property
    def size(self) -> int: ...

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` entirely with bytes ``[offset, offset + len(buf))``."""
        ...


@dataclass(frozen=True)
class BlobSource:
    """A :class:`ByteSource` over one blob of a store."""

    store: BlobStore
    key: str
    size: int

    def readinto(self, offset: int, buf: memoryview) -> None:
        self.store.readinto(self.key, offset, buf)


@dataclass(frozen=True)
class MemorySource:
    """A :class:`ByteSource` over bytes in memory (a small computed file; tests' generated
    files)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def readinto(self, offset: int, buf: memoryview) -> None:
        end = offset + len(buf)
        if offset < 0 or end > len(self.data):
            raise ValueError(f"read [{offset}, {end}) outside 0..{len(self.data)}")
        buf[:] = self.data[offset:end]
