"""Server-side copies and multipart housekeeping, through boto3 (obstore cannot do these).

obstore's ``copy`` is one CopyObject inside one store: it cannot copy from another bucket
(import in place) nor past CopyObject's 5 GiB limit, which needs a multipart upload whose
parts are UploadPartCopy calls; nor can it list or abort stale multipart uploads. boto3 does
all three. It is imported on first use only (it costs ~0.25 s to import).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from weightport.errors import StorageError
from weightport.storage.s3.location import S3Connection

#: Parallel UploadPartCopy calls of one copy.
_COPY_PARALLEL = 4


class S3Copier:
    """Server-side copies between keys of any buckets of one S3 service."""

    def __init__(self, connection: S3Connection, *, max_put_size: int) -> None:
        self._connection = connection
        self.max_put_size = max_put_size
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The boto3 S3 client (thread-safe), built once; credentials from the AWS chain."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                self._client = boto3.client(
                    "s3",
                    endpoint_url=self._connection.endpoint or None,
                    region_name=self._connection.region,
                    config=Config(
                        signature_version="s3v4",
                        s3={"addressing_style": "path"},
                        max_pool_connections=2 * _COPY_PARALLEL,
                        # SeaweedFS and other S3 servers predate the default CRC checksums.
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                    ),
                )
            return self._client

    def copy(
        self,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        size: int,
        *,
        if_match: str | None = None,
    ) -> None:
        """Copy one object server-side: one CopyObject, or UploadPartCopy parts past the
        single-copy limit. ``if_match``: only if the source still has this ETag.

        Raises :class:`StorageError` naming both objects on failure.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        source = {"Bucket": src_bucket, "Key": src_key}
        condition = {"CopySourceIfMatch": if_match} if if_match else {}
        try:
            if size <= self.max_put_size:
                client.copy_object(Bucket=dst_bucket, Key=dst_key, CopySource=source, **condition)
                return
            self._multipart_copy(client, source, condition, dst_bucket, dst_key, size)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise StorageError(
                    f"s3://{src_bucket}/{src_key} changed while it was being copied; try again"
                ) from exc
            raise StorageError(
                f"copying s3://{src_bucket}/{src_key} to s3://{dst_bucket}/{dst_key} failed: {exc}"
            ) from exc
        except BotoCoreError as exc:
            raise StorageError(
                f"copying s3://{src_bucket}/{src_key} to s3://{dst_bucket}/{dst_key} failed: {exc}"
            ) from exc

    def _multipart_copy(
        self,
        client: Any,
        source: dict[str, str],
        condition: dict[str, str],
        bucket: str,
        key: str,
        size: int,
    ) -> None:
        part = self.max_put_size
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

        def copy_part(number: int) -> dict[str, Any]:
            start = (number - 1) * part
            end = min(size, start + part) - 1
            result = client.upload_part_copy(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=source,
                CopySourceRange=f"bytes={start}-{end}",
                **condition,
            )
            return {"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]}

        try:
            numbers = range(1, -(-size // part) + 1)
            with ThreadPoolExecutor(_COPY_PARALLEL, thread_name_prefix="s3-copy") as pool:
                parts = list(pool.map(copy_part, numbers))
            client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    def abort_stale_multipart(self, bucket: str, prefix: str, cutoff: datetime) -> int:
        """Abort multipart uploads under ``prefix`` started before ``cutoff``; how many."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        aborted = 0
        try:
            pages = client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < cutoff:
                        client.abort_multipart_upload(
                            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted += 1
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(
                f"cleaning multipart uploads in s3://{bucket}/{prefix}: {exc}"
            ) from exc
        return aborted
