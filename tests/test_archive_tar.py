"""The tar layout: byte-identical to CPython's tarfile writer, read correctly by GNU tar."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.archive_helpers import tarfile_reference
from weightport.archive import ArchiveMember, ArchivePlan
from weightport.archive.headers import MTIME, RECORD
from weightport.storage.base import MemorySource

GIB = 1024**3


class ZeroSource:
    """A large member that costs no memory: all zero bytes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._zeros = bytes(1024 * 1024)

    def readinto(self, offset: int, buf: memoryview) -> None:
        for pos in range(0, len(buf), len(self._zeros)):
            chunk = buf[pos : pos + len(self._zeros)]
            chunk[:] = self._zeros[: len(chunk)]


def _members(files: dict[str, bytes]) -> list[ArchiveMember]:
    return [
        ArchiveMember(name, MemorySource(data), hashlib.sha256(data).hexdigest())
        for name, data in files.items()
    ]


def _tar_bytes(plan: ArchivePlan) -> bytes:
    buf = bytearray(plan.tar_size)
    plan.tar_source().readinto(0, memoryview(buf))
    return bytes(buf)


FILES = {
    "config.json": b'{"model_type": "llama"}\n',
    "model-00001-of-00002.safetensors": os.urandom(70_000),
    "model-00002-of-00002.safetensors": os.urandom(512 * 3),
    "empty.txt": b"",
    "tokenizer/tokenizer.json": b"{}" * 5000,
    "tokenizer/" + "long-name-" * 12 + ".json": b"long",  # > 100 bytes: PAX path
    "ünïcödé/名前.txt": b"non-ASCII: PAX path",
    "a/b/c/d/e/deep.bin": bytes(131_072),
}


def test_tar_bytes_equal_tarfile_pax_writer() -> None:
    plan = ArchivePlan.build("my-model", _members(FILES))
    assert _tar_bytes(plan) == tarfile_reference("my-model", FILES)
    assert plan.tar_size % RECORD == 0


def test_tarfile_reads_every_member_back() -> None:
    plan = ArchivePlan.build("my-model", _members(FILES))
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(plan)), mode="r:") as tf:
        seen = {}
        for info in tf:
            assert (info.uid, info.gid, info.uname, info.gname, info.mtime) == (0, 0, "", "", MTIME)
            if info.isdir():
                assert info.mode == 0o755
            else:
                assert info.mode == 0o644
                handle = tf.extractfile(info)
                assert handle is not None
                seen[info.name] = handle.read()
    assert seen == {f"my-model/{name}": data for name, data in FILES.items()}


def test_gnu_tar_lists_and_extracts_identical_files(tmp_path: Path) -> None:
    plan = ArchivePlan.build("my-model", _members(FILES))
    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar_bytes(plan))
    listing = subprocess.run(
        ["tar", "--quoting-style=literal", "-tvf", archive],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    names = [line.split(maxsplit=5)[5] for line in listing.splitlines()]
    assert all(n.startswith("my-model/") and ".." not in n.split("/") for n in names)
    folders = ["", "a/", "a/b/", "a/b/c/", "a/b/c/d/", "a/b/c/d/e/", "tokenizer/", "ünïcödé/"]
    assert sorted(names) == sorted(f"my-model/{n}" for n in [*folders, *FILES])
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xf", archive, "-C", out], check=True)
    for name, data in FILES.items():
        path = out / "my-model" / name
        assert path.read_bytes() == data
        assert path.stat().st_mtime == MTIME
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        f"my-model/{n}" for n in FILES
    )


def test_tar_is_independent_of_member_order() -> None:
    members = _members(FILES)
    one = ArchivePlan.build("m", members)
    other = ArchivePlan.build("m", members[::-1])
    assert _tar_bytes(one) == _tar_bytes(other)
    assert one.digest == other.digest
    assert [m.name for m in one.members] == [m.name for m in other.members]


