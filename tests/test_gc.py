"""Garbage collection on a real catalog (SQLite and PostgreSQL) and the local store: what it
deletes, what it keeps, the grace period, dry runs, concurrent collections, and the turn
taking with code that lands a reference at the same moment."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from weightport.catalog import accounts, blob_refs, registry
from weightport.catalog.db import Catalog
from weightport.catalog.schema import utcnow
from weightport.errors import Aborted
from weightport.ingest import register_model, store_data
from weightport.services.gc import Collector, GcReport, describe, pin_stored
from weightport.storage.local import LocalStore

FIELDS = {"kind": "CUSTOM_MODEL"}


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    opened = Catalog.open(catalog_url)
    opened.call(lambda s: accounts.create_account(s, "acme"))
    yield opened
    opened.close()


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def collect(catalog: Catalog, store: LocalStore, *, grace_s: float = 0, **kw: bool) -> GcReport:
    return Collector(catalog, store, grace_s=grace_s, temp_max_age_s=3600).run(**kw)


def publish(catalog: Catalog, store: LocalStore, model_id: str, files: dict[str, bytes]) -> None:
    register_model(catalog, store, "acme", model_id, files, FIELDS)


def delete(catalog: Catalog, model_id: str) -> None:
    catalog.call(lambda s: registry.delete_model(s, "acme", model_id))


def keys(store: LocalStore) -> set[str]:
    return {info.key for info in store.list()}


def test_a_deleted_models_blobs_are_reclaimed_but_shared_ones_stay(
    catalog: Catalog, store: LocalStore
) -> None:
    shared, own, other = b"tokenizer" * 100, os.urandom(5000), os.urandom(7000)
    publish(catalog, store, "a", {"tok.json": shared, "w.bin": own})
    publish(catalog, store, "b", {"tok.json": shared, "w.bin": other})
    before = keys(store)
    assert len(before) == 3  # the shared file is stored once

    delete(catalog, "a")
    report = collect(catalog, store)

    own_key = hashlib.sha256(own).hexdigest()
    assert {b.key for b in report.deleted} == {own_key}
    assert report.deleted_bytes == len(own)
    assert report.referenced == 2 and report.blobs == 3
    assert keys(store) == before - {own_key}
    # Model b is whole.
    model = catalog.call(lambda s: registry.get_model(s, "acme", "b"))
    assert {f.sha256 for f in model.files} <= keys(store)
    # Nothing more to do.
    assert collect(catalog, store).deleted == ()


def test_nothing_is_deleted_inside_the_grace_period(catalog: Catalog, store: LocalStore) -> None:
    publish(catalog, store, "a", {"w.bin": os.urandom(3000)})
    delete(catalog, "a")
    first = collect(catalog, store, grace_s=1)
    assert first.deleted == () and first.waiting == 1 and first.waiting_bytes == 3000
    time.sleep(1.1)  # the grace is counted from the collection that found it unreferenced
    second = collect(catalog, store, grace_s=1)
    assert len(second.deleted) == 1 and keys(store) == set()


def test_a_blob_referenced_again_loses_its_mark(catalog: Catalog, store: LocalStore) -> None:
    data = os.urandom(2000)
    publish(catalog, store, "a", {"w.bin": data})
    delete(catalog, "a")
    assert collect(catalog, store, grace_s=1).waiting == 1
    publish(catalog, store, "b", {"w.bin": data})  # the same bytes, referenced again
    time.sleep(1.1)
    report = collect(catalog, store, grace_s=1)
    assert report.deleted == () and report.waiting == 0 and len(keys(store)) == 1


def test_dry_run_changes_nothing_and_predicts_the_real_run(
    catalog: Catalog, store: LocalStore
) -> None:
    publish(catalog, store, "a", {"w.bin": os.urandom(1000), "x.bin": os.urandom(10)})
    publish(catalog, store, "b", {"w.bin": os.urandom(1000)})
    delete(catalog, "a")
    before = keys(store)
    preview = collect(catalog, store, dry_run=True)
    assert preview.dry_run and len(preview.deleted) == 2
    assert "would delete 2" in describe(preview)
    assert keys(store) == before
    assert catalog.call(lambda s: blob_refs.marks(s, before)) == {}  # not even marked
    real = collect(catalog, store)
    assert set(real.deleted) == set(preview.deleted)


def test_two_collections_at_once_delete_each_blob_once(catalog: Catalog, store: LocalStore) -> None:
    for n in range(40):
        publish(catalog, store, f"m{n}", {"w.bin": os.urandom(100)})
        delete(catalog, f"m{n}")
    reports: list[GcReport] = []
    threads = [
        threading.Thread(target=lambda: reports.append(collect(catalog, store))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deleted = [b.key for r in reports for b in r.deleted]
    assert len(deleted) == len(set(deleted)) == 40
    assert keys(store) == set()
    # The one that found the lease taken says so and did nothing.
    for report in reports:
        if report.busy_with is not None:
            assert report.deleted == () and "another garbage collection" in describe(report)


def test_collections_without_the_lease_are_still_safe(catalog: Catalog, store: LocalStore) -> None:
    # The lease only saves work: sweeps that race each other take turns on each blob's row.
    for n in range(30):
        publish(catalog, store, f"m{n}", {"w.bin": os.urandom(100)})
        delete(catalog, f"m{n}")
    collect(catalog, store, grace_s=3600)  # marks them
    cutoff = utcnow() + timedelta(seconds=1)
    candidates = catalog.call(lambda s: blob_refs.collectable(s, cutoff))
    assert len(candidates) == 30
    sweepers = [Collector(catalog, store, grace_s=0, temp_max_age_s=0) for _ in range(3)]
    outcomes: list[bool] = []
    lock = threading.Lock()

    def sweep(collector: Collector) -> None:
        for key, _ in candidates:
            done = collector.sweep_one(key, cutoff)
            with lock:
                outcomes.append(done)

    threads = [threading.Thread(target=sweep, args=(c,)) for c in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(True) == 30 and keys(store) == set()


def test_a_reference_landing_after_a_sweep_is_refused(catalog: Catalog, store: LocalStore) -> None:
    data = os.urandom(4000)
    publish(catalog, store, "a", {"w.bin": data})
    delete(catalog, "a")
    # An upload of the same bytes commits to the store (deduplicated: nothing new written)...
    info = store_data(store, data)
    # ...then a collection sweeps the blob before the upload records its reference.
    assert len(collect(catalog, store).deleted) == 1

    def land(session: Session) -> None:
        pin_stored(session, store, [info.key])

    with pytest.raises(Aborted, match="garbage-collected"):
        catalog.call(land)
    # Sent again, it lands: the blob is written anew and pinned.
    again = store_data(store, data)
    catalog.call(lambda s: pin_stored(s, store, [again.key]))
    assert catalog.call(lambda s: blob_refs.marks(s, [again.key])) == {}


def test_a_sweep_after_a_pin_keeps_the_blob(catalog: Catalog, store: LocalStore) -> None:
    data = os.urandom(4000)
    publish(catalog, store, "a", {"w.bin": data})
    delete(catalog, "a")
    assert collect(catalog, store, grace_s=3600).waiting == 1  # marked long ago, say
    info = store_data(store, data)
    catalog.call(lambda s: pin_stored(s, store, [info.key]))  # the upload lands first
    # A sweep that counts that old mark as due finds the row pinned and leaves the blob.
    sweeper = Collector(catalog, store, grace_s=0, temp_max_age_s=0)
    assert not sweeper.sweep_one(info.key, utcnow() + timedelta(seconds=1))
    assert info.key in keys(store)


def test_a_pin_waits_for_a_sweep_in_progress(catalog: Catalog, store: LocalStore) -> None:
    # The collector holds the blob's row (SQLite: the write lock) while it deletes the blob;
    # a lander that arrives meanwhile waits, then finds the blob gone and is refused.
    data = os.urandom(4000)
    publish(catalog, store, "a", {"w.bin": data})
    delete(catalog, "a")
    collect(catalog, store, grace_s=3600)
    key = next(iter(keys(store)))
    taken = threading.Event()
    result: list[BaseException | None] = []

    def slow_sweep(session: Session) -> None:
        assert blob_refs.take_for_deletion(session, key, utcnow() + timedelta(seconds=1))
        taken.set()
        time.sleep(0.5)
        store.delete(key)

    def lander() -> None:
        taken.wait()
        try:
            catalog.call(lambda s: pin_stored(s, store, [key]))
            result.append(None)
        except Aborted as exc:
            result.append(exc)

    thread = threading.Thread(target=lander)
    thread.start()
    catalog.call(slow_sweep)
    thread.join()
    assert isinstance(result[0], Aborted)


def test_old_temp_files_are_removed(catalog: Catalog, store: LocalStore) -> None:
    stale = store.root / "tmp" / "upload-0123456789abcdef01234567.part"
    stale.write_bytes(b"half an upload")
    fresh = store.root / "tmp" / "upload-fedcba9876543210fedcba98.part"
    fresh.write_bytes(b"an upload in progress")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    report = collect(catalog, store)
    assert report.temp_removed == 1 and not stale.exists() and fresh.exists()
