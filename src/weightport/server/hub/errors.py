"""Errors as Hugging Face clients read them: by headers, not by body.

``huggingface_hub`` decides which exception to raise from ``X-Error-Code`` (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``) and shows ``X-Error-Message``; an ``EntryNotFound``
also carries ``X-Repo-Commit``, so the client records the file as absent at that commit and
stops probing for it. Every 4xx gets a code. A request without a key is answered as the Hub
answers anonymous access to a private repository (401, ``RepoNotFound``); a key that is
unknown or revoked gets the Hub's own "Invalid credentials" message.
"""

from __future__ import annotations

import json

from aiohttp import web

from weightport.errors import (
    EntryNotFound,
    InvalidCredentials,
    NotFound,
    RevisionNotFound,
    Unauthenticated,
    WeightportError,
)

#: The exact text the clients test for to tell a bad token from a missing repository.
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"

#: The error headers of a 416, which the byte path answers itself.
RANGE_ERROR_HEADERS = {
    "X-Error-Code": "RangeNotSatisfiable",
    "X-Error-Message": "Requested range not satisfiable",
}

_BY_STATUS = {
    400: "BadRequest",
    403: "Forbidden",
    405: "MethodNotAllowed",
    409: "Conflict",
    412: "PreconditionFailed",
    413: "PayloadTooLarge",
    408: "RequestTimeout",
    416: "RangeNotSatisfiable",
    429: "TooManyRequests",
}


def error_code(error: WeightportError) -> str | None:
    """The ``X-Error-Code`` of an error (None for 5xx: the client retries those)."""
    if isinstance(error, EntryNotFound):
        return "EntryNotFound"
    if isinstance(error, RevisionNotFound):
        return "RevisionNotFound"
    if isinstance(error, NotFound):
        return "RepoNotFound"  # other repository types, unknown routes: "no such repository"
    if isinstance(error, InvalidCredentials):
        return "Unauthorized"
    if isinstance(error, Unauthenticated):
        return "RepoNotFound"
    if 400 <= error.status < 500:
        return _BY_STATUS.get(error.status, "BadRequest")
    return None


def header_text(text: str) -> str:
    """``text`` as one ASCII header line (non-ASCII escaped, line breaks removed)."""
    flat = " ".join(text.split())
    return flat.encode("ascii", "backslashreplace").decode("ascii")


def error_headers(error: WeightportError) -> dict[str, str]:
    """The ``X-Error-*`` headers (and ``X-Repo-Commit`` for a missing entry) of an error."""
    headers: dict[str, str] = {}
    code = error_code(error)
    if code is not None:
        headers["X-Error-Code"] = code
    message = INVALID_CREDENTIALS if isinstance(error, InvalidCredentials) else error.message
    headers["X-Error-Message"] = header_text(message)
    if isinstance(error, EntryNotFound):
        headers["X-Repo-Commit"] = error.commit
    headers.update(error.headers())  # Content-Range of a 416, Allow of a 405, Retry-After of a 429
    return headers


def hub_error_response(error: WeightportError) -> web.Response:
    """The whole error answer: headers above, and ``{"error": message}`` as the body."""
    return web.Response(
        status=error.status,
        text=json.dumps({"error": error.message}),
        content_type="application/json",
        headers=error_headers(error),
    )
