"""``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: one file, with what clients cache it by.

Every answer carries ``X-Repo-Commit`` (the snapshot folder and ``refs/<branch>`` of the
client's cache), ``X-Linked-Etag`` (the cache's blob name) and ``X-Linked-Size`` (checked
against the bytes received) — on a 404 for a missing file too, with the commit, so clients
remember the absence. The bytes go through the same byte path as every other download
(zero-copy for stored blobs, the merge view for merged shards): Range (206/416), ETags and
conditional requests behave the same everywhere, and a HEAD never computes a byte.

With a store that presigns its own URLs (S3), a stored file is answered with a 302 to the
store instead, carrying all of the above, since clients read them from the redirect itself
and then fetch from the store without weightport's key. Only to another origin: clients follow
same-origin redirects during the HEAD, and older ones drop the query string — the signature —
when they do. Merged shards have no stored object and are always streamed.
"""

from __future__ import annotations

import mimetypes
import posixpath
from contextlib import ExitStack
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from weightport.catalog.audit import Subject
from weightport.observability.metrics import BytePath
from weightport.ranges import format_etag
from weightport.server.byteserve import Entity, LocalFile, SourceBody, blob_body, serve_entity
from weightport.server.context import ServerContext, context_of
from weightport.server.hub.errors import RANGE_ERROR_HEADERS
from weightport.server.hub.lookup import find
from weightport.server.hub.paths import split_target
from weightport.server.transfers import Download, record_grant
from weightport.services.hub.files import RepoFile
from weightport.services.hub.revisions import RevisionKind
from weightport.storage.base import Presigner

#: What the audit log calls a file of each kind of revision.
AUDIT_KINDS = {RevisionKind.MERGED: "merged", RevisionKind.ADAPTER: "adapter"}
_TEXT_TYPES = {".md": "text/markdown; charset=utf-8", ".txt": "text/plain; charset=utf-8"}


def content_type(path: str) -> str:
    """A file's media type by its extension; weights and unknown files are binary."""
    extension = posixpath.splitext(path)[1].lower()
    if extension in _TEXT_TYPES:
        return _TEXT_TYPES[extension]
    guessed, _ = mimetypes.guess_type(path, strict=True)
    return guessed or "application/octet-stream"


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def store_url(ctx: ServerContext, request: web.Request, file: RepoFile) -> str | None:
    """The store's own URL for a stored file, if the store presigns and is another origin."""
    store = ctx.store
    if file.blob is None or not isinstance(store, Presigner):
        return None
    url = store.presign_get(file.blob, expires_in=ctx.settings.download_url_ttl)
    return None if _origin(url) == _origin(ctx.public_base(request)) else url


async def resolve(request: web.Request) -> web.StreamResponse:
    """Serve one file of a revision (GET or HEAD)."""
    ctx = context_of(request)
    target = split_target(request, api=False, path_required=True)
    found = await find(request, target.repo_id, target.revision)
    file = found.files.get(target.path)
    headers = {
        "X-Repo-Commit": found.revision.sha,
        "X-Linked-Etag": format_etag(file.etag),
        "X-Linked-Size": str(file.size),
    }
    subject = Subject(
        found.repo.account,
        found.repo.repo_id,
        AUDIT_KINDS.get(found.revision.kind, "file"),
        revision=found.revision.name,
        file=file.path,
    )
    location = store_url(ctx, request, file)
    if location is not None:
        headers[hdrs.ETAG] = format_etag(file.etag)
        headers[hdrs.LOCATION] = location
        if request.method == hdrs.METH_GET:
            record_grant(request, subject)  # the store serves the bytes
        return web.Response(status=302, headers=headers)
    entity = Entity(
        size=file.size,
        etag=file.etag,
        content_type=content_type(file.path),
        filename=posixpath.basename(file.path),
    )
    body: LocalFile | SourceBody = (
        blob_body(ctx.store, file.blob, file.size)
        if file.blob is not None
        else SourceBody(file.source, ctx.read_ahead)  # merged: computed ahead of the socket
    )
    with ExitStack() as held:
        if file.blob is None and request.method == hdrs.METH_GET:
            # A merged shard is computed while it is sent: counted against the account's cap
            # (429 with Retry-After; huggingface_hub retries it with backoff).
            held.enter_context(ctx.slots.hold(found.repo.account))
        return await serve_entity(
            request,
            entity,
            body,
            max_ranges=ctx.settings.max_ranges,
            extra_headers=headers,
            unsatisfiable_headers={**headers, **RANGE_ERROR_HEADERS},
            download=Download(BytePath.HUB, subject),
        )
