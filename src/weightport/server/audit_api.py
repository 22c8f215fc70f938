"""``GET /weightport/v1/audit``: the download audit log, for keys of the admin account.

Newest first, paged like the Fireworks list methods (``pageSize``, opaque ``pageToken`` /
``nextPageToken``, ``totalSize``), errors in the Fireworks envelope. Filters: ``account``,
``keyId``, ``action`` (``urls`` or ``download``), ``since`` (records active since) and
``until`` (records begun before), each time as ISO 8601 or a span before now (``24h``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from weightport.catalog import audit
from weightport.catalog.schema import AuditRecord
from weightport.server.context import context_of
from weightport.server.envelopes import json_response
from weightport.server.requests import authenticate_admin, query_int

ROUTE = "/weightport/v1/audit"
DEFAULT_PAGE_SIZE = 100


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_json(record: AuditRecord) -> dict[str, Any]:
    """One record as the API shows it (64-bit integers as strings, as in Fireworks' JSON)."""
    return {
        "id": str(record.id),
        "action": record.action,
        "account": record.account_id,
        "keyId": record.key_id,
        "resource": record.resource,
        "revision": record.revision,
        "kind": record.kind,
        "file": record.file,
        "bytes": str(record.bytes),
        "requests": record.requests,
        "client": record.client,
        "userAgent": record.user_agent,
        "firstTime": _time(record.first_at),
        "lastTime": _time(record.last_at),
    }


def query_of(request: web.Request, now: datetime) -> audit.AuditQuery:
    """The filters of an audit listing from its query string (strictly parsed)."""
    params = request.query
    since, until = params.get("since", ""), params.get("until", "")
    return audit.AuditQuery(
        account_id=params.get("account") or None,
        key_id=params.get("keyId") or None,
        action=params.get("action") or None,
        since=audit.parse_time(since, now, name="since") if since else None,
        until=audit.parse_time(until, now, name="until") if until else None,
    )


async def list_audit(request: web.Request) -> web.Response:
    await authenticate_admin(request, "the audit log")
    query = query_of(request, datetime.now(UTC))
    page_size = query_int(request, "pageSize", DEFAULT_PAGE_SIZE)
    token = request.query.get("pageToken", "")

    def run(session: Session) -> dict[str, Any]:
        page = audit.list_records(session, query, page_size=page_size, page_token=token)
        return {
            "auditRecords": [record_json(r) for r in page.records],
            "nextPageToken": page.next_page_token,
            "totalSize": page.total_size,
        }

    return json_response(await context_of(request).catalog.run(run))


def add_routes(app: web.Application) -> None:
    app.router.add_get(ROUTE, list_audit)
