"""Signed file routes: ``GET``/``HEAD``/``PUT /files/{account}/{model}/{path}``.

No API key here: the signature in the query string is the credential. It binds the method,
the decoded path, the expiry and the signing key id, the id of the API key that minted the
URL (so revoking that key revokes its URLs, within ``revocation_delay``), plus what the route
needs to stay honest: the blob's sha256 for downloads; the declared size, the upload
generation and (when the uploader declared it) the sha256 for uploads.
"""

from __future__ import annotations

import asyncio
import posixpath
import re
from collections.abc import Mapping, Sequence
from urllib.parse import quote

from aiohttp import web
from sqlalchemy.orm import Session

from weightport.catalog import registry, uploads
from weightport.catalog.accounts import Caller
from weightport.catalog.audit import Subject
from weightport.errors import FailedPrecondition, InvalidArgument, NotFound, SignatureInvalid
from weightport.observability.metrics import BytePath
from weightport.paths import validate_relative_path
from weightport.server.byteserve import Entity, blob_body, content_disposition, serve_entity
from weightport.server.client_timeouts import read_body_chunk
from weightport.server.context import ServerContext, context_of
from weightport.server.protocol import defer_continue, send_continue
from weightport.server.requests import CALLER
from weightport.server.transfers import Download
from weightport.services.gc import pin_stored
from weightport.services.staged_uploads import StagedFile as DeclaredFile
from weightport.storage.base import StagedUploads

PREFIX = "/files"
#: The bound parameter (``X-Wp-key``) naming the API key that minted a URL.
MINTED_BY = "key"
UPLOAD_BUFFER = 1 << 20


def _decoded_path(account: str, model_id: str, path: str) -> str:
    return f"{PREFIX}/{account}/{model_id}/{path}"


def signed_file_urls(
    ctx: ServerContext,
    base: str,
    *,
    method: str,
    account: str,
    model_id: str,
    paths: Sequence[str],
    bound: Mapping[str, Sequence[str]],
    ttl: int,
    minted_by: str,
) -> list[str]:
    """Signed URLs for ``paths``, files of one model, each bound to its values in ``bound``
    (a value per path for each name) and to the API key id ``minted_by``. They share one
    template, so a listing of many files pays per URL only for what differs."""
    now = ctx.now()
    names = tuple(sorted([*bound, MINTED_BY]))
    template = ctx.signer.template(method, expires_at=now + ttl, now=now, names=names)
    decoded = f"{PREFIX}/{account}/{model_id}/"
    queries = template.query_strings(
        [decoded + path for path in paths], shared={MINTED_BY: minted_by}, each=bound
    )
    raw = f"{base}{PREFIX}/{_segment(account)}/{_segment(model_id)}/"
    # One check of all the paths at once (the class of safe characters holds for each of
    # them if it holds for their concatenation) spares a check per path.
    if not _PATH_SAFE.fullmatch("".join(paths)):
        paths = [_quoted(path) for path in paths]
    return [f"{raw}{path}?{query}" for path, query in zip(paths, queries, strict=True)]


#: Characters ``quote`` leaves alone in a path (plus "/"), so such text needs no call to it.
_PATH_SAFE = re.compile(r"[A-Za-z0-9._~/-]*")


def _quoted(path: str) -> str:
    return path if _PATH_SAFE.fullmatch(path) else quote(path)


def _segment(text: str) -> str:
    return text if "/" not in text and _PATH_SAFE.fullmatch(text) else quote(text, safe="")


def signed_download_urls(
    ctx: ServerContext,
    base: str,
    model: registry.DownloadableModel,
    paths: Sequence[str],
    sha256s: Sequence[str],
    *,
    minted_by: str,
    for_browser: bool = False,
) -> list[str]:
    """Where a client GETs each of the files at ``paths`` (with contents ``sha256s``), landed
    files of the READY ``model``.

    With a presigning store (and ``s3_proxy`` off), the store's own URLs: the bytes never pass
    through weightport, but such a URL cannot be revoked (revoking ``minted_by`` does not
    reach it), so it lives only ``s3_presign_ttl``. Otherwise this route's signed URLs, each
    bound to its file's sha256 (so it can never serve other bytes) and to the API key id
    ``minted_by`` (revoking that key revokes the URL), valid for ``download_url_ttl``.
    ``for_browser``: a store URL also names the file to save (weightport's route always does).
    """
    presigner = ctx.presigner()
    if presigner is not None:
        ttl = ctx.settings.s3_presign_ttl
        return [
            presigner.presign_get(
                sha256,
                expires_in=ttl,
                disposition=(
                    content_disposition(posixpath.basename(path)) if for_browser else None
                ),
            )
            for path, sha256 in zip(paths, sha256s, strict=True)
        ]
    return signed_file_urls(
        ctx,
        base,
        method="GET",
        account=model.account_id,
        model_id=model.model_id,
        paths=paths,
        bound={"sha256": sha256s},
        ttl=ctx.settings.download_url_ttl,
        minted_by=minted_by,
    )


def upload_url(
    ctx: ServerContext,
    base: str,
    *,
    account: str,
    model_id: str,
    file: DeclaredFile,
    minted_by: str,
) -> str:
    """Where a client PUTs one declared file.

    With a presigning store and a file one PUT can write (``s3_max_put_size``), a presigned
    PUT to the file's staging name, hashed at ``validateUpload``; otherwise this route,
    which hashes while it streams into the store (multipart for large files).
    """
    presigner = ctx.presigner()
    if (
        presigner is not None
        and isinstance(ctx.store, StagedUploads)
        and file.declared_size <= ctx.settings.s3_max_put_size
    ):
        return presigner.presign_put(file.name, expires_in=ctx.settings.upload_url_ttl)
    return signed_file_urls(
        ctx,
        base,
        method="PUT",
        account=account,
        model_id=model_id,
        paths=[file.path],
        bound={name: [value] for name, value in _upload_binding(file).items()},
        ttl=ctx.settings.upload_url_ttl,
        minted_by=minted_by,
    )[0]


