"""Positional reads of local files: the one read loop every local reader goes through.

``os.preadv`` reads at an offset without moving a shared file position, so one descriptor
serves many threads at once. It may return fewer bytes than asked, so a reader must loop;
this module holds that loop once, with one error contract for the local store, for
:class:`PathSource` and for :class:`FileSource`: a file that ends before the bytes asked
for, or a read that fails, is a :class:`~weightport.errors.StorageError` (whoever asked
was told those bytes exist), a negative offset an :class:`~weightport.errors.InvalidArgument`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from weightport.errors import InvalidArgument, StorageError


def read_exactly(fd: int, offset: int, buf: memoryview, *, name: str) -> None:
    """Fill ``buf`` with bytes ``[offset, offset + len(buf))`` of the open file ``fd``.

    ``name`` says what the file is in error messages ("blob 1a2b…", a path).
    """
    if offset < 0:
        raise InvalidArgument(f"negative read offset {offset}")
    view = buf.cast("B")
    pos = 0
    try:
        while pos < len(view):
            got = os.preadv(fd, [view[pos:]], offset + pos)
            if got == 0:
                raise StorageError(
                    f"{name} ends before byte {offset + len(view)} (read stopped at {offset + pos})"
                )
            pos += got
    except OSError as exc:
        raise StorageError(f"reading {name} failed: {exc.strerror}") from exc


@dataclass(frozen=True)
class PathSource:
    """A :class:`~weightport.storage.base.ByteSource` over a local file, opened per read
    (safe across threads; the benchmarks and tests read files on disk through it)."""

    path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def readinto(self, offset: int, buf: memoryview) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            read_exactly(fd, offset, buf, name=str(self.path))
        finally:
            os.close(fd)


@dataclass(frozen=True)
class FileSource:
    """A :class:`~weightport.storage.base.ByteSource` over an open file of known size (the
    server's fallback for event loops that cannot ``sendfile``)."""

    fobj: IO[bytes]
    size: int

    def readinto(self, offset: int, buf: memoryview) -> None:
        read_exactly(self.fobj.fileno(), offset, buf, name=f"stored file {self.fobj.name}")
