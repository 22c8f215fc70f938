"""The downloader's own exception tree, and the one table that maps server errors onto it.

The client talks HTTP only, so it does not import the server's error classes; it reads the
stable codes the server puts in its two envelopes (Fireworks ``{"code": int, "message"}``,
Together ``{"error": {"message", "type", "param", "code"}}``) and the HTTP status::

    DownloadError
    ├── ConfigurationError           missing key / account, unusable arguments
    ├── ApiError                     the server answered with an error status
    │   ├── BadRequest               400, INVALID_ARGUMENT / FAILED_PRECONDITION / OUT_OF_RANGE
    │   ├── AuthenticationFailed     401, UNAUTHENTICATED
    │   ├── PermissionDenied         403, PERMISSION_DENIED (also PermissionError)
    │   │   └── SignedUrlRejected    403 from a signed URL: expired or tampered
    │   ├── NotFound                 404, NOT_FOUND (also LookupError)
    │   ├── RequestTimedOut          408, the server stopped waiting for the body (retryable)
    │   ├── RangeNotSatisfiable      416
    │   ├── RateLimited              429, RESOURCE_EXHAUSTED           (retryable)
    │   └── ServerError              5xx, INTERNAL / UNAVAILABLE / ... (retryable)
    ├── TransferError                connections kept failing after the retries
    │   └── ConnectionFailed         one request failed to connect or broke mid-body
    ├── RemoteChanged                the file changed on the server too often to finish
    ├── IntegrityError               sha256 or size mismatch (names the file)
    ├── InsufficientSpace            not enough free disk for what remains
    ├── UnsafePath                   a remote file name would land outside the target
    └── UnsafeArchive                a tar member is absolute, has "..", or is a link/device
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar


class DownloadError(Exception):
    """Base of every error the downloader raises on purpose."""

    #: Whether trying the same request again may succeed.
    retryable: ClassVar[bool] = False


class ConfigurationError(DownloadError, ValueError):
    """The command cannot start: a missing API key, account, or an unusable argument."""


class ApiError(DownloadError):
    """The server answered with an error status; ``message`` is the server's own words.

    ``retry_after``: seconds the server asked the caller to wait before asking again.
    """

    retry_after: float | None = None

    def __init__(self, message: str, *, status: int, code: str | int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"


class BadRequest(ApiError):
    """The request was refused as invalid (or the resource is not in a usable state)."""


class AuthenticationFailed(ApiError):
    """The API key is missing or not valid."""


class PermissionDenied(ApiError, PermissionError):
    """The key may not read this resource."""


class SignedUrlRejected(PermissionDenied):
    """A signed URL was refused (expired or tampered); fresh URLs may fix it."""


class NotFound(ApiError, LookupError):
    """No such model, fine-tune, checkpoint or file."""


class RangeNotSatisfiable(ApiError):
    """The server says the requested byte range lies outside the file."""


class RequestTimedOut(ApiError):
    """The server stopped waiting for the request's body; sending it again may work."""

    retryable = True


class RateLimited(ApiError):
    """Too many requests; retry later."""

    retryable = True


class ServerError(ApiError):
    """The server failed; retrying may help."""

    retryable = True


class TransferError(DownloadError):
    """A transfer kept failing (connection drops, timeouts, 5xx) after all retries."""


class ConnectionFailed(TransferError):
    """One request failed at the connection level; callers retry it with backoff."""

    retryable = True


class RemoteChanged(DownloadError):
    """The file on the server changed (ETag or size) more often than the restart budget."""


class IntegrityError(DownloadError):
    """Downloaded bytes do not match the offered sha256 or size; they were discarded."""

    def __init__(self, relpath: str, *, expected: str, actual: str) -> None:
        super().__init__(f"{relpath}: expected {expected}, got {actual}; the bytes were discarded")
        self.relpath = relpath
        self.expected = expected
        self.actual = actual