def _upload_binding(file: DeclaredFile) -> dict[str, str]:
    bound = {"size": str(file.declared_size), "gen": str(file.generation)}
    if file.expected_sha256 is not None:
        bound["sha256"] = file.expected_sha256
    return bound


def _target(request: web.Request) -> tuple[str, str, str]:
    account = request.match_info["account"]
    model_id = request.match_info["model"]
    path = validate_relative_path(request.match_info["path"])
    return account, model_id, path


async def _verify(request: web.Request, method: str) -> dict[str, str]:
    """The URL's bound parameters once its signature holds and its minting key is active."""
    ctx = context_of(request)
    account, model_id, path = _target(request)
    bound = ctx.signer.verify(
        method, _decoded_path(account, model_id, path), request.query, now=ctx.now()
    )
    minted_by = bound.get(MINTED_BY)
    if not minted_by:
        raise SignatureInvalid(
            "signed URL: it names no API key (minted by an older weightport); request a fresh one"
        )
    await ctx.key_status.require_active(minted_by)
    # The key that minted the URL speaks for this request (the access and audit logs).
    request[CALLER] = Caller(account_id=account, key_id=minted_by)
    return dict(bound)


async def download(request: web.Request) -> web.StreamResponse:
    """Serve a READY model's file: Range, HEAD, conditional requests, zero-copy if local."""
    ctx = context_of(request)
    bound = await _verify(request, "GET")
    account, model_id, path = _target(request)
    sha256 = bound.get("sha256", "")

    def find(session: Session) -> int:
        model = registry.get_model(session, account, model_id)
        file = next((f for f in model.files if f.path == path), None)
        if model.state != registry.READY or file is None or file.sha256 != sha256:
            raise NotFound(f"file {path!r} of model {model_id!r} is no longer available")
        return file.declared_size

    size = await ctx.catalog.run(find, readonly=True)
    entity = Entity(size=size, etag=sha256, filename=posixpath.basename(path))
    body = blob_body(ctx.store, sha256, size)
    subject = Subject(account, registry.resource_name(account, model_id), "file", file=path)
    return await serve_entity(
        request,
        entity,
        body,
        max_ranges=ctx.settings.max_ranges,
        download=Download(BytePath.FILE, subject),
    )


async def upload(request: web.Request) -> web.Response:
    """Receive one declared file: size enforced, sha256 computed while streaming to the store."""
    ctx = context_of(request)
    bound = await _verify(request, "PUT")
    account, model_id, path = _target(request)
    try:
        size = int(bound["size"])
        generation = int(bound["gen"])
    except (KeyError, ValueError):
        raise SignatureInvalid("this URL is not an upload URL") from None
    _check_declared_length(request, size)
    # Refused before a byte is stored (a READY model, an outdated URL): a replayed URL
    # costs the store nothing.
    await ctx.catalog.run(lambda s: uploads.check_landable(s, account, model_id, path, generation))
    await send_continue(request)

    # A URL minted for a declared sha256 stores nothing but those bytes; the declared size
    # lets an object store pick parts that fit S3's 10,000-part limit.
    upload = ctx.store.begin_upload(expected_sha256=bound.get("sha256"), expected_size=size)
    try:
        pending = bytearray()
        while chunk := await read_body_chunk(request, UPLOAD_BUFFER, ctx.settings.body_timeout):
            if upload.written + len(pending) + len(chunk) > size:
                raise InvalidArgument(f"{path!r}: body is larger than the declared {size} bytes")
            pending += chunk
            if len(pending) >= UPLOAD_BUFFER:
                data, pending = bytes(pending), bytearray()
                await asyncio.to_thread(upload.write, data)
        if pending:
            await asyncio.to_thread(upload.write, bytes(pending))
        if upload.written != size:
            raise InvalidArgument(
                f"{path!r}: body has {upload.written} bytes, declared {size}; upload again"
            )
        info = await asyncio.to_thread(upload.commit)
    except BaseException:
        await asyncio.to_thread(upload.abort)
        raise

    def land(session: Session) -> None:
        pin_stored(session, ctx.store, [info.key])
        uploads.land_file(session, account, model_id, path, generation, info.key, info.size)

    await ctx.catalog.run(land)
    return web.Response(status=200)


def _check_declared_length(request: web.Request, size: int) -> None:
    if request.content_length is not None and request.content_length != size:
        raise InvalidArgument(
            f"Content-Length {request.content_length} does not match the declared size {size}"
        )
    header = request.headers.get("x-goog-content-length-range")
    if header:
        try:
            low, high = (int(part) for part in header.split(","))
        except ValueError:
            raise InvalidArgument(f"malformed x-goog-content-length-range {header!r}") from None
        if not low <= size <= high:
            raise FailedPrecondition(f"declared size {size} is outside {header}")


def add_routes(app: web.Application) -> None:
    route = PREFIX + "/{account}/{model}/{path:.+}"
    app.router.add_get(route, download, allow_head=True)
    app.router.add_put(route, upload, expect_handler=defer_continue)
