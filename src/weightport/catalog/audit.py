"""The download audit log in the catalog: adding to records, reading pages, retention.

Records are written in batches by one background thread per server process
(:mod:`weightport.services.audit`), never on the request path. A batch entry carries what
changed since the previous batch (requests and bytes to add, the latest activity); it adds to
the record it already belongs to, else to the newest record with the same coalesce key that
was active within the window, else it starts one. The lookup and the insert happen in one
transaction that no other writer of the log can interleave with — SQLite lets one writer in
at a time (a transaction that read before another committed cannot write), and on PostgreSQL
the batch takes a transaction-scoped advisory lock first — so the ranges of one download
served by several processes or replicas still make a single record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from weightport.catalog.schema import AuditRecord
from weightport.errors import InvalidArgument

URLS, DOWNLOAD = "urls", "download"
ACTIONS = (URLS, DOWNLOAD)
MAX_PAGE_SIZE = 1000
#: The PostgreSQL advisory lock (an arbitrary constant) that serialises batches of the log.
_PG_LOCK = 0x77706175  # "wpau"


@dataclass(frozen=True)
class Subject:
    """What was downloaded: the resource, which revision of it, what kind, which file."""

    account_id: str
    resource: str
    kind: str
    revision: str = ""
    file: str = ""


@dataclass(frozen=True)
class Requester:
    """Who downloaded: the API key (its id), the client address and its user agent."""

    key_id: str
    client: str
    user_agent: str


@dataclass(frozen=True)
class Change:
    """What one batch adds to one record (see the module docstring)."""

    coalesce_key: str
    action: str
    subject: Subject
    requester: Requester
    first_at: datetime
    last_at: datetime
    requests: int
    bytes: int
    record_id: int | None


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})


def _joinable(session: Session, change: Change, window: timedelta) -> AuditRecord | None:
    if change.record_id is not None:
        record = session.get(AuditRecord, change.record_id)
        if record is not None:
            return record
    query = (
        select(AuditRecord)
        .where(AuditRecord.coalesce_key == change.coalesce_key)
        .where(AuditRecord.last_at >= change.first_at - window)
        .order_by(AuditRecord.id.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def apply_changes(session: Session, changes: list[Change], window: timedelta) -> list[int]:
    """Add each change to its record (or a new one); the record ids, in order."""
    _lock(session)
    ids: list[int] = []
    for change in changes:
        record = _joinable(session, change, window)
        if record is None:
            subject, requester = change.subject, change.requester
            record = AuditRecord(
                coalesce_key=change.coalesce_key,
                action=change.action,
                account_id=subject.account_id,
                key_id=requester.key_id,
                resource=subject.resource,
                revision=subject.revision,
                kind=subject.kind,
                file=subject.file,
                bytes=change.bytes,
                requests=change.requests,
                client=requester.client,
                user_agent=requester.user_agent,
                first_at=change.first_at,
                last_at=change.last_at,
            )
            session.add(record)
            session.flush()
        else:
            # Increments in SQL: another process may be adding to the same record.
            session.execute(
                update(AuditRecord)
                .where(AuditRecord.id == record.id)
                .values(
                    bytes=AuditRecord.bytes + change.bytes,
                    requests=AuditRecord.requests + change.requests,
                    last_at=max(record.last_at, change.last_at),
                )
            )
        ids.append(record.id)
    return ids


@dataclass(frozen=True)
class AuditQuery:
    """Which records to list; ``None`` (or empty) means no restriction."""

    account_id: str | None = None
    key_id: str | None = None
    action: str | None = None
    #: Records active at or after this time (their last request).
    since: datetime | None = None
    #: Records that began before this time.
    until: datetime | None = None


@dataclass(frozen=True)
class AuditPage:
    records: list[AuditRecord]
    #: Token of the next (older) page; empty on the last page.
    next_page_token: str
    total_size: int


_AGO = re.compile(r"([0-9]{1,9})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: datetime, *, name: str) -> datetime:
    """A time given as ISO 8601 (``2026-11-28``, ``2026-11-28T10:00:00Z``, an offset; no
    offset means UTC) or as a span before ``now`` (``90m``, ``24h``, ``7d``, ``2w``).

    Raises :class:`InvalidArgument` naming the option ``name``.
    """
    value = text.strip()
    ago = _AGO.fullmatch(value)
    if ago is not None:
        return now - timedelta(seconds=int(ago.group(1)) * _UNIT_SECONDS[ago.group(2)])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(
            f"{name} must be a time such as 2026-11-28T10:00:00Z or a span such as 24h or 7d, "
            f"not {text!r}",
            param=name,
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse_token(token: str) -> int | None:
    if not token:
        return None
    if not token.isdigit() or len(token) > 18:
        raise InvalidArgument(f"invalid pageToken {token!r}", param="pageToken")
    return int(token)


def list_records(
    session: Session, query: AuditQuery, *, page_size: int = 100, page_token: str = ""
) -> AuditPage:
    """One page of records, newest first. Page tokens are opaque (the last id returned), so
    paging stays stable while new records arrive."""
    if query.action is not None and query.action not in ACTIONS:
        raise InvalidArgument(
            f"action must be {' or '.join(ACTIONS)}, not {query.action!r}", param="action"
        )
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(
            f"pageSize must be between 1 and {MAX_PAGE_SIZE}, not {page_size}", param="pageSize"
        )
    before = _parse_token(page_token)
    base = select(AuditRecord)
    if query.account_id:
        base = base.where(AuditRecord.account_id == query.account_id)
    if query.key_id:
        base = base.where(AuditRecord.key_id == query.key_id)
    if query.action:
        base = base.where(AuditRecord.action == query.action)
    if query.since is not None:
        base = base.where(AuditRecord.last_at >= query.since)
    if query.until is not None:
        base = base.where(AuditRecord.first_at < query.until)
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    page = base if before is None else base.where(AuditRecord.id < before)
    records = list(session.scalars(page.order_by(AuditRecord.id.desc()).limit(page_size + 1)))
    more = len(records) > page_size
    records = records[:page_size]
    return AuditPage(records, str(records[-1].id) if more else "", total)


def delete_before(session: Session, cutoff: datetime, *, limit: int = 10_000) -> int:
    """Remove up to ``limit`` records whose last activity is older than ``cutoff``; how many.

    Bounded, so one transaction never holds the write lock for long; call until it returns 0.
    """
    ids = select(AuditRecord.id).where(AuditRecord.last_at < cutoff).limit(limit)
    doomed = list(session.scalars(ids))
    if doomed:
        session.execute(delete(AuditRecord).where(AuditRecord.id.in_(doomed)))
    return len(doomed)


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_json(record: AuditRecord) -> dict[str, Any]:
    """One record as the API and ``weightport audit --json`` show it (64-bit integers as
    strings, as in Fireworks' JSON)."""
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
