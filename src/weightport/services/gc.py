"""Garbage collection of blobs nothing references: mark, wait out a grace period, sweep.

Deleted models, superseded uploads and failed builds leave blobs behind that nothing in the
catalog names. A collection (``weightport gc``, or every ``gc_interval`` inside ``serve``)
reclaims them, through the ``BlobStore`` protocol and the catalog only, so it runs unchanged
on the local store or S3, with SQLite or PostgreSQL, beside live servers:

- **Mark.** The store is listed in batches; blobs no catalog row names
  (:data:`~weightport.catalog.blob_refs.REFERENCES`) are marked unreferenced since now, and
  blobs named again lose their marks.
- **Sweep.** A blob marked more than ``gc_grace`` seconds ago is deleted in a transaction of
  its own that takes the blob's row, finds no reference, and deletes the blob from the store
  before it commits.
- **Landing.** Whoever records a reference to a blob it has just stored (an upload, an
  import, an archive build) calls :func:`pin_stored` in that transaction: it takes the same
  row, so it waits for a sweep of that blob to finish, and then checks the blob is still in
  the store. A reference is therefore never recorded to a deleted blob; at worst an upload
  that happened to store bytes equal to a blob being swept that instant is refused (409
  ABORTED) and sent again.
- **Grace.** Marks, not the blobs' own ages, measure it: a model deleted a minute ago keeps
  its blobs for ``gc_grace`` more, so downloads already running finish; bytes stored a moment
  before their reference lands are not even marked as old.
- **One at a time.** A lease in the catalog lets one collection run among all replicas;
  correctness does not rest on it (two collections would only repeat each other's work).

Temp and staging leftovers older than ``staging_max_age`` (crashed or abandoned uploads,
S3 staging objects never validated) are removed on the way.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import secrets
import socket
import threading
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from weightport.catalog import blob_refs, leases
from weightport.catalog.db import Catalog
from weightport.catalog.schema import utcnow
from weightport.errors import Aborted, WeightportError
from weightport.storage.base import BlobInfo, BlobStore

log = logging.getLogger("weightport.gc")

LEASE = "gc"
#: A collection renews its lease after every batch; one that died frees it after this long.
LEASE_TTL_S = 600.0
#: Blobs looked up in the catalog per query (and marked per transaction).
BATCH = 500


@dataclass(frozen=True)
class GcReport:
    """What one collection found and did (or, with ``dry_run``, would do)."""

    dry_run: bool
    #: Blobs in the store, and their bytes.
    blobs: int = 0
    blob_bytes: int = 0
    #: Blobs some catalog row names: kept.
    referenced: int = 0
    #: Blobs deleted (with ``dry_run``: that would be), and their bytes.
    deleted: tuple[BlobInfo, ...] = ()
    #: Unreferenced blobs still inside their grace period, and their bytes.
    waiting: int = 0
    waiting_bytes: int = 0
    #: Temp and staging leftovers removed (0 with ``dry_run``).
    temp_removed: int = 0
    #: When another collection held the lease: its holder; nothing was done.
    busy_with: str | None = None

    @property
    def deleted_bytes(self) -> int:
        return sum(info.size for info in self.deleted)


@dataclass
class _Tally:
    blobs: int = 0
    blob_bytes: int = 0
    referenced: int = 0
    waiting: int = 0
    waiting_bytes: int = 0
    deleted: list[BlobInfo] = field(default_factory=list)


def pin_stored(session: Session, store: BlobStore, keys: Collection[str]) -> None:
    """Call in the transaction that records references to blobs just stored (see above).

    Raises :class:`~weightport.errors.Aborted` if garbage collection deleted one of them
    meanwhile: the caller stores it again (an upload is sent again).
    """
    blob_refs.pin(session, keys)
    gone = sorted(key for key in keys if store.head(key) is None)
    if gone:
        raise Aborted(
            f"blob {gone[0]} was garbage-collected while it was being stored "
            "(identical bytes, unreferenced until now); send it again"
        )


class Collector:
    """One collection over ``store`` and ``catalog``; see the module docstring."""

    def __init__(
        self,
        catalog: Catalog,
        store: BlobStore,
        *,
        grace_s: float,
        temp_max_age_s: float,
        stop: threading.Event | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.grace = timedelta(seconds=grace_s)
        self.temp_max_age_s = temp_max_age_s
        self.stop = stop or threading.Event()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    def run(self, *, dry_run: bool = False) -> GcReport:
        """Mark, sweep and clean temp leftovers (under the lease), or with ``dry_run``
        report what that would delete, changing nothing."""
        now = utcnow()
        if dry_run:
            return self._preview(now)
        if not self.catalog.call(lambda s: self._renew(s, now)):
            busy = self.catalog.call(lambda s: leases.holder_of(s, LEASE, now))
            return GcReport(dry_run=False, busy_with=busy or "another collection")
        try:
            tally = _Tally()
            for batch in self._batches():
                self.catalog.call(lambda s, b=batch: self._mark(s, b, now, tally))  # type: ignore[misc]
            self._sweep(now - self.grace, tally)
            temp = 0 if self.stop.is_set() else self.store.cleanup_temp(self.temp_max_age_s)
        finally:
            self.catalog.call(lambda s: leases.release(s, LEASE, self.holder))
        return _report(tally, dry_run=False, temp_removed=temp)

    def _renew(self, session: Session, now: datetime) -> bool:
        return leases.acquire(session, LEASE, self.holder, LEASE_TTL_S, now)

    def _batches(self) -> Iterator[list[BlobInfo]]:
        listing = iter(self.store.list())
        while not self.stop.is_set() and (batch := list(itertools.islice(listing, BATCH))):
            yield batch

    def _mark(self, session: Session, batch: list[BlobInfo], now: datetime, tally: _Tally) -> None:
        if not self._renew(session, utcnow()):
            raise Aborted("garbage collection lost its lease to another collection")
        found = referenced_split(session, batch)
        blob_refs.mark_unreferenced(session, {b.key: b.size for b in found.unreferenced}, now)
        blob_refs.clear_marks(session, found.referenced)
        tally.blobs += len(batch)
        tally.blob_bytes += sum(b.size for b in batch)
        tally.referenced += len(found.referenced)

    def _sweep(self, cutoff: datetime, tally: _Tally) -> None:
        after = ""
        while not self.stop.is_set():
            page = self.catalog.call(
                lambda s, a=after: blob_refs.collectable(s, cutoff, after=a, limit=BATCH)  # type: ignore[misc]
            )
            if not page:
                break
            for key, size in page:
                if self.stop.is_set():
                    break
                if self.sweep_one(key, cutoff):
                    tally.deleted.append(BlobInfo(key, size or 0))
            after = page[-1][0]
            if not self.catalog.call(lambda s: self._renew(s, utcnow())):
                raise Aborted("garbage collection lost its lease to another collection")
        tally.waiting, tally.waiting_bytes = self.catalog.call(
            lambda s: blob_refs.waiting(s, cutoff)
        )

    def sweep_one(self, key: str, cutoff: datetime) -> bool:
        """Delete blob ``key`` if it is still marked at or before ``cutoff`` and nothing
        names it, in one transaction; whether it was deleted here."""

        def delete(session: Session) -> bool:
            if not blob_refs.take_for_deletion(session, key, cutoff):
                return False  # pinned, or swept by another collection, meanwhile
            if blob_refs.referenced(session, [key]):
                return False  # named again: the mark goes with the row
            # Before the commit: a pin waiting on the row then finds the blob gone.
            self.store.delete(key)
            return True

        deleted = self.catalog.call(delete)
        if deleted:
            log.info("gc deleted blob %s", key)
        return deleted

    def _preview(self, now: datetime) -> GcReport:
        cutoff = now - self.grace
        tally = _Tally()
        for batch in self._batches():

            def look(session: Session, batch: list[BlobInfo] = batch) -> None:
                found = referenced_split(session, batch)
                since = blob_refs.marks(session, [b.key for b in found.unreferenced])
                for blob in found.unreferenced:
                    if since.get(blob.key, now) <= cutoff:
                        tally.deleted.append(blob)
                    else:
                        tally.waiting += 1
                        tally.waiting_bytes += blob.size
                tally.blobs += len(batch)
                tally.blob_bytes += sum(b.size for b in batch)
                tally.referenced += len(found.referenced)

            self.catalog.call(look)
        return _report(tally, dry_run=True, temp_removed=0)


@dataclass(frozen=True)
class _Split:
    referenced: set[str]
    unreferenced: list[BlobInfo]


def referenced_split(session: Session, batch: Iterable[BlobInfo]) -> _Split:
    """Split listed blobs into the keys the catalog names and the blobs it does not."""
    blobs = list(batch)
    named = blob_refs.referenced(session, [b.key for b in blobs])
    return _Split(named, [b for b in blobs if b.key not in named])


def _report(tally: _Tally, *, dry_run: bool, temp_removed: int) -> GcReport:
    return GcReport(
        dry_run=dry_run,
        blobs=tally.blobs,
        blob_bytes=tally.blob_bytes,
        referenced=tally.referenced,
        deleted=tuple(tally.deleted),
        waiting=tally.waiting,
        waiting_bytes=tally.waiting_bytes,
        temp_removed=temp_removed,
    )


def describe(report: GcReport) -> str:
    """One line for the log or the terminal."""
    if report.busy_with is not None:
        return f"another garbage collection is running ({report.busy_with}); nothing done"
    verb = "would delete" if report.dry_run else "deleted"
    line = (
        f"{verb} {len(report.deleted)} unreferenced blob(s), {report.deleted_bytes} bytes; "
        f"kept {report.referenced} referenced of {report.blobs} ({report.blob_bytes} bytes)"
    )
    if report.waiting:
        line += (
            f"; {report.waiting} unreferenced blob(s), {report.waiting_bytes} bytes, "
            "wait out the grace period"
        )
    if report.temp_removed:
        line += f"; removed {report.temp_removed} temp/staging leftover(s)"
    return line


async def collect_periodically(collector: Collector, interval_s: float) -> None:
    """Run a collection every ``interval_s`` seconds ±10 % (replicas started together drift
    apart; the lease lets one of them collect) until cancelled."""
    while not collector.stop.is_set():
        await asyncio.sleep(interval_s * random.uniform(0.9, 1.1))  # noqa: S311 - jitter
        try:
            report = await asyncio.to_thread(collector.run)
        except WeightportError as exc:
            log.warning("garbage collection failed: %s", exc.message)
        except Exception:
            log.exception("garbage collection failed")
        else:
            quiet = not (report.deleted or report.temp_removed or report.busy_with)
            (log.debug if quiet else log.info)("garbage collection: %s", describe(report))