def test_digest_covers_top_names_sizes_and_identities() -> None:
    base = ArchivePlan.build("m", [ArchiveMember("a", MemorySource(b"12"), "id1")])
    variants = [
        ArchivePlan.build("n", [ArchiveMember("a", MemorySource(b"12"), "id1")]),
        ArchivePlan.build("m", [ArchiveMember("b", MemorySource(b"12"), "id1")]),
        ArchivePlan.build("m", [ArchiveMember("a", MemorySource(b"123"), "id1")]),
        ArchivePlan.build("m", [ArchiveMember("a", MemorySource(b"12"), "id2")]),
    ]
    assert len({base.digest, *(v.digest for v in variants)}) == 5
    # Same inputs, new objects: the same digest (it is a pure function of the inputs).
    again = ArchivePlan.build("m", [ArchiveMember("a", MemorySource(b"12"), "id1")])
    assert again.digest == base.digest


def test_golden_bytes_do_not_drift() -> None:
    """Any change to the layout must bump TAR_FORMAT_VERSION: these values pin it."""
    files = {"config.json": b"{}\n", "weights/w.bin": bytes(range(256)) * 3, "z": b""}
    plan = ArchivePlan.build("golden", _members(files))
    assert plan.tar_size == 10240
    assert hashlib.sha256(_tar_bytes(plan)).hexdigest() == GOLDEN_TAR_SHA256
    assert plan.digest == GOLDEN_PLAN_DIGEST


GOLDEN_TAR_SHA256 = "7300dbbac3863d29aba8fe7704b28156adb5a3e524923b3d4fca6c825a13bf78"
GOLDEN_PLAN_DIGEST = "0a4bca5b5f9973befda2ee0d3005bf6ff5cae53ea09b9fd04c7bcfb8fd709eea"


def test_random_access_reads_match_the_whole() -> None:
    plan = ArchivePlan.build("my-model", _members(FILES))
    whole = _tar_bytes(plan)
    view = plan.tar_source()
    for start, end in [(0, 1), (511, 513), (1000, 80_000), (plan.tar_size - 3, plan.tar_size)]:
        buf = bytearray(end - start)
        view.readinto(start, memoryview(buf))
        assert buf == whole[start:end]
    with pytest.raises(ValueError, match="outside"):
        view.readinto(plan.tar_size - 1, memoryview(bytearray(2)))
    with pytest.raises(ValueError, match="outside"):
        view.readinto(-1, memoryview(bytearray(1)))


def test_member_over_8_gib_gets_a_pax_size_record() -> None:
    size = 8 * GIB + 513
    plan = ArchivePlan.build("big", [ArchiveMember("huge.bin", ZeroSource(size), "z")])
    head = bytearray(4096)
    plan.tar_source().readinto(0, memoryview(head))
    assert b" size=8589935105\n" in head
    with tarfile.open(fileobj=io.BytesIO(bytes(head)), mode="r:") as tf:
        first = tf.next()
        assert first is not None and first.name == "big"
        info = tf.next()
        assert info is not None
        assert (info.name, info.size) == ("big/huge.bin", size)
    assert plan.tar_size == -(-(512 * 4 + size + 512 + 1024) // RECORD) * RECORD


def test_gnu_tar_lists_a_member_over_8_gib(tmp_path: Path) -> None:
    size = 8 * GIB + 1
    plan = ArchivePlan.build("big", [ArchiveMember("huge.bin", ZeroSource(size), "z")])
    view = plan.tar_source()
    head, tail = bytearray(4096), bytearray(RECORD * 2)
    view.readinto(0, memoryview(head))
    view.readinto(view.size - len(tail), memoryview(tail))
    # The data is all zeros, so a sparse file with just the head and tail written is the tar.
    archive = tmp_path / "big.tar"
    with archive.open("wb") as f:
        f.write(head)
        f.seek(view.size - len(tail))
        f.write(tail)
    if archive.stat().st_blocks * 512 > GIB:
        pytest.skip("temporary filesystem does not support sparse files")
    listing = subprocess.run(
        ["tar", "--quoting-style=literal", "-tvf", archive],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f" {size} " in listing and "big/huge.bin" in listing
