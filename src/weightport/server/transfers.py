"""A response body on its way out: the byte-path metrics, the access log's byte count and the
download audit log, for one response.

A byte route says what it serves with a :class:`Download` (its byte path and, for the audit
log, what is being downloaded); :func:`weightport.server.byteserve.serve_entity` then opens a
:class:`Transfer` when the body starts, adds what each range or literal part really sent, and
closes it when the body ends, however it ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from weightport.catalog.audit import Requester, Subject
from weightport.observability import metrics
from weightport.observability.metrics import BytePath
from weightport.server.context import CONTEXT, ServerContext
from weightport.server.observe import exchange_of
from weightport.server.requests import CALLER
from weightport.services.audit import Identity, clean_user_agent


@dataclass(frozen=True)
class Download:
    """What a byte route serves: its byte path and, if it is audited, what it is."""

    path: BytePath
    subject: Subject | None = None


def _context(request: web.Request) -> ServerContext | None:
    # None where byteserve runs without weightport's app around it (its own unit tests).
    return request.config_dict.get(CONTEXT)


def requester_of(request: web.Request) -> Requester | None:
    """Who is asking, for the audit log: the API key id (the one that authenticated the call,
    or that minted the signed URL), the client address and its user agent."""
    caller = request.get(CALLER)
    if caller is None:
        return None
    return Requester(
        key_id=caller.key_id,
        client=request.remote or "",
        user_agent=clean_user_agent(request.headers.get("User-Agent", "")),
    )


def record_grant(request: web.Request, subject: Subject) -> None:
    """Audit an API call that handed out signed URLs for ``subject``."""
    ctx = _context(request)
    requester = requester_of(request)
    if ctx is not None and ctx.audit is not None and requester is not None:
        ctx.audit.granted(subject, requester)


class Transfer:
    """Counts one response body; :meth:`close` it exactly once, after the last byte."""

    def __init__(self, request: web.Request, download: Download | None) -> None:
        self._request = request
        self._ctx = _context(request)
        self._download = download
        self.sent = 0
        self._audit_key: Identity | None = None
        self._open = False

    def open(self) -> None:
        """The body starts: an active download, and the audit log's record of it."""
        self._open = True
        if self._ctx is not None:
            self._ctx.downloads.sending += 1
        download = self._download
        if download is None:
            return
        metrics.ACTIVE_DOWNLOADS.labels(download.path).inc()
        audit = self._ctx.audit if self._ctx is not None else None
        requester = requester_of(self._request)
        if audit is not None and download.subject is not None and requester is not None:
            self._audit_key = audit.opened(download.subject, requester)

    def add(self, count: int) -> None:
        """``count`` more body bytes have been handed to the connection."""
        self.sent += count

    def cut(self) -> None:
        """The body ends short of its length (the client went away, or a read failed)."""
        exchange = exchange_of(self._request)
        if exchange is not None:
            exchange.incomplete = True
        if self._ctx is not None and self._ctx.downloads.stopping:
            self._ctx.downloads.cut_while_stopping += 1

    def close(self) -> None:
        """The body has ended: count its bytes everywhere."""
        exchange = exchange_of(self._request)
        if exchange is not None:
            exchange.body_bytes = self.sent
        if not self._open:
            return
        if self._ctx is not None:
            self._ctx.downloads.sending -= 1
        download = self._download
        if download is None:
            return
        metrics.ACTIVE_DOWNLOADS.labels(download.path).dec()
        metrics.BYTES_SERVED.labels(download.path).inc(self.sent)
        if self._ctx is not None and self._ctx.audit is not None:
            self._ctx.audit.closed(self._audit_key, self.sent)
