"""The one place a blob store is chosen: ``open_store(settings)`` reads ``storage_url``.

``storage_url`` forms:

- empty (the default): the local store in ``DATA_DIR/store``;
- ``file:///abs/path`` or a plain path (``/srv/blobs``, ``blobs``): a local store there;
- ``s3://BUCKET/PREFIX``: the S3 store in that bucket, reached at ``s3_endpoint`` (AWS when
  empty), presigning for ``s3_public_endpoint``, credentials from the AWS environment.

Everything else (another scheme, a ``file://`` URL naming a host) is a configuration error.
Callers get a :class:`~weightport.storage.base.BlobStore` and ask for more by capability
(:class:`~weightport.storage.base.LocalPaths`, :class:`~weightport.storage.base.Presigner`,
:class:`~weightport.storage.base.StagedUploads`), never by the concrete class.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from weightport.config import Settings
from weightport.errors import InvalidArgument
from weightport.storage.base import BlobStore
from weightport.storage.local import LocalStore
from weightport.storage.s3 import S3BlobStore, S3Connection, S3Location


def _local_root(settings: Settings) -> Path:
    """The directory of the local store ``storage_url`` names, else :class:`InvalidArgument`
    with a one-line message naming the setting."""
    url = settings.storage_url.strip()
    if not url:
        return settings.data_dir / "store"
    parts = urlsplit(url)
    if not parts.scheme:
        return Path(url).expanduser()
    if parts.scheme != "file":
        raise InvalidArgument(
            f"storage_url {url!r}: unsupported scheme {parts.scheme!r} "
            "(use a local path, file:///absolute/path or s3://BUCKET/PREFIX)"
        )
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise InvalidArgument(
            f"storage_url {url!r}: a file URL names an absolute local path, file:///absolute/path"
        )
    return Path(unquote(parts.path))


def s3_connection(settings: Settings) -> S3Connection:
    """The S3 endpoints and region the settings name (checked)."""
    return S3Connection(
        endpoint=settings.s3_endpoint.strip(),
        public_endpoint=settings.s3_public_endpoint.strip(),
        region=settings.s3_region.strip() or "us-east-1",
    ).check()


def is_s3_url(url: str) -> bool:
    """Whether ``url`` names an S3 location (``s3://…``)."""
    return urlsplit(url.strip()).scheme == "s3"


def check_store_settings(settings: Settings) -> None:
    """Raise what :func:`open_store` would for the storage settings, creating nothing and
    reaching no server (for commands that must leave nothing behind when they fail)."""
    if is_s3_url(settings.storage_url):
        S3Location.parse(settings.storage_url)
        s3_connection(settings)
    else:
        _local_root(settings)


def open_store(settings: Settings, *, housekeeping: bool = False) -> BlobStore:
    """The blob store ``settings.storage_url`` names, ready to use.

    ``housekeeping`` is for the server at start: it also removes what crashes and abandoned
    uploads left behind. The local store (one machine, no one else writing) drops every
    interrupted upload; a shared S3 store only those older than ``staging_max_age``, since
    other replicas may be uploading right now. Commands that may run beside a live server
    leave it off, so they never remove an upload in progress.
    """
    if is_s3_url(settings.storage_url):
        s3 = S3BlobStore(
            S3Location.parse(settings.storage_url),
            s3_connection(settings),
            max_put_size=settings.s3_max_put_size,
        )
        if housekeeping:
            s3.cleanup_temp(older_than_s=settings.staging_max_age)
        return s3
    store = LocalStore(_local_root(settings))
    if housekeeping:
        store.cleanup_temp(older_than_s=0)
    return store
