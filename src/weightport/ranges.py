"""HTTP Range and conditional requests (RFC 9110 §13, §14), as pure functions: no I/O.

Ranges inside weightport are half-open ``[start, end)`` (:class:`ByteRange`); HTTP's inclusive
``first-last`` form appears only at the edge (:meth:`ByteRange.content_range`).

Decisions where RFC 9110 leaves a choice, each pinned by a test:

- A ``Range`` header that is syntactically invalid, names a unit other than ``bytes``, or
  lists more than ``max_ranges`` ranges is *ignored*: :func:`parse_range` returns ``None``
  and the whole entity is served with 200 (§14.2: a server MAY ignore Range; nginx and
  Apache do the same for too many ranges). One invalid range-spec — ``a-b`` with
  ``b < a``, a non-ASCII or signed number — makes the whole header invalid.
- Unsatisfiable range-specs are dropped; if none is left, :class:`RangeNotSatisfiable`
  (416). A range on an empty entity is never satisfiable.
- The satisfiable ranges are sorted and overlapping or adjacent ones coalesced (§14.2
  allows it), so a multi-range answer never sends a byte twice and a request such as
  ``bytes=0-9,10-19`` is answered as the single range ``0-19``.
- Entity tags compare as §8.8.3 says: strong comparison for ``If-Match`` and ``If-Range``,
  weak for ``If-None-Match``. An HTTP-date in ``If-Range`` never matches: weightport sends
  no ``Last-Modified``, so a date cannot prove the client holds the current bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from weightport.errors import RangeNotSatisfiable

__all__ = [
    "ByteRange",
    "Conditional",
    "EntityTag",
    "evaluate_conditions",
    "format_etag",
    "parse_etag_list",
    "parse_range",
    "unsatisfied_content_range",
]

_ASCII_DIGITS = re.compile(r"[0-9]+")
# etagc = %x21 / %x23-7E / obs-text; a bare digest we emit must stay within visible ASCII.
_EMITTABLE_OPAQUE = re.compile(r"[\x21\x23-\x7e]+")
# What we accept from clients: anything but DQUOTE, controls, space and DEL (obs-text included).
_RECEIVED_OPAQUE = re.compile(r'[^\x00-\x20"\x7f]*')
# Numbers longer than this are larger than any entity; the cap keeps int() away from
# CPython's 4300-digit conversion limit (a ValueError a client could otherwise trigger).
_MAX_DIGITS = 24
_HUGE = 10**_MAX_DIGITS


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``[start, end)`` of an entity (half-open, ``start < end``)."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"empty or negative byte range [{self.start}, {self.end})")

    @property
    def length(self) -> int:
        """Number of bytes in the range."""
        return self.end - self.start

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` value for this range of a ``size``-byte entity."""
        if self.end > size:
            raise ValueError(f"range [{self.start}, {self.end}) outside a {size}-byte entity")
        return f"bytes {self.start}-{self.end - 1}/{size}"


def unsatisfied_content_range(size: int) -> str:
    """The ``Content-Range`` value a 416 answer carries: ``bytes */SIZE`` (§14.4)."""
    return f"bytes */{size}"


