"""Resume state: the partial file beside the target and the small JSON that describes it.

For a target ``model.safetensors`` the bytes go to ``model.safetensors.wpdl.part`` and the
state to ``model.safetensors.wpdl``. The state names the remote entity (size, strong ETag,
expected sha256), its parts (half-open byte ranges that tile the file; a part may be split
while it downloads, so they are listed rather than implied by one part size) and, per part,
how many bytes from the part's start were written. It is replaced atomically through
``model.safetensors.wpdl.tmp``, so a kill leaves either the old or the new state, and perhaps
that temp file, which nothing ever reads: whatever next settles the file (finishing it,
finding it in place, starting it over) deletes it with the state. A state that does not
match what the server now says is discarded: never splice two versions. Version 1 files
(one ``part_size``) still load.

Durability (see :class:`~weightport.client.transfer.Transfer`): a killed process loses no
written bytes (they are in the page cache), only an OS crash or power cut can. When a sha256
is offered, the final hash re-reads every byte, resumed ones included, so lost bytes are
caught and the file starts over; the partial file is then *not* fsynced (syncing caps a
download at the disk's sync speed, 230 MB/s on this project's machines, against ~800 MB/s
into the page cache). Without a digest nothing would catch lost bytes, so the partial file
is fdatasync'ed before each state write and before the final rename.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_SUFFIX = ".wpdl"
PARTIAL_SUFFIX = ".wpdl.part"
_VERSION = 2


@dataclass(frozen=True)
class Part:
    """One range of a file, half-open ``[start, end)``, fetched by one request at a time."""

    index: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def plan_parts(size: int, part_size: int) -> tuple[Part, ...]:
    """Split ``size`` bytes into parts of ``part_size`` (the last one shorter); none if empty."""
    if part_size <= 0:
        raise ValueError("part_size must be positive")
    return tuple(
        Part(i, start, min(size, start + part_size))
        for i, start in enumerate(range(0, size, part_size))
    )


def partial_path(target: Path) -> Path:
    """Where the bytes of ``target`` accumulate until they are verified."""
    return target.with_name(target.name + PARTIAL_SUFFIX)


def state_path(target: Path) -> Path:
    """The resume state file of ``target``."""
    return target.with_name(target.name + STATE_SUFFIX)


def tiles(size: int, parts: tuple[Part, ...]) -> bool:
    """Whether ``parts`` cover ``[0, size)`` exactly once, none empty (in any order)."""
    pos = 0
    for part in sorted(parts, key=lambda p: p.start):
        if part.start != pos or part.end <= part.start:
            return False
        pos = part.end
    return pos == size


@dataclass(frozen=True)
class ResumeState:
    """What a partial file holds: the entity it belongs to, its parts, bytes done per part."""

    size: int
    etag: str | None
    sha256: str | None
    parts: tuple[Part, ...]
    done: tuple[int, ...]

    def matches(self, *, size: int, etag: str | None, sha256: str | None) -> bool:
        """Whether these bytes belong to the entity the server now describes.

        Without an ETag or a digest nothing proves the server still has the same bytes, so
        such a state never matches.
        """
        if etag is None and sha256 is None:
            return False
        return (self.size, self.etag, self.sha256) == (size, etag, sha256)


def load_state(path: Path) -> ResumeState | None:
    """Read a state file; ``None`` if it is missing, unreadable or inconsistent."""
    try:
        raw: Any = json.loads(path.read_text("utf-8"))
        size = int(raw["size"])
        if raw.get("version") == 1:  # parts implied by one part size
            part_size = int(raw["part_size"])
            parts = plan_parts(size, part_size) if part_size > 0 and size >= 0 else ()
        elif raw.get("version") == _VERSION:
            bounds = [(int(a), int(b)) for a, b in raw["parts"]]
            parts = tuple(Part(i, a, b) for i, (a, b) in enumerate(bounds))
        else:
            return None
        state = ResumeState(
            size=size,
            etag=raw["etag"] if isinstance(raw["etag"], str) else None,
            sha256=raw["sha256"] if isinstance(raw["sha256"], str) else None,
            parts=parts,
            done=tuple(int(n) for n in raw["done"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if state.size < 0 or not tiles(state.size, state.parts):
        return None
    if len(state.parts) != len(state.done):
        return None
    if any(not 0 <= n <= part.size for n, part in zip(state.done, state.parts, strict=True)):
        return None
    return state


def save_state(path: Path, state: ResumeState) -> None:
    """Write ``state`` atomically (temp file, fsync, ``os.replace``); on failure the old
    state stays and the temp file is deleted."""
    doc = {
        "version": _VERSION,
        "size": state.size,
        "etag": state.etag,
        "sha256": state.sha256,
        "parts": [[part.start, part.end] for part in state.parts],
        "done": list(state.done),
    }
    tmp = _temp_of(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, json.dumps(doc, separators=(",", ":")).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:  # a full disk, or Ctrl-C landing here on the calling thread
        tmp.unlink(missing_ok=True)
        raise


def _temp_of(state_file: Path) -> Path:
    # One fixed name per state, not a unique one: a temp file a kill leaves behind is
    # overwritten by the next save or deleted by remove_state, never piled up.
    return state_file.with_name(state_file.name + ".tmp")


def remove_state(state_file: Path) -> None:
    """Delete a state file and the temp file a save killed midway may have left beside it."""
    remove_quietly(state_file, _temp_of(state_file))


def remove_quietly(*paths: Path) -> None:
    """Delete files that may not exist."""
    for path in paths:
        path.unlink(missing_ok=True)
