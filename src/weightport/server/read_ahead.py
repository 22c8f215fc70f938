"""The read-ahead pool: computed response bodies (merged archives) are computed ahead of the
socket on a few threads that all such responses share.

A merged archive is arithmetic (:mod:`weightport.merge`), not disk reads, and the merge
releases the GIL, so a response can keep several chunks computing on every core while an
earlier one is being sent. One pool serves the whole process: concurrent merged downloads
share its threads in turn (its queue is first in, first out, and each response has at most
``window`` chunks in it, so none can starve the others), and a pool per request would let
N downloads start N × cores threads on the same cores.

Memory stays bounded: each response holds at most ``window + 2`` chunk buffers (the chunks
in flight or ready, the one being sent and one the socket may still hold), whatever the
archive size and however slow its client. The buffers are anonymous memory maps, so they go
back to the operating system as soon as the response ends — a client that went away does not
leave its read-ahead behind in the allocator. :attr:`ReadAheadPool.held_bytes` counts them.
"""

from __future__ import annotations

import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor

#: Chunks one response may have computing or computed ahead of the socket.
DEFAULT_WINDOW = 4


def default_workers() -> int:
    """One thread per core, at most four: the merge is CPU-bound."""
    return max(1, min(4, os.cpu_count() or 1))


class ReadAheadPool:
    """Threads that compute chunks of computed bodies, shared by all responses."""

    def __init__(self, workers: int | None = None, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"read-ahead window must be at least 1 chunk, got {window}")
        self.workers = workers if workers is not None else default_workers()
        self.window = window
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="weightport-compute")
        self._lock = threading.Lock()
        self._held = 0

    @property
    def held_bytes(self) -> int:
        """Bytes of chunk buffers that responses hold now (0 when none is streaming)."""
        return self._held

    def buffer(self, size: int) -> mmap.mmap:
        """A fresh chunk buffer of ``size`` bytes; hand it back with :meth:`release`."""
        buffer = mmap.mmap(-1, max(1, size))
        with self._lock:
            self._held += len(buffer)
        return buffer

    def release(self, buffer: mmap.mmap) -> None:
        """Count ``buffer`` as returned; its memory is unmapped once no view of it is left
        (a read still running on it keeps it until that read ends)."""
        with self._lock:
            self._held -= len(buffer)

    def close(self) -> None:
        """Stop the threads; chunks not started are dropped."""
        self.executor.shutdown(wait=False, cancel_futures=True)
