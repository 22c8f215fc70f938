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
from weightport.server.context import context_of
from weightport.server.envelopes import json_response
from weightport.server.requests import authenticate_admin, query_int

ROUTE = "/weightport/v1/audit"
DEFAULT_PAGE_SIZE = 100


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
            "auditRecords": [audit.record_json(r) for r in page.records],
            "nextPageToken": page.next_page_token,
            "totalSize": page.total_size,
        }

    return json_response(await context_of(request).catalog.run(run))


def add_routes(app: web.Application) -> None:
    app.router.add_get(ROUTE, list_audit)
