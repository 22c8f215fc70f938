"""Blob stores behind small protocols; ``storage.factory.open_store`` picks one by settings."""

from weightport.storage.base import (
    BlobInfo,
    BlobSource,
    BlobStore,
    BlobUpload,
    ByteSource,
    LocalPaths,
    Presigner,
    StagedUploads,
)
from weightport.storage.files import PathSource

__all__ = [
    "BlobInfo",
    "BlobSource",
    "BlobStore",
    "BlobUpload",
    "ByteSource",
    "LocalPaths",
    "PathSource",
    "Presigner",
    "StagedUploads",
]
