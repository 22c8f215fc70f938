"""Health checks for load balancers and orchestrators; no key needed, nothing secret said.

- ``GET /healthz``: the process is up and its event loop answers. No I/O, so a slow database
  never makes a balancer kill healthy replicas.
- ``GET /readyz``: this replica can serve — the catalog answers a query and the blob store
  answers a lookup, each within :data:`CHECK_TIMEOUT` seconds. 503 with the failing part and
  its reason otherwise, so a balancer stops sending traffic until it recovers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.orm import Session

from weightport.server.context import ServerContext, context_of
from weightport.server.envelopes import json_response

log = logging.getLogger("weightport.server")

CHECK_TIMEOUT = 5.0
#: A key no blob has (not a sha256): looking it up exercises the store without reading data.
PROBE_KEY = "0" * 64


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def _ping_catalog(session: Session) -> None:
    session.execute(text("SELECT 1"))


async def _check(name: str, work: Awaitable[object]) -> str:
    """``"ok"``, or why ``name`` is not usable (logged: the reason may name a host)."""
    try:
        await asyncio.wait_for(work, CHECK_TIMEOUT)
    except TimeoutError:
        reason = f"no answer within {CHECK_TIMEOUT:g} s"
    except Exception as exc:
        reason = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).splitlines()[0]
    else:
        return "ok"
    log.warning("readiness: %s is not usable: %s", name, reason)
    return reason


async def readiness(ctx: ServerContext) -> dict[str, str]:
    """Each dependency's state: ``"ok"`` or the reason it is not usable."""
    catalog, store = await asyncio.gather(
        _check("catalog", ctx.catalog.run(_ping_catalog, readonly=True)),
        _check("store", asyncio.to_thread(ctx.store.head, PROBE_KEY)),
    )
    return {"catalog": catalog, "store": store}


async def readyz(request: web.Request) -> web.Response:
    checks = await readiness(context_of(request))
    ready = all(state == "ok" for state in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    response = json_response(body, status=200 if ready else 503)
    if not ready:
        response.headers["Retry-After"] = "5"
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=True)
