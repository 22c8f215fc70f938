"""The shared read-ahead pool over real sockets: bytes in order whatever order the chunks are
computed in, at most ``window`` chunks computing per response, responses taking turns on
shared threads, and nothing left behind by a client that is slow or goes away."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.serving_harness import PatternSource, Server, connect, hang_up_mid_body, reset
from weightport.server.byteserve import CHUNK_SIZE, Entity, SourceBody
from weightport.server.read_ahead import ReadAheadPool


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def pool() -> Iterator[ReadAheadPool]:
    shared = ReadAheadPool(workers=4, window=3)
    yield shared
    shared.close()


@dataclass
class SlowSource(PatternSource):
    """Pattern bytes whose reads take a little while (random, so they finish out of order)
    and are counted: how many run at once, at most, and in which order they started."""

    delay: float = 0.002
    tag: str = ""
    log: list[str] = field(default_factory=list)
    running: int = 0
    most: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def readinto(self, offset: int, buf: memoryview) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.log.append(self.tag)
        time.sleep(random.uniform(0, 2 * self.delay))
        super().readinto(offset, buf)
        with self.lock:
            self.running -= 1


@dataclass
class BlockingSource(PatternSource):
    """Pattern bytes whose reads wait for the test, after the first ``free`` reads."""

    free: int = 0
    gate: threading.Event = field(default_factory=threading.Event)
    waiting: threading.Event = field(default_factory=threading.Event)

    def readinto(self, offset: int, buf: memoryview) -> None:
        if len(self.reads) >= self.free:
            self.waiting.set()
            self.gate.wait()
        super().readinto(offset, buf)


def test_chunks_computed_out_of_order_arrive_in_order(server: Server, pool: ReadAheadPool) -> None:
    size = 20 * CHUNK_SIZE + 777
    source = SlowSource(size, seed=3)
    url = server.add(Entity(size=size, etag="o"), SourceBody(source, pool))
    with httpx.Client(timeout=None) as client:
        assert client.get(url).content == PatternSource(size, seed=3).bytes()
        ranged = client.get(url, headers={"Range": "bytes=5-,0-2"})
    assert ranged.status_code == 206
    assert source.most > 1  # chunks really were computed in parallel
    assert source.most <= pool.window  # and never more than the window at once


def test_responses_take_turns_on_the_shared_threads(server: Server) -> None:
    """Two downloads on a one-thread pool: the second is not held up until the first ends."""
    pool = ReadAheadPool(workers=1, window=2)
    log: list[str] = []
    size = 40 * CHUNK_SIZE
    urls = [
        server.add(
            Entity(size=size, etag=tag), SourceBody(SlowSource(size, tag=tag, log=log), pool)
        )
        for tag in "ab"
    ]
    try:
        with httpx.Client(timeout=None) as client:
            threads = [threading.Thread(target=client.get, args=(url,)) for url in urls]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        pool.close()
    assert sorted(log) == ["a"] * 40 + ["b"] * 40
    # Once both are running, neither gets more than a window's worth of turns in a row.
    both = log[max(log.index("a"), log.index("b")) : min(_last(log, "a"), _last(log, "b"))]
    assert len(both) > 40
    longest = max(len(list(run)) for _, run in itertools.groupby(both))
    assert longest <= 2 * pool.window


def _last(log: list[str], tag: str) -> int:
    return len(log) - 1 - log[::-1].index(tag)


def test_a_client_that_goes_away_stops_its_read_ahead(server: Server) -> None:
    """Hung up while a chunk computes: that chunk may finish, the queued ones may start
    before the failed write is seen, but no chunk beyond the window, and every buffer goes
    back."""
    pool = ReadAheadPool(workers=1, window=4)
    size = 64 * CHUNK_SIZE
    source = BlockingSource(size, free=1)  # the first chunk, then every read waits
    url = server.add(Entity(size=size, etag="g"), SourceBody(source, pool))
    name = url.rsplit("/", 1)[1]
    try:
        sock = connect(url)
        sock.sendall(f"GET /{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(65536)  # headers and the first chunk are coming
        source.waiting.wait()  # the next chunk is computing, three more are queued
        assert 0 < pool.held_bytes <= (pool.window + 2) * CHUNK_SIZE
        reset(sock)
        request = server.requests[name]
        while request.transport is not None and not request.transport.is_closing():
            time.sleep(0.01)  # until the server has seen the hang-up
        source.gate.set()
        assert server.outcome(url).error is None
        pool.executor.submit(lambda: None).result()  # the pool has run what it still had
        assert len(source.reads) <= 1 + pool.window
        assert pool.held_bytes == 0
    finally:
        source.gate.set()
        pool.close()


def test_a_slow_client_holds_at_most_the_window(server: Server) -> None:
    """A client that stops reading: the response computes no further than its buffers."""
    pool = ReadAheadPool(workers=2, window=3)
    size = 256 * CHUNK_SIZE
    source = PatternSource(size)
    url = server.add(Entity(size=size, etag="s"), SourceBody(source, pool))
    sock = connect(url)
    try:
        sock.sendall(f"GET /{url.rsplit('/', 1)[1]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.recv(1024)
        started = -1
        while started != len(source.reads):  # until the server stops reading ahead
            started = len(source.reads)
            time.sleep(0.2)
        # The socket buffers hold some chunks; the pump holds no more than its ring.
        assert pool.held_bytes <= (pool.window + 2) * CHUNK_SIZE
        assert started < 256
        reset(sock)
        assert server.outcome(url).error is None
        assert pool.held_bytes == 0
    finally:
        sock.close()
        pool.close()


def test_many_hang_ups_leave_nothing_behind(server: Server, pool: ReadAheadPool) -> None:
    size = 32 * CHUNK_SIZE
    url = server.add(Entity(size=size, etag="h"), SourceBody(SlowSource(size, delay=0), pool))
    for _ in range(5):
        hang_up_mid_body(url)
        assert server.outcome(url).error is None
    assert pool.held_bytes == 0


def test_the_window_must_hold_a_chunk() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ReadAheadPool(window=0)
