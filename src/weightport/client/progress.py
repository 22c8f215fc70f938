"""Progress reports: plain values the engine hands to a sink from the calling thread."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class FileProgress:
    """One file in a progress snapshot: ``phase`` is queued/downloading/verifying/done/skipped."""

    relpath: str
    size: int
    done: int
    phase: str


@dataclass(frozen=True)
class ProgressSnapshot:
    """Where the whole download stands; ``resumed`` bytes came from earlier runs."""

    files: tuple[FileProgress, ...]
    resumed: int

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def done(self) -> int:
        return sum(f.done for f in self.files)


ProgressSink = Callable[[ProgressSnapshot], None]
