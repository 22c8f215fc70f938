"""The aiohttp application: routes, the error middleware, and building the server context."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from sqlalchemy import select

from weightport.catalog.db import Catalog
from weightport.catalog.schema import FineTune
from weightport.config import Settings
from weightport.errors import MethodNotAllowed, NotFound, PayloadTooLarge, WeightportError
from weightport.server import (
    audit_api,
    blobs,
    console,
    finetune_admin,
    fireworks,
    health,
    metrics_endpoint,
    openapi,
    together,
)
from weightport.server.client_timeouts import timeouts_middleware
from weightport.server.context import CONTEXT, ServerContext
from weightport.server.download_slots import DownloadSlots
from weightport.server.envelopes import dialect_for, error_response
from weightport.server.hub import routes as hub_routes
from weightport.server.memory import MemoryReturn
from weightport.server.observe import note_error, observe_middleware
from weightport.server.protocol import http_version_middleware, install_malformed_request_log
from weightport.server.shutdown import report_stops
from weightport.services.archive_builds import ArchiveBuilder
from weightport.services.audit import AuditLog
from weightport.services.finetune_archives import PlanCache
from weightport.services.gc import Collector, collect_periodically
from weightport.services.key_status import KeyStatusCache
from weightport.signing import UrlSigner, keys_from_settings
from weightport.storage.factory import open_store

log = logging.getLogger("weightport.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _translate_http(exc: web.HTTPException) -> WeightportError | None:
    """aiohttp's own errors (unknown route, wrong method, huge body) in our tree."""
    if exc.status == 404:
        return NotFound("no such route")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed("method not allowed on this route", allowed=exc.allowed_methods)
    if exc.status == 413:
        return PayloadTooLarge("request body too large")
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    dialect = dialect_for(request.path)
    try:
        return await handler(request)
    except WeightportError as exc:
        if exc.status >= 500:
            # A server-side condition (disk full, busy database): one line for the operator.
            log.warning("%s %s: %d %s", request.method, request.path, exc.status, exc.message)
        error = exc
    except web.HTTPException as exc:
        translated = _translate_http(exc)
        if translated is None:
            raise
        error = translated
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        error = WeightportError("internal error; see the server log")
    note_error(request, error)
    return error_response(error, dialect)


def build_context(settings: Settings, *, housekeeping: bool = False) -> ServerContext:
    """Everything a server process needs. The catalog is opened as it is: migrating it is
    start-up work (:meth:`~weightport.catalog.db.Catalog.starting`), done once by the
    process the operator started. ``housekeeping`` is the store's start-up cleanup, likewise
    for that process only (see :func:`~weightport.storage.factory.open_store`)."""
    keys = keys_from_settings(settings)
    # The store first: a storage_url it refuses stops the start before the catalog is opened.
    store = open_store(settings, housekeeping=housekeeping)
    catalog = Catalog.open(settings.effective_database_url, upgrade=False)
    plans = PlanCache()
    builder = ArchiveBuilder(
        catalog,
        store,
        plans,
        level=settings.archive_level,
        threads=settings.archive_threads,
        lease=settings.archive_build_lease,
    )
    audit = (
        AuditLog(
            catalog, window=settings.audit_window, retention_days=settings.audit_retention_days
        )
        if settings.audit_log
        else None
    )
    memory = MemoryReturn(plans)
    return ServerContext(
        settings=settings,
        catalog=catalog,
        store=store,
        signer=UrlSigner(keys),
        builder=builder,
        key_status=KeyStatusCache(catalog, settings.revocation_delay),
        audit=audit,
        plans=plans,
        slots=DownloadSlots(settings.max_computed_downloads, on_release=memory.download_ended),
        memory=memory,
    )


def _prebuild_all(ctx: ServerContext) -> None:
    jobs = ctx.catalog.call(lambda s: list(s.scalars(select(FineTune))))
    for job in jobs:
        try:
            finetune_admin.queue_prebuilds(ctx, job)
        except WeightportError as exc:
            log.warning("cannot prebuild archives of %s: %s", job.id, exc.message)


def create_app(ctx: ServerContext) -> web.Application:
    install_malformed_request_log()
    app = web.Application(
        middlewares=[
            observe_middleware,
            http_version_middleware,
            error_middleware,
            timeouts_middleware(ctx.settings.send_timeout, ctx.settings.body_timeout),
        ],
        client_max_size=1024**2 * 4,
    )
    app[CONTEXT] = ctx
    health.add_routes(app)
    fireworks.add_routes(app)
    blobs.add_routes(app)
    together.add_routes(app)
    finetune_admin.add_routes(app)
    audit_api.add_routes(app)
    metrics_endpoint.add_routes(app, ctx.settings)
    console.add_routes(app)
    hub_routes.add_routes(app)
    openapi.add_routes(app)

    async def prebuild(_app: web.Application) -> None:
        # Builds queued by any replica, or left by one that died, are claimed from here on.
        ctx.builder.start()
        # Checkpoints imported while the server was down get their builds now.
        if ctx.settings.archive_prebuild:
            await asyncio.to_thread(_prebuild_all, ctx)

    collector = Collector(
        ctx.catalog,
        ctx.store,
        grace_s=ctx.settings.gc_grace,
        temp_max_age_s=ctx.settings.staging_max_age,
    )
    collecting: list[asyncio.Task[None]] = []

    async def start_gc(_app: web.Application) -> None:
        if ctx.settings.gc_interval:
            task = asyncio.create_task(collect_periodically(collector, ctx.settings.gc_interval))
            collecting.append(task)

    async def start_audit(_app: web.Application) -> None:
        if ctx.audit is not None:
            ctx.audit.start()

    async def close(_app: web.Application) -> None:
        collector.stop.set()  # a collection under way stops at its next blob
        for task in collecting:
            task.cancel()
        # After the last response: the audit log's final batch has every byte they sent.
        await asyncio.to_thread(ctx.close)

    report_stops(app, ctx)
    app.on_startup.append(start_audit)
    app.on_startup.append(prebuild)
    app.on_startup.append(start_gc)
    app.on_cleanup.append(close)
    return app
