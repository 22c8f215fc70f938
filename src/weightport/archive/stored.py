"""The *stored* encoding: the tar inside zstd frames of raw (uncompressed) blocks.

No compression CPU, no extra storage, and the size and every byte are plain arithmetic over
the tar size, so any Range of a multi-gigabyte archive is served by reading just that slice.

Layout (RFC 8878). The tar is cut into frames of ``frame_size`` tar bytes (the last may be
shorter); each frame is

- a 10-byte frame header: magic ``28 B5 2F FD``; descriptor ``0x80`` (4-byte content size,
  **not** single-segment, no checksum, no dictionary); window descriptor ``0x38``, a 128 KiB
  window; the frame's tar length as a 4-byte little-endian content size;
- raw blocks of at most 128 KiB of tar each, behind a 3-byte header
  ``size << 3 | type 0 (raw) << 1 | last``; the last block of each frame has ``last`` set.

Why not single-segment: a single-segment frame declares a window equal to its content size,
and decoders refuse windows over 128 MiB (``zstd -t``: "Window size larger than maximum",
python-zstandard: "Frame requires too much memory"). Raw blocks reference no history, so a
128 KiB window (the largest block) is honest for a frame of any length.

No content checksum: it would make the last 4 bytes of a frame depend on all of its bytes,
so serving them would mean reading the whole frame. Members' sha256 values cover integrity.
"""

from __future__ import annotations

import hashlib

from weightport.archive.plan import ArchivePlan
from weightport.errors import InvalidArgument

#: Largest zstd block (and the declared window); every raw block but a frame's last is this big.
BLOCK_SIZE = 128 * 1024
#: Default tar bytes per stored frame. Any size works (the window stays 128 KiB); 64 MiB keeps
#: the overhead at 10 bytes per frame plus 3 per block (0.002 %).
DEFAULT_FRAME_SIZE = 64 * 1024 * 1024
#: Largest frame the 4-byte content-size field can describe.
MAX_FRAME_SIZE = 2**32 - 1

STORED_FORMAT_VERSION = "weightport-stored-zst/1"

_MAGIC = b"\x28\xb5\x2f\xfd"
_DESCRIPTOR = 0x80  # Frame_Content_Size_flag 2 (4 bytes); Single_Segment 0; no checksum/dict
_WINDOW_128K = 0x38  # Exponent 7, Mantissa 0: 2 ** (10 + 7) = 128 KiB
FRAME_HEADER_SIZE = 10
BLOCK_HEADER_SIZE = 3


def _frame_header(tar_length: int) -> bytes:
    return _MAGIC + bytes((_DESCRIPTOR, _WINDOW_128K)) + tar_length.to_bytes(4, "little")


def _block_header(length: int, last: bool) -> bytes:
    return (length << 3 | last).to_bytes(3, "little")


