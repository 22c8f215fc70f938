"""The *compressed* encoding: the tar as independent zstd frames, built once and cached.

The tar is cut into frames of ``frame_size`` tar bytes (8 MiB by default), each compressed
on its own with python-zstandard. Frames are compressed in parallel by a thread pool (the
C backend releases the GIL) and written strictly in order, with at most ``2 * threads``
frames in memory. Because every frame is compressed independently with fixed parameters,
the output for a given plan, level, frame size and libzstd version does not depend on the
thread count.

Each frame declares a window of at most 8 MiB (``window_log`` capped at 23, long-distance
matching off), so every decoder accepts it, and carries its content size and a checksum.
The returned :class:`CompressedIndex` maps frames between tar and compressed offsets.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import zstandard

from weightport.archive.plan import ArchivePlan, TarView
from weightport.errors import InvalidArgument, StorageError

#: Default tar bytes per compressed frame.
DEFAULT_FRAME_SIZE = 8 * 1024 * 1024
#: Largest window any compressed frame declares: 2 ** 23 = 8 MiB.
MAX_WINDOW_LOG = 23
MIN_LEVEL = 1
MAX_LEVEL: int = zstandard.MAX_COMPRESSION_LEVEL

COMPRESSED_FORMAT_VERSION = "weightport-zst-index/1"


class ArchiveWriter(Protocol):
    """Where compressed bytes go: a :class:`~weightport.storage.base.BlobUpload`, a file."""

    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class CompressedFrame:
    """One frame: tar bytes ``[tar_offset, tar_offset + tar_length)`` compressed into
    archive bytes ``[offset, offset + length)``."""

    tar_offset: int
    tar_length: int
    offset: int
    length: int


@dataclass(frozen=True)
class CompressedIndex:
    """Where every frame of a compressed archive lies; serialisable with :meth:`to_json`."""

    plan_digest: str
    level: int
    tar_size: int
    frames: tuple[CompressedFrame, ...]

    @property
    def size(self) -> int:
        """Total bytes of the compressed archive."""
        last = self.frames[-1]
        return last.offset + last.length

    def to_json(self) -> str:
        """A compact JSON text that :meth:`from_json` reads back."""
        document = {
            "format": COMPRESSED_FORMAT_VERSION,
            "plan_digest": self.plan_digest,
            "level": self.level,
            "tar_size": self.tar_size,
            "frames": [list(asdict(frame).values()) for frame in self.frames],
        }
        return json.dumps(document, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> CompressedIndex:
        """Parse :meth:`to_json` output; a corrupt or inconsistent index raises
        :class:`weightport.errors.StorageError` (it comes from our own cache)."""
        try:
            document: Any = json.loads(text)
            if document["format"] != COMPRESSED_FORMAT_VERSION:
                raise StorageError(f"unknown archive index format {document['format']!r}")
            frames = tuple(CompressedFrame(*map(_int, row)) for row in document["frames"])
            index = cls(
                plan_digest=str(document["plan_digest"]),
                level=_int(document["level"]),
                tar_size=_int(document["tar_size"]),
                frames=frames,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"corrupt archive index: {exc}") from exc
        index._check_contiguous()
        return index

    def _check_contiguous(self) -> None:
        tar_offset = offset = 0
        for frame in self.frames:
            if (frame.tar_offset, frame.offset) != (tar_offset, offset) or min(
                frame.tar_length, frame.length
            ) <= 0:
                raise StorageError(f"corrupt archive index: frame {frame} is out of place")
            tar_offset += frame.tar_length
            offset += frame.length
        if not self.frames or tar_offset != self.tar_size:
            raise StorageError("corrupt archive index: frames do not cover the tar")


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {value!r}")
    return value


class _FrameCompressor:
    """One compression thread's reusable state: a compressor per parameter set (libzstd
    contexts take megabytes to set up) and the input buffer (fresh 8 MiB buffers cost page
    faults every frame). A context compresses each frame from scratch, so reusing it changes
    no byte."""

    def __init__(self) -> None:
        self._compressors: dict[tuple[int, int], zstandard.ZstdCompressor] = {}
        self._buffer = bytearray()

    def compress(self, tar: TarView, tar_offset: int, tar_length: int, level: int) -> bytes:
        if len(self._buffer) < tar_length:
            self._buffer = bytearray(tar_length)
        chunk = memoryview(self._buffer)[:tar_length]
        tar.readinto(tar_offset, chunk)
        result: bytes = self._compressor(level, tar_length).compress(chunk)
        return result

    def _compressor(self, level: int, tar_length: int) -> zstandard.ZstdCompressor:
        compressor = self._compressors.get((level, tar_length))
        if compressor is None:
            base = zstandard.ZstdCompressionParameters.from_level(level, source_size=tar_length)
            params = zstandard.ZstdCompressionParameters.from_level(
                level,
                source_size=tar_length,
                window_log=min(base.window_log, MAX_WINDOW_LOG),
                enable_ldm=False,
                write_content_size=True,
                write_checksum=True,
            )
            compressor = zstandard.ZstdCompressor(compression_params=params)
            self._compressors[(level, tar_length)] = compressor
        return compressor


def compress_archive(
    plan: ArchivePlan,
    out: ArchiveWriter,
    *,
    level: int,
    threads: int,
    progress: Callable[[int, int], None] | None = None,
    frame_size: int = DEFAULT_FRAME_SIZE,
) -> CompressedIndex:
    """Compress ``plan``'s tar into ``out`` as independent frames, in order.

    ``threads`` frames are compressed at once (the members' sources must allow reads from
    several threads); one more thread writes the frames to ``out`` in order (a blob upload
    hashes what it writes: that work stays off the compressing threads), with at most
    ``2 * threads`` frames between the reading and the writing. ``progress(done, total)`` is
    called on the writing thread after each frame is written, in tar bytes. Raises
    :class:`InvalidArgument` for a level outside 1..22, ``threads < 1`` or
    ``frame_size < 1``. If ``out.write`` raises, nothing more is written, frames still queued
    are cancelled and the error propagates.
    """
    if not MIN_LEVEL <= level <= MAX_LEVEL:
        raise InvalidArgument(f"compression level {level} outside {MIN_LEVEL}..{MAX_LEVEL}")
    if threads < 1:
        raise InvalidArgument(f"threads must be at least 1, got {threads}")
    if frame_size < 1:
        raise InvalidArgument(f"frame size must be at least 1, got {frame_size}")
    tar = plan.tar_source()
    frames: list[CompressedFrame] = []
    written = done = 0
    failed = False
    local = threading.local()

    def compress(tar_offset: int, tar_length: int) -> bytes:
        compressor: _FrameCompressor | None = getattr(local, "compressor", None)
        if compressor is None:
            compressor = local.compressor = _FrameCompressor()
        return compressor.compress(tar, tar_offset, tar_length, level)

    def write(tar_offset: int, tar_length: int, compressed: Future[bytes]) -> None:
        # On the writer thread, in frame order (one thread, first in first out).
        nonlocal written, done, failed
        if failed:
            raise _Skipped
        try:
            data = compressed.result()
            out.write(data)
        except BaseException:
            failed = True
            raise
        frames.append(CompressedFrame(tar_offset, tar_length, written, len(data)))
        written += len(data)
        done += tar_length
        if progress is not None:
            progress(done, plan.tar_size)

    pending: deque[tuple[Future[bytes], Future[None]]] = deque()
    with (
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="zstd-frame") as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="zstd-write") as writer,
    ):
        try:
            for tar_offset in range(0, plan.tar_size, frame_size):
                # Two frames per thread keep every thread busy while one is being written,
                # and bound memory to a few frames whatever the archive size.
                if len(pending) >= 2 * threads:
                    pending.popleft()[1].result()
                tar_length = min(frame_size, plan.tar_size - tar_offset)
                compressed = pool.submit(compress, tar_offset, tar_length)
                pending.append(
                    (compressed, writer.submit(write, tar_offset, tar_length, compressed))
                )
            while pending:
                pending.popleft()[1].result()
        finally:
            for compressed, written_future in pending:
                compressed.cancel()
                written_future.cancel()
    return CompressedIndex(plan.digest, level, plan.tar_size, tuple(frames))


class _Skipped(Exception):
    """A frame not written because an earlier one failed (never seen by callers)."""
