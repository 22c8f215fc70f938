"""The console as an aiohttp sub-application at ``/console``, and its one middleware.

The middleware is where every console request passes: it resolves the session, refuses
state-changing requests without a valid CSRF token, renders every error as an HTML page with
the right status (never a traceback), and reports the server time in ``Server-Timing``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from weightport.catalog.accounts import Caller
from weightport.errors import MethodNotAllowed, NotFound, PayloadTooLarge, WeightportError
from weightport.server.console import (
    assets,
    audit_page,
    auth,
    csrf,
    finetune_pages,
    key_pages,
    model_pages,
    render,
    session,
)
from weightport.server.observe import note_error
from weightport.server.requests import CALLER

log = logging.getLogger("weightport.console")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PREFIX = "/console"
STATIC_PREFIX = PREFIX + "/static/"
SAFE_METHODS = frozenset({"GET", "HEAD"})


def _http_error(exc: web.HTTPException) -> WeightportError:
    if exc.status == 404:
        return NotFound("There is no console page at this address.")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(
            f"{exc.status} {exc.reason}: this page does not accept that.",
            allowed=exc.allowed_methods,
        )
    if exc.status == 413:
        return PayloadTooLarge("The form you sent is too large.")
    return WeightportError(f"{exc.status} {exc.reason}")


def error_page(request: web.Request, error: WeightportError) -> web.Response:
    response = render.page(request, "error.html", {"error": error}, status=error.status)
    if isinstance(error, MethodNotAllowed) and error.allowed:
        response.headers["Allow"] = ", ".join(error.allowed)
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(STATIC_PREFIX):
        return await handler(request)
    if request.path == PREFIX and request.method not in SAFE_METHODS:
        # "/console" itself is the parent app's redirect; the sub-app would call it a 404.
        raise MethodNotAllowed("This address only redirects to the console.", allowed=SAFE_METHODS)
    if request.match_info.http_exception is not None:
        # No such page or method: say so before any session or CSRF check answers instead.
        raise request.match_info.http_exception
    who = await session.identify(request)
    if who is not None:
        # The session's key speaks for the request (the access and audit logs).
        request[CALLER] = Caller(account_id=who.account_id, key_id=who.key_id)
    if request.method not in SAFE_METHODS:
        if who is None and request.path != session.SIGN_IN_PATH:
            # Nothing here acts without a session; signing in first is the only way on.
            raise web.HTTPSeeOther(session.SIGN_IN_PATH)
        await csrf.check(request)
    return await handler(request)


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await _guarded(request, handler)
    except web.HTTPRedirection as exc:  # answered here so that its cookies are settled too
        response = web.Response(status=exc.status, headers={"Location": exc.headers["Location"]})
    except web.HTTPException as exc:
        error = _http_error(exc)
        note_error(request, error)
        response = error_page(request, error)
    except WeightportError as exc:
        note_error(request, exc)
        response = error_page(request, exc)
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:
        log.exception("console error on %s %s", request.method, request.path)
        response = error_page(request, WeightportError("Internal error; see the server log."))
    if not response.prepared:
        elapsed_ms = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = f"app;dur={elapsed_ms:.2f}"
        session.settle_cookies(request, response)
    return response


async def _home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(PREFIX + "/models")


def create_console() -> web.Application:
    """The console sub-application (mount it at ``/console``)."""
    console = web.Application(middlewares=[console_middleware])
    console[assets.ASSETS] = assets.load_assets()
    console[render.ENVIRONMENT] = render.make_environment()
    router = console.router
    router.add_get("/static/{name}", assets.serve_asset)
    router.add_get("/", _home)
    auth.add_routes(router)
    model_pages.add_routes(router)
    finetune_pages.add_routes(router)
    key_pages.add_routes(router)
    audit_page.add_routes(router)
    return console


def add_routes(app: web.Application) -> None:
    """Mount the console at ``/console`` and send ``/`` there."""

    async def to_console(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(PREFIX + "/")

    app.router.add_get("/", to_console)
    app.router.add_get(PREFIX, to_console)
    app.add_subapp(PREFIX, create_console())
