"""The audit log, for the admin account: who downloaded what, newest first, filterable.

Filters are GET parameters (bookmarkable, no JavaScript needed): account, key id, action and
a period; pages go back in time with the same opaque tokens as the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy.orm import Session

from weightport.catalog import audit
from weightport.catalog.sessions import SignedIn
from weightport.errors import InvalidArgument
from weightport.server.console import render
from weightport.server.console.key_pages import require_admin
from weightport.server.console.session import signed_in
from weightport.server.context import context_of

AUDIT_PATH = "/console/audit"
PAGE_SIZE = 50
ACTIONS = {"": "Downloads and URLs", audit.DOWNLOAD: "Downloads", audit.URLS: "Signed URLs"}
PERIODS = {"": "Any time", "1h": "Last hour", "24h": "Last 24 hours", "7d": "Last 7 days"}


@dataclass(frozen=True)
class AuditFilters:
    """What the audit page was asked for, validated (each field round-trips into links)."""

    account: str
    key_id: str
    action: str
    period: str
    before: str

    @classmethod
    def parse(cls, query: Any) -> AuditFilters:
        action, period = query.get("action", ""), query.get("period", "")
        if action not in ACTIONS:
            raise InvalidArgument(f"Unknown action {action!r}.")
        if period not in PERIODS:
            raise InvalidArgument(f"Unknown period {period!r}.")
        account, key_id = query.get("account", "").strip(), query.get("key", "").strip()
        return cls(account, key_id, action, period, query.get("before", ""))

    def query(self, now: datetime) -> audit.AuditQuery:
        return audit.AuditQuery(
            account_id=self.account or None,
            key_id=self.key_id or None,
            action=self.action or None,
            since=audit.parse_time(self.period, now, name="period") if self.period else None,
        )

    def link(self, before: str = "") -> str:
        params = {
            "account": self.account,
            "key": self.key_id,
            "action": self.action,
            "period": self.period,
            "before": before,
        }
        kept = {k: v for k, v in params.items() if v}
        return AUDIT_PATH + ("?" + urlencode(kept) if kept else "")

    @property
    def filtered(self) -> bool:
        return bool(self.account or self.key_id or self.action or self.period)


@signed_in
async def audit_page(request: web.Request, who: SignedIn) -> web.StreamResponse:
    """``GET /console/audit``."""
    require_admin(who, "reads the audit log")
    wanted = AuditFilters.parse(request.query)
    query = wanted.query(datetime.now(UTC))

    def run(session: Session) -> audit.AuditPage:
        return audit.list_records(session, query, page_size=PAGE_SIZE, page_token=wanted.before)

    found = await context_of(request).catalog.run(run)
    values = {
        "filters": wanted,
        "records": found.records,
        "total": found.total_size,
        "actions": ACTIONS,
        "periods": PERIODS,
        "older": wanted.link(found.next_page_token) if found.next_page_token else None,
        "newest": wanted.link() if wanted.before else None,
    }
    return render.page(request, "audit.html", values)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/audit", audit_page)
