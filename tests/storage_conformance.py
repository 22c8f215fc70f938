"""The conformance suite every blob store runs (after fsspec's shared backend tests).

A store's test module subclasses :class:`BlobStoreConformance` and provides a ``store``
fixture that returns a fresh, empty store::

    class TestLocalStoreConformance(BlobStoreConformance):
        @pytest.fixture
        def store(self, tmp_path: Path) -> BlobStore:
            return LocalStore(tmp_path)

The class name does not start with ``Test``, so pytest collects it only through subclasses
(import it as ``tests.storage_conformance``).
Stores are driven only through the ``BlobStore`` protocol plus ``begin_upload``'s
``expected_sha256`` / ``expected_size`` keywords.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightport.errors import InvalidArgument, StorageError
from weightport.storage.base import BlobInfo, BlobSource, BlobStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(store: BlobStore, data: bytes, chunk: int = 1 << 16) -> BlobInfo:
    """Upload ``data`` in ``chunk``-sized writes and commit it."""
    upload = store.begin_upload()
    try:
        for pos in range(0, len(data), chunk):
            upload.write(data[pos : pos + chunk])
        return upload.commit()
    except BaseException:
        upload.abort()
        raise


def read(store: BlobStore, key: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a blob, through ``readinto`` (the protocol's one read)."""
    buf = bytearray(end - start)
    store.readinto(key, start, memoryview(buf))
    return bytes(buf)


def begin_expecting(store: BlobStore, **expected: Any) -> Any:
    # The keywords are part of the contract every store offers the upload route.
    begin: Callable[..., Any] = store.begin_upload
    return begin(**expected)


PAYLOAD = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, every byte value
MISSING = sha(b"never stored")


