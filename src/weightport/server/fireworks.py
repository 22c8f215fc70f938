"""The Fireworks Gateway model API: ``/v1/accounts/{account}/models[/{model}[:verb]]``.

The path is split on ``/`` *before* percent-decoding, and the custom verb on the *last* ``:``
of the final segment (grpc-gateway rules), so ids with encoded ``/`` or ``:`` route correctly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from sqlalchemy.orm import Session

from weightport.catalog import registry, uploads
from weightport.catalog.audit import Subject
from weightport.catalog.schema import Model
from weightport.errors import (
    FailedPrecondition,
    InvalidArgument,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from weightport.server.blobs import signed_download_urls, upload_url
from weightport.server.context import context_of
from weightport.server.envelopes import json_response
from weightport.server.fireworks_import import import_model
from weightport.server.fireworks_resources import (
    MODEL_FIELDS,
    apply_read_mask,
    model_json,
    parse_read_mask,
)
from weightport.server.observe import name_route
from weightport.server.requests import (
    CALLER,
    authenticated_account,
    bearer_secret,
    caller_of,
    json_body,
    query_bool,
    query_int,
)
from weightport.server.transfers import record_grant
from weightport.services.staged_uploads import StagedFile, land_staged, staging_name
from weightport.storage.base import StagedUploads

Handler = Callable[[web.Request, str, str], Awaitable[web.Response]]

DOWNLOAD_FIELDS = ("filenameToSignedUrls", "filenameToSize", "filenameToSha256")
UPLOAD_FIELDS = ("filenameToSignedUrls", "filenameToUnsignedUris")


def _split(request: web.Request) -> tuple[str, str | None, str | None]:
    """(account, model id or None, verb or None) from the raw, still-encoded path."""
    segments = request.raw_path.split("?", 1)[0].split("/")
    # ["", "v1", "accounts", account, "models", (last)]
    if len(segments) not in (5, 6) or segments[4] != "models" or not segments[3]:
        raise NotFound(f"no such route: {request.method} {request.path}")
    account = unquote(segments[3])
    if len(segments) == 5:
        return account, None, None
    last = segments[5]
    raw_id, colon, verb = last.rpartition(":")
    if not colon:
        raw_id, verb = last, ""
    model_id = unquote(raw_id)
    if not model_id:
        raise NotFound(f"no such route: {request.method} {request.path}")
    return account, model_id, unquote(verb) or None


COLLECTION_ROUTE = "/v1/accounts/{account}/models"


def _route_template(model_id: str | None, verb: str | None) -> str:
    """The route template for logs and metrics: ids left out, unknown verbs folded into one."""
    if model_id is None:
        return COLLECTION_ROUTE
    known = any(v == verb for _, v in MODEL_VERBS)
    suffix = "" if verb is None else f":{verb}" if known else ":{verb}"
    return f"{COLLECTION_ROUTE}/{{model}}{suffix}"


BoundHandler = Callable[[web.Request, str], Awaitable[web.Response]]


def _choose(method: str, model_id: str | None, verb: str | None) -> BoundHandler:
    """The handler for this method on this route shape: 405 (with ``Allow``) or 404 if none.

    Decided before authentication: whether a route takes a method reveals nothing about
    accounts or models.
    """
    if model_id is None:
        collection: dict[str, BoundHandler] = {"GET": list_models, "POST": create_model}
        if method not in collection:
            raise MethodNotAllowed(
                f"{method} is not allowed on the models collection", allowed=collection
            )
        return collection[method]
    item_handler = MODEL_VERBS.get((method, verb))
    if item_handler is None:
        allowed = [m for m, v in MODEL_VERBS if v == verb]
        if allowed:
            raise MethodNotAllowed(
                f"{method} is not allowed for :{verb or 'model'}", allowed=allowed
            )
        raise NotFound(f"unknown method :{verb}")
    return lambda request, account: item_handler(request, account, model_id)


async def dispatch(request: web.Request) -> web.Response:
    account, model_id, verb = _split(request)
    name_route(request, _route_template(model_id, verb))
    handler = _choose(request.method, model_id, verb)
    if model_id is not None and (request.method, verb) in AUTHENTICATED_BY_HANDLER:
        return await handler(request, account)
    caller = await authenticated_account(request)
    if caller != account:
        raise NotFound(_not_found(account, model_id))
    return await handler(request, account)


def _not_found(account: str, model_id: str | None) -> str:
    # Another account's resources are indistinguishable from missing ones.
    what = f"accounts/{account}" + (f"/models/{model_id}" if model_id else "")
    return f'"{what}" not found'


async def list_models(request: web.Request, account: str) -> web.Response:
    ctx = context_of(request)
    mask = parse_read_mask(request.query.get("readMask"), MODEL_FIELDS)

    def run(session: Session) -> dict[str, Any]:
        page = registry.list_models(
            session,
            account,
            page_size=query_int(request, "pageSize", 50),
            page_token=request.query.get("pageToken", ""),
            order_by=request.query.get("orderBy", ""),
            filter_text=request.query.get("filter", ""),
        )
        return {
            "models": [apply_read_mask(model_json(m), mask) for m in page.models],
            "nextPageToken": page.next_page_token,
            "totalSize": page.total_size,
        }

    return json_response(await ctx.catalog.run(run, readonly=True))


async def create_model(request: web.Request, account: str) -> web.Response:
    ctx = context_of(request)
    body = await json_body(request)
    model_id = body.get("modelId")
    if not isinstance(model_id, str) or not model_id:
        raise InvalidArgument("modelId is required", param="modelId")
    fields = body.get("model")
    if fields is None:
        fields = {}
    if not isinstance(fields, dict):
        raise InvalidArgument("model must be an object", param="model")

    def run(session: Session) -> dict[str, Any]:
        return model_json(registry.create_model(session, account, model_id, fields))

    return json_response(await ctx.catalog.run(run))


async def get_model(request: web.Request, account: str, model_id: str) -> web.Response:
    ctx = context_of(request)
    mask = parse_read_mask(request.query.get("readMask"), MODEL_FIELDS)
    model = await ctx.catalog.run(
        lambda s: model_json(registry.get_model(s, account, model_id)), readonly=True
    )
    return json_response(apply_read_mask(model, mask))


async def update_model(request: web.Request, account: str, model_id: str) -> web.Response:
    ctx = context_of(request)
    body = await json_body(request)
    mask_text = request.query.get("updateMask")
    if mask_text:
        wanted = parse_read_mask(mask_text, MODEL_FIELDS) or set(body)
        body = {k: v for k, v in body.items() if k in wanted}
    return json_response(
        await ctx.catalog.run(
            lambda s: model_json(registry.update_model(s, account, model_id, body))
        )
    )


async def delete_model(request: web.Request, account: str, model_id: str) -> web.Response:
    ctx = context_of(request)
    await ctx.catalog.run(lambda s: registry.delete_model(s, account, model_id))
    return json_response({})


async def prepare(request: web.Request, account: str, model_id: str) -> web.Response:
    ctx = context_of(request)
    await json_body(request, required=False)
    await ctx.catalog.run(lambda s: registry.get_model(s, account, model_id), readonly=True)
    return json_response({})


async def get_upload_endpoint(request: web.Request, account: str, model_id: str) -> web.Response:
    ctx = context_of(request)
    body = await json_body(request)
    # enableResumableUpload is accepted and ignored: uploads are single signed PUTs, and an
    # interrupted push resumes per file (landed files are kept when re-declared).
    sizes = uploads.parse_sizes(body.get("filenameToSize"))
    # weightport's extension: with each file's sha256 declared, only those bytes can land.
    digests = uploads.parse_digests(body.get("filenameToSha256"), sizes)
    limit = ctx.settings.max_upload_size
    too_big = sorted(path for path, size in sizes.items() if size > limit)
    if too_big:
        raise PayloadTooLarge(f"{too_big[0]!r} is larger than the {limit}-byte upload limit")

    def declare(session: Session) -> list[StagedFile]:
        files = uploads.declare_files(session, account, model_id, sizes, digests)
        created = registry.get_model(session, account, model_id).created_at
        return [
            StagedFile(
                f.path,
                f.generation,
                f.declared_size,
                staging_name(account, model_id, created, f.path, f.generation),
                f.expected_sha256,
            )
            for f in files
            if f.sha256 is None
        ]

    pending = await ctx.catalog.run(declare)
    base = ctx.public_base(request)
    minted_by = caller_of(request).key_id
    urls = {
        f.path: upload_url(
            ctx, base, account=account, model_id=model_id, file=f, minted_by=minted_by
        )
        for f in pending
    }
    result = {"filenameToSignedUrls": urls, "filenameToUnsignedUris": {}}
    mask = parse_read_mask(body.get("readMask"), UPLOAD_FIELDS)
    if mask is not None:
        # flumina-era callers read filenameToUnsignedUris unconditionally: always keep it.
        mask.add("filenameToUnsignedUris")
    return json_response(apply_read_mask(result, mask))


async def validate_upload(request: web.Request, account: str, model_id: str) -> web.Response:
    ctx = context_of(request)
    skip_config = query_bool(request, "skipHfConfigValidation")
    query_bool(request, "configOnly")
    query_bool(request, "trustRemoteCode")
    if ctx.presigner() is not None and isinstance(ctx.store, StagedUploads):
        # Files PUT straight to the store are hashed and landed first.
        await land_staged(ctx.catalog, ctx.store, ctx.staged, account, model_id)

    def check(session: Session) -> tuple[Model, str | None]:
        model = registry.get_model(session, account, model_id)
        if model.state != registry.READY:
            uploads.require_complete(model)
        config = next((f for f in model.files if f.path == "config.json"), None)
        return model, config.sha256 if config else None

    model, config_key = await ctx.catalog.run(check)
    if model.state == registry.READY:
        return json_response({"warnings": []})
    warnings: list[str] = []
    details: dict[str, Any] = {}
    if model.kind == "HF_BASE_MODEL":
        if config_key is not None and not skip_config:
            details = await _parse_config(request, config_key)
        elif config_key is None and not skip_config:
            raise FailedPrecondition("config.json is required for an HF_BASE_MODEL")
        elif config_key is None:
            warnings.append("no config.json: architecture was not detected")

    def finish(session: Session) -> None:
        ready = uploads.mark_ready(session, account, model_id)
        config = next((f for f in ready.files if f.path == "config.json"), None)
        known = ready.base_model_details or {}
        # Only what was parsed from the config.json that is now part of the READY model.
        if details and not known.get("modelType") and config and config.sha256 == config_key:
            registry.update_model(
                session, account, model_id, {"baseModelDetails": {**known, **details}}
            )

    await ctx.catalog.run(finish)
    return json_response({"warnings": warnings})


async def _parse_config(request: web.Request, key: str) -> dict[str, Any]:
    store = context_of(request).store
    info = await asyncio.to_thread(store.head, key)
    if info is None:
        raise FailedPrecondition("config.json is missing from the store; upload it again")
    if info.size > 4 * 1024 * 1024:
        raise FailedPrecondition("config.json is larger than 4 MiB")
    raw = bytearray(info.size)
    await asyncio.to_thread(store.readinto, key, 0, memoryview(raw))
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FailedPrecondition(f"config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise FailedPrecondition("config.json must be a JSON object")
    details: dict[str, Any] = {"checkpointFormat": "HUGGINGFACE", "worldSize": 1}
    if isinstance(config.get("model_type"), str):
        details["modelType"] = config["model_type"]
    return details


async def get_download_endpoint(request: web.Request, account: str, model_id: str) -> web.Response:
    ctx = context_of(request)
    # The key is checked in the statement that reads the model (see AUTHENTICATED_BY_HANDLER).
    secret = bearer_secret(request)
    caller, model = await ctx.catalog.run(
        lambda s: registry.get_downloadable_as(s, secret, account, model_id), readonly=True
    )
    request[CALLER] = caller
    mask = parse_read_mask(request.query.get("readMask"), DOWNLOAD_FIELDS)
    base = ctx.public_base(request)
    minted_by = caller.key_id
    record_grant(request, Subject(account, registry.resource_name(account, model_id), "file"))
    paths = model.paths
    urls = signed_download_urls(ctx, base, model, paths, model.sha256s, minted_by=minted_by)
    body = {
        "filenameToSignedUrls": dict(zip(paths, urls, strict=True)),
        "filenameToSize": dict(zip(paths, map(str, model.sizes), strict=True)),
        "filenameToSha256": dict(zip(paths, model.sha256s, strict=True)),
    }
    return json_response(apply_read_mask(body, mask))


#: (method, ``:verb`` or None for the model itself) → handler: one aiohttp route serves them
#: all, so the OpenAPI test reads this table to hold the document to every verb.
MODEL_VERBS: dict[tuple[str, str | None], Handler] = {
    ("GET", None): get_model,
    ("PATCH", None): update_model,
    ("DELETE", None): delete_model,
    ("GET", "getDownloadEndpoint"): get_download_endpoint,
    ("POST", "getUploadEndpoint"): get_upload_endpoint,
    ("GET", "validateUpload"): validate_upload,
    ("POST", "prepare"): prepare,
    ("POST", "import"): import_model,
}
#: Verbs whose handler checks the API key itself, in the same catalog statement as its read:
#: the hot read paths, where a second transaction is a third of the server's time.
AUTHENTICATED_BY_HANDLER = frozenset({("GET", "getDownloadEndpoint")})


def add_routes(app: web.Application) -> None:
    app.router.add_route("*", "/v1/accounts/{rest:.*}", dispatch)
