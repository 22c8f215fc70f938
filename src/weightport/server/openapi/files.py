"""The signed file routes as OpenAPI: no API key, the query's signature is the credential."""

from __future__ import annotations

from weightport.server.openapi.bytes import REQUEST_HEADERS, byte_responses
from weightport.server.openapi.fireworks import ENVELOPE
from weightport.server.openapi.kit import (
    INT64_STRING,
    STRING,
    Schema,
    error_responses,
    operation,
    param,
)
from weightport.signing import (
    Q_ALGORITHM,
    Q_CREDENTIAL,
    Q_DATE,
    Q_EXPIRES,
    Q_SIGNATURE,
    Q_SIGNED_HEADERS,
)

TAG = "Signed files"
PATH = "/files/{account}/{model}/{path}"

_SIGNATURE = [
    param(Q_ALGORITHM, "query", STRING, required=True),
    param(Q_CREDENTIAL, "query", STRING, required=True, description="Signing key id"),
    param(Q_DATE, "query", STRING, required=True, description="YYYYMMDDTHHMMSSZ"),
    param(Q_EXPIRES, "query", INT64_STRING, required=True, description="Lifetime, seconds"),
    param(Q_SIGNED_HEADERS, "query", STRING, required=True),
    param("X-Wp-key", "query", STRING, required=True, description="Id of the minting API key"),
    param(Q_SIGNATURE, "query", STRING, required=True, description="HMAC-SHA256, hex"),
]
_TARGET = [
    param("account", "path", STRING),
    param("model", "path", STRING),
    param("path", "path", STRING, description="The file's path in the model (may hold `/`)"),
]


def paths() -> dict[str, Schema]:
    download = operation(
        "downloadFile",
        "A READY model's file by a URL from getDownloadEndpoint (Range, conditionals)",
        tags=[TAG],
        security=[],
        parameters=[
            *_TARGET,
            *_SIGNATURE,
            param("X-Wp-sha256", "query", STRING, required=True),
            *REQUEST_HEADERS,
        ],
        responses={
            **byte_responses("application/octet-stream"),
            **error_responses(ENVELOPE, (400, 403, 404, 412, 503)),
        },
    )
    upload = operation(
        "uploadFile",
        "Upload one declared file by a URL from getUploadEndpoint",
        tags=[TAG],
        security=[],
        parameters=[
            *_TARGET,
            *_SIGNATURE,
            param("X-Wp-size", "query", INT64_STRING, required=True),
            param("X-Wp-gen", "query", INT64_STRING, required=True),
            param("X-Wp-sha256", "query", STRING),
            param("x-goog-content-length-range", "header", STRING, description="`N,N`"),
        ],
        body={
            "required": True,
            "content": {"application/octet-stream": {"schema": {"format": "binary"}}},
        },
        responses={
            "200": {"description": "Landed (empty body)"},
            **error_responses(ENVELOPE, (400, 403, 404, 408, 409, 413, 417, 503, 507)),
        },
    )
    return {
        PATH: {
            "get": download,
            "head": {**download, "operationId": "headFile"},
            "put": upload,
        }
    }
