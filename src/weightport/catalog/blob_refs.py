"""What references a blob, and garbage collection's marks on the ones nothing references.

A blob is *referenced* while a row of :data:`REFERENCES` names its key: a model's landed
file (READY or still uploading), a checkpoint's file, a built archive. Everything else in the
store is garbage once it has stayed unreferenced through the grace period.

The marks live in ``stored_blobs`` (:class:`~weightport.catalog.schema.StoredBlob`). Two
writers take turns on a blob's row, on SQLite (one writer at a time) and on PostgreSQL (row
locks) alike:

- :func:`pin` — whoever records a reference to a blob it has just stored upserts the row
  (``unreferenced_since = NULL``) in that same transaction;
- :func:`take_for_deletion` — the collector deletes the row, if still marked before the
  cutoff, in the transaction that then re-checks references and deletes the blob.

Whichever comes second waits for the first to commit and then sees its outcome: a pin after
a deletion finds the row gone (and its caller finds the blob gone: it must store it again);
a deletion after a pin finds no old mark and leaves the blob alone.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from sqlalchemy import delete, func, select, union, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from weightport.catalog.db import upsert
from weightport.catalog.schema import ArchiveBuild, CheckpointFile, ModelFile, StoredBlob

#: Every column that holds a blob key. A column added to the schema that holds one must be
#: listed here, or garbage collection deletes what it names (tests/test_gc_catalog.py checks
#: that every ``*sha256`` column but the API keys' is).
REFERENCES: tuple[InstrumentedAttribute[str | None], ...] = (
    ModelFile.sha256,
    CheckpointFile.sha256,
    ArchiveBuild.blob_sha256,
)


def referenced(session: Session, keys: Collection[str]) -> set[str]:
    """Which of ``keys`` some catalog row names."""
    if not keys:
        return set()
    wanted = list(keys)
    query = union(*(select(column).where(column.in_(wanted)) for column in REFERENCES))
    return {key for key in session.scalars(query) if key is not None}


def pin(session: Session, keys: Collection[str]) -> None:
    """Take the blobs' rows for this transaction: a collection waits for it, and one that
    deleted a blob before cannot be undone by it (the caller checks the blob is there)."""
    if not keys:
        return
    statement = upsert(session, StoredBlob).values([{"key": key} for key in sorted(keys)])
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[StoredBlob.key], set_={"unreferenced_since": None}
        )
    )


def mark_unreferenced(session: Session, sizes: Mapping[str, int], now: datetime) -> None:
    """Mark blobs found unreferenced as such since ``now``, unless marked already."""
    if not sizes:
        return
    rows = [
        {"key": key, "size": size, "unreferenced_since": now} for key, size in sorted(sizes.items())
    ]
    statement = upsert(session, StoredBlob).values(rows)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[StoredBlob.key],
            set_={"unreferenced_since": now, "size": statement.excluded.size},
            where=StoredBlob.unreferenced_since.is_(None),
        )
    )


def clear_marks(session: Session, keys: Collection[str]) -> None:
    """Blobs found referenced again lose their marks."""
    if keys:
        session.execute(
            update(StoredBlob)
            .where(StoredBlob.key.in_(list(keys)), StoredBlob.unreferenced_since.is_not(None))
            .values(unreferenced_since=None)
        )


def collectable(
    session: Session, cutoff: datetime, *, after: str = "", limit: int = 1000
) -> list[tuple[str, int | None]]:
    """(key, size) of up to ``limit`` blobs marked unreferenced at or before ``cutoff``, in
    key order after ``after`` (pass the last key seen to page on)."""
    query = (
        select(StoredBlob.key, StoredBlob.size)
        .where(StoredBlob.unreferenced_since <= cutoff, StoredBlob.key > after)
        .order_by(StoredBlob.key)
        .limit(limit)
    )
    return [(key, size) for key, size in session.execute(query)]


def waiting(session: Session, cutoff: datetime) -> tuple[int, int]:
    """How many blobs are marked after ``cutoff`` (inside their grace period), and bytes."""
    count, total = session.execute(
        select(func.count(), func.sum(StoredBlob.size)).where(
            StoredBlob.unreferenced_since > cutoff
        )
    ).one()
    return int(count), int(total or 0)


def marks(session: Session, keys: Collection[str]) -> dict[str, datetime]:
    """Since when each of ``keys`` that is marked has been unreferenced."""
    if not keys:
        return {}
    query = select(StoredBlob.key, StoredBlob.unreferenced_since).where(
        StoredBlob.key.in_(list(keys)), StoredBlob.unreferenced_since.is_not(None)
    )
    return {key: since for key, since in session.execute(query) if since is not None}


def take_for_deletion(session: Session, key: str, cutoff: datetime) -> bool:
    """Delete the blob's row if it is still marked at or before ``cutoff``: the first step
    of deleting the blob, holding its row until the transaction ends."""
    deleted = session.execute(
        delete(StoredBlob)
        .where(StoredBlob.key == key, StoredBlob.unreferenced_since <= cutoff)
        .returning(StoredBlob.key)
    ).first()
    return deleted is not None
