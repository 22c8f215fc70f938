"""How answers are wrapped: JSON successes, and errors in the caller's own API envelope.

Fireworks callers get ``google.rpc.Status`` (``{"code", "message", "details"}``); Together
callers get ``{"error": {"message", "type", "param", "code"}}``. Which one is decided by the
route family, so even a 404 for an unknown path speaks the caller's dialect.
"""

from __future__ import annotations

import json
from enum import Enum

from aiohttp import web

from weightport.errors import RangeNotSatisfiable, WeightportError


class Dialect(Enum):
    FIREWORKS = "fireworks"
    TOGETHER = "together"


TOGETHER_PREFIXES = ("/v1/fine-tunes", "/v1/finetune", "/v3/", "/v1/whoami", "/weightport/v1/")


def dialect_for(path: str) -> Dialect:
    return Dialect.TOGETHER if path.startswith(TOGETHER_PREFIXES) else Dialect.FIREWORKS


def json_response(body: object, status: int = 200) -> web.Response:
    """A success answer: JSON, ``application/json`` (both APIs' clients expect exactly that)."""
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


def error_body(error: WeightportError, dialect: Dialect) -> dict[str, object]:
    if dialect is Dialect.TOGETHER:
        return {
            "error": {
                "message": error.message,
                "type": error.together_type,
                "param": error.param,
                "code": error.code,
            }
        }
    return {"code": int(error.grpc), "message": error.message, "details": []}


def error_response(error: WeightportError, dialect: Dialect) -> web.Response:
    headers = {"x-should-retry": "true" if error.retryable else "false"}
    if isinstance(error, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{error.size}"
    return web.Response(
        status=error.status,
        text=json.dumps(error_body(error, dialect)),
        content_type="application/json",
        headers=headers,
    )
