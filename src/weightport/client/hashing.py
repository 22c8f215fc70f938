"""One file's sha256, fed strictly in order by whichever thread holds the next bytes.

sha256 cannot take bytes out of order, and the parts of a file arrive in parallel. The worker
whose bytes begin exactly where the digest stands feeds them from its own read buffer, right
after writing them, while they are still in the CPU's cache (:meth:`InOrderHash.feed`). Bytes
that arrived ahead of the digest (another part, further on) are read back from the page cache
by the file's finisher once everything before them is on disk (:meth:`InOrderHash.catch_up`).
Re-reading every byte instead cost a copy out of the page cache per byte, and hashing from
memory rather than cache: the client's user CPU per GB on loopback fell by 16-22 % without it
(see BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import os
import threading

#: Bytes read back from the page cache per step: hashed in cache, and the lock held briefly.
READ_BACK_CHUNK = 1 << 20
#: The most a worker reads back before its own bytes (its connection waits meanwhile, ~40 ms
#: at most); a longer way is the finisher's, which catches up while the worker downloads.
MOST_CAUGHT_UP = 64 << 20


class InOrderHash:
    """The sha256 of a file's first :attr:`position` bytes (one per file and epoch)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._lock = threading.Lock()
        self._buf: memoryview | None = None  # for read-back, allocated on first use
        #: Bytes hashed so far: the prefix ``[0, position)``. Read unlocked only as a hint.
        self.position = 0
        #: Of those, bytes read back from the file rather than fed from a buffer.
        self.read_back = 0

    def feed(self, offset: int, data: memoryview, *, fd: int, on_disk_from: int, name: str) -> bool:
        """Hash ``data``, the file's bytes at ``offset`` just written to ``fd``, if they are next.

        ``[on_disk_from, offset)`` must be on disk too. When the digest stands in that range
        and at most :data:`MOST_CAUGHT_UP` before ``offset``, those bytes are read back first,
        and from then on the caller's bytes come next. ``False`` otherwise: the finisher reads
        ``data`` back later.
        """
        position = self.position  # a hint: the common miss costs no lock
        if not on_disk_from <= position <= offset or offset - position > MOST_CAUGHT_UP:
            return False
        if position < offset:
            self.catch_up(fd, offset, name=name)
        with self._lock:
            if offset != self.position:
                return False
            self._digest.update(data)
            self.position += len(data)
            return True

    def catch_up(self, fd: int, limit: int, *, name: str) -> None:
        """Hash the file's bytes from :attr:`position` up to ``limit``, read back from ``fd``.

        The caller guarantees ``[position, limit)`` is on disk. Holds the lock one chunk at a
        time, so a worker that reaches the new position meanwhile can go on feeding.
        """
        while self.position < limit:
            with self._lock:
                if self._buf is None:
                    self._buf = memoryview(bytearray(READ_BACK_CHUNK))
                buf = self._buf
                pos = self.position
                want = min(len(buf), limit - pos)
                if want <= 0:
                    return
                n = os.preadv(fd, [buf[:want]], pos)
                if n <= 0:
                    raise OSError(f"{name}: unexpected end of file at {pos}")
                self._digest.update(buf[:n])
                self.position = pos + n
                self.read_back += n

    def hexdigest(self) -> str:
        """The digest of the bytes hashed so far."""
        with self._lock:
            return self._digest.hexdigest()
