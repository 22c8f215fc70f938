"""An upload into the S3 store: hashed while it streams, visible only once complete.

S3 has no rename, so a blob's key (its sha256) can be written only once the last byte has
been hashed. Small uploads (up to one part) stay in memory and are written to their final
key by one PUT at commit. Larger ones stream as a multipart upload to a private temp key
and are copied server-side to the final key at commit (then the temp object is removed):
nothing is ever visible under a sha256 key before its bytes are complete and checked.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import obstore

from weightport.errors import StorageError
from weightport.storage.base import BlobInfo
from weightport.storage.checked_upload import CheckedUpload

if TYPE_CHECKING:
    from obstore import WritableFile

    from weightport.storage.s3.store import S3BlobStore

#: Uploads up to this size stay in memory and are written by one PUT at commit.
IN_MEMORY_BYTES = 8 << 20
#: Part size of the multipart upload larger ones become (S3's minimum is 5 MiB).
PART_BYTES = 8 << 20
#: S3 allows 10,000 parts per upload; a declared size picks parts large enough to fit in
#: these (so 8 MiB parts do not cap a file at 78 GiB). Without one, uploads are limited to
#: MAX_PARTS × PART_BYTES.
MAX_PARTS = 9_000
#: Parts in flight per upload (memory: about PART_BYTES each).
PARTS_IN_FLIGHT = 4
TEMP_PREFIX = "tmp/"
#: What obstore raises: its own errors, and built-in ``FileNotFoundError``/``ValueError``.
OBSTORE_ERRORS = (obstore.exceptions.BaseError, OSError, ValueError)


def part_size(expected_size: int | None) -> int:
    """The multipart part size for an upload of ``expected_size`` bytes (if known)."""
    if expected_size is None:
        return PART_BYTES
    needed = -(-expected_size // MAX_PARTS)
    return max(PART_BYTES, -(-needed // (1 << 20)) << 20)  # whole MiB


class S3Upload(CheckedUpload):
    """A blob being written; see :meth:`S3BlobStore.begin_upload`."""

    def __init__(
        self,
        store: S3BlobStore,
        *,
        expected_sha256: str | None,
        expected_size: int | None,
    ) -> None:
        super().__init__(expected_sha256=expected_sha256, expected_size=expected_size)
        self._store = store
        self._pending = bytearray()
        self._writer: WritableFile | None = None
        self.temp_name = f"{TEMP_PREFIX}upload-{secrets.token_hex(12)}"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``. Raises :class:`InvalidArgument` (and aborts) past the expected size."""
        view = self._accept(data)
        self._written += len(view)
        if self._writer is None and len(self._pending) + len(view) <= IN_MEMORY_BYTES:
            self._pending += view
            return
        try:
            if self._writer is None:
                self._writer = obstore.open_writer(
                    self._store.objects,
                    self.temp_name,
                    buffer_size=part_size(self._expected_size),
                    max_concurrency=PARTS_IN_FLIGHT,
                )
                if self._pending:
                    self._writer.write(bytes(self._pending))
                    self._pending = bytearray()
            self._writer.write(view)
        except OBSTORE_ERRORS as exc:
            self.abort()
            raise StorageError(f"writing upload to the S3 store failed: {exc}") from exc

    def commit(self) -> BlobInfo:
        """Make the blob visible under its sha256 and return it; calling again returns it again.

        Raises :class:`InvalidArgument` (and aborts) when the content is not the expected
        size or sha256.
        """
        if self._result is not None:
            return self._result
        key = self._verified_key()
        try:
            if self._writer is None:
                self._store.put_blob(key, bytes(self._pending))
            else:
                self._writer.close()
                self._writer = None
                self._store.adopt(self.temp_name, key, self._written)
        except (*OBSTORE_ERRORS, StorageError) as exc:
            self.abort()
            raise StorageError(f"storing blob {key} in the S3 store failed: {exc}") from exc
        self._pending = bytearray()
        self._result = BlobInfo(key=key, size=self._written)
        return self._result

    def abort(self) -> None:
        """Drop what was written. Safe to call twice; does nothing after a commit."""
        if self._result is not None or self._aborted:
            return
        self._aborted = True
        self._pending = bytearray()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            # The writer has no abort: finishing it and deleting the temp object leaves
            # nothing behind (a failure here leaves a temp object for cleanup_temp).
            try:
                writer.close()
            except OBSTORE_ERRORS:
                return
            self._store.delete_name(self.temp_name)
