"""A :class:`~weightport.storage.base.ByteSource` over bytes in memory, for tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemorySource:
    """A :class:`ByteSource` over bytes in memory (small generated files)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def readinto(self, offset: int, buf: memoryview) -> None:
        end = offset + len(buf)
        if offset < 0 or end > len(self.data):
            raise ValueError(f"read [{offset}, {end}) outside 0..{len(self.data)}")
        buf[:] = self.data[offset:end]
