"""Reading what callers send: API keys, JSON bodies, query parameters — strictly."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from weightport.catalog import accounts
from weightport.errors import InvalidArgument, PayloadTooLarge, Unauthenticated
from weightport.server.context import context_of


async def authenticated_account(request: web.Request) -> str:
    """The account of the bearer key on the request, or :class:`Unauthenticated`."""
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if not header:
        raise Unauthenticated("missing API key: send Authorization: Bearer <key>")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthenticated("malformed Authorization header: use Bearer <key>")
    ctx = context_of(request)
    return await ctx.catalog.run(lambda s: accounts.authenticate(s, secret.strip()))


async def json_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The request's JSON object body, size-limited; clear 400/413 errors otherwise."""
    limit = context_of(request).settings.max_json_body
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    if not raw.strip():
        if required:
            raise InvalidArgument("request body must be a JSON object")
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"malformed JSON body: {exc}") from None
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
