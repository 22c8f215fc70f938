"""weightport's own fine-tune registration routes (Together envelope).

A training pipeline uploads each checkpoint as a model through the Fireworks flow (signed
PUTs, sha256 checked), then registers the job and its checkpoints here by model id — no
bytes are copied: checkpoint files point at the same content-addressed blobs.

- ``POST /weightport/v1/fine-tunes`` ``{"base_model", "training_type": "Lora"|"Full",
  "model_output_name"?, "suffix"?, "checkpoints": [{"step", "kind", "model"}]}``
- ``POST /weightport/v1/fine-tunes/{ft_id}/checkpoints`` ``{"step", "kind", "model"}``
- ``POST /weightport/v1/fine-tunes/{ft_id}/archives`` ``{"checkpoint"?, "checkpoint_step"?}``
  queues a compressed archive build (progress in the job's ``weightport_archives``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from weightport.catalog import finetunes, registry
from weightport.catalog.schema import FineTune
from weightport.checkpoint_import import (
    CheckpointSpec,
    adapter_config,
    check_checkpoint,
    model_sources,
    register_fine_tune,
)
from weightport.errors import InvalidArgument
from weightport.server.context import ServerContext, context_of
from weightport.server.envelopes import json_response
from weightport.server.requests import authenticated_account, json_body
from weightport.services.archive_builds import BuildTarget
from weightport.services.finetune_archives import Selection, prebuild_selections, select_artifact
from weightport.services.together_resources import fine_tune_json

PREFIX = "/weightport/v1/fine-tunes"


def queue_prebuilds(ctx: ServerContext, job: FineTune) -> int:
    """With ``archive_prebuild`` on, queue compressed builds for a job; how many were new."""
    if not ctx.settings.archive_prebuild or ctx.settings.archive_encoding == "stored":
        return 0
    return sum(queue_build(ctx, job, selection)[1] for selection in prebuild_selections(job))


def queue_build(ctx: ServerContext, job: FineTune, selection: Selection) -> tuple[str, bool]:
    """Queue a compressed build of one archive unless it exists or runs (blocking).

    Returns the archive plan's digest and whether a build was queued now.
    """
    plan = ctx.plans.get(ctx.store, job, selection)
    target = BuildTarget(job.id, selection.checkpoint.step, selection.artifact)
    return plan.digest, ctx.builder.submit(plan, target)


def _spec(ctx: ServerContext, account: str, entry: Any) -> CheckpointSpec:
    if not isinstance(entry, dict):
        raise InvalidArgument("each checkpoint must be an object {step, kind, model}")
    step = finetunes.validate_step(entry.get("step"))
    kind, model_id = entry.get("kind", "intermediate"), entry.get("model")
    if not isinstance(model_id, str):
        raise InvalidArgument("checkpoint model must be a model id", param="model")
    if kind not in (finetunes.INTERMEDIATE, finetunes.FINAL):
        raise InvalidArgument("checkpoint kind must be intermediate or final", param="kind")
    model = ctx.catalog.call(lambda s: registry.get_model(s, account, model_id))
    if model.state != registry.READY:
        raise InvalidArgument(f"model {model_id!r} is {model.state}; validate its upload first")
    files = model_sources(ctx.store, model)
    artifact = finetunes.ADAPTER if "adapter_config.json" in files else finetunes.MODEL
    return CheckpointSpec(step=step, kind=kind, artifact=artifact, files=files)


async def create(request: web.Request) -> web.Response:
    account = await authenticated_account(request)
    ctx = context_of(request)
    body = await json_body(request)
    base_model = body.get("base_model")
    training_type = body.get("training_type")
    if not isinstance(base_model, str):
        raise InvalidArgument("base_model (a model id of this account) is required")
    if training_type not in (finetunes.LORA, finetunes.FULL):
        raise InvalidArgument("training_type must be Lora or Full", param="training_type")
    entries = body.get("checkpoints", [])
    if not isinstance(entries, list):
        raise InvalidArgument("checkpoints must be a list", param="checkpoints")

    def run() -> dict[str, Any]:
        specs = [_spec(ctx, account, entry) for entry in entries]
        ft_id = register_fine_tune(
            ctx.catalog,
            ctx.store,
            account,
            base_model_id=base_model,
            training_type=training_type,
            checkpoints=specs,
            model_output_name=str(body.get("model_output_name") or ""),
            suffix=str(body.get("suffix") or ""),
        )
        return ctx.catalog.call(
            lambda s: fine_tune_json(finetunes.get_fine_tune(s, account, ft_id))
        )

    return json_response(await asyncio.to_thread(run))


async def add_checkpoint(request: web.Request) -> web.Response:
    account = await authenticated_account(request)
    ctx = context_of(request)
    ft_id = request.match_info["ft_id"]
    body = await json_body(request)

    def run() -> dict[str, Any]:
        job = ctx.catalog.call(lambda s: finetunes.get_fine_tune(s, account, ft_id))
        spec = _spec(ctx, account, body)
        check_checkpoint(model_sources(ctx.store, job.base_model), spec)
        if spec.artifact == finetunes.ADAPTER and job.lora_r is not None:
            config = adapter_config(spec.files)
            if config.r != job.lora_r and not config.rank_pattern:
                raise InvalidArgument(f"adapter r={config.r} differs from the job's r={job.lora_r}")

        def attach(session: Session) -> dict[str, Any]:
            refs = [
                finetunes.FileRef(spec.artifact, path, src.size, src.key)
                for path, src in spec.files.items()
            ]
            finetunes.add_checkpoint(
                session, account, ft_id, step=spec.step, kind=spec.kind, files=refs
            )
            return fine_tune_json(finetunes.get_fine_tune(session, account, ft_id))

        rendered = ctx.catalog.call(attach)
        queue_prebuilds(ctx, ctx.catalog.call(lambda s: finetunes.get_fine_tune(s, account, ft_id)))
        return rendered

    return json_response(await asyncio.to_thread(run))


async def build_archive(request: web.Request) -> web.Response:
    account = await authenticated_account(request)
    ctx = context_of(request)
    ft_id = request.match_info["ft_id"]
    body = await json_body(request, required=False)
    job = await ctx.catalog.run(lambda s: finetunes.get_fine_tune(s, account, ft_id))
    step = body.get("checkpoint_step")
    selection = select_artifact(job, body.get("checkpoint"), None if step is None else str(step))
    digest, queued = await asyncio.to_thread(queue_build, ctx, job, selection)
    return json_response({"plan_digest": digest, "queued": queued}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_post(PREFIX, create)
    app.router.add_post(PREFIX + "/{ft_id}/checkpoints", add_checkpoint)
    app.router.add_post(PREFIX + "/{ft_id}/archives", build_archive)
