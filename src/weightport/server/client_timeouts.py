"""Clients that stop: the send timeout for responses, the body timeout for request bodies.

(The third, the header timeout, is aiohttp's own keep-alive timeout, which ``serve`` sets:
aiohttp closes a connection that has not sent a complete request head that long after it
connected or after its previous response ended, trickled bytes or not.)

**Send timeout.** A response *waits on its client* while the transport holds bytes it could
not send or a ``sendfile`` is under way. Each connection gets a :class:`SendWatch` that looks,
once a second, at how many bytes the client's TCP stack has acknowledged (``tcpi_bytes_acked``
from ``TCP_INFO``, Linux); a waiting response that sees no new byte acknowledged for
``send_timeout`` seconds has its connection aborted (a ``sendfile`` under way is cancelled
first, since a closed socket would never wake it). This is nginx's ``send_timeout``, not a
minimum rate: a client that keeps reading, however slowly, is never cut. Where ``TCP_INFO``
is missing, progress is seen in the transport's own buffer, so ``sendfile`` is not watched.

**Body timeout.** :func:`read_body_chunk` is how handlers read request bodies: a client that
sends no byte for ``body_timeout`` seconds gets :class:`~weightport.errors.RequestTimeout`
(408), and aiohttp closes the connection after its short lingering read. Form bodies (the
console's) are read whole by :func:`timeouts_middleware`, within ``body_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import weakref
from collections.abc import Awaitable, Callable
from typing import IO, Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from weightport.errors import RequestTimeout

log = logging.getLogger("weightport.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: ``struct tcp_info`` only grows at its end; ``tcpi_bytes_acked`` (Linux 4.1+) is a u64 at
#: byte 120 (after 8 one-byte fields, 24 u32 and two u64).
_BYTES_ACKED_OFFSET = 120
_BYTES_ACKED = struct.Struct("=Q")
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
_LINGER_RESET = struct.pack("ii", 1, 0)
#: How often a watch looks at its connection, at most (a quarter of the timeout if smaller).
_TICK_S = 1.0


#: The watch of each open connection (it ends with its transport).
_WATCHES: weakref.WeakKeyDictionary[asyncio.BaseTransport, SendWatch] = weakref.WeakKeyDictionary()


class ClientStalled(ConnectionError):
    """The client accepted no byte for ``send_timeout`` seconds; its connection was dropped."""


def _bytes_acked(sock: Any) -> int | None:
    if _TCP_INFO is None or sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except (OSError, TypeError):
        return None
    if len(raw) < _BYTES_ACKED_OFFSET + _BYTES_ACKED.size:
        return None
    acked: int = _BYTES_ACKED.unpack_from(raw, _BYTES_ACKED_OFFSET)[0]
    return acked


class SendWatch:
    """Drops one connection whose client stops accepting the response waiting on it."""

    def __init__(self, transport: asyncio.Transport, timeout: float) -> None:
        self._transport = transport
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._sock = transport.get_extra_info("socket")
        self._sendfiles: set[asyncio.Future[int]] = set()
        self._last: tuple[int, int] | None = None
        self._since = self._loop.time()
        self.stalled = False
        self._handle = self._loop.call_later(min(_TICK_S, timeout / 4), self._tick)

    @classmethod
    def attach(cls, request: web.Request, timeout: float) -> SendWatch | None:
        """The watch of the request's connection, started on its first request."""
        transport = request.transport
        if transport is None or transport.is_closing():
            return None
        watch = _WATCHES.get(transport)
        if watch is None:
            watch = _WATCHES[transport] = cls(transport, timeout)
        return watch

    @classmethod
    def of(cls, request: web.Request) -> SendWatch | None:
        """The watch of the request's connection, if one was attached."""
        transport = request.transport
        return None if transport is None else _WATCHES.get(transport)

    async def sendfile(self, fobj: IO[bytes], offset: int, count: int) -> int:
        """``loop.sendfile`` on this connection, watched (bytes sent); :class:`ClientStalled`
        if cut."""
        task = asyncio.ensure_future(self._loop.sendfile(self._transport, fobj, offset, count))
        self._sendfiles.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.stalled and not (current is not None and current.cancelling()):
                raise ClientStalled("client stopped reading") from None
            raise
        finally:
            self._sendfiles.discard(task)

    def _progress(self) -> tuple[int, int]:
        acked = _bytes_acked(self._sock)
        if acked is not None:
            return (0, acked)
        # No TCP_INFO: only the transport's own buffer shows progress (sendfile is blind).
        return (1, self._transport.get_write_buffer_size())

    def _waiting(self, progress: tuple[int, int]) -> bool:
        if self._transport.get_write_buffer_size() > 0:
            return True
        return bool(self._sendfiles) and progress[0] == 0

    def _tick(self) -> None:
        if self._transport.is_closing():
            return
        now = self._loop.time()
        progress = self._progress()
        if not self._waiting(progress) or progress != self._last:
            self._last, self._since = progress, now
        elif now - self._since >= self._timeout:
            self._drop()
            return
        self._handle = self._loop.call_later(min(_TICK_S, self._timeout / 4), self._tick)

    def _drop(self) -> None:
        self.stalled = True
        peer = self._transport.get_extra_info("peername")
        log.info("dropping %s: it accepted no byte for %g s (send_timeout)", peer, self._timeout)
        # Reset rather than close (nginx's reset_timedout_connection): a plain close would
        # leave the unsent bytes to the kernel, which keeps probing a client that reads
        # nothing; with SO_LINGER 0 it sends RST and frees the socket's memory now.
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        pending = [task for task in self._sendfiles if not task.done()]
        if not pending:
            self._transport.abort()
            return
        # A sendfile has the socket to itself until it ends: end it first, then abort the
        # transport it hands back.
        remaining = len(pending)

        def one_done(_: asyncio.Future[int]) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                self._transport.abort()

        for task in pending:
            task.add_done_callback(one_done)
            task.cancel()


_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def timeouts_middleware(send_timeout: float, body_timeout: float) -> Middleware:
    """A middleware that attaches a :class:`SendWatch` to every connection, and reads form
    bodies (the console's; small, bounded by the app's ``client_max_size``) up front within
    ``body_timeout``, so a later ``request.post()`` cannot hang on a stalled client."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        SendWatch.attach(request, send_timeout)
        if request.body_exists and request.content_type in _FORMS:
            try:
                async with asyncio.timeout(body_timeout):
                    await request.read()  # cached: request.post() parses these bytes
            except TimeoutError:
                raise RequestTimeout(
                    f"the form body did not arrive within {body_timeout:g} s (body_timeout)"
                ) from None
        return await handler(request)

    return middleware


async def read_body_chunk(request: web.Request, limit: int, idle_s: float) -> bytes:
    """Up to ``limit`` bytes of the request body as soon as any arrive; ``b""`` at its end.

    Raises :class:`RequestTimeout` when no byte comes for ``idle_s`` seconds. (aiohttp then
    gives the unread rest of the body its short lingering time and closes the connection.)
    """
    try:
        async with asyncio.timeout(idle_s):
            return await request.content.read(limit)
    except TimeoutError:
        raise RequestTimeout(
            f"no byte of the request body arrived for {idle_s:g} s (body_timeout); "
            "send the request again"
        ) from None
