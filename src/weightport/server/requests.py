"""Reading what callers send: API keys, JSON bodies, query parameters — strictly."""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import FileField
from multidict import MultiDictProxy

from weightport.catalog import accounts
from weightport.errors import (
    InvalidArgument,
    InvalidCredentials,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
)
from weightport.server.client_timeouts import read_body_chunk
from weightport.server.context import context_of

#: The authenticated caller, kept on the request for handlers that mint signed URLs.
CALLER = web.RequestKey("weightport_caller", accounts.Caller)


def bearer_secret(request: web.Request) -> str:
    """The key the request presents as ``Authorization: Bearer <key>`` (not yet checked)."""
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if not header:
        raise Unauthenticated("missing API key: send Authorization: Bearer <key>")
    if scheme.lower() != "bearer" or not secret.strip():
        raise InvalidCredentials("malformed Authorization header: use Bearer <key>")
    return secret.strip()


async def authenticate(request: web.Request) -> accounts.Caller:
    """The account and key id of the bearer key on the request, or :class:`Unauthenticated`."""
    secret = bearer_secret(request)
    ctx = context_of(request)
    caller = await ctx.catalog.run(lambda s: accounts.authenticate(s, secret), readonly=True)
    request[CALLER] = caller
    return caller


async def authenticate_admin(request: web.Request, what: str) -> accounts.Caller:
    """The caller, if its key belongs to the admin account; :class:`PermissionDenied` (403)
    naming ``what`` it may not read otherwise."""
    caller = await authenticate(request)
    if caller.account_id != accounts.ADMIN_ACCOUNT:
        raise PermissionDenied(
            f"only keys of the {accounts.ADMIN_ACCOUNT!r} account may read {what}; this key "
            f"belongs to {caller.account_id!r}"
        )
    return caller


async def authenticated_account(request: web.Request) -> str:
    """The account of the bearer key on the request, or :class:`Unauthenticated`."""
    return (await authenticate(request)).account_id


def caller_of(request: web.Request) -> accounts.Caller:
    """The caller :func:`authenticate` established for this request."""
    if CALLER not in request:
        raise Unauthenticated("missing API key: send Authorization: Bearer <key>")
    return request[CALLER]


#: Deepest JSON nesting accepted in a request body. No API body nests beyond ~5 levels; the
#: bound keeps recursive code (json.dumps when storing, rendering) far from Python's limit.
MAX_JSON_DEPTH = 64


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, up to ``limit`` bytes; :class:`PayloadTooLarge` beyond.

    Reads until EOF: ``StreamReader.read(n)`` returns as soon as *some* bytes have arrived,
    so one call truncates any body that comes in more than one TCP segment.
    """
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    timeout = context_of(request).settings.body_timeout
    parts: list[bytes] = []
    received = 0
    while chunk := await read_body_chunk(request, limit + 1 - received, timeout):
        parts.append(chunk)
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    return b"".join(parts)


def parse_json(raw: bytes) -> Any:
    """Decode a JSON document strictly: UTF-8, bounded depth, finite numbers, no lone
    surrogates — what every store and every client's JSON parser can take back."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise InvalidArgument(
            f"JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
        ) from None
    _check_json_value(data)
    return data


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); echoing them back would break clients.
    raise InvalidArgument(f"malformed JSON body: {name} is not a JSON number")


def _check_json_value(data: Any) -> None:
    # Iterative, so the check itself cannot hit the recursion limit.
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            _check_text(value)
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument("malformed JSON body: a number is too large (not finite)")
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise InvalidArgument(
                f"JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key)
                pending.append((item, depth + 1))
        else:
            pending.extend((item, depth + 1) for item in value)


def _check_text(text: str) -> None:
    # JSON's \ud800 escapes decode to lone surrogates, which no UTF-8 store can hold.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(
            "JSON body contains an unpaired UTF-16 surrogate (\\ud800-\\udfff escape)"
        ) from None


async def json_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The request's JSON object body, size-limited; clear 400/413 errors otherwise."""
    raw = await read_body(request, context_of(request).settings.max_json_body)
    if not raw.strip():
        if required:
            raise InvalidArgument("request body must be a JSON object")
        return {}
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object")
    return data


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise InvalidArgument(f"{name} must be true or false, not {raw!r}", param=name)


def query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer, not {raw!r}", param=name) from None


async def read_form(request: web.Request) -> MultiDictProxy[str | bytes | bytearray | FileField]:
    """The request's form (aiohttp keeps it for later reads), or a 400 for a body that is not
    a well-formed form (a multipart body without its boundary, malformed part headers)."""
    try:
        return await request.post()
    except (ValueError, HttpProcessingError) as exc:
        text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
        detail = " ".join(str(text).split())[:200]
        raise InvalidArgument(f"The form could not be read: {detail}") from None
