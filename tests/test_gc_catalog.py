"""The catalog's side of garbage collection: every column that holds a blob key counts as a
reference, and leases give one holder at a time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from weightport.catalog import blob_refs, leases
from weightport.catalog.db import Catalog
from weightport.catalog.schema import Base, utcnow

#: sha256 columns that do not reference a stored blob: hashes of secrets, and the digest a
#: declared file must have once it lands (its landed ``sha256`` is the reference).
NOT_BLOBS = {
    "api_keys.secret_sha256",
    "console_sessions.token_sha256",
    "model_files.expected_sha256",
}


def test_every_blob_key_column_is_a_reference() -> None:
    holding_keys = {
        f"{table.name}.{column.name}"
        for table in Base.metadata.tables.values()
        for column in table.columns
        if column.name.endswith("sha256") and table.name != "stored_blobs"
    } - NOT_BLOBS
    listed = {f"{c.class_.__tablename__}.{c.key}" for c in blob_refs.REFERENCES}
    assert holding_keys == listed, "add the new column to blob_refs.REFERENCES"


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    opened = Catalog.open(catalog_url)
    yield opened
    opened.close()


def test_a_lease_has_one_holder_until_released_or_expired(catalog: Catalog) -> None:
    now = utcnow()
    assert catalog.call(lambda s: leases.acquire(s, "gc", "a", 60, now))
    assert not catalog.call(lambda s: leases.acquire(s, "gc", "b", 60, now))
    assert catalog.call(lambda s: leases.holder_of(s, "gc", now)) == "a"
    assert catalog.call(lambda s: leases.acquire(s, "gc", "a", 60, now))  # renewed
    later = now + timedelta(seconds=61)
    assert catalog.call(lambda s: leases.acquire(s, "gc", "b", 60, later))  # a's expired
    assert not catalog.call(lambda s: leases.acquire(s, "gc", "a", 60, later))
    catalog.call(lambda s: leases.release(s, "gc", "a"))  # not a's to release
    assert catalog.call(lambda s: leases.holder_of(s, "gc", later)) == "b"
    catalog.call(lambda s: leases.release(s, "gc", "b"))
    assert catalog.call(lambda s: leases.holder_of(s, "gc", later)) is None
    assert catalog.call(lambda s: leases.acquire(s, "gc", "a", 60, later))


def test_marks_pins_and_deletion(catalog: Catalog) -> None:
    now = utcnow()
    k1, k2 = "1" * 64, "2" * 64
    catalog.call(lambda s: blob_refs.mark_unreferenced(s, {k1: 10, k2: 20}, now))
    later = now + timedelta(seconds=5)
    catalog.call(lambda s: blob_refs.mark_unreferenced(s, {k1: 10}, later))  # keeps its mark
    assert catalog.call(lambda s: blob_refs.marks(s, [k1, k2])) == {k1: now, k2: now}
    assert catalog.call(lambda s: blob_refs.waiting(s, now - timedelta(seconds=1))) == (2, 30)
    catalog.call(lambda s: blob_refs.pin(s, [k2]))
    assert catalog.call(lambda s: blob_refs.collectable(s, later)) == [(k1, 10)]
    assert not catalog.call(lambda s: blob_refs.take_for_deletion(s, k1, now - timedelta(1)))
    assert catalog.call(lambda s: blob_refs.take_for_deletion(s, k1, later))
    assert not catalog.call(lambda s: blob_refs.take_for_deletion(s, k1, later))  # gone
    assert not catalog.call(lambda s: blob_refs.take_for_deletion(s, k2, later))  # pinned
