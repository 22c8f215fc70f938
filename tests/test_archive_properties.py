"""Property tests: random member sets, random ranges, random chunkings.

For any members: the tar equals what CPython's tarfile writes; any range read equals the slice
of the whole; reading in random chunks equals one read; stored and compressed archives both
decode to the tar; member order changes nothing.
"""

from __future__ import annotations

import io
import random

import zstandard
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from tests.archive_helpers import tarfile_reference
from weightport.archive import (
    ArchiveMember,
    ArchivePlan,
    compress_archive,
    stored_archive,
)
from weightport.archive.stored import BLOCK_SIZE, DEFAULT_FRAME_SIZE
from weightport.errors import InvalidArgument
from weightport.storage.base import ByteSource, MemorySource

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_segment = st.one_of(
    st.text(alphabet="ab.-_ Zé名", min_size=1, max_size=12).filter(lambda s: s not in (".", "..")),
    st.text(alphabet="xy", min_size=90, max_size=140),  # forces PAX path records
)
_name = st.lists(_segment, min_size=1, max_size=3).map("/".join)
_size = st.one_of(
    st.sampled_from(
        [0, 1, 511, 512, 513, 1024, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 2 * BLOCK_SIZE]
    ),
    st.integers(min_value=0, max_value=300_000),
)


@st.composite
def plans(draw: st.DrawFn) -> tuple[ArchivePlan, dict[str, bytes], list[ArchiveMember]]:
    names = draw(st.lists(_name, min_size=1, max_size=6, unique=True))
    seed = draw(st.integers(0, 2**32))
    rng = random.Random(seed)
    files = {name: rng.randbytes(draw(_size)) for name in names}
    members = [ArchiveMember(n, MemorySource(d), f"id-{n}") for n, d in files.items()]
    try:
        plan = ArchivePlan.build("top", members)
    except InvalidArgument:
        reject()  # '.'/'..' segments or a file that is also a folder
    return plan, files, members


def _read_all(source: ByteSource) -> bytes:
    buf = bytearray(source.size)
    source.readinto(0, memoryview(buf))
    return bytes(buf)


_frame_sizes = st.sampled_from(
    [512 * 3, BLOCK_SIZE, BLOCK_SIZE + 512 * 7, 300_000, DEFAULT_FRAME_SIZE]
)


@PROPERTY
@given(plans(), _frame_sizes)
def test_whole_tar_matches_tarfile_and_stored_decodes_to_it(
    case: tuple[ArchivePlan, dict[str, bytes], list[ArchiveMember]], frame_size: int
) -> None:
    plan, files, _ = case
    tar = _read_all(plan.tar_source())
    assert tar == tarfile_reference("top", files)
    stored = _read_all(stored_archive(plan, frame_size=frame_size))
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stored), read_across_frames=True)
    assert reader.read() == tar


@PROPERTY
@given(plans(), _frame_sizes, st.data())
def test_range_reads_equal_slices_of_the_whole(
    case: tuple[ArchivePlan, dict[str, bytes], list[ArchiveMember]],
    frame_size: int,
    data: st.DataObject,
) -> None:
    plan, _, _ = case
    stored = stored_archive(plan, frame_size=frame_size)
    single = stored_archive(plan, frame_size=frame_size, single_tar_read=True)
    for source in (plan.tar_source(), stored, single):
        whole = _read_all(source if source is not single else stored)
        for _ in range(5):
            start = data.draw(st.integers(0, source.size))
            end = data.draw(st.integers(start, min(source.size, start + 400_000)))
            buf = bytearray(end - start)
            source.readinto(start, memoryview(buf))
            assert buf == whole[start:end]


@PROPERTY
@given(plans(), _frame_sizes, st.lists(st.integers(1, 200_000), min_size=1, max_size=8))
def test_reading_in_random_chunks_equals_one_read(
    case: tuple[ArchivePlan, dict[str, bytes], list[ArchiveMember]],
    frame_size: int,
    chunk_sizes: list[int],
) -> None:
    plan, _, _ = case
    stored = stored_archive(plan, frame_size=frame_size)
    single = stored_archive(plan, frame_size=frame_size, single_tar_read=True)
    for source in (plan.tar_source(), stored, single):
        pieces, offset, turn = [], 0, 0
        while offset < source.size:
            size = min(chunk_sizes[turn % len(chunk_sizes)], source.size - offset)
            buf = bytearray(size)
            source.readinto(offset, memoryview(buf))
            pieces.append(bytes(buf))
            offset += size
            turn += 1
        # A single tar read per read gives the same bytes as one per raw block.
        assert b"".join(pieces) == _read_all(source if source is not single else stored)


@PROPERTY
@given(plans(), st.randoms(use_true_random=False))
def test_member_order_changes_nothing(
    case: tuple[ArchivePlan, dict[str, bytes], list[ArchiveMember]], rnd: random.Random
) -> None:
    plan, _, members = case
    shuffled = members[:]
    rnd.shuffle(shuffled)
    other = ArchivePlan.build("top", shuffled)
    assert other.digest == plan.digest
    assert _read_all(other.tar_source()) == _read_all(plan.tar_source())
    assert _read_all(stored_archive(other)) == _read_all(stored_archive(plan))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans(), st.sampled_from([4096, 100_000, 1 << 20]), st.integers(1, 3))
def test_compressed_decodes_to_the_same_tar_as_stored(
    case: tuple[ArchivePlan, dict[str, bytes], list[ArchiveMember]], frame_size: int, threads: int
) -> None:
    plan, _, _ = case
    out = io.BytesIO()
    index = compress_archive(plan, out, level=1, threads=threads, frame_size=frame_size)
    assert index.size == len(out.getvalue())
    decoded = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(out.getvalue()), read_across_frames=True
    )
    stored = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(_read_all(stored_archive(plan))), read_across_frames=True
    )
    assert decoded.read() == stored.read() == _read_all(plan.tar_source())
