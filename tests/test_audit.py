"""The audit log's catalog side and its in-memory recorder, on a real catalog: coalescing by
key, client and file within the window, paging and filters, retention, times."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from weightport.catalog import audit
from weightport.catalog.audit import AuditQuery, Change, Requester, Subject
from weightport.catalog.db import Catalog
from weightport.catalog.schema import AuditRecord
from weightport.errors import InvalidArgument
from weightport.services import audit as recorder
from weightport.services.audit import AuditLog, clean_user_agent, coalesce_key

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=300)
SHARD = Subject("acme", "accounts/acme/models/m", "file", file="model-00001.safetensors")
MERGED = Subject("acme", "ft-1", "merged", revision="200", file="m.tar.zst")
ALICE = Requester("k1", "10.0.0.1", "weightport/0.1")


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    opened = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    yield opened
    opened.close()


class Clock:
    """A clock the test moves by hand (the recorder's window and retention read it)."""

    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def change(
    subject: Subject = SHARD,
    requester: Requester = ALICE,
    *,
    at: datetime = T0,
    requests: int = 1,
    size: int = 100,
    record_id: int | None = None,
) -> Change:
    return Change(
        coalesce_key=coalesce_key(audit.DOWNLOAD, subject, requester),
        action=audit.DOWNLOAD,
        subject=subject,
        requester=requester,
        first_at=at,
        last_at=at,
        requests=requests,
        bytes=size,
        record_id=record_id,
    )


def records(catalog: Catalog) -> list[AuditRecord]:
    return catalog.call(lambda s: audit.list_records(s, AuditQuery(), page_size=1000).records)


def test_changes_within_the_window_add_to_one_record(catalog: Catalog) -> None:
    apply = lambda changes: catalog.call(lambda s: audit.apply_changes(s, changes, WINDOW))  # noqa: E731
    (first,) = apply([change(size=100)])
    # Another process's change for the same download, found by its coalesce key.
    assert apply([change(at=T0 + timedelta(seconds=299), size=50, requests=3)]) == [first]
    # The same record named by id (this process already knows it).
    assert apply([change(at=T0 + timedelta(seconds=400), size=7, record_id=first)]) == [first]
    # Past the window of the last activity: a new download.
    (later,) = apply([change(at=T0 + timedelta(seconds=701))])
    # Another client, another file: other records.
    other_client = Requester("k1", "10.0.0.2", "curl")
    (elsewhere, merged) = apply([change(requester=other_client), change(MERGED)])
    assert len({first, later, elsewhere, merged}) == 4
    by_id = {r.id: r for r in records(catalog)}
    assert (by_id[first].requests, by_id[first].bytes) == (5, 157)
    assert by_id[first].first_at == T0
    assert by_id[first].last_at == T0 + timedelta(seconds=400)
    assert (by_id[merged].kind, by_id[merged].revision, by_id[merged].file) == (
        "merged",
        "200",
        "m.tar.zst",
    )
    assert by_id[elsewhere].client == "10.0.0.2" and by_id[elsewhere].user_agent == "curl"


def test_pages_newest_first_with_filters(catalog: Catalog) -> None:
    changes = [
        change(Subject(f"acct{i % 2}", f"accounts/acct{i % 2}/models/m{i}", "file"), at=T0)
        for i in range(5)
    ]
    catalog.call(lambda s: audit.apply_changes(s, changes, WINDOW))
    page = catalog.call(lambda s: audit.list_records(s, AuditQuery(), page_size=2))
    assert page.total_size == 5 and [r.resource[-2:] for r in page.records] == ["m4", "m3"]
    rest = catalog.call(
        lambda s: audit.list_records(s, AuditQuery(), page_size=10, page_token=page.next_page_token)
    )
    assert [r.resource[-2:] for r in rest.records] == ["m2", "m1", "m0"]
    assert rest.next_page_token == ""
    only = catalog.call(lambda s: audit.list_records(s, AuditQuery(account_id="acct1")))
    assert only.total_size == 2 and {r.account_id for r in only.records} == {"acct1"}
    later = AuditQuery(since=T0 + timedelta(seconds=1))
    assert catalog.call(lambda s: audit.list_records(s, later)).total_size == 0
    earlier = AuditQuery(until=T0 + timedelta(seconds=1), key_id="k1", action=audit.DOWNLOAD)
    assert catalog.call(lambda s: audit.list_records(s, earlier)).total_size == 5
    for bad in ({"page_token": "x1"}, {"page_size": 0}, {"page_size": 1001}):
        with pytest.raises(InvalidArgument):
            catalog.call(lambda s, bad=bad: audit.list_records(s, AuditQuery(), **bad))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="action"):
        catalog.call(lambda s: audit.list_records(s, AuditQuery(action="upload")))


def test_delete_before_removes_only_old_records(catalog: Catalog) -> None:
    old = [change(Subject("a", f"r{i}", "file"), at=T0 - timedelta(days=100)) for i in range(3)]
    catalog.call(lambda s: audit.apply_changes(s, [*old, change(at=T0)], WINDOW))
    cutoff = T0 - timedelta(days=90)
    assert catalog.call(lambda s: audit.delete_before(s, cutoff, limit=2)) == 2
    assert catalog.call(lambda s: audit.delete_before(s, cutoff, limit=2)) == 1
    assert catalog.call(lambda s: audit.delete_before(s, cutoff)) == 0
    assert [r.resource for r in records(catalog)] == [SHARD.resource]


