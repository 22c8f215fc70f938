"""The S3 blob store: content-addressed objects in any S3-compatible service (obstore).

Layout under the configured prefix::

    blobs/<sha256 hex>     committed blobs, written only once their bytes are hashed
    tmp/upload-<random>    large uploads streaming through weightport (multipart)
    staging/<name>         objects PUT straight to the store by presigned URL, not yet hashed

Implements :class:`~weightport.storage.base.BlobStore`, the :class:`Presigner` capability
(presigned GET of a blob, presigned PUT of a staging object — signed for the *public*
endpoint, because SigV4 signs the host clients connect to) and :class:`StagedUploads`.
Reads go through :class:`~weightport.storage.s3.readahead.ReadAhead`, so sequential readers
(archives, merged shards) keep several ranged GETs in flight.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import obstore
from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore.store import ClientConfig

from weightport.errors import InvalidArgument, StorageError
from weightport.storage.base import BlobInfo
from weightport.storage.local import check_key
from weightport.storage.s3.copier import S3Copier
from weightport.storage.s3.disposition import DispositionSigner
from weightport.storage.s3.location import S3Connection, S3Location, clamp_expiry
from weightport.storage.s3.readahead import ReadAhead
from weightport.storage.s3.upload import OBSTORE_ERRORS, TEMP_PREFIX, S3Upload

BLOB_PREFIX = "blobs/"
STAGING_PREFIX = "staging/"
_STAGING_NAME = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_SIZES_CACHED = 4096
#: Bytes per piece when a staged object is hashed by a streamed read.
_HASH_CHUNK = 8 << 20


def object_store(location: S3Location, connection: S3Connection, endpoint: str) -> S3Store:
    """An obstore ``S3Store`` for ``location`` reached at ``endpoint`` (empty: AWS).

    Credentials come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``, web identity, instance metadata), as obstore reads them.
    """
    options: dict[str, Any] = {"region": connection.region}
    client: ClientConfig = {}
    if endpoint:
        # Self-hosted S3 (SeaweedFS, MinIO, Ceph) is addressed by path, often over http.
        options["endpoint"] = endpoint
        options["virtual_hosted_style_request"] = False
        client["allow_http"] = endpoint.startswith("http://")
    return S3Store(
        location.bucket, prefix=location.prefix or None, client_options=client, **options
    )


def check_staging_name(name: str) -> str:
    """Return ``name`` if it is a safe staging name, else raise :class:`InvalidArgument`."""
    if not _STAGING_NAME.fullmatch(name) or ".." in name.split("/"):
        raise InvalidArgument(f"not a staging name: {name!r}")
    return name


class S3BlobStore:
    """Content-addressed blobs in one bucket under one prefix."""

    def __init__(
        self,
        location: S3Location,
        connection: S3Connection,
        *,
        max_put_size: int,
        copier: S3Copier | None = None,
    ) -> None:
        self.location = location
        self.connection = connection.check()
        self.max_put_size = max_put_size
        #: What weightport reads and writes through (the internal endpoint).
        self.objects = object_store(location, connection, connection.endpoint)
        # What presigned URLs are signed for: SigV4 binds the host the client connects to.
        self._signer = object_store(location, connection, connection.client_endpoint)
        self.copier = copier or S3Copier(connection, max_put_size=max_put_size)
        self._disposition = DispositionSigner(location, connection)
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._sizes_lock = threading.Lock()
        self._reads = ReadAhead(self._fetch)

    def __repr__(self) -> str:
        return f"S3BlobStore({self.location})"

    # -- BlobStore -----------------------------------------------------------------------

    def head(self, key: str) -> BlobInfo | None:
        """The blob's size, or ``None`` if there is no such blob."""
        check_key(key)
        size = self._head(BLOB_PREFIX + key)
        if size is None:
            return None
        self._remember_size(key, size)
        return BlobInfo(key=key, size=size)

    def readinto(self, key: str, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the blob's bytes from ``offset`` (ranged GETs, read-ahead).

        Raises :class:`StorageError` if the blob is missing or shorter than
        ``offset + len(buf)``, or the store fails.
        """
        check_key(key)
        if offset < 0:
            raise InvalidArgument(f"negative read offset {offset}")
        size = self._size(key)
        if offset + len(buf) > size:
            raise StorageError(
                f"blob {key} ends before byte {offset + len(buf)} (it has {size} bytes)"
            )
        self._reads.readinto(key, size, offset, buf)

    def begin_upload(
        self, *, expected_sha256: str | None = None, expected_size: int | None = None
    ) -> S3Upload:
        """Start writing a blob; see :class:`~weightport.storage.s3.upload.S3Upload`."""
        if expected_sha256 is not None:
            check_key(expected_sha256)
        if expected_size is not None and expected_size < 0:
            raise InvalidArgument(f"negative expected size {expected_size}")
        return S3Upload(self, expected_sha256=expected_sha256, expected_size=expected_size)

    def delete(self, key: str) -> None:
        """Remove a blob; a missing blob is not an error."""
        check_key(key)
        self.delete_name(BLOB_PREFIX + key)
        with self._sizes_lock:
            self._sizes.pop(key, None)
        self._reads.forget(key)

    def list(self) -> Iterator[BlobInfo]:
        """Every committed blob (other objects under ``blobs/`` are ignored)."""
        try:
            for batch in obstore.list(self.objects, prefix=BLOB_PREFIX, chunk_size=1000):
                for meta in batch:
                    key = meta["path"][len(BLOB_PREFIX) :]
                    if re.fullmatch(r"[0-9a-f]{64}", key):
                        yield BlobInfo(key=key, size=meta["size"])
        except OBSTORE_ERRORS as exc:
            raise StorageError(f"listing {self.location} failed: {exc}") from exc

    def cleanup_temp(self, older_than_s: float, *, now: float | None = None) -> int:
        """Remove temp and staging objects (and multipart uploads) older than
        ``older_than_s`` seconds; returns how many. Safe beside other replicas as long as
        the age is longer than any upload takes."""
        cutoff = datetime.fromtimestamp(
            (time.time() if now is None else now) - older_than_s, tz=UTC
        )
        removed = 0
        for prefix in (TEMP_PREFIX, STAGING_PREFIX):
            try:
                for batch in obstore.list(self.objects, prefix=prefix, chunk_size=1000):
                    old = [m["path"] for m in batch if m["last_modified"] <= cutoff]
                    if old:
                        obstore.delete(self.objects, old)
                        removed += len(old)
            except OBSTORE_ERRORS as exc:
                raise StorageError(f"cleaning {self.location}{prefix} failed: {exc}") from exc
            removed += self.copier.abort_stale_multipart(
                self.location.bucket, self.location.key(prefix), cutoff
            )
        return removed

    def close(self) -> None:
        self._reads.close()

    # -- Presigner -----------------------------------------------------------------------

    def presign_get(self, key: str, *, expires_in: int, disposition: str | None = None) -> str:
        """A presigned GET of the blob for the public endpoint (Range works; HEAD does not:
        SigV4 signs the method). ``disposition``: the ``Content-Disposition`` the store
        answers with (for browsers; signed with boto3, ~10x slower)."""
        check_key(key)
        if disposition is not None:
            return self._disposition.sign_get(
                BLOB_PREFIX + key, expires_in=expires_in, disposition=disposition
            )
        return self._sign("GET", BLOB_PREFIX + key, expires_in)

    def presign_put(self, name: str, *, expires_in: int) -> str:
        """A presigned PUT of the staging object ``name`` for the public endpoint."""
        return self._sign("PUT", STAGING_PREFIX + check_staging_name(name), expires_in)

    def _sign(self, method: Literal["GET", "PUT"], path: str, expires_in: int) -> str:
        lifetime = timedelta(seconds=clamp_expiry(expires_in))
        try:
            url = obstore.sign(self._signer, method, path, lifetime)
        except OBSTORE_ERRORS as exc:
            raise StorageError(f"cannot presign {method} for {self.location}: {exc}") from exc
        return url

    # -- StagedUploads -------------------------------------------------------------------

    def staged_size(self, name: str) -> int | None:
        """The size of the staged object ``name``, or ``None`` if nothing arrived."""
        return self._head(STAGING_PREFIX + check_staging_name(name))

    def commit_staged(self, name: str, *, expected_size: int) -> BlobInfo:
        """Hash the staged object (streamed) and copy it under its sha256; the staged object
        stays until :meth:`discard_staged` (so a result lost to a crash is recomputed)."""
        path = STAGING_PREFIX + check_staging_name(name)
        info, etag = self.hash_object(self.objects, path, str(self.location) + path)
        if info.size != expected_size:
            self.delete_name(path)
            raise InvalidArgument(
                f"{info.size} bytes arrived, but {expected_size} were declared; upload again"
            )
        self.copy_in(
            self.location.bucket, self.location.key(path), info.key, info.size, if_match=etag
        )
        return info

    def discard_staged(self, name: str) -> None:
        """Remove a staged object; a missing one is not an error."""
        self.delete_name(STAGING_PREFIX + check_staging_name(name))

    # -- shared by uploads, staged objects and imports ------------------------------------

    @staticmethod
    def hash_object(objects: S3Store, path: str, shown: str) -> tuple[BlobInfo, str | None]:
        """sha256 and size of one object by a streamed read, and the ETag of what was read
        (so a copy can insist on the same version). ``shown`` names it in errors."""
        digest = hashlib.sha256()
        size = 0
        try:
            result = obstore.get(objects, path)
            etag = result.meta.get("e_tag")
            for piece in result.stream(min_chunk_size=_HASH_CHUNK):
                digest.update(piece)
                size += len(piece)
        except FileNotFoundError:
            raise StorageError(f"{shown} does not exist") from None
        except OBSTORE_ERRORS as exc:
            raise StorageError(f"reading {shown} failed: {exc}") from exc
        return BlobInfo(key=digest.hexdigest(), size=size), etag

    def adopt(self, path: str, key: str, size: int, *, if_match: str | None = None) -> None:
        """Make this store's object at ``path`` the blob ``key`` (see :meth:`copy_in`),
        then remove it."""
        self.copy_in(self.location.bucket, self.location.key(path), key, size, if_match=if_match)
        self.delete_name(path)

    def copy_in(
        self, bucket: str, object_key: str, key: str, size: int, *, if_match: str | None = None
    ) -> None:
        """Copy the object ``s3://bucket/object_key`` server-side to the blob ``key``, unless
        an equal blob is stored. ``if_match`` (an ETag) pins the copy to the version that
        was hashed: an object replaced meanwhile fails the copy instead of storing bytes
        that do not match their address."""
        if self._head(BLOB_PREFIX + key) != size:
            self.copier.copy(
                bucket,
                object_key,
                self.location.bucket,
                self.location.key(BLOB_PREFIX + key),
                size,
                if_match=if_match,
            )
        self._remember_size(key, size)

    def put_blob(self, key: str, data: bytes) -> None:
        """Write a small blob whose sha256 is known in one PUT (no-op if it is stored)."""
        if self._head(BLOB_PREFIX + key) == len(data):
            return
        obstore.put(self.objects, BLOB_PREFIX + key, data, use_multipart=False)
        self._remember_size(key, len(data))

    def delete_name(self, path: str) -> None:
        """Remove the object at ``path`` under the prefix; missing is fine."""
        try:
            obstore.delete(self.objects, path)
        except FileNotFoundError:
            return
        except OBSTORE_ERRORS as exc:
            raise StorageError(f"deleting {self.location}{path} failed: {exc}") from exc

    def _head(self, path: str) -> int | None:
        try:
            return int(obstore.head(self.objects, path)["size"])
        except FileNotFoundError:
            return None
        except OBSTORE_ERRORS as exc:
            raise StorageError(f"reading {self.location}{path} failed: {exc}") from exc

    def _size(self, key: str) -> int:
        with self._sizes_lock:
            size = self._sizes.get(key)
        if size is None:
            size = self._head(BLOB_PREFIX + key)
            if size is None:
                raise StorageError(f"blob {key} is missing from {self.location}")
            self._remember_size(key, size)
        return size

    def _remember_size(self, key: str, size: int) -> None:
        with self._sizes_lock:
            self._sizes[key] = size
            self._sizes.move_to_end(key)
            while len(self._sizes) > _SIZES_CACHED:
                self._sizes.popitem(last=False)

    def _fetch(self, key: str, start: int, end: int) -> memoryview:
        try:
            data = obstore.get_range(self.objects, BLOB_PREFIX + key, start=start, end=end)
        except FileNotFoundError:
            with self._sizes_lock:
                self._sizes.pop(key, None)
            raise StorageError(f"blob {key} is missing from {self.location}") from None
        except OBSTORE_ERRORS as exc:
            raise StorageError(f"reading blob {key} from {self.location} failed: {exc}") from exc
        view = memoryview(data).cast("B")
        if len(view) != end - start:
            raise StorageError(f"blob {key} returned {len(view)} bytes for [{start}, {end})")
        return view
