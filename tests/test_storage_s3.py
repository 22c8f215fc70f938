"""The S3 store on a real S3 server (SeaweedFS): the shared conformance suite plus S3 specifics."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.seaweedfs import SeaweedFS
from tests.storage_conformance import PAYLOAD, BlobStoreConformance, put, read, sha
from weightport.errors import InvalidArgument, StorageError
from weightport.storage.base import BlobStore, LocalPaths, Presigner, StagedUploads
from weightport.storage.s3 import S3BlobStore, S3Connection, S3Location
from weightport.storage.s3 import upload as s3_upload


def make_store(
    weed: SeaweedFS, monkeypatch: pytest.MonkeyPatch, *, max_put_size: int = 5 << 30
) -> S3BlobStore:
    for name, value in weed.env().items():
        monkeypatch.setenv(name, value)
    location = S3Location(weed.bucket, f"t-{secrets.token_hex(6)}/")
    return S3BlobStore(location, S3Connection(endpoint=weed.endpoint), max_put_size=max_put_size)


@pytest.fixture
def s3_store(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3BlobStore]:
    store = make_store(seaweedfs, monkeypatch)
    yield store
    store.close()


class TestS3StoreConformance(BlobStoreConformance):
    @pytest.fixture
    def store(self, s3_store: S3BlobStore) -> BlobStore:
        return s3_store


class TestS3StoreMultipartConformance(BlobStoreConformance):
    """The same suite with a tiny part size: every upload streams as a multipart upload
    to a temp key and is copied to its final key."""

    @pytest.fixture
    def store(self, s3_store: S3BlobStore, monkeypatch: pytest.MonkeyPatch) -> BlobStore:
        monkeypatch.setattr(s3_upload, "IN_MEMORY_BYTES", 1000)
        return s3_store


def keys_under(store: S3BlobStore, prefix: str) -> list[str]:
    import obstore

    return sorted(m["path"] for batch in obstore.list(store.objects, prefix=prefix) for m in batch)


def test_capabilities(s3_store: S3BlobStore) -> None:
    assert isinstance(s3_store, Presigner)
    assert isinstance(s3_store, StagedUploads)
    assert not isinstance(s3_store, LocalPaths)


def test_layout_is_content_addressed_under_the_prefix(s3_store: S3BlobStore) -> None:
    info = put(s3_store, PAYLOAD)
    assert keys_under(s3_store, "") == [f"blobs/{info.key}"]


def test_large_upload_leaves_no_temp_object(
    s3_store: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_upload, "IN_MEMORY_BYTES", 4096)
    upload = s3_store.begin_upload()
    upload.write(PAYLOAD)
    assert keys_under(s3_store, "blobs/") == []  # nothing visible before commit
    info = upload.commit()
    assert keys_under(s3_store, "") == [f"blobs/{info.key}"]
    aborted = s3_store.begin_upload()
    aborted.write(PAYLOAD + b"x")
    aborted.abort()
    assert keys_under(s3_store, "") == [f"blobs/{info.key}"]


def test_copies_past_the_single_copy_limit_use_part_copies(
    seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 5 MiB is S3's smallest part: with it as the copy limit, a 12 MiB object is copied in
    # three UploadPartCopy parts.
    store = make_store(seaweedfs, monkeypatch, max_put_size=5 << 20)
    monkeypatch.setattr(s3_upload, "IN_MEMORY_BYTES", 1 << 20)
    monkeypatch.setattr(s3_upload, "PART_BYTES", 5 << 20)
    data = secrets.token_bytes(12 << 20)
    info = put(store, data, chunk=1 << 20)
    assert info.key == sha(data)
    assert read(store, info.key, 0, info.size) == data
    assert keys_under(store, "") == [f"blobs/{info.key}"]


def test_sequential_reads_match_and_random_reads_too(s3_store: S3BlobStore) -> None:
    data = secrets.token_bytes(20 << 20)
    info = put(s3_store, data, chunk=1 << 20)
    # A sequential reader in 128 KiB pieces (how the stored archive reads members).
    buf = bytearray(128 << 10)
    digest = hashlib.sha256()
    for offset in range(0, len(data), len(buf)):
        view = memoryview(buf)[: min(len(buf), len(data) - offset)]
        s3_store.readinto(info.key, offset, view)
        digest.update(view)
    assert digest.hexdigest() == info.key
    for start, end in [(5, 13), (len(data) - 7, len(data)), (9 << 20, (9 << 20) + 3)]:
        assert read(s3_store, info.key, start, end) == data[start:end]


def test_presigned_get_serves_ranges_but_not_head(s3_store: S3BlobStore) -> None:
    info = put(s3_store, PAYLOAD)
    url = s3_store.presign_get(info.key, expires_in=60)
    assert httpx.get(url).content == PAYLOAD
    ranged = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206
    assert ranged.content == PAYLOAD[100:200]
    assert httpx.head(url).status_code == 403  # SigV4 signs the method
    tampered = url.replace(info.key, sha(b"other"))
    assert httpx.get(tampered).status_code == 403


def test_presigned_get_can_name_the_file_for_browsers(s3_store: S3BlobStore) -> None:
    info = put(s3_store, PAYLOAD)
    disposition = 'attachment; filename="config.json"'
    url = s3_store.presign_get(info.key, expires_in=60, disposition=disposition)
    answer = httpx.get(url, headers={"Range": "bytes=0-9"})
    assert answer.status_code == 206 and answer.content == PAYLOAD[:10]
    assert answer.headers["content-disposition"] == disposition
    assert httpx.get(url.replace("config.json", "other.bin")).status_code == 403  # signed


def test_presign_expiry_is_clamped_to_seven_days(s3_store: S3BlobStore) -> None:
    info = put(s3_store, b"x")
    url = s3_store.presign_get(info.key, expires_in=30 * 24 * 3600)
    assert "X-Amz-Expires=604800" in url
    assert httpx.get(url).content == b"x"


def test_presigned_put_then_commit_staged(s3_store: S3BlobStore) -> None:
    url = s3_store.presign_put("m/1/file", expires_in=60)
    assert httpx.put(url, content=PAYLOAD).status_code == 200
    assert s3_store.staged_size("m/1/file") == len(PAYLOAD)
    assert s3_store.head(sha(PAYLOAD)) is None  # not a blob until hashed
    info = s3_store.commit_staged("m/1/file", expected_size=len(PAYLOAD))
    assert info.key == sha(PAYLOAD)
    assert read(s3_store, info.key, 0, info.size) == PAYLOAD
    # The staged object stays until the caller has recorded the blob, then goes.
    assert s3_store.staged_size("m/1/file") == len(PAYLOAD)
    s3_store.discard_staged("m/1/file")
    assert s3_store.staged_size("m/1/file") is None
    # The same bytes staged again are kept once.
    httpx.put(s3_store.presign_put("m/2/file", expires_in=60), content=PAYLOAD)
    assert s3_store.commit_staged("m/2/file", expected_size=len(PAYLOAD)) == info
    s3_store.discard_staged("m/2/file")
    assert keys_under(s3_store, "") == [f"blobs/{info.key}"]


def test_commit_staged_refuses_a_wrong_size(s3_store: S3BlobStore) -> None:
    httpx.put(s3_store.presign_put("short", expires_in=60), content=b"abc")
    with pytest.raises(InvalidArgument, match="3 bytes arrived, but 4 were declared"):
        s3_store.commit_staged("short", expected_size=4)
    assert s3_store.staged_size("short") is None
    assert list(s3_store.list()) == []
    with pytest.raises(StorageError, match="does not exist"):
        s3_store.commit_staged("short", expected_size=3)


@pytest.mark.parametrize("name", ["", "../x", "a//b", "a/../b", "/abs", "sp ace", "a\\b"])
def test_bad_staging_names_are_refused(s3_store: S3BlobStore, name: str) -> None:
    with pytest.raises(InvalidArgument):
        s3_store.presign_put(name, expires_in=60)
    with pytest.raises(InvalidArgument):
        s3_store.staged_size(name)


def test_cleanup_removes_only_old_staging_and_temp_objects(
    s3_store: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = put(s3_store, PAYLOAD)
    httpx.put(s3_store.presign_put("orphan", expires_in=60), content=b"never validated")
    monkeypatch.setattr(s3_upload, "IN_MEMORY_BYTES", 1000)
    stalled = s3_store.begin_upload()
    stalled.write(PAYLOAD)  # a multipart upload in progress
    assert s3_store.cleanup_temp(older_than_s=3600) == 0
    assert s3_store.staged_size("orphan") == len(b"never validated")
    removed = s3_store.cleanup_temp(older_than_s=0, now=time.time() + 60)
    assert removed >= 1
    assert s3_store.staged_size("orphan") is None
    assert list(s3_store.list()) == [s3_store.head(info.key)]


def test_unreachable_store_is_a_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    store = S3BlobStore(
        S3Location("nowhere"),
        S3Connection(endpoint=f"http://127.0.0.1:{free_port()}"),
        max_put_size=5 << 30,
    )
    with pytest.raises(StorageError, match="s3://nowhere/"):
        store.head(sha(b"x"))


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://b", "b", ""),
        ("s3://b/", "b", ""),
        ("s3://b/p", "b", "p/"),
        ("s3://b//p/q/", "b", "p/q/"),
    ],
)
def test_location_parse(url: str, bucket: str, prefix: str) -> None:
    assert S3Location.parse(url) == S3Location(bucket, prefix)


@pytest.mark.parametrize("url", ["s3://", "s3:///p", "http://b/p", "s3://b/../p", "s3://b/p?x=1"])
def test_location_parse_refuses(url: str) -> None:
    with pytest.raises(InvalidArgument, match="storage_url"):
        S3Location.parse(url)


def test_part_size_fits_the_part_limit_for_declared_sizes() -> None:
    assert s3_upload.part_size(None) == s3_upload.PART_BYTES
    assert s3_upload.part_size(1 << 30) == s3_upload.PART_BYTES
    for size in (100 << 30, 1 << 40, (5 << 40) - 1):
        part = s3_upload.part_size(size)
        assert part % (1 << 20) == 0
        assert -(-size // part) <= 10_000
