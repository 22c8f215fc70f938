"""``GET /metrics``: the Prometheus metrics, for a scraper.

Two ways to protect it (the ``metrics_listen`` setting): by default it is served on the main
port to keys of the admin account only (Prometheus sends one with ``authorization:``
``credentials:``); with ``metrics_listen = HOST:PORT`` it is served there alone, without a
key, and the main port has no ``/metrics`` — bind that address where only the scraper reaches.

Besides the counters every process keeps, a scrape reads the archive builds by state from
the catalog (``weightport_archive_builds``): the catalog is the truth about queued, running
and failed builds, whichever replica runs them, so every replica reports the same figures.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from weightport.catalog.db import Catalog
from weightport.config import Settings
from weightport.observability import exposition
from weightport.server.context import CONTEXT, context_of
from weightport.server.observe import observe_middleware
from weightport.server.requests import authenticate_admin
from weightport.services.archive_builds import ArchiveBuildStates

ROUTE = "/metrics"


def render(catalog: Catalog) -> bytes:
    """Every metric's exposition text (blocking: call off the event loop)."""
    return exposition.render(ArchiveBuildStates(catalog))


async def _answer(request: web.Request) -> web.Response:
    text = await asyncio.to_thread(render, context_of(request).catalog)
    return web.Response(body=text, headers={"Content-Type": exposition.CONTENT_TYPE})


async def admin_metrics(request: web.Request) -> web.Response:
    """``/metrics`` on the main port: for admin keys only."""
    await authenticate_admin(request, "/metrics")
    return await _answer(request)


async def open_metrics(request: web.Request) -> web.Response:
    """``/metrics`` on the metrics port: no key (the address is the protection)."""
    return await _answer(request)


def add_routes(app: web.Application, settings: Settings) -> None:
    """``/metrics`` on the main port, unless metrics are off or served on their own port."""
    if settings.metrics and not settings.metrics_listen:
        app.router.add_get(ROUTE, admin_metrics)


def serve_on(app: web.Application, sock: socket.socket) -> None:
    """Also serve ``/metrics`` (without a key) on ``sock`` while ``app`` runs."""

    async def start(app: web.Application) -> None:
        metrics_app = web.Application(middlewares=[observe_middleware])
        metrics_app[CONTEXT] = app[CONTEXT]
        metrics_app.router.add_get(ROUTE, open_metrics)
        runner = web.AppRunner(metrics_app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()

        async def stop(_app: web.Application) -> None:
            await runner.cleanup()

        app.on_cleanup.append(stop)

    app.on_startup.append(start)
