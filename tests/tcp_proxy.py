"""A real TCP proxy on 127.0.0.1 for network-failure tests: throttle, drop once, or cut.

Failures happen the way they do in life — a slow link, a socket that dies in the middle of a
body — instead of being mocked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CHUNK = 16 * 1024


class TcpProxy:
    """Forwards to ``target_port``.

    ``rate`` caps each connection's bytes/s (changeable while running); the first connection
    whose downstream bytes pass ``drop_after`` is aborted (once: ``dropped`` counts it);
    :meth:`cut` aborts every open connection; ``upstream`` keeps what clients sent (the
    requests, to count them).
    """

    def __init__(
        self, target_port: int, *, rate: float | None = None, drop_after: int | None = None
    ) -> None:
        self.target_port = target_port
        self.rate = rate
        self.drop_after = drop_after
        self.dropped = 0
        self.upstream = bytearray()
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, downstream: bool
    ) -> None:
        self._writers.add(writer)
        seen = 0
        try:
            while data := await reader.read(CHUNK):
                limit = self.drop_after if downstream and not self.dropped else None
                if limit is not None and seen + len(data) > limit:
                    writer.write(data[: limit - seen])
                    await writer.drain()
                    self.dropped += 1
                    writer.transport.abort()
                    return
                seen += len(data)
                if not downstream:
                    self.upstream += data
                writer.write(data)
                await writer.drain()
                if self.rate:
                    await asyncio.sleep(len(data) / self.rate)
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        upstream = asyncio.ensure_future(self._pipe(client_r, server_w, downstream=False))
        try:
            await self._pipe(server_r, client_w, downstream=True)
        finally:
            upstream.cancel()
            server_w.close()

    def cut(self) -> None:
        def abort_all() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(abort_all)

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        # Aborted transports end every pipe by themselves; cancelling the handler tasks
        # instead would make asyncio's stream callback log the CancelledError.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await self._server.wait_closed()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    @contextmanager
    def running(self) -> Iterator[TcpProxy]:
        self._thread.start()
        self._ready.wait(10)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
