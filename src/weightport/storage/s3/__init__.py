"""The S3-compatible blob store (any S3 API: AWS, SeaweedFS, MinIO, Ceph RGW, R2)."""

from weightport.storage.s3.location import S3Connection, S3Location
from weightport.storage.s3.store import S3BlobStore

__all__ = ["S3BlobStore", "S3Connection", "S3Location"]
