"""What every store's upload does alike: count and hash the bytes as they arrive, hold them to
the size and sha256 the sender declared, and the open → committed | aborted lifecycle (a
``with`` block left without a commit aborts). Where the bytes go is each store's own."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

from weightport.errors import InvalidArgument, StorageError
from weightport.storage.base import BlobInfo


class CheckedUpload(ABC):
    """The shared half of a :class:`~weightport.storage.base.BlobUpload`."""

    def __init__(self, *, expected_sha256: str | None, expected_size: int | None) -> None:
        self._expected_sha256 = expected_sha256
        self._expected_size = expected_size
        self._hash = hashlib.sha256()
        self._written = 0
        self._result: BlobInfo | None = None
        self._aborted = False

    @property
    def written(self) -> int:
        """Bytes written so far."""
        return self._written

    @abstractmethod
    def abort(self) -> None:
        """Drop what was written. Safe to call twice; does nothing after a commit."""

    def _accept(self, data: bytes | bytearray | memoryview) -> memoryview:
        """``data`` as flat bytes, hashed; :class:`InvalidArgument` (and an abort) if it goes
        past the declared size. The caller stores the bytes and adds them to ``_written``."""
        self._check_open()
        view = memoryview(data).cast("B")
        if self._expected_size is not None and self._written + len(view) > self._expected_size:
            self.abort()
            raise InvalidArgument(f"upload is larger than the declared {self._expected_size} bytes")
        self._hash.update(view)
        return view

    def _verified_key(self) -> str:
        """The sha256 of everything written, once it is the declared size and sha256;
        :class:`InvalidArgument` (and an abort) when the sender sent other bytes."""
        self._check_open()
        key = self._hash.hexdigest()
        if self._expected_size is not None and self._written != self._expected_size:
            self.abort()
            raise InvalidArgument(
                f"upload has {self._written} bytes, but {self._expected_size} were declared"
            )
        if self._expected_sha256 is not None and key != self._expected_sha256:
            self.abort()
            raise InvalidArgument(
                f"upload has sha256 {key}, but {self._expected_sha256} was declared"
            )
        return key

    def _check_open(self) -> None:
        if self._aborted:
            raise StorageError("upload was aborted")
        if self._result is not None:
            raise StorageError("upload was already committed")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Leaving the block without committing (by error or not) discards the upload.
        self.abort()
