"""A test harness for serving code: an aiohttp server on 127.0.0.1 on its own loop thread
that serves registered entities through ``serve_entity``, sources that record or gate their
reads, and raw-socket clients that hang up mid-body."""

from __future__ import annotations

import asyncio
import queue
import random
import socket
import struct
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web

from weightport.errors import StorageError, WeightportError
from weightport.server.byteserve import Entity, LocalFile, SourceBody, serve_entity

T = TypeVar("T")
PRIME = 65521  # pattern period: not a divisor of any chunk size, so offsets matter


@dataclass
class PatternSource:
    """Deterministic bytes of any size without holding them; records every read."""

    size: int
    seed: int = 0
    fail_at: int | None = None
    reads: list[tuple[int, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.block = random.Random(self.seed).randbytes(PRIME)

    def readinto(self, offset: int, buf: memoryview) -> None:
        self.reads.append((offset, len(buf), id(buf.obj)))
        if self.fail_at is not None and offset + len(buf) > self.fail_at:
            raise StorageError(f"simulated storage failure at {offset}")
        pos = 0
        while pos < len(buf):
            i = (offset + pos) % PRIME
            take = min(PRIME - i, len(buf) - pos)
            buf[pos : pos + take] = self.block[i : i + take]
            pos += take

    def bytes(self, start: int = 0, end: int | None = None) -> bytes:
        end = self.size if end is None else end
        out = bytearray(end - start)
        if out:
            self.readinto(start, memoryview(out))
        return bytes(out)


@dataclass
class GatedSource:
    """Bytes that are only read once the test opens the gate (slow storage)."""

    size: int
    started: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)

    def readinto(self, offset: int, buf: memoryview) -> None:
        self.started.set()
        self.gate.wait()
        buf[:] = b"x" * len(buf)


@dataclass
class Route:
    entity: Entity
    body: LocalFile | SourceBody
    extra_headers: Mapping[str, str] | None = None


@dataclass
class Outcome:
    status: int | None
    error: BaseException | None


class Server:
    """An aiohttp app serving registered entities at /<name>, on its own loop thread."""

    def __init__(
        self, loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    ) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: dict[str, web.Request] = {}
        self.outcomes: dict[str, queue.Queue[Outcome]] = {}
        self.loop = loop_factory()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None
        self.port = self.call(self._start)

    def call(self, make: Callable[[], Coroutine[None, None, T]]) -> T:
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result()

    async def _start(self) -> int:
        @web.middleware
        async def errors(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            # Stand-in for the envelope renderer, which lives elsewhere.
            try:
                return await handler(request)
            except WeightportError as exc:
                return web.Response(status=exc.status, text=exc.message)

        app = web.Application(middlewares=[errors])
        app.router.add_route("*", "/{name}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(self.runner.addresses[0][1])

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        route = self.routes[name]
        self.requests[name] = request
        try:
            response = await serve_entity(
                request, route.entity, route.body, max_ranges=8, extra_headers=route.extra_headers
            )
        except BaseException as exc:
            self.outcomes[name].put(Outcome(None, exc))
            raise
        self.outcomes[name].put(Outcome(response.status, None))
        return response

    def add(
        self,
        entity: Entity,
        body: LocalFile | SourceBody,
        extra_headers: Mapping[str, str] | None = None,
    ) -> str:
        name = uuid.uuid4().hex
        self.outcomes[name] = queue.Queue()
        self.routes[name] = Route(entity, body, extra_headers)
        return f"http://127.0.0.1:{self.port}/{name}"

    def outcome(self, url: str) -> Outcome:
        return self.outcomes[url.rsplit("/", 1)[1]].get()

    def close(self) -> None:
        async def stop() -> None:
            assert self.runner is not None
            await self.runner.cleanup()

        self.call(stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def connect(url: str) -> socket.socket:
    host, port = url.split("/")[2].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect((host, int(port)))
    return sock


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def hang_up_mid_body(url: str, headers: str = "") -> int:
    """Request ``url``, read a little of the body, then reset the connection."""
    sock = connect(url)
    path = "/" + url.split("/", 3)[3]
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    got = 0
    while got < 200_000:
        chunk = sock.recv(65536)
        assert chunk
        got += len(chunk)
    reset(sock)
    return got
