"""A real TCP proxy on 127.0.0.1 that can drop a connection mid-stream, once.

Used to test resume the way it happens in life: the socket dies in the middle of a body.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class DroppingProxy:
    """Forwards to ``target_port``; the first connection whose downstream bytes pass
    ``drop_after`` is cut (both ways). Later connections pass untouched."""

    def __init__(self, target_port: int, drop_after: int) -> None:
        self.target_port = target_port
        self.drop_after = drop_after
        self.dropped = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool
    ) -> None:
        seen = 0
        try:
            while data := await reader.read(256 * 1024):
                if count and not self.dropped and seen + len(data) > self.drop_after:
                    writer.write(data[: self.drop_after - seen])
                    await writer.drain()
                    self.dropped += 1
                    writer.transport.abort()
                    return
                seen += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        upstream = asyncio.ensure_future(self._pipe(client_r, server_w, count=False))
        await self._pipe(server_r, client_w, count=True)
        server_w.close()
        upstream.cancel()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    @contextmanager
    def running(self) -> Iterator[DroppingProxy]:
        self._thread.start()
        self._ready.wait(10)
        try:
            yield self
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
