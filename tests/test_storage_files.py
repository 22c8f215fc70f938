"""The one positional read loop and its one error contract, through every local reader:
the local store (via ``BlobSource``), ``PathSource`` and ``FileSource``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.storage_conformance import PAYLOAD, put
from weightport.errors import InvalidArgument, StorageError
from weightport.storage.base import BlobSource, ByteSource
from weightport.storage.files import FileSource, PathSource, read_exactly
from weightport.storage.local import LocalStore

KINDS = ["store", "path", "file"]


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def reader(kind: str, tmp_path: Path, closing: ExitStack) -> tuple[ByteSource, Path]:
    """A reader of ``PAYLOAD`` of the given kind, and the file under it."""
    if kind == "store":
        store = LocalStore(tmp_path / "store")
        closing.callback(store.close)
        info = put(store, PAYLOAD)
        return BlobSource(store, info.key, info.size), store.local_path(info.key)
    path = tmp_path / "payload.bin"
    path.write_bytes(PAYLOAD)
    if kind == "path":
        return PathSource(path), path
    fobj = closing.enter_context(path.open("rb", buffering=0))
    return FileSource(fobj, len(PAYLOAD)), path


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("offset", "length"), [(0, 0), (0, 10244), (7000, 3000), (10243, 1)])
def test_reads_fill_the_buffer(
    kind: str, offset: int, length: int, tmp_path: Path, closing: ExitStack
) -> None:
    source, _ = reader(kind, tmp_path, closing)
    assert source.size == len(PAYLOAD)
    buf = bytearray(length)
    source.readinto(offset, memoryview(buf))
    assert bytes(buf) == PAYLOAD[offset : offset + length]


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_that_ends_early_is_a_storage_error(
    kind: str, tmp_path: Path, closing: ExitStack
) -> None:
    source, path = reader(kind, tmp_path, closing)
    os.truncate(path, 100)  # shorter than the catalog (or the caller) says
    with pytest.raises(StorageError, match=r"ends before byte 200 \(read stopped at 100\)"):
        source.readinto(50, memoryview(bytearray(150)))


@pytest.mark.parametrize("kind", KINDS)
def test_a_negative_offset_is_an_invalid_argument(
    kind: str, tmp_path: Path, closing: ExitStack
) -> None:
    source, _ = reader(kind, tmp_path, closing)
    with pytest.raises(InvalidArgument, match="negative read offset"):
        source.readinto(-1, memoryview(bytearray(1)))


def test_a_failing_read_is_a_storage_error(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)  # a directory opens, but reading it fails (EISDIR)
    try:
        with pytest.raises(StorageError, match="reading the folder failed"):
            read_exactly(fd, 0, memoryview(bytearray(1)), name="the folder")
    finally:
        os.close(fd)
    with pytest.raises(StorageError, match="failed"):
        PathSource(tmp_path).readinto(0, memoryview(bytearray(1)))


def test_a_missing_path_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot open"):
        PathSource(tmp_path / "gone").readinto(0, memoryview(bytearray(1)))


def test_short_reads_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # preadv may return fewer bytes than asked (signals, network filesystems); a local
    # disk rarely does, so cap each call to force the loop through many partial reads.
    real = os.preadv
    calls = 0

    def at_most_7(fd: int, buffers: list[memoryview], offset: int) -> int:
        nonlocal calls
        calls += 1
        return real(fd, [buffers[0][:7]], offset)

    monkeypatch.setattr(os, "preadv", at_most_7)
    path = tmp_path / "payload.bin"
    path.write_bytes(PAYLOAD)
    buf = bytearray(100)
    PathSource(path).readinto(1000, memoryview(buf))
    assert bytes(buf) == PAYLOAD[1000:1100]
    assert calls == 15  # ceil(100 / 7)


def test_any_buffer_format_is_read_as_bytes(tmp_path: Path) -> None:
    path = tmp_path / "payload.bin"
    path.write_bytes(PAYLOAD)
    words = memoryview(bytearray(8)).cast("I")  # 2 four-byte items
    PathSource(path).readinto(0, words)
    assert words.cast("B").tobytes() == PAYLOAD[:8]
