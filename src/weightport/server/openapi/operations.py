"""The operator's routes as OpenAPI: the download audit log, the Prometheus metrics and the
load balancer's health checks.

The audit log and the metrics are for keys of the admin account (403 for any other account's
key) and answer errors in the Fireworks envelope; the health checks need no key. ``/metrics``
is absent from the main port when ``metrics_listen`` serves it on an address of its own,
without a key.
"""

from __future__ import annotations

from weightport.catalog.audit import ACTIONS, MAX_PAGE_SIZE
from weightport.server.openapi.fireworks import ENVELOPE
from weightport.server.openapi.kit import (
    INT64_STRING,
    INTEGER,
    STRING,
    TIMESTAMP,
    Schema,
    array,
    enum,
    error_responses,
    obj,
    ok_json,
    operation,
    param,
    ref,
)

TAG = "Operations"
ADMIN_ONLY = (401, 403, 503)
#: A time as ISO 8601 or as a span before now.
WHEN = {"type": "string", "description": "ISO 8601 (`2026-11-28T10:00:00Z`) or a span (`24h`)"}


def schemas() -> dict[str, Schema]:
    record: dict[str, Schema] = {
        "id": INT64_STRING,
        "action": enum(sorted(ACTIONS)),
        "account": STRING,
        "keyId": STRING,
        "resource": STRING,
        "revision": STRING,
        "kind": STRING,
        "file": STRING,
        "bytes": INT64_STRING,
        "requests": INTEGER,
        "client": STRING,
        "userAgent": STRING,
        "firstTime": TIMESTAMP,
        "lastTime": TIMESTAMP,
    }
    return {
        "AuditRecord": obj(record, required=tuple(record)),
        "ListAuditRecordsResponse": obj(
            {
                "auditRecords": array(ref("AuditRecord")),
                "nextPageToken": STRING,
                "totalSize": INTEGER,
            },
            required=("auditRecords", "nextPageToken", "totalSize"),
        ),
    }


def _health_check(status: Schema) -> Schema:
    return obj({"status": status, "checks": obj({"catalog": STRING, "store": STRING})})


def paths() -> dict[str, Schema]:
    return {
        "/healthz": {
            "get": operation(
                "healthz",
                "Liveness: the process answers (no I/O)",
                tags=[TAG],
                security=[],
                responses=ok_json(obj({"status": enum(["ok"])}, required=("status",))),
            )
        },
        "/readyz": {
            "get": operation(
                "readyz",
                "Readiness: the catalog and the blob store answer (503 names what does not)",
                tags=[TAG],
                security=[],
                responses={
                    **ok_json(_health_check(enum(["ready"]))),
                    "503": {
                        "description": "Not ready: each check says ok or why not",
                        "headers": {"Retry-After": {"schema": INTEGER}},
                        "content": {
                            "application/json": {"schema": _health_check(enum(["unavailable"]))}
                        },
                    },
                },
            )
        },
        "/weightport/v1/audit": {
            "get": operation(
                "listAuditRecords",
                "Who downloaded what and who minted URLs, newest first (admin keys)",
                tags=[TAG],
                parameters=[
                    param("account", "query", STRING),
                    param("keyId", "query", STRING),
                    param("action", "query", enum(sorted(ACTIONS))),
                    param("since", "query", WHEN, description="Records active since"),
                    param("until", "query", WHEN, description="Records begun before"),
                    param(
                        "pageSize",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                    ),
                    param("pageToken", "query", STRING),
                ],
                responses={
                    **ok_json(ref("ListAuditRecordsResponse")),
                    **error_responses(ENVELOPE, (400, *ADMIN_ONLY)),
                },
            )
        },
        "/metrics": {
            "get": operation(
                "metrics",
                "Prometheus metrics (admin keys; absent here when metrics_listen is set)",
                tags=[TAG],
                responses={
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": STRING}},
                    },
                    **error_responses(ENVELOPE, ADMIN_ONLY),
                },
            )
        },
    }
