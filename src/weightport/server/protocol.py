"""HTTP/1.x at the edge, where aiohttp's defaults do not fit a server on the open network.

- **Versions.** aiohttp's parser (llhttp) accepts ``HTTP/2.0`` and ``HTTP/0.9`` request lines
  and aiohttp answers in the request's version (``HTTP/2.0 200`` over a plaintext HTTP/1
  connection). We speak HTTP/1.0 and 1.1 only: anything else gets ``505`` in an HTTP/1.1
  status line (RFC 9110 §15.6.6) and the connection is closed.
- **Malformed requests** (bad request lines, headers, chunking) are answered 400 by aiohttp,
  which also logs each at ERROR with a traceback — one client could flood the log. They are
  logged as one INFO line instead.
- **``Expect: 100-continue``** on uploads: aiohttp sends ``100 Continue`` as soon as the route
  matches, before any check. Uploads send it themselves once the signature and size checks
  pass (:func:`send_continue`), so a refused upload is answered without inviting the body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError

from weightport.errors import ExpectationFailed, HttpVersionNotSupported
from weightport.server.envelopes import dialect_for, error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SUPPORTED_VERSIONS = (HttpVersion10, HttpVersion11)
CONTINUE = "100-continue"


@web.middleware
async def http_version_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse HTTP versions other than 1.0 and 1.1 with a 505 written as HTTP/1.1."""
    if request.version in SUPPORTED_VERSIONS:
        return await handler(request)
    refused = HttpVersionNotSupported(
        f"HTTP/{request.version.major}.{request.version.minor} is not supported; "
        "use HTTP/1.1 (or 1.0)"
    )
    _answer_as_http11(request)
    response = error_response(refused, dialect_for(request.path))
    response.force_close()
    return response


def _answer_as_http11(request: web.Request) -> None:
    # aiohttp writes the status line in the request's version and has no public way to pick
    # another, so the request is re-labelled (its version and the cached property) before
    # the answer is written. test_http_protocol pins the result if aiohttp changes inside.
    request._version = HttpVersion11
    request._cache.pop("version", None)


def _first_line(exc: HttpProcessingError) -> str:
    # aiohttp's messages span lines (the offending bytes, a caret under them): keep the gist.
    lines = [line.strip() for line in str(exc.message).splitlines() if line.strip()]
    return "; ".join(line for line in lines if set(line) != {"^"})[:300]


class MalformedRequestLog(logging.Filter):
    """Turns aiohttp's ERROR-with-traceback for a request it could not parse into one line.

    Installed on the ``aiohttp.server`` logger; every other record passes unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or not 400 <= (exc.code or 400) < 500:
            return True
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        record.msg, record.args = "malformed request from %s: %s", (remote, _first_line(exc))
        record.exc_info, record.exc_text = None, None
        # The logger checked ERROR; honour the configured level for the demoted record.
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def install_malformed_request_log() -> None:
    """Put :class:`MalformedRequestLog` on aiohttp's server logger (once per process)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestLog) for f in server_log.filters):
        server_log.addFilter(MalformedRequestLog())


async def defer_continue(request: web.Request) -> web.StreamResponse | None:
    """Expect handler for upload routes: send nothing yet (see :func:`send_continue`)."""
    expect = request.headers.get("Expect", "")
    if expect.lower() == CONTINUE:
        return None
    return error_response(
        ExpectationFailed(f"unsupported Expect: {expect!r}; only 100-continue is"),
        dialect_for(request.path),
    )


async def send_continue(request: web.Request) -> None:
    """Invite the body of a request that asked for ``100 Continue``, after its checks passed."""
    if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == CONTINUE:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # aiohttp counts bytes written to tell whether a response has started: this has not.
        request.writer.output_size = 0
