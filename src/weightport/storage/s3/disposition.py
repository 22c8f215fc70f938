"""Presigned GETs that name the file a browser saves: ``response-content-disposition``.

obstore signs only the method, host and path; a browser following such a URL saves the object
under its key (a sha256). S3 lets a presigned GET override the response's
``Content-Disposition`` through a *signed* query parameter, which boto3 can sign and obstore
cannot. It costs ~150 µs per URL (obstore: ~13 µs), so only links meant for people use it:
the console's file links and cached-archive redirects — never a 200-file API answer.
"""

from __future__ import annotations

import threading
from typing import Any

from weightport.errors import StorageError
from weightport.storage.s3.location import S3Connection, S3Location, clamp_expiry


class DispositionSigner:
    """Signs GETs with a Content-Disposition for the endpoint clients reach."""

    def __init__(self, location: S3Location, connection: S3Connection) -> None:
        self._location = location
        self._connection = connection
        self._client: Any = None
        self._lock = threading.Lock()

    def _boto(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                self._client = boto3.client(
                    "s3",
                    endpoint_url=self._connection.client_endpoint or None,
                    region_name=self._connection.region,
                    config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
                )
            return self._client

    def sign_get(self, path: str, *, expires_in: int, disposition: str) -> str:
        """A presigned GET of ``path`` (under the prefix) answering with ``disposition``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            url: str = self._boto().generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self._location.bucket,
                    "Key": self._location.key(path),
                    "ResponseContentDisposition": disposition,
                },
                ExpiresIn=clamp_expiry(expires_in),
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot presign a GET in {self._location}: {exc}") from exc
        return url
