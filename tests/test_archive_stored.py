"""The stored (raw-block zstd) archive, checked by real decoders: zstd, GNU tar, zstandard."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from weightport.archive import ArchiveMember, ArchivePlan, StoredArchive, stored_archive
from weightport.archive.stored import BLOCK_SIZE, FRAME_HEADER_SIZE
from weightport.errors import InvalidArgument
from weightport.storage.base import ByteSource, MemorySource

MIB = 1024 * 1024


class ZeroSource:
    """A large member that costs no memory: all zero bytes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._zeros = bytes(MIB)

    def readinto(self, offset: int, buf: memoryview) -> None:
        for pos in range(0, len(buf), MIB):
            chunk = buf[pos : pos + MIB]
            chunk[:] = self._zeros[: len(chunk)]


class SourceReader(io.RawIOBase):
    """A ByteSource as a sequential binary file, for decoders that want one."""

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        take = min(len(buffer), self._source.size - self._pos)
        self._source.readinto(self._pos, memoryview(buffer)[:take])
        self._pos += take
        return take


def _reader(source: ByteSource) -> io.BufferedReader:
    return io.BufferedReader(SourceReader(source), MIB)


def _chunks(source: ByteSource, size: int = MIB) -> Iterator[bytes]:
    buf = bytearray(size)
    for offset in range(0, source.size, size):
        view = memoryview(buf)[: min(size, source.size - offset)]
        source.readinto(offset, view)
        yield bytes(view)


def _all(source: ByteSource) -> bytes:
    return b"".join(_chunks(source))


FILES = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"]}\n',
    "model.safetensors": os.urandom(3 * BLOCK_SIZE + 1000),
    "tokenizer.json": b'{"version": "1.0"}' * 20_000,
    "empty": b"",
    "sub/exact-block.bin": os.urandom(BLOCK_SIZE),
}


def _plan(files: dict[str, bytes] = FILES, top: str = "ft-model") -> ArchivePlan:
    return ArchivePlan.build(
        top,
        [
            ArchiveMember(n, MemorySource(d), hashlib.sha256(d).hexdigest())
            for n, d in files.items()
        ],
    )


