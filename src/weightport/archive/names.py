"""Names inside an archive: validation and the deterministic entry order.

An archive holds one top-level folder; every member lives below it under a relative POSIX
path. Names are checked here, once, so that nothing a caller supplies can make ``tar -x``
write outside the folder it extracts into (no ``..``, no absolute paths, no backslashes that
Windows tools read as separators, no control characters that hide in a terminal listing).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from weightport.errors import InvalidArgument

#: Longest single path segment, in UTF-8 bytes (NAME_MAX on Linux and macOS).
MAX_SEGMENT_BYTES = 255
#: Longest full path in the archive (``top/…``), in UTF-8 bytes (PATH_MAX minus the NUL).
MAX_PATH_BYTES = 4095

# Control characters hide in listings and break shells; backslash is a separator on Windows.
_FORBIDDEN_CHARS = frozenset({*map(chr, range(0x20)), "\x7f", "\\"})


@dataclass(frozen=True)
class TreeEntry:
    """One entry of the archive tree, in archive order.

    ``segments`` is the path below the top folder (empty for the top folder itself);
    ``index`` is the position of the member it came from, or ``None`` for a directory.
    """

    segments: tuple[str, ...]
    index: int | None

    @property
    def is_dir(self) -> bool:
        return self.index is None


def _check_segment(segment: str, what: str) -> None:
    if segment in ("", ".", ".."):
        raise InvalidArgument(f"{what}: empty, '.' or '..' path segment is not allowed")
    bad = _FORBIDDEN_CHARS.intersection(segment)
    if bad:
        shown = ", ".join(sorted(repr(c) for c in bad))
        raise InvalidArgument(f"{what}: forbidden character(s) {shown}")
    try:
        encoded = segment.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"{what}: not encodable as UTF-8") from exc
    if len(encoded) > MAX_SEGMENT_BYTES:
        raise InvalidArgument(f"{what}: path segment longer than {MAX_SEGMENT_BYTES} bytes")


def validate_top(top: str) -> str:
    """Check the top-level folder name (one path segment) and return it unchanged."""
    if "/" in top:
        raise InvalidArgument(f"archive folder {top!r}: must be a single path segment")
    _check_segment(top, f"archive folder {top!r}")
    return top


def split_member_name(name: str) -> tuple[str, ...]:
    """Split a member's relative POSIX path into segments, rejecting anything unsafe."""
    what = f"archive member name {name!r}"
    if name.startswith("/"):
        raise InvalidArgument(f"{what}: absolute paths are not allowed")
    segments = tuple(name.split("/"))
    for segment in segments:
        _check_segment(segment, what)
    return segments


def tree_entries(top: str, names: Iterable[str]) -> list[TreeEntry]:
    """All entries of the archive in their fixed order: directories before their contents.

    The order is a depth-first walk with siblings sorted by code point (which is also UTF-8
    byte order), so it depends only on the set of names, never on the order given.
    Raises :class:`InvalidArgument` for duplicates, for a file that is also used as a
    directory, and for paths too long to extract.
    """
    top_bytes = len(top.encode("utf-8"))
    files: dict[tuple[str, ...], int] = {}
    for index, name in enumerate(names):
        segments = split_member_name(name)
        if segments in files:
            raise InvalidArgument(f"archive member name {name!r}: duplicate")
        if top_bytes + 1 + len(name.encode("utf-8")) > MAX_PATH_BYTES:
            raise InvalidArgument(
                f"archive member name {name!r}: path longer than {MAX_PATH_BYTES} bytes"
            )
        files[segments] = index
    dirs = {segments[:depth] for segments in files for depth in range(len(segments))}
    clash = dirs.intersection(files)
    if clash:
        name = "/".join(min(clash))
        raise InvalidArgument(f"archive member name {name!r}: used both as file and as folder")
    entries = [TreeEntry(segments, None) for segments in dirs]
    entries.extend(TreeEntry(segments, index) for segments, index in files.items())
    # Tuples compare segment by segment, so a folder sorts right before its contents.
    entries.sort(key=lambda entry: entry.segments)
    return entries