class InsufficientSpace(DownloadError, OSError):
    """The target file system lacks the free space the remaining download needs."""


class UnsafePath(DownloadError, ValueError):
    """A remote file name is absolute, contains "..", or would escape the target directory."""


class UnsafeArchive(DownloadError, ValueError):
    """A tar member would escape the target, or is a link, device or FIFO."""


@dataclass(frozen=True)
class _Row:
    """One line of the mapping: an exception and every way a server can spell it."""

    error: type[ApiError]
    http: tuple[int, ...]
    grpc: tuple[int, ...]
    codes: tuple[str, ...]


# THE table. Lookup order: the server's string code (weightport's stable codes, sent in the
# Together envelope), then the HTTP status, then the gRPC code (Fireworks envelope) for
# statuses the table does not know. gRPC codes come last because one code travels with
# several statuses (OUT_OF_RANGE is a 400 at Fireworks, a 416 at weightport).
_TABLE: tuple[_Row, ...] = (
    _Row(
        SignedUrlRejected,
        (),
        (),
        ("signature_invalid", "signature_expired", "signature_revoked", "url_expired"),
    ),
    _Row(
        BadRequest,
        (400, 405, 409, 412, 413, 417, 422),
        (3, 9, 11),
        (
            "invalid_argument",
            "failed_precondition",
            "payload_too_large",
            "precondition_failed",
            "already_exists",
            "method_not_allowed",
            "invalid_request_error",
        ),
    ),
    _Row(AuthenticationFailed, (401,), (16,), ("unauthenticated", "authentication_error")),
    _Row(PermissionDenied, (403,), (7,), ("permission_denied", "permission_error")),
    _Row(NotFound, (404,), (5,), ("not_found",)),
    _Row(RangeNotSatisfiable, (416,), (), ("range_not_satisfiable",)),
    _Row(RequestTimedOut, (408,), (), ("request_timeout",)),
    _Row(RateLimited, (429,), (8,), ("rate_limited", "rate_limit_exceeded")),
    _Row(
        ServerError,
        (500, 501, 502, 503, 504, 505, 507),
        (2, 4, 12, 13, 14, 15),
        ("internal", "insufficient_storage"),
    ),
)


def _classify(status: int, code: str | int | None) -> type[ApiError]:
    if isinstance(code, str):
        for row in _TABLE:
            if code in row.codes:
                return row.error
    for row in _TABLE:
        if status in row.http:
            return row.error
    if isinstance(code, int):
        for row in _TABLE:
            if code in row.grpc:
                return row.error
    return ServerError if status >= 500 else BadRequest if status >= 400 else ApiError


def _envelope(body: Any) -> tuple[str | None, str | int | None]:
    """Message and code from either envelope (or an OpenAI-style one); Nones if neither."""
    if not isinstance(body, dict):
        return None, None
    inner = body.get("error")
    if isinstance(inner, dict):
        message = inner.get("message")
        code = inner.get("code")
        if not isinstance(code, str | int) or isinstance(code, bool):
            code = inner.get("type") if isinstance(inner.get("type"), str) else None
        return (message if isinstance(message, str) else None), code
    message = body.get("message")
    code = body.get("code")
    if isinstance(code, bool) or not isinstance(code, str | int):
        code = None
    return (message if isinstance(message, str) else None), code


def error_from_response(status: int, body: bytes, *, signed_url: bool = False) -> ApiError:
    """Build the most specific :class:`ApiError` for an error answer.

    ``signed_url`` marks answers from a pre-signed data URL: any 403 there means the URL
    itself was refused, which fresh URLs from the API can fix.
    """
    try:
        parsed: Any = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        parsed = None
    message, code = _envelope(parsed)
    if message is None:
        text = body[:200].decode("utf-8", "replace").strip()
        message = text or f"the server answered HTTP {status}"
    cls = _classify(status, code)
    if signed_url and status == 403:
        cls = SignedUrlRejected
    return cls(message, status=status, code=code)
