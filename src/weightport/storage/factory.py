"""The one place a blob store is chosen: ``open_store(settings)`` reads ``storage_url``.

``storage_url`` forms:

- empty (the default): the local store in ``DATA_DIR/store``;
- ``file:///abs/path`` or a plain path (``/srv/blobs``, ``blobs``): a local store there;
- ``s3://BUCKET/PREFIX``: refused with a clear error; this version has no S3 store.

Everything else (another scheme, a ``file://`` URL naming a host) is a configuration error.
Callers get a :class:`~weightport.storage.base.BlobStore` and ask for more by capability
(:class:`~weightport.storage.base.LocalPaths`), never by the concrete class.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from weightport.config import Settings
from weightport.errors import InvalidArgument
from weightport.storage.base import BlobStore
from weightport.storage.local import LocalStore


def _local_root(settings: Settings) -> Path:
    """The directory of the local store ``storage_url`` names, else :class:`InvalidArgument`
    with a one-line message naming the setting."""
    url = settings.storage_url.strip()
    if not url:
        return settings.data_dir / "store"
    parts = urlsplit(url)
    if not parts.scheme:
        return Path(url).expanduser()
    if parts.scheme == "s3":
        raise InvalidArgument(
            f"storage_url {url!r}: the S3 store is not built in this version of weightport; "
            "leave storage_url empty or give a local directory"
        )
    if parts.scheme != "file":
        raise InvalidArgument(
            f"storage_url {url!r}: unsupported scheme {parts.scheme!r} "
            "(use a local path or file:///absolute/path)"
        )
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise InvalidArgument(
            f"storage_url {url!r}: a file URL names an absolute local path, file:///absolute/path"
        )
    return Path(unquote(parts.path))


def open_store(settings: Settings, *, housekeeping: bool = False) -> BlobStore:
    """The blob store ``settings.storage_url`` names, ready to use.

    ``housekeeping`` is for the server at start, when no one else writes to the store: it
    also removes what a crash left behind (the local store's interrupted uploads, which were
    never visible and cannot be resumed). Commands that may run beside a live server leave
    it off, so they never remove an upload in progress.
    """
    store = LocalStore(_local_root(settings))
    if housekeeping:
        store.cleanup_temp(older_than_s=0)
    return store
