"""The download audit log, recorded off the request path.

Handlers call :meth:`AuditLog.granted` (an API call handed out signed URLs),
:meth:`AuditLog.opened` (a download response starts sending its body) and
:meth:`AuditLog.closed` (it ended, with the bytes it sent). Each is a dictionary update under a
lock — no I/O — so the byte paths cost the same with the log on. A background thread writes
what changed once a second (:func:`weightport.catalog.audit.apply_changes`) and applies the
retention period once an hour.

**One record per download.** Events are grouped by a coalesce key: the action, the API key,
the client address and what was asked for (resource, revision, kind, file). An event joins
the record of its key while that record was active within ``window`` seconds — in memory in
this process, and in the catalog across processes and replicas — so the 16 range requests of
a parallel download, and a download resumed a minute later, are one record whose ``requests``
and ``bytes`` add up. A download still sending keeps its record active.

If the catalog cannot take a batch, the changes stay in memory and go with the next one; past
:data:`MAX_PENDING` distinct downloads waiting, new ones are dropped (and counted in
``weightport_audit_records_dropped_total``) rather than letting memory grow.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from weightport.catalog import audit
from weightport.catalog.audit import Change, Requester, Subject
from weightport.catalog.db import Catalog
from weightport.errors import WeightportError
from weightport.observability import metrics

log = logging.getLogger("weightport.audit")

FLUSH_INTERVAL = 1.0
RETENTION_INTERVAL = 3600.0
MAX_PENDING = 100_000
MAX_USER_AGENT = 512


def clean_user_agent(value: str) -> str:
    """A user agent fit for the catalog: printable characters only, at most 512."""
    if value.isprintable():  # the common case, checked in C
        return value[:MAX_USER_AGENT]
    return "".join(ch for ch in value if ch.isprintable())[:MAX_USER_AGENT]


#: What makes requests one download: :func:`identity`'s parts.
Identity = tuple[str, str, str, str, str, str, str, str]


def identity(action: str, subject: Subject, requester: Requester) -> Identity:
    """What requests of one download share (the in-memory form of :func:`coalesce_key`)."""
    return (
        action,
        requester.key_id,
        requester.client,
        subject.account_id,
        subject.resource,
        subject.revision,
        subject.kind,
        subject.file,
    )


def coalesce_key(action: str, subject: Subject, requester: Requester) -> str:
    """The catalog's form of :func:`identity`, by which every process finds a record."""
    return _digest(identity(action, subject, requester))


def _digest(parts: Identity) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class _Entry:
    """One download as this process knows it, and what it has not written yet."""

    identity: Identity
    key: str
    action: str
    subject: Subject
    requester: Requester
    first_at: float
    last_at: float
    requests: int = 0
    bytes: int = 0
    active: int = 0
    record_id: int | None = None
    written_at: float = 0.0

    @property
    def dirty(self) -> bool:
        return self.requests > 0 or self.bytes > 0


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class AuditLog:
    """Collects audit events in memory; a thread writes them to the catalog in batches."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        window: float,
        retention_days: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self._window = window
        self._retention_days = retention_days
        self._clock = clock
        self._lock = threading.Lock()
        # By identity, not coalesce key: a request then hashes nothing (a key is computed once
        # per download, when its entry is made).
        self._entries: dict[Identity, _Entry] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    # ------------------------------------------------------------------ request path

    def granted(self, subject: Subject, requester: Requester) -> None:
        """An API call handed out signed URLs for ``subject``."""
        with self._lock:
            entry = self._entry(audit.URLS, subject, requester)
            if entry is not None:
                entry.requests += 1

    def opened(self, subject: Subject, requester: Requester) -> Identity | None:
        """A response starts sending ``subject``'s bytes; pass the result to :meth:`closed`."""
        with self._lock:
            entry = self._entry(audit.DOWNLOAD, subject, requester)
            if entry is None:
                return None
            entry.requests += 1
            entry.active += 1
            return entry.identity

    def closed(self, key: Identity | None, sent: int) -> None:
        """The response :meth:`opened` returned ``key`` for has ended after ``sent`` bytes."""
        if key is None:
            return
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.bytes += sent
                entry.active -= 1
                entry.last_at = self._clock()

    def _entry(self, action: str, subject: Subject, requester: Requester) -> _Entry | None:
        now = self._clock()
        key = identity(action, subject, requester)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= MAX_PENDING:
                metrics.AUDIT_RECORDS_DROPPED.inc()
                return None
            entry = _Entry(key, _digest(key), action, subject, requester, first_at=now, last_at=now)
            self._entries[key] = entry
        entry.last_at = now
        return entry

    # ------------------------------------------------------------------ background

    def start(self) -> None:
        """Start the writer thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the writer thread after a last batch."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        else:
            self.flush()

    def _run(self) -> None:
        next_retention = self._clock()
        while not self._stop.wait(FLUSH_INTERVAL):
            try:
                self.flush()
                if self._clock() >= next_retention:
                    self.apply_retention()
                    next_retention = self._clock() + RETENTION_INTERVAL
            except Exception:
                # A bug must not end the log for the rest of the process's life.
                log.exception("audit log: writing a batch failed")
        self.flush()

    def flush(self) -> int:
        """Write what changed since the last batch; how many records it touched."""
        now = self._clock()
        with self._lock:
            batch = [entry for entry in self._entries.values() if self._due(entry, now)]
            changes = [self._change(entry, now) for entry in batch]
        if changes:
            window = timedelta(seconds=self._window)
            try:
                ids = self._catalog.call(lambda s: audit.apply_changes(s, changes, window))
            except (WeightportError, SQLAlchemyError) as exc:
                self._report(exc)
                return 0
            with self._lock:
                for entry, change, record_id in zip(batch, changes, ids, strict=True):
                    entry.record_id = record_id
                    entry.requests -= change.requests
                    entry.bytes -= change.bytes
                    entry.written_at = now
        if self._failing:
            log.info("audit log: the catalog takes records again")
            self._failing = False
        self._forget_finished(now)
        return len(changes)

    def _due(self, entry: _Entry, now: float) -> bool:
        # A download still sending refreshes its record now and then, so the record stays
        # joinable for other processes however long the transfer takes.
        return entry.dirty or (entry.active > 0 and now - entry.written_at >= self._window / 3)

    def _change(self, entry: _Entry, now: float) -> Change:
        return Change(
            coalesce_key=entry.key,
            action=entry.action,
            subject=entry.subject,
            requester=entry.requester,
            first_at=_utc(entry.first_at),
            last_at=_utc(now if entry.active > 0 else entry.last_at),
            requests=entry.requests,
            bytes=entry.bytes,
            record_id=entry.record_id,
        )

    def _forget_finished(self, now: float) -> None:
        with self._lock:
            done = [
                key
                for key, entry in self._entries.items()
                if not entry.dirty and entry.active <= 0 and now - entry.last_at > self._window
            ]
            for key in done:
                del self._entries[key]

    def _report(self, exc: Exception) -> None:
        if not self._failing:
            log.warning("audit log: cannot write to the catalog (%s); will retry", exc)
            self._failing = True

    def apply_retention(self) -> int:
        """Delete records older than the retention period; how many."""
        if self._retention_days <= 0:
            return 0
        cutoff = _utc(self._clock()) - timedelta(days=self._retention_days)
        removed = 0
        try:
            while count := self._catalog.call(lambda s: audit.delete_before(s, cutoff)):
                removed += count
        except (WeightportError, SQLAlchemyError) as exc:
            self._report(exc)
        if removed:
            log.info(
                "audit log: removed %d records older than %d days", removed, self._retention_days
            )
        return removed