def _encoded_frame_size(tar_length: int) -> int:
    blocks = -(-tar_length // BLOCK_SIZE)
    return FRAME_HEADER_SIZE + blocks * BLOCK_HEADER_SIZE + tar_length


class StoredArchive:
    """The stored ``.tar.zst`` of a plan as a :class:`ByteSource` (``size``, ``readinto``).

    ``digest`` identifies these exact bytes (plan digest, encoding, frame size): use it for
    the ETag. Reads are safe from several threads if the members' sources are.

    A read of the archive becomes a read of the tar per raw block, into place. With
    ``single_tar_read``, each read of the archive reads all its tar bytes in one call instead
    and then opens the gaps for the block headers (one ``memmove``): for members that are
    computed (a merged shard), where every call has a fixed cost and a 1 MiB read would
    otherwise be nine (the move costs a stored blob more than its eight ``pread`` calls).
    """

    __slots__ = ("_full_frame", "_single_tar_read", "_tar", "digest", "frame_size", "size")

    def __init__(
        self,
        plan: ArchivePlan,
        *,
        frame_size: int = DEFAULT_FRAME_SIZE,
        single_tar_read: bool = False,
    ) -> None:
        if not 1 <= frame_size <= MAX_FRAME_SIZE:
            raise InvalidArgument(f"stored frame size {frame_size} outside 1..{MAX_FRAME_SIZE}")
        self._tar = plan.tar_source()
        self._single_tar_read = single_tar_read
        self.frame_size = frame_size
        self._full_frame = _encoded_frame_size(frame_size)
        full_frames, rest = divmod(plan.tar_size, frame_size)
        self.size = full_frames * self._full_frame + (_encoded_frame_size(rest) if rest else 0)
        text = f"{STORED_FORMAT_VERSION}\n{plan.digest}\n{frame_size}"
        self.digest = hashlib.sha256(text.encode("ascii")).hexdigest()

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with archive bytes ``[offset, offset + len(buf))``.

        Raises :class:`ValueError` if the range is outside ``[0, size)``.
        """
        length = len(buf)
        if offset < 0 or offset + length > self.size:
            raise ValueError(f"read [{offset}, {offset + length}) outside 0..{self.size}")
        pieces = self._pieces(offset, length)
        if not self._single_tar_read:
            for pos, piece in pieces:
                if isinstance(piece, bytes):
                    buf[pos : pos + len(piece)] = piece
                else:
                    self._tar.readinto(piece[0], buf[pos : pos + piece[1]])
            return
        runs = [(pos, piece) for pos, piece in pieces if not isinstance(piece, bytes)]
        if runs:
            # The tar bytes of a read are contiguous: read them all to the end of the buffer,
            # then move each run forward to its place. Run k lands at or before its copy and
            # ends before run k+1's copy starts, so moving in order overwrites nothing unread.
            tar_start = runs[0][1][0]
            tar_length = sum(n for _, (_, n) in runs)
            parked = length - tar_length
            self._tar.readinto(tar_start, buf[parked:])
            for pos, (tar_offset, n) in runs:
                source = parked + tar_offset - tar_start
                if source != pos:
                    buf[pos : pos + n] = buf[source : source + n]  # memmove
        for pos, piece in pieces:
            if isinstance(piece, bytes):
                buf[pos : pos + len(piece)] = piece

    def _pieces(self, offset: int, length: int) -> list[tuple[int, bytes | tuple[int, int]]]:
        """What lands where in a read: ``(position in the read, header bytes)`` or
        ``(position in the read, (tar offset, length))``, in order."""
        tar_size, frame_size = self._tar.size, self.frame_size
        pieces: list[tuple[int, bytes | tuple[int, int]]] = []
        pos = 0
        while pos < length:
            frame, within = divmod(offset + pos, self._full_frame)
            frame_start = frame * frame_size
            frame_length = min(frame_size, tar_size - frame_start)
            if within < FRAME_HEADER_SIZE:
                take = min(FRAME_HEADER_SIZE - within, length - pos)
                pieces.append((pos, _frame_header(frame_length)[within : within + take]))
                pos += take
                continue
            block, in_block = divmod(within - FRAME_HEADER_SIZE, BLOCK_SIZE + BLOCK_HEADER_SIZE)
            block_start = block * BLOCK_SIZE
            block_length = min(BLOCK_SIZE, frame_length - block_start)
            if in_block < BLOCK_HEADER_SIZE:
                last = block_start + block_length == frame_length
                header = _block_header(block_length, last)
                take = min(BLOCK_HEADER_SIZE - in_block, length - pos)
                pieces.append((pos, header[in_block : in_block + take]))
                pos += take
                in_block = BLOCK_HEADER_SIZE
                if pos == length:
                    break
            data_offset = in_block - BLOCK_HEADER_SIZE
            take = min(block_length - data_offset, length - pos)
            pieces.append((pos, (frame_start + block_start + data_offset, take)))
            pos += take
        return pieces


def stored_archive(
    plan: ArchivePlan, *, frame_size: int = DEFAULT_FRAME_SIZE, single_tar_read: bool = False
) -> StoredArchive:
    """The stored (raw-block zstd) archive of ``plan``; its size is known without reading.

    ``single_tar_read``: see :class:`StoredArchive` (for plans with computed members).
    """
    return StoredArchive(plan, frame_size=frame_size, single_tar_read=single_tar_read)
