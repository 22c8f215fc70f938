"""Read-ahead for remote blobs: a sequential reader finds its next chunks already fetched.

Archives and merged shards read their members in pieces of 128 KiB to 4 MiB. Against an
object store each piece as its own GET would cost a round trip (a few ms) per piece, so a
download would be latency-bound. Here a reader that continues where it (or another reader of
the same blob) stopped is served from aligned chunks, and the next ``depth`` chunks are
fetched in parallel while it consumes the current one: several ranged GETs in flight per
stream. A read that starts somewhere new and is smaller than a chunk (a safetensors header,
a config file) is one exact ranged GET: random access does not pay for read-ahead.

Memory is bounded by ``capacity`` chunks per store, whatever the number of readers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

#: Bytes per fetched chunk: large enough that a GET's latency is small next to its transfer.
CHUNK_BYTES = 8 << 20
#: Chunks fetched ahead of a sequential reader (GETs in flight per stream).
DEPTH = 4
#: Chunks kept per store: room for a few streams' read-ahead.
CAPACITY = 24
#: Where each blob's readers are expected next (per blob: a few concurrent streams).
_STREAMS_PER_KEY = 8
_KEYS_TRACKED = 256

#: ``fetch(key, start, end)`` → bytes ``[start, end)`` of the blob (raises on failure).
Fetch = Callable[[str, int, int], memoryview]


class ReadAhead:
    """Ranged reads of immutable blobs with per-stream read-ahead; thread-safe."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        depth: int = DEPTH,
        capacity: int = CAPACITY,
    ) -> None:
        self._fetch = fetch
        self._chunk = chunk_bytes
        self._depth = depth
        self._capacity = max(capacity, depth + 2)
        self._lock = threading.Lock()
        self._chunks: OrderedDict[tuple[str, int], Future[memoryview]] = OrderedDict()
        self._next: OrderedDict[str, list[int]] = OrderedDict()
        self._pool = ThreadPoolExecutor(max_workers=2 * depth, thread_name_prefix="s3-read")

    def readinto(self, key: str, size: int, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with bytes ``[offset, offset + len(buf))`` of the blob ``key`` of
        ``size`` bytes (the caller has checked the range lies inside it)."""
        out = buf.cast("B")
        length = len(out)
        if length == 0:
            return
        end = offset + length
        if length < self._chunk and not self._is_sequential(key, offset):
            self._remember(key, end)
            out[:] = self._fetch(key, offset, end)
            return
        first, last = offset // self._chunk, (end - 1) // self._chunk
        futures = [self._chunk_future(key, size, index) for index in range(first, last + 1)]
        self._prefetch(key, size, last + 1)
        self._remember(key, end, replacing=offset)
        pos = offset
        for index, future in zip(range(first, last + 1), futures, strict=True):
            data = self._result(key, index, future)
            start = index * self._chunk
            stop = min(end, start + len(data))
            out[pos - offset : stop - offset] = data[pos - start : stop - start]
            pos = stop

    def forget(self, key: str) -> None:
        """Drop what is cached of ``key`` (it was deleted)."""
        with self._lock:
            for cached in [k for k in self._chunks if k[0] == key]:
                del self._chunks[cached]
            self._next.pop(key, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- internals ------------------------------------------------------------------------

    def _is_sequential(self, key: str, offset: int) -> bool:
        with self._lock:
            return offset in self._next.get(key, ()) or (key, offset // self._chunk) in self._chunks

    def _remember(self, key: str, end: int, *, replacing: int | None = None) -> None:
        with self._lock:
            expected = self._next.pop(key, [])
            if replacing is not None and replacing in expected:
                expected.remove(replacing)
            if end not in expected:
                expected.append(end)
            self._next[key] = expected[-_STREAMS_PER_KEY:]
            while len(self._next) > _KEYS_TRACKED:
                self._next.popitem(last=False)

    def _chunk_future(self, key: str, size: int, index: int) -> Future[memoryview]:
        with self._lock:
            future = self._chunks.get((key, index))
            if future is not None:
                self._chunks.move_to_end((key, index))
                return future
            return self._start(key, size, index)

    def _prefetch(self, key: str, size: int, index: int) -> None:
        with self._lock:
            for ahead in range(index, index + self._depth):
                if ahead * self._chunk >= size:
                    return
                if (key, ahead) not in self._chunks:
                    self._start(key, size, ahead)

    def _start(self, key: str, size: int, index: int) -> Future[memoryview]:
        # Called with the lock held.
        start = index * self._chunk
        stop = min(size, start + self._chunk)
        future = self._pool.submit(self._fetch, key, start, stop)
        self._chunks[(key, index)] = future
        while len(self._chunks) > self._capacity:
            self._chunks.popitem(last=False)
        return future

    def _result(self, key: str, index: int, future: Future[memoryview]) -> memoryview:
        try:
            return future.result()
        except BaseException:
            # A failed fetch is not cached: the next reader tries again.
            with self._lock:
                if self._chunks.get((key, index)) is future:
                    del self._chunks[(key, index)]
            raise
