"""Small builders for the OpenAPI document: JSON Schema pieces, parameters, operations.

Each surface module (:mod:`.fireworks`, :mod:`.together`, …) describes its routes with these,
so every operation spells its error answers the same way: the envelope of its API family and
the statuses the server really sends (the schemathesis suite holds the server to them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}
INTEGER: Schema = {"type": "integer"}
#: protojson renders int64 as a decimal string.
INT64_STRING: Schema = {"type": "string", "pattern": "^-?[0-9]+$"}
SHA256_HEX: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
#: RFC 3339 UTC with fractional seconds and a ``Z``, as both vendors' clients parse it.
TIMESTAMP: Schema = {
    "type": "string",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$",
}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}

#: Statuses and their reasons, for response descriptions.
REASONS = {
    200: "OK",
    202: "Accepted",
    206: "Partial Content",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    400: "Bad request: a malformed or invalid parameter or body",
    401: "No valid API key",
    403: "Forbidden (signed URL tampered with, expired or revoked; console CSRF)",
    404: "Not found (also another account's resource: ids cannot be probed)",
    405: "Method not allowed on this route",
    409: "Conflict (already exists, or a concurrent change won)",
    412: "Precondition failed (If-Match)",
    413: "Body larger than the configured limit",
    416: "Range not satisfiable (Content-Range: bytes */SIZE)",
    408: "The request body stalled (no byte for body_timeout seconds); send it again",
    417: "An Expect header other than 100-continue",
    429: "Too many concurrent computed downloads (Retry-After says when to retry)",
    503: "The catalog or store is unavailable for now (retry)",
    507: "The disk is full: nothing was written",
}


def ref(name: str) -> Schema:
    """A reference to ``components/schemas/<name>``."""
    return {"$ref": f"#/components/schemas/{name}"}


def obj(
    properties: Mapping[str, Schema],
    *,
    required: Iterable[str] = (),
    extra: bool | Schema = True,
    description: str | None = None,
) -> Schema:
    """An object schema. ``extra`` is ``additionalProperties`` (open by default: both vendors'
    clients ignore unknown keys, and weightport adds its own)."""
    schema: Schema = {"type": "object", "properties": dict(properties)}
    needed = list(required)
    if needed:
        schema["required"] = needed
    if extra is not True:
        schema["additionalProperties"] = extra
    if description:
        schema["description"] = description
    return schema


def array(items: Schema, **more: Any) -> Schema:
    return {"type": "array", "items": items, **more}


def enum(values: Sequence[str]) -> Schema:
    return {"type": "string", "enum": list(values)}


def param(
    name: str,
    where: str,
    schema: Schema,
    *,
    required: bool = False,
    description: str = "",
) -> Schema:
    """A parameter (``where``: path, query, header or cookie); path parameters are required."""
    out: Schema = {"name": name, "in": where, "schema": schema}
    if required or where == "path":
        out["required"] = True
    if description:
        out["description"] = description
    return out


def json_content(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def json_body(schema: Schema, *, required: bool = True) -> Schema:
    return {"required": required, "content": json_content(schema)}


def error_responses(envelope: str, statuses: Iterable[int]) -> dict[str, Schema]:
    """Error answers of one API family: each status with the family's envelope."""
    return {
        str(status): {
            "description": REASONS[status],
            "headers": {"x-should-retry": {"$ref": "#/components/headers/ShouldRetry"}},
            "content": json_content(ref(envelope)),
        }
        for status in sorted(set(statuses))
    }


def operation(
    operation_id: str,
    summary: str,
    *,
    tags: Sequence[str],
    responses: Mapping[str, Schema],
    parameters: Sequence[Schema] = (),
    body: Schema | None = None,
    security: Sequence[Mapping[str, Sequence[str]]] | None = None,
    description: str = "",
) -> Schema:
    """One operation object; ``security=[]`` marks an operation that needs no API key."""
    op: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "tags": list(tags),
        "responses": dict(responses),
    }
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = list(parameters)
    if body is not None:
        op["requestBody"] = body
    if security is not None:
        op["security"] = [dict(s) for s in security]
    return op


def ok_json(
    schema: Schema,
    description: str = "OK",
    status: int = 200,
    links: Mapping[str, Schema] | None = None,
) -> dict[str, Schema]:
    """A JSON success answer; ``links`` lead to the operations that can use it next (what
    stateful testing follows)."""
    answer: Schema = {"description": description, "content": json_content(schema)}
    if links:
        answer["links"] = dict(links)
    return {str(status): answer}


def links_to(operation_ids: Iterable[str], parameters: Mapping[str, str]) -> dict[str, Schema]:
    """OpenAPI links to each operation, passing the same runtime-expression parameters."""
    return {
        op_id[:1].upper() + op_id[1:]: {"operationId": op_id, "parameters": dict(parameters)}
        for op_id in operation_ids
    }


def binary_content(media_type: str = "application/octet-stream") -> Schema:
    """Bytes of ``media_type``; ``*/*`` (files served with their own type, e.g. a
    ``config.json``) admits any body."""
    schema: Schema = {} if media_type == "*/*" else {"type": "string", "format": "binary"}
    return {media_type: {"schema": schema}}
