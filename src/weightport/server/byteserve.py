"""Serving one immutable entity over HTTP: GET/HEAD, ranges, conditionals (RFC 9110).

Used by both the signed blob route and the archive route. Two kinds of body:

- :class:`LocalFile` — the bytes are a regular file here: sent zero-copy with
  ``loop.sendfile`` (``os.sendfile`` on the standard asyncio loop), as aiohttp's
  ``web.FileResponse`` does; multi-range parts are sent file-range by file-range between
  the literal boundary bytes. Loops without ``sendfile`` fall back to the chunk pump.
- :class:`SourceBody` — computed bytes (archives, merged shards): read in 1 MiB chunks by
  ``ByteSource.readinto`` in worker threads, ahead of the socket (one chunk, or a window of
  them on the shared read-ahead pool), into reused buffers: memory stays bounded whatever
  the entity size.

Every response this module returns has already been sent (prepared and finished): a
middleware cannot turn compression on afterwards, and no ``Content-Encoding`` is ever set.
What each response really sent is counted by a :class:`~weightport.server.transfers.Transfer`
(``sendfile`` bypasses aiohttp's own byte count): for the access log, and for the byte-path
metrics and the audit log when the route names its :class:`~weightport.server.transfers.Download`.
Errors found before the first byte (a missing file, a failing first read, a failed
``If-Match``) are raised as :mod:`weightport.errors` for the envelope renderer; a 416 is
answered here. Once headers are out, the only honest signal left is to cut the connection
short — ``Content-Length`` then tells the client the body is incomplete.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

from aiohttp import hdrs, web
from multidict import CIMultiDict

from weightport.errors import (
    MethodNotAllowed,
    PreconditionFailed,
    RangeNotSatisfiable,
    StorageError,
)
from weightport.observability import metrics
from weightport.ranges import (
    ByteRange,
    Conditional,
    evaluate_conditions,
    format_etag,
    parse_range,
    unsatisfied_content_range,
)
from weightport.server.chunk_pump import CHUNK_SIZE, ChunkPump, Segment
from weightport.server.client_timeouts import SendWatch
from weightport.server.read_ahead import ReadAheadPool
from weightport.server.transfers import Download, Transfer
from weightport.storage.base import BlobSource, BlobStore, ByteSource, LocalPaths
from weightport.storage.files import FileSource

__all__ = [
    "CHUNK_SIZE",
    "Entity",
    "LocalFile",
    "SourceBody",
    "blob_body",
    "content_disposition",
    "serve_entity",
]

log = logging.getLogger(__name__)


# Headers this module owns: letting a caller set them would break framing or validators.
_RESERVED = frozenset(
    name.lower()
    for name in (
        hdrs.CONTENT_LENGTH,
        hdrs.CONTENT_RANGE,
        hdrs.CONTENT_TYPE,
        hdrs.CONTENT_ENCODING,
        hdrs.TRANSFER_ENCODING,
        hdrs.ETAG,
        hdrs.ACCEPT_RANGES,
    )
)
# attr-char of RFC 5987 beyond the letters, digits and "_.-~" that quote() keeps anyway.
_ATTR_CHAR_EXTRA = "!#$&+^`|"


@dataclass(frozen=True)
class Entity:
    """What is served: its size, strong validator and presentation headers.

    ``etag`` is the bare digest (e.g. sha256 hex); it is quoted on the wire.
    """

    size: int
    etag: str
    content_type: str = "application/octet-stream"
    filename: str | None = None
    cache_control: str | None = None

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"negative entity size {self.size}")


@dataclass(frozen=True)
class LocalFile:
    """The entity's bytes are the regular file at ``path`` (sent with ``sendfile``)."""

    path: Path


def blob_body(store: BlobStore, key: str, size: int) -> LocalFile | SourceBody:
    """The body for a stored blob: zero-copy when it is a local file, else ranged reads."""
    if isinstance(store, LocalPaths):
        return LocalFile(store.local_path(key))
    return SourceBody(BlobSource(store, key, size))