@pytest.fixture(params=[BLOCK_SIZE // 2, BLOCK_SIZE, 3 * BLOCK_SIZE + 512, 64 * MIB])
def archive(request: pytest.FixtureRequest) -> StoredArchive:
    """Several frame sizes: smaller than a block, one block, odd, one frame for everything."""
    return stored_archive(_plan(), frame_size=request.param)


def test_zstd_cli_tests_and_decodes_to_the_tar(archive: StoredArchive, tmp_path: Path) -> None:
    path = tmp_path / "a.tar.zst"
    path.write_bytes(_all(archive))
    subprocess.run(["zstd", "-q", "-t", path], check=True)
    decoded = subprocess.run(["zstd", "-q", "-d", "-c", path], check=True, capture_output=True)
    assert decoded.stdout == _all(_plan().tar_source())


def test_gnu_tar_extracts_identical_files(archive: StoredArchive, tmp_path: Path) -> None:
    path = tmp_path / "a.tar.zst"
    path.write_bytes(_all(archive))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", path, "-C", out], check=True)
    extracted = {
        p.relative_to(out / "ft-model").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in out.rglob("*")
        if p.is_file()
    }
    assert extracted == {n: hashlib.sha256(d).hexdigest() for n, d in FILES.items()}
    # GNU tar also recognises it without being told (`tar -xf` as Together's docs say).
    listing = subprocess.run(
        ["tar", "--quoting-style=literal", "-tf", path], check=True, capture_output=True, text=True
    ).stdout.split()
    assert all(n.startswith("ft-model/") and ".." not in n.split("/") for n in listing)


def test_python_zstandard_streams_across_frames_into_tarfile(archive: StoredArchive) -> None:
    reader = zstandard.ZstdDecompressor().stream_reader(_reader(archive), read_across_frames=True)
    with tarfile.open(fileobj=reader, mode="r|") as tf:
        got = {}
        for info in tf:
            handle = tf.extractfile(info)
            if handle is not None:
                got[info.name.removeprefix("ft-model/")] = handle.read()
    assert got == FILES


def test_frames_declare_a_small_window_and_their_content_size(archive: StoredArchive) -> None:
    data = _all(archive)
    tar_size = _plan().tar_size
    frames, offset, tar_offset = 0, 0, 0
    while offset < len(data):
        params = zstandard.get_frame_parameters(data[offset : offset + FRAME_HEADER_SIZE])
        assert params.window_size == BLOCK_SIZE  # never single-segment
        assert params.content_size == min(archive.frame_size, tar_size - tar_offset)
        assert not params.has_checksum
        tar_offset += params.content_size
        offset += FRAME_HEADER_SIZE + 3 * -(-params.content_size // BLOCK_SIZE)
        offset += params.content_size
        frames += 1
    assert (offset, tar_offset) == (archive.size, tar_size)
    assert frames == -(-tar_size // archive.frame_size)


def test_size_is_pure_arithmetic_and_bytes_are_stable() -> None:
    plan = _plan()
    one = stored_archive(plan, frame_size=BLOCK_SIZE * 2)
    blocks = -(-plan.tar_size // BLOCK_SIZE)
    frames = -(-plan.tar_size // (BLOCK_SIZE * 2))
    assert one.size == plan.tar_size + 3 * blocks + FRAME_HEADER_SIZE * frames
    again = stored_archive(_plan(dict(reversed(FILES.items()))), frame_size=BLOCK_SIZE * 2)
    assert _all(one) == _all(again)
    assert one.digest == again.digest
    assert one.digest != stored_archive(plan, frame_size=BLOCK_SIZE * 4).digest
    assert one.digest != plan.digest


def test_reads_outside_the_archive_are_refused() -> None:
    archive = stored_archive(_plan())
    with pytest.raises(ValueError, match="outside"):
        archive.readinto(archive.size - 1, memoryview(bytearray(2)))
    with pytest.raises(ValueError, match="outside"):
        archive.readinto(-1, memoryview(bytearray(1)))
    archive.readinto(archive.size, memoryview(bytearray(0)))


@pytest.mark.parametrize("frame_size", [0, -1, 2**32])
def test_frame_size_must_fit_the_content_size_field(frame_size: int) -> None:
    with pytest.raises(InvalidArgument):
        stored_archive(_plan(), frame_size=frame_size)


def _feed(command: list[str], source: ByteSource) -> subprocess.CompletedProcess[bytes]:
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdin is not None
        for chunk in _chunks(source):
            proc.stdin.write(chunk)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def test_a_frame_over_128_mib_passes_every_decoder() -> None:
    """The trap: one 150 MiB frame must not declare a 150 MiB window (decoders refuse
    windows over 128 MiB)."""
    plan = ArchivePlan.build("big", [ArchiveMember("zeros.bin", ZeroSource(150 * MIB), "z")])
    archive = stored_archive(plan, frame_size=256 * MIB)
    assert archive.size > 128 * MIB + FRAME_HEADER_SIZE
    result = _feed(["zstd", "-t", "-q"], archive)
    assert result.returncode == 0, result.stderr
    reader = zstandard.ZstdDecompressor().stream_reader(_reader(archive))
    digest, total = hashlib.sha256(), 0
    while chunk := reader.read(4 * MIB):
        digest.update(chunk)
        total += len(chunk)
    expected = hashlib.sha256()
    for chunk in _chunks(plan.tar_source(), 4 * MIB):
        expected.update(chunk)
    assert (total, digest.hexdigest()) == (plan.tar_size, expected.hexdigest())


def test_the_single_segment_trap_is_real() -> None:
    """Control for the test above: the same frame written single-segment is refused."""
    content = 150 * MIB
    header = b"\x28\xb5\x2f\xfd" + bytes([0xA0]) + content.to_bytes(4, "little")
    block = (BLOCK_SIZE << 3).to_bytes(3, "little") + bytes(BLOCK_SIZE)
    result = subprocess.run(["zstd", "-t", "-q"], input=header + block, capture_output=True)
    assert result.returncode != 0
    assert b"Window size larger than maximum" in result.stderr
    with pytest.raises(zstandard.ZstdError, match="too much memory"):
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(header + block)).read(1)
