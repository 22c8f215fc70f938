"""Fetch one part: a ranged GET streamed with ``readinto`` into a reused buffer, then pwrite.

Every answer is checked against the file's identity before a byte is written: a changed
ETag or total size, a 416, or a 200 where a range was asked for means the bytes on disk can
no longer be trusted to belong with the new ones, so :class:`RestartNeeded` asks the engine
to start the file over rather than splice two versions together.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import urllib3
from urllib3.exceptions import HTTPError

from weightport.client.errors import (
    ConnectionFailed,
    InsufficientSpace,
    ServerError,
    error_from_response,
)
from weightport.client.hashing import InOrderHash
from weightport.client.http import (
    HttpSession,
    body_reader,
    error_body,
    finish,
    parse_content_range,
    range_header,
    strong_etag,
)
from weightport.client.remote import RemoteFile, RemoteIdentity
from weightport.client.state import Part


class PartSink(Protocol):
    """Where a fetch reports to: the file's :class:`~weightport.client.transfer.Transfer`."""

    def record(self, part: int, epoch: int, nbytes: int) -> int | None:
        """Count ``nbytes`` written; where the part ends now (a split moves it down).

        ``None``: stop this part (the file started over).
        """
        ...

    def confirm_etag(self, epoch: int, etag: str | None) -> bool:
        """Whether an answer's ETag belongs with the bytes on disk (adopted if none known)."""
        ...


class RestartNeeded(Exception):
    """The server's bytes for this file are not the ones on disk any more."""

    def __init__(self, reason: str, *, no_ranges: bool = False) -> None:
        super().__init__(reason)
        self.no_ranges = no_ranges


@dataclass(frozen=True)
class PartFetch:
    """Everything one request for a part needs: ``done`` bytes of it are already on disk.

    ``hasher``, if given, is offered every buffer once it is written (see
    :class:`~weightport.client.hashing.InOrderHash`); the file is on disk from
    ``on_disk_from`` up to where this request starts.
    """

    remote: RemoteFile
    identity: RemoteIdentity
    part: Part
    done: int
    fd: int
    epoch: int
    hasher: InOrderHash | None
    on_disk_from: int


class ActiveResponses:
    """Responses being read right now, so a stop can shut their sockets at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._responses: set[urllib3.BaseHTTPResponse] = set()

    def add(self, resp: urllib3.BaseHTTPResponse) -> None:
        with self._lock:
            self._responses.add(resp)

    def discard(self, resp: urllib3.BaseHTTPResponse) -> None:
        with self._lock:
            self._responses.discard(resp)

    def shutdown_all(self) -> None:
        """Make every blocked read return (it then fails and sees the stop flag)."""
        with self._lock:
            responses = list(self._responses)
        for resp in responses:
            # ValueError/RuntimeError: that response already finished or was released.
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                resp.shutdown()


def fetch_part(
    session: HttpSession,
    job: PartFetch,
    buf: memoryview,
    sink: PartSink,
    stop: threading.Event,
    active: ActiveResponses,
) -> None:
    """Fetch what is missing of ``job.part`` (or a prefix of it, if the server sends less).

    The request asks for the whole rest of the part; if the part is split meanwhile, the
    read stops at its new end and the connection is closed rather than drained.
    """
    start = job.part.start + job.done
    end = job.part.end
    if start >= end:
        return
    headers = dict(job.remote.headers)
    if job.identity.ranges:
        headers["Range"] = range_header(start, end)
        if job.identity.etag is not None:
            headers["If-Range"] = job.identity.etag
    resp = session.open_body(job.remote.url, headers)
    active.add(resp)
    complete = False
    try:
        answered = end = _expected_end(resp, job, start, end)
        if not job.identity.confirmed:
            etag = strong_etag(resp.headers.get("ETag"))
            if not sink.confirm_etag(job.epoch, etag):
                raise RestartNeeded(f"its ETag changed to {etag}")
        readinto = body_reader(resp)
        pos = start
        while pos < end:
            if stop.is_set():
                return
            filled, failure = _fill(readinto, buf[: min(len(buf), end - pos)])
            if filled:
                _pwrite_all(job.fd, buf[:filled], pos)
                if job.hasher is not None:
                    # Before the bytes are recorded: until then no one reads them back.
                    job.hasher.feed(
                        pos,
                        buf[:filled],
                        fd=job.fd,
                        on_disk_from=job.on_disk_from,
                        name=job.remote.relpath,
                    )
                pos += filled
                now_ends = sink.record(job.part.index, job.epoch, filled)
                if now_ends is None:
                    return
                end = min(end, now_ends)
            if isinstance(failure, EOFError):
                raise ConnectionFailed(f"{job.remote.relpath}: connection closed at byte {pos}")
            if failure is not None:
                raise ConnectionFailed(f"{job.remote.relpath}: {failure}") from failure
        complete = pos == answered and (resp.status == 206 or answered == job.identity.size)
    finally:
        active.discard(resp)
        finish(resp, complete=complete)


def _fill(readinto: Callable[[memoryview], int], view: memoryview) -> tuple[int, Exception | None]:
    """Read until ``view`` is full: (bytes read, the failure that stopped it early, if any).

    On a connection capped at tens of MB/s each read returns only what arrived since the
    last one, tens of KB; a ``pwrite`` and a progress update per read then cost more CPU
    than the bytes (through a 25 MB/s-per-connection link, 32 connections: see
    BENCHMARKS.md). Bytes read before a failure are returned with it, so that they are
    written and a retry continues after them. The body ending early fails as ``EOFError``.
    """
    filled = 0
    while filled < len(view):
        try:
            n = readinto(view[filled:])
        except (HTTPError, OSError, http.client.HTTPException) as exc:
            return filled, exc
        if n <= 0:
            return filled, EOFError()
        filled += n
    return filled, None


def _expected_end(resp: urllib3.BaseHTTPResponse, job: PartFetch, start: int, end: int) -> int:
    """Check an answer against the file's identity; the end of the bytes it carries."""
    name = job.remote.relpath
    if resp.status >= 400:
        if resp.status == 416:
            raise RestartNeeded("the server no longer has those bytes (416)")
        raise error_from_response(resp.status, error_body(resp), signed_url=job.remote.signed)
    etag = strong_etag(resp.headers.get("ETag"))
    if job.identity.etag is not None and etag != job.identity.etag:
        raise RestartNeeded(f"its ETag changed from {job.identity.etag} to {etag}")
    size = job.identity.size
    if resp.status == 206:
        content_range = parse_content_range(resp.headers.get("Content-Range"))
        if content_range is None:
            raise ServerError(f"{name}: 206 without a usable Content-Range", status=206)
        if content_range.total is not None and content_range.total != size:
            raise RestartNeeded(f"its size changed from {size} to {content_range.total}")
        if content_range.start != start or content_range.end > end:
            raise ServerError(
                f"{name}: asked for bytes {start}-{end - 1}, got "
                f"{content_range.start}-{content_range.end - 1}",
                status=206,
            )
        return content_range.end
    if resp.status == 200:
        length = resp.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != size:
            raise RestartNeeded(f"its size changed from {size} to {length}")
        if start != 0 or (job.identity.ranges and end != size):
            # A whole body where a range was wanted: the server ignores Range (now).
            raise RestartNeeded("the server ignored the Range header", no_ranges=True)
        return end
    raise ServerError(f"{name}: unexpected HTTP {resp.status}", status=resp.status)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    try:
        while data:
            written = os.pwrite(fd, data, offset)
            data = data[written:]
            offset += written
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientSpace(f"no space left on device writing at {offset}") from exc
        raise