@dataclass(frozen=True)
class SourceBody:
    """The entity's bytes come from a :class:`ByteSource` (computed or remote).

    ``read_ahead``: compute chunks ahead on that shared pool (bytes that cost CPU, like a
    merged archive) instead of reading one chunk ahead.
    """

    source: ByteSource
    read_ahead: ReadAheadPool | None = None


# A body is a sequence of literal bytes (multipart framing) and ranges of the entity.


@dataclass(frozen=True)
class _Plan:
    status: int
    content_type: str
    content_range: str | None
    segments: tuple[Segment, ...]

    @property
    def length(self) -> int:
        return sum(len(s) if isinstance(s, bytes) else s.length for s in self.segments)


async def serve_entity(
    request: web.Request,
    entity: Entity,
    body: LocalFile | SourceBody,
    *,
    max_ranges: int = 64,
    extra_headers: Mapping[str, str] | None = None,
    unsatisfiable_headers: Mapping[str, str] | None = None,
    download: Download | None = None,
) -> web.StreamResponse:
    """Answer a GET or HEAD for ``entity``; the returned response has been fully sent.

    ``download`` names the byte path (and the audit subject) a GET's body is counted under.

    200 (whole entity), 206 (one range, or ``multipart/byteranges`` for several), 304
    (``If-None-Match`` matched), 416 (``Content-Range: bytes */SIZE``). HEAD sends exactly
    the headers GET would, including a Range answer, and never touches the body.
    ``extra_headers`` go on every answer but a 416, which gets ``unsatisfiable_headers``.

    Raises :class:`MethodNotAllowed` for other methods, :class:`PreconditionFailed` when
    ``If-Match`` fails, :class:`StorageError` when a :class:`LocalFile` is missing or has the
    wrong size, and whatever the first ``readinto`` of a :class:`SourceBody` raises.
    """
    method = request.method
    if method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        raise MethodNotAllowed(f"{method} is not allowed here; use GET or HEAD")
    headers = _common_headers(entity, extra_headers)

    condition = evaluate_conditions(
        method=method,
        if_match=_joined(request, hdrs.IF_MATCH),
        if_none_match=_joined(request, hdrs.IF_NONE_MATCH),
        if_range=_joined(request, hdrs.IF_RANGE),
        etag=entity.etag,
    )
    if condition is Conditional.PRECONDITION_FAILED:
        raise PreconditionFailed("If-Match does not match the current entity tag")
    if condition is Conditional.NOT_MODIFIED:
        return await _send(
            request, web.StreamResponse(status=304, headers=headers), Transfer(request, None)
        )

    range_header = None
    if condition is not Conditional.IGNORE_RANGE:
        # Several Range fields cannot be combined meaningfully: ignore them all.
        values = request.headers.getall(hdrs.RANGE, [])
        range_header = values[0] if len(values) == 1 else None
    try:
        ranges = parse_range(range_header, entity.size, max_ranges=max_ranges)
    except RangeNotSatisfiable as exc:
        return await _not_satisfiable(request, exc, unsatisfiable_headers)
    plan = _plan(entity, ranges)

    headers[hdrs.CONTENT_TYPE] = plan.content_type
    if plan.content_range is not None:
        headers[hdrs.CONTENT_RANGE] = plan.content_range
    response = web.StreamResponse(status=plan.status, headers=headers)
    response.content_length = plan.length
    if method == hdrs.METH_HEAD or not plan.segments:
        return await _send(request, response, Transfer(request, None))
    transfer = Transfer(request, download)
    if isinstance(body, LocalFile):
        return await _send_local_file(
            request, response, transfer, body.path, entity.size, plan.segments
        )
    pump = ChunkPump(body.source, plan.segments, body.read_ahead, counter=transfer.add)
    try:
        await pump.prime()  # a failing first read still gets a proper error response
        return await _send(request, response, transfer, lambda: pump.run(request, response))
    finally:
        pump.abandon()


