"""The Together fine-tune API: jobs, checkpoints, whoami and the archive download.

(weightport's own registration routes are in :mod:`weightport.server.finetune_admin`.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from weightport.archive import stored_archive
from weightport.catalog import finetunes
from weightport.catalog.audit import Subject
from weightport.catalog.schema import FineTune
from weightport.errors import InvalidArgument
from weightport.observability.metrics import BytePath
from weightport.server.byteserve import (
    Entity,
    LocalFile,
    SourceBody,
    blob_body,
    content_disposition,
    serve_entity,
)
from weightport.server.context import context_of
from weightport.server.envelopes import json_response
from weightport.server.requests import authenticated_account
from weightport.server.transfers import Download, record_grant
from weightport.services.archive_builds import BuildTarget, archive_builds_of, usable_build
from weightport.services.finetune_archives import MERGED, Selection, select_artifact
from weightport.services.together_resources import (
    checkpoint_entries,
    fine_tune_json,
    whoami_json,
)

ARCHIVE_CONTENT_TYPE = "application/zstd"


async def whoami(request: web.Request) -> web.Response:
    return json_response(whoami_json(await authenticated_account(request)))


async def list_jobs(request: web.Request) -> web.Response:
    account = await authenticated_account(request)
    ctx = context_of(request)

    def run(session: Session) -> dict[str, Any]:
        jobs = finetunes.list_fine_tunes(session, account)
        return {
            "object": "list",
            "data": [fine_tune_json(j, archive_builds_of(session, j.id)) for j in jobs],
        }

    return json_response(await ctx.catalog.run(run, readonly=True))


async def get_job(request: web.Request) -> web.Response:
    account = await authenticated_account(request)
    ft_id = request.match_info["ft_id"]

    def run(session: Session) -> dict[str, Any]:
        job = finetunes.get_fine_tune(session, account, ft_id)
        return fine_tune_json(job, archive_builds_of(session, ft_id))

    return json_response(await context_of(request).catalog.run(run, readonly=True))


async def list_checkpoints(request: web.Request) -> web.Response:
    account = await authenticated_account(request)
    ft_id = request.match_info["ft_id"]

    def run(session: Session) -> dict[str, Any]:
        job = finetunes.get_fine_tune(session, account, ft_id)
        rows = [row for c in reversed(job.checkpoints) for row in checkpoint_entries(job, c)]
        return {"object": "list", "data": rows}

    return json_response(await context_of(request).catalog.run(run, readonly=True))


async def _resolve(request: web.Request) -> tuple[FineTune, Selection]:
    account = await authenticated_account(request)
    ft_id = request.query.get("ft_id", "")
    if not ft_id:
        raise InvalidArgument("ft_id is required", param="ft_id")
    if not ft_id.startswith("ft-"):
        raise InvalidArgument(f"ft_id must start with 'ft-', got {ft_id!r}", param="ft_id")
    ctx = context_of(request)
    job = await ctx.catalog.run(lambda s: finetunes.get_fine_tune(s, account, ft_id), readonly=True)
    selection = select_artifact(
        job, request.query.get("checkpoint"), request.query.get("checkpoint_step")
    )
    return job, selection


async def download(request: web.Request) -> web.StreamResponse:
    """``GET /v1/finetune/download``: the checkpoint as one deterministic ``.tar.zst``."""
    job, selection = await _resolve(request)
    return await serve_archive(request, job, selection)


async def serve_archive(
    request: web.Request, job: FineTune, selection: Selection
) -> web.StreamResponse:
    """The archive of an already authorised selection: the cached compressed build when the
    settings allow one, else the stored encoding; Range, HEAD and conditional requests."""
    ctx = context_of(request)
    plan = await asyncio.to_thread(ctx.plans.get, ctx.store, job, selection)
    filename = f"{selection.top}.tar.zst"
    encoding = ctx.settings.archive_encoding
    build = usable_build(
        encoding,
        None if encoding == "stored" else await asyncio.to_thread(ctx.builder.ready, plan.digest),
    )
    subject = Subject(
        job.account_id,
        job.id,
        selection.artifact,
        revision=str(selection.checkpoint.step),
        file=filename,
    )
    if build is not None and build.blob_sha256 and build.size is not None:
        presigner = ctx.presigner()
        if presigner is not None and request.method == "GET":
            record_grant(request, subject)  # the store serves the bytes
            # The cached archive is one immutable object in the store: send the client
            # there. Every Together client follows a 302 and keeps its Range header (checked
            # with the SDK and the CLI); HEAD stays here, since a GET-signed URL refuses it.
            url = presigner.presign_get(
                build.blob_sha256,
                expires_in=ctx.settings.s3_presign_ttl,
                disposition=content_disposition(filename),
            )
            return web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})
        entity = Entity(
            size=build.size,
            etag=f"{plan.digest}.zst{build.level}",
            content_type=ARCHIVE_CONTENT_TYPE,
            filename=filename,
        )
        body: LocalFile | SourceBody = blob_body(ctx.store, build.blob_sha256, build.size)
        path = BytePath.COMPRESSED_ARCHIVE
    else:
        if encoding == "compressed":
            target = BuildTarget(job.id, selection.checkpoint.step, selection.artifact)
            await asyncio.to_thread(ctx.builder.submit, plan, target)
        # A merged archive is computed: in large reads, ahead of the socket, on the shared
        # read-ahead pool.
        computed = selection.artifact == MERGED
        stored = stored_archive(plan, single_tar_read=computed)
        entity = Entity(
            size=stored.size,
            etag=stored.digest,
            content_type=ARCHIVE_CONTENT_TYPE,
            filename=filename,
        )
        body = SourceBody(stored, ctx.read_ahead if computed else None)
        path = BytePath.MERGED if computed else BytePath.STORED_ARCHIVE
    download = Download(path, subject)
    if isinstance(body, LocalFile) or request.method != "GET":
        return await serve_entity(
            request, entity, body, max_ranges=ctx.settings.max_ranges, download=download
        )
    # Assembled (or read from a remote store) while it is sent: counted against the cap.
    with ctx.slots.hold(job.account_id):
        return await serve_entity(
            request, entity, body, max_ranges=ctx.settings.max_ranges, download=download
        )


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/v3/whoami", whoami)
    router.add_get("/v1/whoami", whoami)
    router.add_get("/v1/fine-tunes", list_jobs)
    router.add_get("/v1/fine-tunes/{ft_id}", get_job)
    router.add_get("/v1/fine-tunes/{ft_id}/checkpoints", list_checkpoints)
    router.add_get("/v1/finetune/download", download, allow_head=True)
