"""The layout of a deterministic tar: every header and offset, computed before any byte.

An :class:`ArchivePlan` is a pure function of the top folder name and the members (name,
size, identity); member order does not matter. The tar itself is never materialised:
:meth:`ArchivePlan.tar_source` is a random-access view that computes only the bytes a read
touches, reading member data through each member's :class:`ByteSource`.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

from weightport.archive.headers import BLOCK, END_OF_ARCHIVE, RECORD, entry_header
from weightport.archive.names import tree_entries, validate_top
from weightport.errors import InvalidArgument
from weightport.storage.base import ByteSource

#: Changes whenever the tar layout for the same inputs would change; part of every digest.
TAR_FORMAT_VERSION = "weightport-tar/1"


@dataclass(frozen=True)
class ArchiveMember:
    """One file of an archive.

    ``name`` is its relative POSIX path inside the top folder (``"tokenizer.json"``,
    ``"adapter/adapter_config.json"``); ``identity`` names its bytes stably (the blob's
    sha256, say) and feeds the archive digest, so two plans with equal digests are equal
    byte for byte.
    """

    name: str
    source: ByteSource
    identity: str


# A literal run of tar bytes (headers, padding) or a member's data.
_Part = memoryview | ByteSource


class ArchivePlan:
    """The tar layout of one archive; build it with :meth:`build`.

    Attributes: ``top`` (the folder name), ``members`` (in archive order), ``tar_size`` (bytes
    of the uncompressed tar), ``digest`` (sha256 hex over the format version, ``top`` and
    each member's name, size and identity).
    """

    __slots__ = ("_parts", "_starts", "digest", "members", "tar_size", "top")

    def __init__(
        self,
        top: str,
        members: tuple[ArchiveMember, ...],
        starts: list[int],
        parts: list[_Part],
        digest: str,
    ) -> None:
        self.top = top
        self.members = members
        self.tar_size = starts[-1]
        self.digest = digest
        self._starts = starts
        self._parts = parts

    @classmethod
    def build(cls, top: str, members: Iterable[ArchiveMember]) -> ArchivePlan:
        """Validate names and lay out the tar.

        Raises :class:`weightport.errors.InvalidArgument` for an unsafe folder or member
        name (absolute, ``..``, empty segments, backslash, control characters), duplicate
        names, a file that is also a folder, or a negative size.
        """
        validate_top(top)
        given = tuple(members)
        sizes = []
        for member in given:
            size = member.source.size
            if size < 0:
                raise InvalidArgument(f"archive member {member.name!r}: negative size {size}")
            sizes.append(size)
        entries = tree_entries(top, (m.name for m in given))

        starts: list[int] = []
        parts: list[_Part] = []
        literal = bytearray()
        offset = 0

        def flush() -> None:
            nonlocal offset
            if literal:
                starts.append(offset)
                parts.append(memoryview(bytes(literal)))
                offset += len(literal)
                literal.clear()

        ordered: list[ArchiveMember] = []
        described: list[tuple[str, int, str]] = []
        for entry in entries:
            path = "/".join((top, *entry.segments))
            size = 0 if entry.index is None else sizes[entry.index]
            literal += entry_header(path, size=size, is_dir=entry.is_dir)
            if entry.index is not None:
                member = given[entry.index]
                ordered.append(member)
                described.append((member.name, size, member.identity))
                if size:
                    flush()
                    starts.append(offset)
                    parts.append(member.source)
                    offset += size
                    literal += bytes(-size % BLOCK)
        literal += END_OF_ARCHIVE
        literal += bytes(-(offset + len(literal)) % RECORD)
        flush()
        starts.append(offset)  # sentinel: the end of the last part is the tar size

        return cls(top, tuple(ordered), starts, parts, _digest(top, described))

    def __repr__(self) -> str:
        return (
            f"ArchivePlan(top={self.top!r}, members={len(self.members)}, "
            f"tar_size={self.tar_size}, digest={self.digest[:12]}…)"
        )

    def tar_source(self) -> TarView:
        """A random-access :class:`ByteSource` over the uncompressed tar."""
        return TarView(self)


def _digest(top: str, members: list[tuple[str, int, str]]) -> str:
    # JSON gives an unambiguous encoding of strings (no separator can be smuggled in).
    text = json.dumps([TAR_FORMAT_VERSION, top, members], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class TarView:
    """The tar bytes of a plan as a :class:`ByteSource`; reads compute only what they touch.

    Safe to read from several threads at once if the members' sources are.
    """

    __slots__ = ("_parts", "_starts", "size")

    def __init__(self, plan: ArchivePlan) -> None:
        self._starts = plan._starts
        self._parts = plan._parts
        self.size = plan.tar_size

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with tar bytes ``[offset, offset + len(buf))``.

        Raises :class:`ValueError` if the range is outside ``[0, size)``.
        """
        length = len(buf)
        if offset < 0 or offset + length > self.size:
            raise ValueError(f"read [{offset}, {offset + length}) outside 0..{self.size}")
        starts, parts = self._starts, self._parts
        index = bisect_right(starts, offset) - 1
        pos = 0
        while pos < length:
            start = starts[index]
            local = offset + pos - start
            take = min(starts[index + 1] - start - local, length - pos)
            part = parts[index]
            if isinstance(part, memoryview):
                buf[pos : pos + take] = part[local : local + take]
            else:
                part.readinto(local, buf[pos : pos + take])
            pos += take
            index += 1