def test_parse_time() -> None:
    now = T0
    assert audit.parse_time("24h", now, name="since") == now - timedelta(hours=24)
    assert audit.parse_time("90m", now, name="since") == now - timedelta(minutes=90)
    assert audit.parse_time("2w", now, name="since") == now - timedelta(days=14)
    assert audit.parse_time("2026-11-27", now, name="since") == datetime(2026, 11, 27, tzinfo=UTC)
    assert audit.parse_time("2026-11-27T12:00:00+02:00", now, name="s") == datetime(
        2026, 11, 27, 10, tzinfo=UTC
    )
    for bad in ("yesterday", "24 h", "-1d", ""):
        with pytest.raises(InvalidArgument, match="since must be a time"):
            audit.parse_time(bad, now, name="since")


def test_clean_user_agent() -> None:
    assert clean_user_agent("curl/8\x00\n\x1b[31m") == "curl/8[31m"
    assert len(clean_user_agent("x" * 2000)) == recorder.MAX_USER_AGENT


def test_recorder_coalesces_a_parallel_download(catalog: Catalog) -> None:
    clock = Clock(T0)
    log = AuditLog(catalog, window=300, retention_days=90, clock=clock)
    log.granted(SHARD, ALICE)
    # 16 connections of one download, opened together, closed as they finish.
    keys = [log.opened(SHARD, ALICE) for _ in range(16)]
    assert len(set(keys)) == 1
    for key in keys[:10]:
        log.closed(key, 1000)
    clock.advance(1)
    assert log.flush() == 2  # the grant and the download
    (download,) = [r for r in records(catalog) if r.action == audit.DOWNLOAD]
    assert (download.requests, download.bytes) == (16, 10_000)
    # The rest finish minutes later; the record stays this download's while it sends.
    clock.advance(250)
    assert log.flush() == 1  # a download still sending refreshes its record
    clock.advance(250)
    for key in keys[10:]:
        log.closed(key, 1000)
    log.flush()
    (grant,) = [r for r in records(catalog) if r.action == audit.URLS]
    (download,) = [r for r in records(catalog) if r.action == audit.DOWNLOAD]
    assert (download.requests, download.bytes) == (16, 16_000)
    assert download.last_at == datetime.fromtimestamp(clock.now, UTC)
    assert (grant.requests, grant.bytes, grant.file) == (1, 0, SHARD.file)
    # Nothing changed: nothing written. Long after: forgotten, and a new download is new.
    assert log.flush() == 0
    clock.advance(301)
    log.flush()
    log.closed(log.opened(SHARD, ALICE), 5)
    log.flush()
    assert len([r for r in records(catalog) if r.action == audit.DOWNLOAD]) == 2


def test_two_recorders_share_one_record(catalog: Catalog) -> None:
    # Two processes (or replicas) serving ranges of the same download.
    clock = Clock(T0)
    first = AuditLog(catalog, window=300, retention_days=90, clock=clock)
    second = AuditLog(catalog, window=300, retention_days=90, clock=clock)
    first.closed(first.opened(MERGED, ALICE), 600)
    first.flush()
    clock.advance(5)
    second.closed(second.opened(MERGED, ALICE), 400)
    second.closed(second.opened(MERGED, ALICE), 400)
    second.flush()
    (record,) = records(catalog)
    assert (record.requests, record.bytes) == (3, 1400)


def test_recorder_keeps_changes_while_the_catalog_refuses_them(tmp_path: Path) -> None:
    path = tmp_path / "gone.sqlite3"
    catalog = Catalog.open(f"sqlite:///{path}")
    log = AuditLog(catalog, window=300, retention_days=90)
    log.closed(log.opened(SHARD, ALICE), 10)
    catalog.call(lambda s: s.execute(AuditRecord.__table__.delete()))  # type: ignore[attr-defined]
    with catalog.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE audit_records RENAME TO audit_away")
    assert log.flush() == 0  # refused: kept for the next batch
    with catalog.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE audit_away RENAME TO audit_records")
    assert log.flush() == 1
    (record,) = records(catalog)
    assert (record.requests, record.bytes) == (1, 10)
    catalog.close()


def test_recorder_drops_new_downloads_past_its_bound(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder, "MAX_PENDING", 2)
    log = AuditLog(catalog, window=300, retention_days=90)
    subjects = [Subject("a", f"r{i}", "file") for i in range(3)]
    keys = [log.opened(subject, ALICE) for subject in subjects]
    assert keys[2] is None
    log.closed(keys[2], 5)  # a dropped download closes quietly
    log.flush()
    assert sorted(r.resource for r in records(catalog)) == ["r0", "r1"]


def test_retention(catalog: Catalog) -> None:
    old = [change(Subject("a", f"r{i}", "file"), at=T0 - timedelta(days=31)) for i in range(3)]
    catalog.call(lambda s: audit.apply_changes(s, [*old, change(at=T0)], WINDOW))
    assert AuditLog(catalog, window=300, retention_days=0, clock=Clock(T0)).apply_retention() == 0
    assert AuditLog(catalog, window=300, retention_days=30, clock=Clock(T0)).apply_retention() == 3
    assert [r.resource for r in records(catalog)] == [SHARD.resource]


def test_the_writer_thread_writes_and_closes_with_a_last_batch(catalog: Catalog) -> None:
    log = AuditLog(catalog, window=300, retention_days=90)
    log.start()
    log.closed(log.opened(SHARD, ALICE), 123)
    log.close()  # joins the thread after its last batch
    (record,) = records(catalog)
    assert record.bytes == 123
