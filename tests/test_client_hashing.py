"""The in-order sha256 of a downloading file: fed from buffers, read back only where needed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from weightport.client.hashing import MOST_CAUGHT_UP, READ_BACK_CHUNK, InOrderHash

KiB = 1024


@pytest.fixture
def written(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """A file already on disk (as a worker's ``pwrite`` left it), open for reading."""
    data = os.urandom(3 * READ_BACK_CHUNK + 123 * KiB)
    path = tmp_path / "f.part"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd, data
    finally:
        os.close(fd)


def _feed(hasher: InOrderHash, fd: int, data: bytes, start: int, end: int, **kw: int) -> bool:
    view = memoryview(data)[start:end]
    return hasher.feed(start, view, fd=fd, on_disk_from=kw.get("on_disk_from", start), name="f")


def test_bytes_fed_in_order_are_never_read_back(written: tuple[int, bytes]) -> None:
    fd, data = written
    hasher = InOrderHash()
    step = 100 * KiB
    for start in range(0, len(data), step):
        assert _feed(hasher, fd, data, start, min(len(data), start + step))
    assert hasher.position == len(data) and hasher.read_back == 0
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_bytes_ahead_of_the_digest_wait_for_the_read_back(written: tuple[int, bytes]) -> None:
    fd, data = written
    hasher = InOrderHash()
    mid = len(data) // 2
    # A second part's bytes, while the first part is not hashed: refused, nothing read.
    assert not _feed(hasher, fd, data, mid, mid + 64 * KiB)
    assert hasher.position == 0 and hasher.read_back == 0
    assert _feed(hasher, fd, data, 0, mid)
    assert not _feed(hasher, fd, data, 0, 64 * KiB)  # already hashed: not twice
    hasher.catch_up(fd, len(data), name="f")  # the finisher, once all is on disk
    assert hasher.read_back == len(data) - mid
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_worker_reads_back_its_own_earlier_bytes_then_feeds(written: tuple[int, bytes]) -> None:
    fd, data = written
    hasher = InOrderHash()
    offset = 2 * READ_BACK_CHUNK + 5 * KiB  # everything before it is on disk
    assert _feed(hasher, fd, data, offset, len(data), on_disk_from=0)
    assert hasher.read_back == offset and hasher.position == len(data)
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_worker_leaves_a_long_way_back_to_the_finisher(tmp_path: Path) -> None:
    path = tmp_path / "sparse.part"
    with path.open("wb") as fh:
        fh.truncate(MOST_CAUGHT_UP + 2 * READ_BACK_CHUNK)
    fd = os.open(path, os.O_RDONLY)
    try:
        hasher = InOrderHash()
        tail = memoryview(bytes(READ_BACK_CHUNK))
        offset = MOST_CAUGHT_UP + READ_BACK_CHUNK
        assert not hasher.feed(offset, tail, fd=fd, on_disk_from=0, name="sparse")
        assert hasher.position == 0 and hasher.read_back == 0
    finally:
        os.close(fd)


def test_a_file_shorter_than_promised_is_an_error(written: tuple[int, bytes]) -> None:
    fd, data = written
    hasher = InOrderHash()
    with pytest.raises(OSError, match="unexpected end of file"):
        hasher.catch_up(fd, len(data) + 1, name="f")
