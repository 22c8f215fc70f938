"""Watching every request: its access log line and its request metrics.

:func:`observe_middleware` is the outermost middleware, so it sees the final status of every
answer, errors included. Handlers and the byte paths tell it what it cannot see from outside
through the request's :class:`Exchange`: a more precise route template (the Fireworks routes
share one catch-all), the error behind an error answer, the body bytes a byte path really
sent (``sendfile`` bypasses aiohttp's writer) and whether a body was cut short.

The access log line names the route *template* (``/files/{account}/{model}/{path}``), never
the raw path or the query string, where signed URLs carry their signatures; and who asked
(account and API key *id*), never a key. Health probes and scrapes are logged at DEBUG,
5xx answers at WARNING, everything else at INFO, so ``access_log_level`` picks how much.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from weightport.config import Settings
from weightport.errors import WeightportError
from weightport.observability import metrics
from weightport.observability.log_format import FIELDS, LogFormat, StructuredFormatter
from weightport.server.requests import CALLER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

access_log = logging.getLogger("weightport.access")

#: Routes machines poll: their lines go out at DEBUG.
PROBE_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
#: Methods counted by name; anything else is "other" (the label set stays bounded).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
#: Status logged for a request whose handler was cancelled (client gone, shutdown cut it).
CANCELLED = 499
MAX_USER_AGENT = 256


@dataclass
class Exchange:
    """What the edge learns about one request while answering it."""

    started: float
    route: str | None = None
    error: WeightportError | None = None
    #: Body bytes sent, when a byte path counted them (else the response's own body).
    body_bytes: int | None = None
    #: The body was cut short (client gone, a read failed, shutdown's grace ran out).
    incomplete: bool = False


EXCHANGE = web.RequestKey("weightport_exchange", Exchange)


def exchange_of(request: web.Request) -> Exchange | None:
    """The request's :class:`Exchange` (``None`` outside the middleware, e.g. in unit tests)."""
    return request.get(EXCHANGE)


def name_route(request: web.Request, template: str) -> None:
    """Say which route template answered, where aiohttp's own route is a catch-all."""
    exchange = exchange_of(request)
    if exchange is not None:
        exchange.route = template


def note_error(request: web.Request, error: WeightportError) -> None:
    """Remember the error an answer reports (for its log line and the error metrics)."""
    exchange = exchange_of(request)
    if exchange is not None:
        exchange.error = error


def _route(request: web.Request, exchange: Exchange) -> str:
    if exchange.route is not None:
        return exchange.route
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def _body_bytes(
    request: web.Request, exchange: Exchange, response: web.StreamResponse | None
) -> int:
    if exchange.body_bytes is not None:
        return exchange.body_bytes
    if request.method == "HEAD" or not isinstance(response, web.Response):
        return 0
    body = response.body
    return len(body) if isinstance(body, bytes | bytearray) else 0


def _level(route: str, status: int) -> int:
    if route in PROBE_ROUTES:
        return logging.DEBUG
    return logging.WARNING if status >= 500 else logging.INFO


def _finish(
    request: web.Request, exchange: Exchange, status: int, response: web.StreamResponse | None
) -> None:
    elapsed = time.perf_counter() - exchange.started
    route = _route(request, exchange)
    method = request.method if request.method in METHODS else "other"
    metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
    metrics.HTTP_REQUEST_SECONDS.labels(method, route).observe(elapsed)
    if exchange.error is not None:
        metrics.count_error(exchange.error)
    level = _level(route, status)
    if not access_log.isEnabledFor(level):
        return
    caller = request.get(CALLER)
    fields: dict[str, object] = {
        "method": method,
        "route": route,
        "status": status,
        "bytes": _body_bytes(request, exchange, response),
        "duration_ms": round(elapsed * 1000, 3),
        "account": caller.account_id if caller else "",
        "key_id": caller.key_id if caller else "",
        "remote": request.remote or "",
        "user_agent": request.headers.get("User-Agent", "")[:MAX_USER_AGENT],
    }
    if exchange.error is not None:
        fields["error"] = exchange.error.code
    if exchange.incomplete:
        fields["incomplete"] = True
    access_log.log(level, "%s %s %s", method, route, status, extra={FIELDS: fields})


def configure_access_log(settings: Settings) -> None:
    """Send access lines to stderr (or ``access_log_file``) in the ``access_log`` format, from
    ``access_log_level`` up; ``access_log = off`` sends none. Raises ``OSError`` when the file
    cannot be opened."""
    for old in list(access_log.handlers):
        access_log.removeHandler(old)
        old.close()
    access_log.propagate = False  # its own format, not the server log's
    if settings.access_log == "off":
        access_log.setLevel(logging.CRITICAL + 1)
        return
    handler: logging.Handler = (
        logging.FileHandler(settings.access_log_file, encoding="utf-8")
        if settings.access_log_file
        else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(StructuredFormatter(LogFormat(settings.access_log)))
    access_log.addHandler(handler)
    access_log.setLevel(settings.access_log_level.upper())


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and log every request once its answer is complete."""
    exchange = Exchange(time.perf_counter())
    request[EXCHANGE] = exchange
    status, response = 500, None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects and the like, answered by aiohttp
        status = exc.status
        raise
    except asyncio.CancelledError:
        status, exchange.incomplete = CANCELLED, True
        raise
    finally:
        _finish(request, exchange, status, response)
