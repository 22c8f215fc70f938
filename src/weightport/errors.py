"""The one error tree of weightport.

Every error a caller can trigger is a :class:`WeightportError`. Each knows its HTTP status,
its gRPC code (for the Fireworks ``google.rpc.Status`` envelope), its Together error type,
and a stable machine-readable ``code``. The server renders them in exactly one place
(``weightport.server.envelopes``); the client maps codes back with one table.

::

    WeightportError                      500 INTERNAL
    ├── InvalidArgument                  400 INVALID_ARGUMENT
    │   ├── FailedPrecondition           400 FAILED_PRECONDITION
    │   │   └── StillWorking             400 + Retry-After (work still running: poll)
    │   ├── PayloadTooLarge              413
    │   └── ExpectationFailed            417 (an Expect header other than 100-continue)
    ├── RangeNotSatisfiable              416
    ├── Unauthenticated                  401 UNAUTHENTICATED
    │   └── InvalidCredentials           401 (a key was sent, but it is unknown or revoked)
    ├── PermissionDenied                 403 PERMISSION_DENIED
    │   └── SignatureInvalid             403 (tampered, expired or unknown-key signed URL)
    │       ├── SignatureExpired         403 (an authentic signed URL past its expiry)
    │       └── SignatureRevoked         403 (minted by an API key since revoked)
    ├── NotFound (also LookupError)      404 NOT_FOUND
    │   ├── RepoNotFound                 404 (Hugging Face surface: no such repository)
    │   ├── RevisionNotFound             404 (no such revision of a repository)
    │   └── EntryNotFound                404 (no such file or folder at a revision)
    ├── MethodNotAllowed                 405 UNIMPLEMENTED
    ├── RequestTimeout                   408 DEADLINE_EXCEEDED (the body stopped arriving)
    ├── AlreadyExists                    409 ALREADY_EXISTS
    ├── Aborted                          409 ABORTED (a concurrent change won; retry)
    ├── PreconditionFailed               412 (If-Match style precondition)
    ├── TooManyRequests                  429 RESOURCE_EXHAUSTED (+ Retry-After)
    ├── Unavailable                      503 UNAVAILABLE
    ├── HttpVersionNotSupported          505 UNIMPLEMENTED
    └── StorageError                     500 INTERNAL / DATA_LOSS
        └── InsufficientStorage          507 RESOURCE_EXHAUSTED (disk full)
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum
from typing import ClassVar


class GrpcCode(IntEnum):
    """google.rpc.Code values used by the Fireworks envelope."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class WeightportError(Exception):
    """Base of every error weightport raises on purpose."""

    status: ClassVar[int] = 500
    grpc: ClassVar[GrpcCode] = GrpcCode.INTERNAL
    together_type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal"
    #: Whether a client should retry the same request (rendered as ``x-should-retry``).
    retryable: ClassVar[bool] = True

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message

    def headers(self) -> dict[str, str]:
        """HTTP headers this error adds to its response (besides ``x-should-retry``)."""
        return {}


class InvalidArgument(WeightportError, ValueError):
    status = 400
    grpc = GrpcCode.INVALID_ARGUMENT
    together_type = "invalid_request_error"
    code = "invalid_argument"
    retryable = False


class FailedPrecondition(InvalidArgument):
    """The request is valid but the resource is not in a state that allows it."""

    grpc = GrpcCode.FAILED_PRECONDITION
    code = "failed_precondition"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        # Fireworks' documented upload loop polls validateUpload until the response text no
        # longer contains "FAILED_PRECONDITION", so the string must be in the message.
        if not message.startswith("FAILED_PRECONDITION"):
            message = f"FAILED_PRECONDITION: {message}"
        super().__init__(message, param=param)


class StillWorking(FailedPrecondition):
    """The request waits on work that is still running (hashing uploaded files): the caller
    should ask again after ``retry_after`` seconds (sent as ``Retry-After``)."""

    code = "still_working"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class PayloadTooLarge(InvalidArgument):
    status = 413
    code = "payload_too_large"


class ExpectationFailed(InvalidArgument):
    status = 417
    code = "expectation_failed"


class RangeNotSatisfiable(WeightportError):
    status = 416
    grpc = GrpcCode.OUT_OF_RANGE
    together_type = "invalid_request_error"
    code = "range_not_satisfiable"
    retryable = False

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class Unauthenticated(WeightportError):
    status = 401
    grpc = GrpcCode.UNAUTHENTICATED
    together_type = "authentication_error"
    code = "unauthenticated"
    retryable = False


