"""The compressed archive: independent frames, deterministic, bounded memory, real decoders."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from weightport.archive import (
    ArchiveMember,
    ArchivePlan,
    CompressedIndex,
    compress_archive,
)
from weightport.errors import InvalidArgument, StorageError
from weightport.storage.base import MemorySource

MIB = 1024 * 1024
_rng = random.Random(7)
FILES = {
    "config.json": b'{"hidden_size": 4096}\n',
    "model.safetensors": _rng.randbytes(3 * MIB + 12345),
    "tokenizer.json": b'{"added_tokens": []}' * 60_000,
    "empty.txt": b"",
}


def _plan(files: dict[str, bytes] = FILES) -> ArchivePlan:
    return ArchivePlan.build(
        "ft-model",
        [
            ArchiveMember(n, MemorySource(d), hashlib.sha256(d).hexdigest())
            for n, d in files.items()
        ],
    )


def _tar(plan: ArchivePlan) -> bytes:
    buf = bytearray(plan.tar_size)
    plan.tar_source().readinto(0, memoryview(buf))
    return bytes(buf)


def _compress(
    plan: ArchivePlan, *, level: int = 3, threads: int = 2, frame_size: int = MIB
) -> tuple[bytes, CompressedIndex]:
    out = io.BytesIO()
    index = compress_archive(plan, out, level=level, threads=threads, frame_size=frame_size)
    return out.getvalue(), index


def test_decoders_read_the_compressed_archive(tmp_path: Path) -> None:
    plan = _plan()
    data, index = _compress(plan)
    assert len(data) == index.size < plan.tar_size
    path = tmp_path / "a.tar.zst"
    path.write_bytes(data)
    subprocess.run(["zstd", "-q", "-t", path], check=True)
    decoded = subprocess.run(["zstd", "-q", "-d", "-c", path], check=True, capture_output=True)
    assert decoded.stdout == _tar(plan)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", path, "-C", out], check=True)
    for name, content in FILES.items():
        assert (out / "ft-model" / name).read_bytes() == content
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    with tarfile.open(fileobj=reader, mode="r|") as tf:
        names = [info.name for info in tf]
    assert names == ["ft-model", *(f"ft-model/{n}" for n in sorted(FILES))]


def test_index_maps_every_frame() -> None:
    plan = _plan()
    data, index = _compress(plan)
    tar = _tar(plan)
    assert len(index.frames) == -(-plan.tar_size // MIB)
    assert (index.plan_digest, index.level, index.tar_size) == (plan.digest, 3, plan.tar_size)
    for frame in index.frames:
        raw = data[frame.offset : frame.offset + frame.length]
        params = zstandard.get_frame_parameters(raw)
        assert params.content_size == frame.tar_length
        assert params.has_checksum
        assert params.window_size <= 8 * MIB
        decoded = zstandard.ZstdDecompressor().decompress(raw)
        assert decoded == tar[frame.tar_offset : frame.tar_offset + frame.tar_length]
    assert b"".join(data[f.offset : f.offset + f.length] for f in index.frames) == data
    assert index.size == len(data)


def test_output_does_not_depend_on_threads_or_member_order() -> None:
    one, index_one = _compress(_plan(), threads=1)
    three, index_three = _compress(_plan(dict(reversed(FILES.items()))), threads=3)
    assert one == three
    assert index_one == index_three


def test_windows_stay_at_8_mib_even_for_large_frames_at_high_levels() -> None:
    text = bytes(random.Random(3).choice(b"abcdefgh \n") for _ in range(1 << 16)) * 160
    plan = _plan({"big.txt": text})  # one 10 MiB frame at level 20
    data, index = _compress(plan, level=20, frame_size=16 * MIB, threads=1)
    assert len(index.frames) == 1
    assert zstandard.get_frame_parameters(data).window_size <= 8 * MIB
    # Control: left alone, libzstd would declare a window as large as the frame.
    plain = zstandard.ZstdCompressor(level=20).compress(_tar(plan))
    assert zstandard.get_frame_parameters(plain).window_size > 8 * MIB
    assert zstandard.ZstdDecompressor().decompress(data) == _tar(plan)


def test_progress_reports_tar_bytes_after_each_frame() -> None:
    plan = _plan()
    calls: list[tuple[int, int]] = []
    out = io.BytesIO()
    compress_archive(
        plan, out, level=1, threads=2, frame_size=MIB, progress=lambda d, t: calls.append((d, t))
    )
    assert [total for _, total in calls] == [plan.tar_size] * len(calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == plan.tar_size
    assert len(calls) == -(-plan.tar_size // MIB)


class _CountingSource:
    """Records how far ahead of the writer the compressor has read."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)
        self.read_end = 0

    def readinto(self, offset: int, buf: memoryview) -> None:
        buf[:] = self._data[offset : offset + len(buf)]
        self.read_end = max(self.read_end, offset + len(buf))


@pytest.mark.parametrize("threads", [1, 2])
def test_memory_is_bounded_to_a_few_frames(threads: int) -> None:
    frame = 64 * 1024
    source = _CountingSource(_rng.randbytes(40 * frame))
    plan = ArchivePlan.build("m", [ArchiveMember("w.bin", source, "w")])
    header = 1024  # the folder's and the file's header come first in the tar
    written_frames = 0
    worst_lead = 0

    class Writer:
        def write(self, data: bytes) -> None:
            nonlocal written_frames, worst_lead
            lead = (header + source.read_end) / frame - written_frames
            worst_lead = max(worst_lead, int(lead + 0.999))
            written_frames += 1

    compress_archive(plan, Writer(), level=1, threads=threads, frame_size=frame)
    assert written_frames == -(-plan.tar_size // frame)
    assert worst_lead <= 2 * threads


def test_writer_errors_propagate() -> None:
    class Broken:
        def write(self, data: bytes) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        compress_archive(_plan(), Broken(), level=1, threads=2, frame_size=256 * 1024)


@pytest.mark.parametrize(
    ("level", "threads", "frame_size"), [(0, 1, MIB), (23, 1, MIB), (3, 0, MIB), (3, 1, 0)]
)
def test_invalid_options_are_refused(level: int, threads: int, frame_size: int) -> None:
    with pytest.raises(InvalidArgument):
        compress_archive(_plan(), io.BytesIO(), level=level, threads=threads, frame_size=frame_size)


def test_index_round_trips_through_json() -> None:
    _, index = _compress(_plan())
    text = index.to_json()
    assert CompressedIndex.from_json(text) == index
    assert CompressedIndex.from_json(text.encode()) == index
    assert json.loads(text)["format"] == "weightport-zst-index/1"


def _tampered(index: CompressedIndex, **changes: object) -> str:
    document = json.loads(index.to_json())
    document.update(changes)
    return json.dumps(document)


def test_corrupt_indexes_are_storage_errors() -> None:
    _, index = _compress(_plan())
    frames = json.loads(index.to_json())["frames"]
    second = frames[1]
    gap = [frames[0], [second[0], second[1], second[2] + 1, second[3]], *frames[2:]]
    bad = [
        "not json",
        "[]",
        _tampered(index, format="weightport-zst-index/99"),
        _tampered(index, level="3"),
        _tampered(index, tar_size=index.tar_size + 1),
        _tampered(index, frames=[]),
        _tampered(index, frames=gap),
        _tampered(index, frames=[[0, 1, 0]]),
    ]
    for text in bad:
        with pytest.raises(StorageError):
            CompressedIndex.from_json(text)