class BlobStoreConformance:
    """Behaviour every ``BlobStore`` must have; subclasses supply the ``store`` fixture."""

    # --- put / get ---------------------------------------------------------------------

    def test_put_returns_sha256_key_and_size(self, store: BlobStore) -> None:
        info = put(store, PAYLOAD)
        assert info == BlobInfo(key=sha(PAYLOAD), size=len(PAYLOAD))
        assert store.head(info.key) == info

    def test_read_back_whole_blob(self, store: BlobStore) -> None:
        info = put(store, PAYLOAD, chunk=1000)
        assert read(store, info.key, 0, info.size) == PAYLOAD

    def test_empty_blob(self, store: BlobStore) -> None:
        info = put(store, b"")
        assert info == BlobInfo(key=sha(b""), size=0)
        assert store.head(info.key) == info
        assert read(store, info.key, 0, 0) == b""

    @pytest.mark.parametrize(
        ("start", "end"), [(0, 1), (1, 2), (100, 5000), (10243, 10244), (5000, 5000), (0, 10244)]
    )
    def test_reads_are_half_open(self, store: BlobStore, start: int, end: int) -> None:
        info = put(store, PAYLOAD)
        assert read(store, info.key, start, end) == PAYLOAD[start:end]

    def test_readinto_fills_buffer_at_offset(self, store: BlobStore) -> None:
        info = put(store, PAYLOAD)
        buf = bytearray(3000)
        store.readinto(info.key, 7000, memoryview(buf))
        assert bytes(buf) == PAYLOAD[7000:10000]

    def test_readinto_through_blob_source(self, store: BlobStore) -> None:
        info = put(store, PAYLOAD)
        source = BlobSource(store, info.key, info.size)
        buf = bytearray(10)
        source.readinto(PAYLOAD.index(b"tail") - 6, memoryview(buf))
        assert bytes(buf) == PAYLOAD[-10:]

    @pytest.mark.parametrize(("start", "end"), [(0, 10245), (10244, 10245), (20000, 20001)])
    def test_read_past_end_is_a_storage_error(self, store: BlobStore, start: int, end: int) -> None:
        info = put(store, PAYLOAD)
        with pytest.raises(StorageError):
            store.readinto(info.key, start, memoryview(bytearray(end - start)))

    def test_read_missing_blob_is_a_storage_error(self, store: BlobStore) -> None:
        with pytest.raises(StorageError, match=MISSING):
            store.readinto(MISSING, 0, memoryview(bytearray(1)))

    # --- head / delete / list ----------------------------------------------------------

    def test_head_missing_is_none(self, store: BlobStore) -> None:
        assert store.head(MISSING) is None

    def test_delete_removes_blob(self, store: BlobStore) -> None:
        info = put(store, PAYLOAD)
        read(store, info.key, 0, 10)  # a store may cache what it read; delete must win
        store.delete(info.key)
        assert store.head(info.key) is None
        assert info not in list(store.list())
        with pytest.raises(StorageError):
            read(store, info.key, 0, 10)

    def test_delete_missing_is_not_an_error(self, store: BlobStore) -> None:
        store.delete(MISSING)
        store.delete(MISSING)

    def test_put_again_after_delete(self, store: BlobStore) -> None:
        info = put(store, PAYLOAD)
        store.delete(info.key)
        assert put(store, PAYLOAD) == info
        assert read(store, info.key, 0, info.size) == PAYLOAD

    def test_list_holds_every_committed_blob(self, store: BlobStore) -> None:
        assert list(store.list()) == []
        blobs = [b"a", b"bb", b"", PAYLOAD]
        infos = {put(store, data) for data in blobs}
        assert set(store.list()) == infos
        assert len(list(store.list())) == len(blobs)

    def test_identical_content_is_stored_once(self, store: BlobStore) -> None:
        first = put(store, PAYLOAD, chunk=100)
        second = put(store, PAYLOAD, chunk=4096)
        assert first == second
        assert list(store.list()) == [first]
        assert read(store, first.key, 0, first.size) == PAYLOAD

    # --- upload lifecycle --------------------------------------------------------------

    def test_written_counts_bytes(self, store: BlobStore) -> None:
        upload = store.begin_upload()
        assert upload.written == 0
        upload.write(b"abc")
        upload.write(memoryview(b"defg"))
        upload.write(bytearray(b"h"))
        assert upload.written == 8
        assert upload.commit() == BlobInfo(sha(b"abcdefgh"), 8)

    def test_uncommitted_upload_is_invisible(self, store: BlobStore) -> None:
        upload = store.begin_upload()
        upload.write(PAYLOAD)
        assert store.head(sha(PAYLOAD)) is None
        assert list(store.list()) == []
        with pytest.raises(StorageError):
            read(store, sha(PAYLOAD), 0, 1)
        upload.commit()
        assert store.head(sha(PAYLOAD)) is not None

    def test_abort_leaves_nothing_and_is_idempotent(self, store: BlobStore) -> None:
        upload = store.begin_upload()
        upload.write(PAYLOAD)
        upload.abort()
        upload.abort()
        assert store.head(sha(PAYLOAD)) is None
        assert list(store.list()) == []

    def test_abort_after_commit_keeps_blob(self, store: BlobStore) -> None:
        upload = store.begin_upload()
        upload.write(PAYLOAD)
        info = upload.commit()
        upload.abort()
        assert store.head(info.key) == info

    def test_write_after_commit_or_abort_fails(self, store: BlobStore) -> None:
        committed = store.begin_upload()
        committed.write(b"x")
        committed.commit()
        with pytest.raises(StorageError):
            committed.write(b"y")
        aborted = store.begin_upload()
        aborted.abort()
        with pytest.raises(StorageError):
            aborted.write(b"y")
        with pytest.raises(StorageError):
            aborted.commit()

    def test_context_manager_aborts_on_error(self, store: BlobStore) -> None:
        upload = store.begin_upload()
        with pytest.raises(RuntimeError), upload:  # type: ignore[attr-defined]
            upload.write(PAYLOAD)
            raise RuntimeError("client went away")
        assert store.head(sha(PAYLOAD)) is None
        assert list(store.list()) == []

    def test_context_manager_keeps_committed_blob(self, store: BlobStore) -> None:
        with store.begin_upload() as upload:  # type: ignore[attr-defined]
            upload.write(PAYLOAD)
            info = upload.commit()
        assert store.head(info.key) == info

    def test_expected_content_accepted(self, store: BlobStore) -> None:
        upload = begin_expecting(store, expected_sha256=sha(PAYLOAD), expected_size=len(PAYLOAD))
        upload.write(PAYLOAD)
        assert upload.commit() == BlobInfo(sha(PAYLOAD), len(PAYLOAD))

    @pytest.mark.parametrize(
        "expected",
        [
            {"expected_sha256": sha(b"other")},
            {"expected_size": len(PAYLOAD) + 1},
            {"expected_size": len(PAYLOAD) - 1},
        ],
    )
    def test_unexpected_content_is_rejected(
        self, store: BlobStore, expected: dict[str, Any]
    ) -> None:
        upload = begin_expecting(store, **expected)
        with pytest.raises(InvalidArgument):
            upload.write(PAYLOAD)
            upload.commit()
        upload.abort()
        assert store.head(sha(PAYLOAD)) is None
        assert list(store.list()) == []

    @pytest.mark.parametrize("bad", ["", "ABC", "0" * 63, "G" * 64, "A" * 64, "../" + "0" * 61])
    def test_bad_expected_sha256_is_rejected(self, store: BlobStore, bad: str) -> None:
        with pytest.raises(InvalidArgument):
            begin_expecting(store, expected_sha256=bad)

    # --- keys --------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "key",
        ["", "abc", MISSING.upper(), MISSING + "0", MISSING[:-1], "../" + MISSING[3:], "/" * 64],
    )
    def test_malformed_keys_are_rejected(self, store: BlobStore, key: str) -> None:
        with pytest.raises(InvalidArgument):
            store.head(key)
        with pytest.raises(InvalidArgument):
            read(store, key, 0, 1)
        with pytest.raises(InvalidArgument):
            store.readinto(key, 0, memoryview(bytearray(1)))
        with pytest.raises(InvalidArgument):
            store.delete(key)

    # --- concurrency -------------------------------------------------------------------

    def test_concurrent_uploads_of_same_content(self, store: BlobStore) -> None:
        data = PAYLOAD * 20
        results: list[BlobInfo] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def upload() -> None:
            try:
                up = store.begin_upload()
                barrier.wait()
                for pos in range(0, len(data), 7001):
                    up.write(data[pos : pos + 7001])
                barrier.wait()  # every thread commits at about the same moment
                results.append(up.commit())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=upload) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert results == [BlobInfo(sha(data), len(data))] * 8
        assert list(store.list()) == [results[0]]
        assert read(store, results[0].key, 0, len(data)) == data

    def test_concurrent_reads(self, store: BlobStore) -> None:
        blobs = [put(store, bytes([i]) * 5000 + PAYLOAD) for i in range(4)]
        errors: list[BaseException] = []

        def read(index: int) -> None:
            try:
                info = blobs[index % len(blobs)]
                expected = bytes([index % len(blobs)]) * 5000 + PAYLOAD
                buf = bytearray(1000)
                for offset in range(0, info.size - 1000, 997):
                    store.readinto(info.key, offset, memoryview(buf))
                    if bytes(buf) != expected[offset : offset + 1000]:
                        raise AssertionError(f"wrong bytes at {offset} of blob {index}")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []

    # --- properties --------------------------------------------------------------------

    # Every store's subclass runs this one method (differing executors), on one store per
    # test (function-scoped fixture): both are intended, and examples stay independent
    # because blobs are content-addressed.
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(data=st.binary(max_size=5000), chunk=st.integers(1, 6000), cut=st.data())
    def test_any_chunking_stores_the_same_bytes(
        self, store: BlobStore, data: bytes, chunk: int, cut: st.DataObject
    ) -> None:
        info = put(store, data, chunk=chunk)
        assert info == BlobInfo(sha(data), len(data))
        start = cut.draw(st.integers(0, len(data)))
        end = cut.draw(st.integers(start, len(data)))
        assert read(store, info.key, start, end) == data[start:end]
