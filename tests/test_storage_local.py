"""The local content-addressed store: the shared conformance suite plus local specifics."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.storage_conformance import PAYLOAD, BlobStoreConformance, put, read, sha
from weightport.errors import InvalidArgument, StorageError
from weightport.storage.base import BlobInfo, BlobStore, LocalPaths
from weightport.storage.local import LocalStore


class TestLocalStoreConformance(BlobStoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> BlobStore:
        return LocalStore(tmp_path)


class TestLocalStoreTinyFdCache(BlobStoreConformance):
    """The same suite with no or a one-entry descriptor cache: eviction on every read."""

    @pytest.fixture(params=[0, 1], ids=["uncached", "one-fd"])
    def store(self, tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
        return LocalStore(tmp_path, open_files=request.param)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path)


def temp_files(store: LocalStore) -> list[Path]:
    return sorted((store.root / "tmp").iterdir())


def test_is_local_paths_capable(store: LocalStore) -> None:
    assert isinstance(store, LocalPaths)


def test_layout_and_modes(store: LocalStore) -> None:
    info = put(store, PAYLOAD)
    path = store.root / "blobs" / info.key[:2] / info.key[2:4] / info.key
    assert store.local_path(info.key) == path
    assert path.read_bytes() == PAYLOAD
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert temp_files(store) == []


def test_temp_file_is_private_while_writing(store: LocalStore) -> None:
    with store.begin_upload() as upload:
        upload.write(b"secret weights")
        (temp,) = temp_files(store)
        assert stat.S_IMODE(temp.stat().st_mode) == 0o600
        assert temp.read_bytes() == b"secret weights"
        assert list((store.root / "blobs").iterdir()) == []
    assert temp_files(store) == []


@pytest.mark.parametrize("key", ["../../etc/passwd", "/" + "0" * 63, "..", "a" * 63 + "/"])
def test_local_path_never_escapes_root(store: LocalStore, key: str) -> None:
    with pytest.raises(InvalidArgument):
        store.local_path(key)


def test_local_path_of_missing_blob_is_where_it_would_be(store: LocalStore) -> None:
    key = sha(b"absent")
    assert store.local_path(key).is_relative_to(store.root / "blobs")
    assert not store.local_path(key).exists()


def test_commit_replaces_a_damaged_copy(store: LocalStore) -> None:
    info = put(store, PAYLOAD)
    with store.local_path(info.key).open("r+b") as fh:
        fh.truncate(100)
    assert put(store, PAYLOAD) == info
    assert read(store, info.key, 0, info.size) == PAYLOAD


def test_deleted_blob_is_not_served_from_the_descriptor_cache(store: LocalStore) -> None:
    info = put(store, PAYLOAD)
    assert read(store, info.key, 0, 4) == PAYLOAD[:4]
    store.delete(info.key)
    with pytest.raises(StorageError, match="missing"):
        read(store, info.key, 0, 4)


def test_descriptor_cache_is_bounded(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, open_files=2)
    fd_dir = Path("/proc/self/fd")
    before = len(list(fd_dir.iterdir()))
    infos = [put(store, bytes([i]) * 10) for i in range(6)]
    for info in infos:
        read(store, info.key, 0, 10)
    assert len(list(fd_dir.iterdir())) - before == 2
    store.close()
    assert len(list(fd_dir.iterdir())) == before
    assert read(store, infos[0].key, 0, 10) == b"\0" * 10  # reopens after close
    store.close()


def test_list_ignores_stray_files(store: LocalStore) -> None:
    info = put(store, PAYLOAD)
    blobs = store.root / "blobs"
    (blobs / "README").write_text("not a blob")
    (blobs / info.key[:2] / "notes.txt").write_text("not a blob")
    misplaced = sha(b"misplaced")
    (blobs / info.key[:2] / info.key[2:4] / misplaced).write_bytes(b"misplaced")
    (blobs / info.key[:2] / info.key[2:4] / (info.key + ".bak")).write_bytes(b"x")
    assert list(store.list()) == [info]


def test_expected_size_stops_an_oversize_write_early(store: LocalStore) -> None:
    upload = store.begin_upload(expected_size=10)
    upload.write(b"12345")
    with pytest.raises(InvalidArgument, match="larger than the declared 10 bytes"):
        upload.write(b"678901")
    assert temp_files(store) == []


def test_sha256_mismatch_names_both_digests(store: LocalStore) -> None:
    wanted = sha(b"what the client declared")
    upload = store.begin_upload(expected_sha256=wanted)
    upload.write(b"what it sent")
    with pytest.raises(InvalidArgument) as excinfo:
        upload.commit()
    assert wanted in str(excinfo.value)
    assert sha(b"what it sent") in str(excinfo.value)
    assert temp_files(store) == []


def test_negative_offset_and_size_are_rejected(store: LocalStore) -> None:
    info = put(store, PAYLOAD)
    with pytest.raises(InvalidArgument):
        store.readinto(info.key, -1, memoryview(bytearray(1)))
    with pytest.raises(InvalidArgument):
        store.begin_upload(expected_size=-1)


def test_cleanup_temp_spares_fresh_uploads(store: LocalStore) -> None:
    upload = store.begin_upload()
    upload.write(b"in progress")
    (store.root / "tmp" / "unrelated.txt").write_text("not ours")
    assert store.cleanup_temp(3600) == 0
    assert store.cleanup_temp(3600, now=time.time() + 7200) == 1
    assert [p.name for p in temp_files(store)] == ["unrelated.txt"]
    upload.abort()  # its file is already gone; abort still succeeds


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from weightport.storage.local import LocalStore

    upload = LocalStore(Path(sys.argv[1])).begin_upload()
    upload.write(b"x" * 100_000)
    print("written", flush=True)
    while True:
        upload.write(b"y" * 4096)
        time.sleep(0.01)
    """
)


def test_killed_writer_leaves_no_blob_and_cleanup_removes_its_temp(store: LocalStore) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store.root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "written\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert list(store.list()) == []
    assert not any(p.is_file() for p in (store.root / "blobs").rglob("*"))
    (temp,) = temp_files(store)
    assert temp.stat().st_size >= 100_000
    assert store.cleanup_temp(3600) == 0  # too fresh to be called stale
    assert store.cleanup_temp(0, now=time.time() + 1) == 1
    assert temp_files(store) == []


def test_large_blob_in_odd_chunks(store: LocalStore) -> None:
    data = os.urandom(3 << 20)
    upload = store.begin_upload(expected_size=len(data))
    view = memoryview(data)
    for pos in range(0, len(data), 65_537):
        upload.write(view[pos : pos + 65_537])
    info = upload.commit()
    assert info == BlobInfo(hashlib.sha256(data).hexdigest(), len(data))
    buf = bytearray(1 << 20)
    store.readinto(info.key, 1 << 20, memoryview(buf))
    assert buf == data[1 << 20 : 2 << 20]
