"""Blob stores behind small protocols: local content-addressed files, S3."""

from weightport.storage.base import (
    BlobInfo,
    BlobSource,
    BlobStore,
    BlobUpload,
    ByteSource,
    LocalPaths,
    MemorySource,
    PathSource,
    Presigner,
)

__all__ = [
    "BlobInfo",
    "BlobSource",
    "BlobStore",
    "BlobUpload",
    "ByteSource",
    "LocalPaths",
    "MemorySource",
    "PathSource",
    "Presigner",
]