def _number(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return _HUGE if len(digits) > _MAX_DIGITS else int(digits)


def parse_range(header: str | None, size: int, *, max_ranges: int) -> list[ByteRange] | None:
    """The byte ranges a ``Range`` header selects from a ``size``-byte entity.

    Returns ``None`` when the header must be ignored (absent, not ``bytes``, malformed, or
    more than ``max_ranges`` range-specs): serve the whole entity with 200. Otherwise a
    non-empty list of sorted, disjoint, non-adjacent ranges, clamped to the entity.

    Raises :class:`weightport.errors.RangeNotSatisfiable` when no range-spec selects a byte.
    """
    if max_ranges < 1:
        raise ValueError(f"max_ranges must be at least 1, got {max_ranges}")
    if size < 0:
        raise ValueError(f"negative entity size {size}")
    if header is None:
        return None
    unit, equals, range_set = header.partition("=")
    if not equals or unit.strip(" \t").lower() != "bytes":
        return None
    # Empty list elements ("0-1,,5-6") are allowed and ignored (§5.6.1).
    specs = [spec.strip(" \t") for spec in range_set.split(",")]
    specs = [spec for spec in specs if spec]
    if not specs or len(specs) > max_ranges:
        return None

    wanted: list[tuple[int, int]] = []
    for spec in specs:
        first, dash, last = spec.partition("-")
        first, last = first.strip(" \t"), last.strip(" \t")
        if not dash:
            return None
        if first:  # int-range: first-pos "-" [ last-pos ]
            if not _ASCII_DIGITS.fullmatch(first):
                return None
            start = _number(first)
            if last:
                if not _ASCII_DIGITS.fullmatch(last):
                    return None
                stop = _number(last) + 1
                if stop <= start:  # last-pos < first-pos: invalid (§14.1.1)
                    return None
            else:
                stop = size
            if start < size:
                wanted.append((start, min(stop, size)))
        else:  # suffix-range: "-" suffix-length
            if not _ASCII_DIGITS.fullmatch(last):
                return None
            suffix = _number(last)
            if suffix > 0 and size > 0:
                wanted.append((max(size - suffix, 0), size))

    if not wanted:
        shown = header if len(header) <= 80 else header[:77] + "..."
        raise RangeNotSatisfiable(
            f"Range {shown!r} selects no bytes of the {size}-byte entity", size=size
        )
    return _coalesce(wanted)


def _coalesce(spans: list[tuple[int, int]]) -> list[ByteRange]:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [ByteRange(start, end) for start, end in merged]


@dataclass(frozen=True)
class EntityTag:
    """One entity tag: its opaque value (without quotes) and whether it is weak."""

    opaque: str
    weak: bool = False

    def __str__(self) -> str:
        return f'{"W/" if self.weak else ""}"{self.opaque}"'

    def strong_match(self, other: EntityTag) -> bool:
        """Strong comparison (§8.8.3.2): both strong and the same opaque value."""
        return not self.weak and not other.weak and self.opaque == other.opaque

    def weak_match(self, other: EntityTag) -> bool:
        """Weak comparison (§8.8.3.2): the same opaque value, weakness ignored."""
        return self.opaque == other.opaque


def format_etag(digest: str) -> str:
    """The strong ``ETag`` header value for a bare digest: ``"<digest>"``."""
    if not _EMITTABLE_OPAQUE.fullmatch(digest):
        raise ValueError(f"not usable as an entity tag: {digest!r}")
    return f'"{digest}"'


def parse_etag_list(header: str | None) -> list[EntityTag] | Literal["*"]:
    """The entity tags of an ``If-Match`` / ``If-None-Match`` value, or ``"*"``.

    Quoted values may contain commas. ``W/`` (case-sensitive, §8.8.3) marks a weak tag.
    Malformed members (unquoted, unterminated, trailing junk) are skipped: they cannot
    match anything, which is the safe reading for both headers.
    """
    if header is None:
        return []
    if header.strip(" \t") == "*":
        return "*"
    tags: list[EntityTag] = []
    pos, n = 0, len(header)
    while pos < n:
        if header[pos] in " \t,":
            pos += 1
            continue
        weak = header.startswith("W/", pos)
        quote = pos + 2 if weak else pos
        if quote < n and header[quote] == '"':
            close = header.find('"', quote + 1)
            if close == -1:
                break  # unterminated: nothing after it can be trusted
            opaque = header[quote + 1 : close]
            after = close + 1
            while after < n and header[after] in " \t":
                after += 1
            if (after == n or header[after] == ",") and _RECEIVED_OPAQUE.fullmatch(opaque):
                tags.append(EntityTag(opaque, weak))
                pos = after
                continue
            pos = after
        # Not a well-formed member: skip to the next comma outside this member.
        comma = header.find(",", pos)
        if comma == -1:
            break
        pos = comma + 1
    return tags


class Conditional(Enum):
    """What the conditional headers of a GET/HEAD tell the server to do."""

    PROCEED = "proceed"
    #: If-None-Match matched on GET/HEAD: answer 304 without a body.
    NOT_MODIFIED = "not_modified"
    #: If-Match failed, or If-None-Match matched on another method: answer 412.
    PRECONDITION_FAILED = "precondition_failed"
    #: If-Range did not strongly match: ignore Range and send the whole entity (200).
    IGNORE_RANGE = "ignore_range"


def evaluate_conditions(
    *,
    method: str,
    if_none_match: str | None,
    if_range: str | None,
    etag: str,
    if_match: str | None = None,
) -> Conditional:
    """Evaluate the request's preconditions against our strong ETag, in §13.2.2 order.

    ``etag`` is the bare digest (as given to :func:`format_etag`). ``If-Modified-Since`` and
    ``If-Unmodified-Since`` are not taken: without a modification date they are ignored
    (§13.1.3, §13.1.4).
    """
    ours = EntityTag(etag)
    if if_match is not None:
        tags = parse_etag_list(if_match)
        if tags != "*" and not any(tag.strong_match(ours) for tag in tags):
            return Conditional.PRECONDITION_FAILED
    if if_none_match is not None:
        tags = parse_etag_list(if_none_match)
        if tags == "*" or any(tag.weak_match(ours) for tag in tags):
            if method.upper() in ("GET", "HEAD"):
                return Conditional.NOT_MODIFIED
            return Conditional.PRECONDITION_FAILED
    if if_range is not None and not _if_range_matches(if_range, ours):
        return Conditional.IGNORE_RANGE
    return Conditional.PROCEED


def _if_range_matches(value: str, ours: EntityTag) -> bool:
    # If-Range holds exactly one entity-tag or an HTTP-date (§13.1.5). A date, a weak tag,
    # a list or anything malformed cannot be strongly matched, so the Range is ignored.
    tags = parse_etag_list(value)
    return tags != "*" and len(tags) == 1 and tags[0].strong_match(ours)