class InvalidCredentials(Unauthenticated):
    """A key was presented but is unknown or revoked (as opposed to no key at all)."""


class PermissionDenied(WeightportError, PermissionError):
    status = 403
    grpc = GrpcCode.PERMISSION_DENIED
    together_type = "permission_error"
    code = "permission_denied"
    retryable = False


class SignatureInvalid(PermissionDenied):
    code = "signature_invalid"


class SignatureExpired(SignatureInvalid):
    """An authentic signed URL used after its expiry: the caller should mint a fresh one."""

    code = "signature_expired"


class SignatureRevoked(SignatureInvalid):
    """An authentic signed URL whose minting API key has been revoked since."""

    code = "signature_revoked"


class NotFound(WeightportError, LookupError):
    status = 404
    grpc = GrpcCode.NOT_FOUND
    together_type = "invalid_request_error"
    code = "not_found"
    retryable = False


class RepoNotFound(NotFound):
    """No repository by that id for this key: missing and other accounts' repos alike."""

    code = "repo_not_found"


class RevisionNotFound(NotFound):
    code = "revision_not_found"


class EntryNotFound(NotFound):
    """No file or folder at that path; ``commit`` is the revision's commit that lacks it."""

    code = "entry_not_found"

    def __init__(self, message: str, *, commit: str) -> None:
        super().__init__(message)
        self.commit = commit


class MethodNotAllowed(WeightportError):
    """A method the route does not serve; ``allowed`` becomes the ``Allow`` header that
    RFC 9110 requires on a 405."""

    status = 405
    grpc = GrpcCode.UNIMPLEMENTED
    together_type = "invalid_request_error"
    code = "method_not_allowed"
    retryable = False

    def __init__(
        self, message: str, *, allowed: Iterable[str] = (), param: str | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.allowed = tuple(sorted(set(allowed)))

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)} if self.allowed else {}


class AlreadyExists(WeightportError):
    status = 409
    grpc = GrpcCode.ALREADY_EXISTS
    together_type = "invalid_request_error"
    code = "already_exists"
    retryable = False


class Aborted(WeightportError):
    """A concurrent change to the same resource won; the same request may succeed now."""

    status = 409
    grpc = GrpcCode.ABORTED
    together_type = "invalid_request_error"
    code = "aborted"


class PreconditionFailed(WeightportError):
    status = 412
    grpc = GrpcCode.FAILED_PRECONDITION
    together_type = "invalid_request_error"
    code = "precondition_failed"
    retryable = False


class RequestTimeout(WeightportError):
    """The client announced a request body and stopped sending it."""

    status = 408
    grpc = GrpcCode.DEADLINE_EXCEEDED
    together_type = "invalid_request_error"
    code = "request_timeout"


class TooManyRequests(WeightportError):
    """A per-account cap is reached; the same request succeeds once a slot frees."""

    status = 429
    grpc = GrpcCode.RESOURCE_EXHAUSTED
    together_type = "rate_limit_exceeded"
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        # Retry-After is what HTTP clients and huggingface_hub read; the Stainless SDKs
        # (fireworks-ai, together) prefer retry-after-ms and honour either up to 60 s.
        return {
            "Retry-After": str(self.retry_after),
            "retry-after-ms": str(self.retry_after * 1000),
        }


class Unavailable(WeightportError):
    status = 503
    grpc = GrpcCode.UNAVAILABLE
    code = "unavailable"

    def headers(self) -> dict[str, str]:
        # A busy or briefly unreachable catalog: worth another try in a moment.
        return {"Retry-After": "1"}


class HttpVersionNotSupported(WeightportError):
    status = 505
    grpc = GrpcCode.UNIMPLEMENTED
    together_type = "invalid_request_error"
    code = "http_version_not_supported"
    retryable = False


class StorageError(WeightportError):
    """The blob store failed or holds bytes that do not match their address."""

    code = "storage_error"


class InsufficientStorage(StorageError):
    """The disk (blob store or catalog) is full: nothing was written; free space and retry.

    Not retried automatically: an immediate retry meets the same full disk.
    """

    status = 507
    grpc = GrpcCode.RESOURCE_EXHAUSTED
    code = "insufficient_storage"
    retryable = False