def _joined(request: web.Request, name: str) -> str | None:
    values = request.headers.getall(name, [])
    return ", ".join(values) if values else None


def _common_headers(entity: Entity, extra: Mapping[str, str] | None) -> CIMultiDict[str]:
    # A fresh dict per response: nothing shared is ever mutated.
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in (extra or {}).items():
        if name.lower() in _RESERVED:
            raise ValueError(f"serve_entity sets {name} itself")
        headers[name] = value
    headers[hdrs.ACCEPT_RANGES] = "bytes"
    headers[hdrs.ETAG] = format_etag(entity.etag)
    if entity.cache_control is not None:
        headers[hdrs.CACHE_CONTROL] = entity.cache_control
    if entity.filename is not None:
        headers[hdrs.CONTENT_DISPOSITION] = content_disposition(entity.filename)
    return headers


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII ``filename`` and, if needed, ``filename*`` (RFC 6266).

    The fallback replaces what old clients mishandle (non-ASCII, controls, quotes,
    backslashes, ``%``) with ``_``; ``filename*=UTF-8''...`` carries the exact name.
    """
    fallback = "".join(ch if " " <= ch <= "~" and ch not in '"\\%' else "_" for ch in filename)
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += "; filename*=UTF-8''" + quote(filename, safe=_ATTR_CHAR_EXTRA)
    return value


def _plan(entity: Entity, ranges: list[ByteRange] | None) -> _Plan:
    size = entity.size
    if ranges is None:
        whole = (ByteRange(0, size),) if size else ()
        return _Plan(200, entity.content_type, None, whole)
    if len(ranges) == 1:
        (only,) = ranges
        return _Plan(206, entity.content_type, only.content_range(size), (only,))
    # RFC 9110 §14.6: parts are "--B CRLF headers CRLF CRLF data", each delimiter preceded
    # by the CRLF that ends the previous part, and the body closed by "--B--".
    boundary = secrets.token_hex(16)
    segments: list[Segment] = []
    lead = b""
    for part in ranges:
        head = (
            f"--{boundary}\r\nContent-Type: {entity.content_type}\r\n"
            f"Content-Range: {part.content_range(size)}\r\n\r\n"
        )
        segments += [lead + head.encode("latin-1"), part]
        lead = b"\r\n"
    segments.append(f"\r\n--{boundary}--\r\n".encode("latin-1"))
    return _Plan(206, f"multipart/byteranges; boundary={boundary}", None, tuple(segments))


async def _not_satisfiable(
    request: web.Request, exc: RangeNotSatisfiable, extra: Mapping[str, str] | None
) -> web.StreamResponse:
    text = f"{exc.message}\n".encode()
    headers: CIMultiDict[str] = CIMultiDict(extra or {})
    headers[hdrs.CONTENT_RANGE] = unsatisfied_content_range(exc.size)
    headers[hdrs.ACCEPT_RANGES] = "bytes"
    headers[hdrs.CONTENT_TYPE] = "text/plain; charset=utf-8"
    response = web.StreamResponse(status=416, headers=headers)
    response.content_length = len(text)
    tail = text if request.method == hdrs.METH_GET else b""
    return await _send(request, response, Transfer(request, None), tail=tail)


async def _send(
    request: web.Request,
    response: web.StreamResponse,
    transfer: Transfer,
    body: Callable[[], Awaitable[None]] | None = None,
    *,
    tail: bytes = b"",
) -> web.StreamResponse:
    """Send headers, ``body()`` and ``tail``; absorb what a client that went away causes.

    ``body()`` reports what it sends to ``transfer``, which is closed here however it ends.
    """
    if body is not None:
        transfer.open()
    try:
        await response.prepare(request)
        if body is not None:
            await body()
        await response.write_eof(tail)
        transfer.add(len(tail))
    except ConnectionError as exc:
        # The client hung up (or stalled and was dropped): routine for downloaders that
        # resume, and nothing to tell it. Raising would make aiohttp log a traceback.
        log.debug("client went away during %s %s", request.method, request.path)
        transfer.cut()
        response.force_close()
        # aiohttp keeps this exception on the request; its traceback reaches the frames
        # that held the body's buffers, in a cycle only a full GC would break.
        exc.__traceback__ = None
    except Exception as exc:
        if not response.prepared:
            raise
        # Headers are out, so no error envelope is possible: log it and cut the connection.
        log.exception("body failed after headers were sent: %s %s", request.method, request.path)
        metrics.count_error(exc)
        transfer.cut()
        response.force_close()  # aiohttp then closes the connection short of Content-Length
    except asyncio.CancelledError:
        transfer.cut()
        raise
    finally:
        transfer.close()
    return response


# ----------------------------------------------------------------------------- local files


def _open_regular(path: Path, size: int) -> IO[bytes]:
    try:
        fobj = path.open("rb", buffering=0)
    except OSError as exc:
        raise StorageError(f"cannot open stored file {path.name}: {exc.strerror}") from exc
    try:
        info = os.fstat(fobj.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            raise StorageError(f"stored file {path.name} has {info.st_size} bytes, expected {size}")
    except BaseException:
        fobj.close()
        raise
    return fobj


#: Largest piece handed to one ``sendfile``. asyncio reports what a ``sendfile`` sent when
#: it ends or fails, but not when it is cancelled (shutdown's grace over): the bytes sent are
#: counted piece by piece, so a cancelled transfer is counted to within one piece. A piece
#: costs one more trip through the event loop (BENCHMARKS.md: no measurable change).
SENDFILE_PIECE = 16 << 20


async def _sendfile(
    transport: asyncio.Transport,
    fobj: IO[bytes],
    start: int,
    length: int,
    transfer: Transfer,
    watch: SendWatch | None,
) -> None:
    loop = asyncio.get_running_loop()
    for offset in range(start, start + length, SENDFILE_PIECE):
        count = min(SENDFILE_PIECE, start + length - offset)
        # Checked right before use: loop.sendfile raises RuntimeError on a closing one.
        if transport.is_closing():
            raise ConnectionResetError("client connection closed")
        os.lseek(fobj.fileno(), offset, os.SEEK_SET)
        try:
            if watch is not None:  # dropped (ClientStalled) when the client stops reading
                transfer.add(await watch.sendfile(fobj, offset, count))
            else:
                transfer.add(await loop.sendfile(transport, fobj, offset, count))
        except OSError:
            # asyncio leaves the file position after what was sent before the failure.
            transfer.add(max(0, os.lseek(fobj.fileno(), 0, os.SEEK_CUR) - offset))
            raise


async def _send_local_file(
    request: web.Request,
    response: web.StreamResponse,
    transfer: Transfer,
    path: Path,
    size: int,
    segments: Sequence[Segment],
) -> web.StreamResponse:
    fobj = await asyncio.to_thread(_open_regular, path, size)
    pump: ChunkPump | None = None
    watch = SendWatch.of(request)

    async def body() -> None:
        nonlocal pump
        for index, segment in enumerate(segments):
            if isinstance(segment, bytes):
                await response.write(segment)
                transfer.add(len(segment))
                continue
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("client connection closed")
            try:
                await _sendfile(transport, fobj, segment.start, segment.length, transfer, watch)
            except NotImplementedError:
                # A loop without sendfile (uvloop): stream the rest through the pump.
                pump = ChunkPump(FileSource(fobj, size), segments[index:], counter=transfer.add)
                await pump.run(request, response)
                return

    try:
        return await _send(request, response, transfer, body)
    finally:
        if pump is not None:
            pump.abandon(then=fobj.close)
        else:
            # close(2) of a read-only local file does not block; doing it here keeps the
            # descriptor's lifetime exactly the request's, even when the task is cancelled.
            fobj.close()
