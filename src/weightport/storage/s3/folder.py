"""Importing a folder of an S3 bucket in place (a training run's checkpoint directory).

Each object is hashed by a streamed read and then *copied server-side* into the S3 store
under its sha256 (CopyObject, or UploadPartCopy parts for large ones), pinned to the ETag of
what was hashed: the weights never pass through a local temp file. Into a local store the
object is streamed straight into a store upload (hashed as it is written).
The folder may be in the store's own bucket or another bucket of the same S3 service.
"""

from __future__ import annotations

from dataclasses import dataclass

import obstore
from obstore.store import S3Store

from weightport.errors import InvalidArgument, StorageError
from weightport.paths import validate_relative_path
from weightport.storage.base import BlobInfo, BlobStore
from weightport.storage.s3.location import S3Connection, S3Location
from weightport.storage.s3.store import S3BlobStore, object_store
from weightport.storage.s3.upload import OBSTORE_ERRORS

_STREAM_CHUNK = 8 << 20


@dataclass(frozen=True)
class S3Folder:
    """The objects under ``s3://BUCKET/PREFIX/``, by path relative to the prefix."""

    location: S3Location
    objects: S3Store

    @classmethod
    def open(cls, url: str, connection: S3Connection) -> S3Folder:
        """The folder ``url`` names, reached like the store (same endpoint, credentials)."""
        location = S3Location.parse(url, what="import source")
        return cls(location, object_store(location, connection, connection.endpoint))

    def files(self) -> dict[str, int]:
        """Every object's relative path and size; hidden names (``.…``) and folder markers
        are skipped, unsafe names refused. Raises :class:`InvalidArgument` if it is empty."""
        found: dict[str, int] = {}
        try:
            for batch in obstore.list(self.objects, chunk_size=1000):
                for meta in batch:
                    path = meta["path"]
                    if path.endswith("/") or any(p.startswith(".") for p in path.split("/")):
                        continue
                    found[validate_relative_path(path)] = int(meta["size"])
        except OBSTORE_ERRORS as exc:
            raise StorageError(f"listing {self.location} failed: {exc}") from exc
        if not found:
            raise InvalidArgument(f"{self.location} holds no files")
        return dict(sorted(found.items()))

    def import_file(self, store: BlobStore, path: str) -> BlobInfo:
        """Bring one object into ``store``: hash + server-side copy into an S3 store, a
        streamed upload into any other."""
        shown = f"{self.location}{path}"
        if isinstance(store, S3BlobStore):
            info, etag = S3BlobStore.hash_object(self.objects, path, shown)
            store.copy_in(
                self.location.bucket, self.location.key(path), info.key, info.size, if_match=etag
            )
            return info
        with store.begin_upload() as upload:
            try:
                for piece in obstore.get(self.objects, path).stream(min_chunk_size=_STREAM_CHUNK):
                    upload.write(memoryview(piece))
            except FileNotFoundError:
                raise StorageError(f"{shown} does not exist") from None
            except OBSTORE_ERRORS as exc:
                raise StorageError(f"reading {shown} failed: {exc}") from exc
            return upload.commit()
