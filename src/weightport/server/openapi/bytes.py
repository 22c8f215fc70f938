"""Parameters and answers shared by every route that serves bytes (RFC 9110 Range and
conditional requests, as :mod:`weightport.server.byteserve` implements them)."""

from __future__ import annotations

from weightport.server.openapi.kit import STRING, Schema, binary_content, param

REQUEST_HEADERS = [
    param("Range", "header", STRING, description="`bytes=a-b`, `bytes=a-`, `bytes=-n`, or a list"),
    param("If-Range", "header", STRING),
    param("If-None-Match", "header", STRING),
    param("If-Match", "header", STRING),
]

_HEADERS: dict[str, Schema] = {
    "ETag": {"schema": STRING, "description": "Strong validator of the bytes"},
    "Accept-Ranges": {"schema": {"type": "string", "enum": ["bytes"]}},
    "Content-Length": {"schema": {"type": "integer", "minimum": 0}},
}


def byte_responses(media_type: str) -> dict[str, Schema]:
    """200 whole, 206 part(s), 304 not modified, 416 unsatisfiable (``bytes */SIZE``)."""
    return {
        "200": {
            "description": "The whole entity (HEAD: the same headers, no body)",
            "headers": _HEADERS,
            "content": binary_content(media_type),
        },
        "206": {
            "description": "One range (Content-Range), or several as multipart/byteranges",
            "headers": {**_HEADERS, "Content-Range": {"schema": STRING}},
            "content": {
                **binary_content(media_type),
                "multipart/byteranges": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "304": {"description": "Not modified (If-None-Match matched)"},
        "416": {
            "description": "Range not satisfiable: `Content-Range: bytes */SIZE` and a one-line "
            "text message",
            "headers": {"Content-Range": {"schema": STRING}},
            "content": {"text/plain": {"schema": STRING}},
        },
    }


#: A cached compressed archive on a presigning (S3) store: GET is sent to the store itself.
REDIRECT_TO_STORE: dict[str, Schema] = {
    "302": {
        "description": "GET of a cached compressed archive on an S3 store: `Location` is a "
        "short-lived presigned GET of the same bytes (Range is kept by clients); HEAD is "
        "answered here",
        "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
    }
}
