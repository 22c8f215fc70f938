"""Stopping gracefully on SIGTERM (or Ctrl-C).

aiohttp does the mechanics (``web.run_app`` with ``shutdown_timeout``): it closes the
listening socket at once, so no new connection is accepted, closes idle keep-alive
connections, lets requests in progress run for up to the grace period, then cancels what is
left. This module says so in the log — how many downloads were sending when the stop began,
and how many the grace period had to cut — so an operator can tell a clean stop from one that
broke transfers (clients that resume, like ``weightport download`` and the Together CLI, then
continue against another replica or after the restart).
"""

from __future__ import annotations

import logging

from aiohttp import web

from weightport.server.context import ServerContext

log = logging.getLogger("weightport.server")


def report_stops(app: web.Application, ctx: ServerContext) -> None:
    """Log the start and the outcome of a graceful stop of ``app``."""

    async def stopping(_app: web.Application) -> None:
        tally = ctx.downloads
        tally.stopping = True
        log.info(
            "stopping: no new connections; %d download(s) in flight get up to %d s to finish",
            tally.sending,
            ctx.settings.shutdown_grace,
        )

    async def stopped(_app: web.Application) -> None:
        cut = ctx.downloads.cut_while_stopping
        if cut:
            log.warning("stopped: %d download(s) cut short while stopping", cut)
        else:
            log.info("stopped: no download was cut short")

    app.on_shutdown.append(stopping)
    app.on_cleanup.insert(0, stopped)
