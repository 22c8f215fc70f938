"""Fine-tune pages: the list; a fine-tune with its checkpoints, downloads and commands; the
archive build progress the page polls; queueing a compressed build; and the archive itself
for a signed-in browser."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from weightport.catalog import finetunes
from weightport.catalog.schema import ArchiveBuild, Checkpoint, FineTune
from weightport.catalog.sessions import SignedIn
from weightport.errors import NotFound
from weightport.server.console import render
from weightport.server.console.checkpoints import CheckpointRow, checkpoint_rows
from weightport.server.console.session import signed_in
from weightport.server.context import ServerContext, context_of
from weightport.server.envelopes import json_response
from weightport.server.finetune_admin import queue_build
from weightport.server.together import serve_archive
from weightport.services.archive_builds import archive_builds_of
from weightport.services.finetune_archives import select_artifact
from weightport.services.together_resources import archive_json

#: Build states a page keeps polling for.
ACTIVE_STATES = ("pending", "building")


@signed_in
async def finetune_list(request: web.Request, who: SignedIn) -> web.StreamResponse:
    """``GET /console/fine-tunes``."""
    jobs = await context_of(request).catalog.run(
        lambda s: finetunes.list_fine_tunes(s, who.account_id)
    )
    return render.page(request, "finetunes.html", {"jobs": list(reversed(jobs))})


async def _job_and_builds(
    request: web.Request, who: SignedIn
) -> tuple[FineTune, list[ArchiveBuild]]:
    ft_id = request.match_info["ft_id"]

    def run(session: Session) -> tuple[FineTune, list[ArchiveBuild]]:
        job = finetunes.get_fine_tune(session, who.account_id, ft_id)
        return job, archive_builds_of(session, ft_id)

    return await context_of(request).catalog.run(run)


@signed_in
async def finetune_page(request: web.Request, who: SignedIn) -> web.StreamResponse:
    """``GET /console/fine-tunes/{ft_id}``: every step in a table, the final checkpoint with
    its commands; another account's fine-tune is not found."""
    ctx = context_of(request)
    job, builds = await _job_and_builds(request, who)
    base = ctx.public_base(request)

    def rows() -> tuple[list[CheckpointRow], list[CheckpointRow]]:
        final = [c for c in job.checkpoints if c.kind == finetunes.FINAL]
        return (
            checkpoint_rows(ctx, base, job, builds, job.checkpoints, with_commands=False),
            checkpoint_rows(ctx, base, job, builds, final, with_commands=True),
        )

    table, final_rows = await asyncio.to_thread(rows)
    return render.page(
        request,
        "finetune.html",
        {**_page_values(ctx, job, builds), "table": table, "final": final_rows},
    )


@signed_in
async def step_page(request: web.Request, who: SignedIn) -> web.StreamResponse:
    """``GET /console/fine-tunes/{ft_id}/steps/{step}``: one checkpoint's downloads, commands
    and builds."""
    ctx = context_of(request)
    job, builds = await _job_and_builds(request, who)
    raw = request.match_info["step"]
    checkpoint = next((c for c in job.checkpoints if str(c.step) == raw), None)
    if checkpoint is None:
        raise NotFound(f"Fine-tune {job.id} has no checkpoint at step {raw}.")
    base = ctx.public_base(request)
    (row,) = await asyncio.to_thread(
        checkpoint_rows, ctx, base, job, builds, [checkpoint], with_commands=True
    )
    return render.page(
        request, "finetune_step.html", {**_page_values(ctx, job, builds), "row": row}
    )


def _page_values(ctx: ServerContext, job: FineTune, builds: list[ArchiveBuild]) -> dict[str, Any]:
    allowed = ctx.settings.archive_encoding != "stored"
    return {
        "job": job,
        "builds_allowed": allowed,
        "polling": allowed and any(b.state in ACTIVE_STATES for b in builds),
    }


def _build_json(build: ArchiveBuild) -> dict[str, Any]:
    return {**archive_json(build), "plan_digest": build.plan_digest}


@signed_in
async def archive_progress(request: web.Request, who: SignedIn) -> web.StreamResponse:
    """``GET /console/fine-tunes/{ft_id}/archives``: build states, for the page's live view."""
    _job, builds = await _job_and_builds(request, who)
    response = json_response(
        {
            "archives": [_build_json(b) for b in builds],
            "active": any(b.state in ACTIVE_STATES for b in builds),
        }
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@signed_in
async def queue_archive_build(request: web.Request, who: SignedIn) -> web.StreamResponse:
    """``POST /console/fine-tunes/{ft_id}/archives``: compress one archive in the background."""
    ctx = context_of(request)
    form = await request.post()
    job, _builds = await _job_and_builds(request, who)
    selection = select_artifact(job, str(form.get("checkpoint", "")), str(form.get("step", "")))
    await asyncio.to_thread(queue_build, ctx, job, selection)
    return render.see_other(step_path(job, selection.checkpoint))


@signed_in
async def archive_download(request: web.Request, who: SignedIn) -> web.StreamResponse:
    """``GET /console/fine-tunes/{ft_id}/download?checkpoint=…&step=…``: the same archive the
    Together download serves, for the signed-in browser."""
    job, _builds = await _job_and_builds(request, who)
    selection = select_artifact(job, request.query.get("checkpoint"), request.query.get("step"))
    return await serve_archive(request, job, selection)


def step_path(job: FineTune, checkpoint: Checkpoint) -> str:
    """Where a checkpoint's downloads are: the fine-tune page for the final one."""
    if checkpoint.kind == finetunes.FINAL:
        return f"/console/fine-tunes/{job.id}#final"
    return f"/console/fine-tunes/{job.id}/steps/{checkpoint.step}"


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/fine-tunes", finetune_list)
    router.add_get("/fine-tunes/{ft_id}", finetune_page)
    router.add_get("/fine-tunes/{ft_id}/steps/{step}", step_page)
    router.add_get("/fine-tunes/{ft_id}/archives", archive_progress)
    router.add_post("/fine-tunes/{ft_id}/archives", queue_archive_build)
    router.add_get("/fine-tunes/{ft_id}/download", archive_download)
