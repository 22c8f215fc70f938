"""Signing in with an API key, and signing out."""

from __future__ import annotations

from aiohttp import web

from weightport.catalog import sessions
from weightport.errors import Unauthenticated
from weightport.server.console import render, session
from weightport.server.context import context_of

DEFAULT_NEXT = "/console/models"


def _safe_next(raw: str | None) -> str:
    """Where to go after signing in: a console path on this site, never another origin."""
    if raw and raw.startswith("/console/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return DEFAULT_NEXT


async def sign_in_form(request: web.Request) -> web.StreamResponse:
    """``GET /console/sign-in``."""
    next_path = _safe_next(request.query.get("next"))
    if session.known_identity(request) is not None:
        raise web.HTTPFound(next_path)
    values = {"next": next_path, "error": "", "signed_out": "signed_out" in request.query}
    return render.page(request, "sign_in.html", values)


async def sign_in(request: web.Request) -> web.StreamResponse:
    """``POST /console/sign-in``: exchange the key for a session cookie (the key itself is
    only hashed for the lookup; it is stored nowhere)."""
    form = await request.post()
    api_key = str(form.get("api_key", "")).strip()
    next_path = _safe_next(str(form.get("next", "")))
    ctx = context_of(request)
    ttl = ctx.settings.console_session_ttl
    try:
        if not api_key:
            raise Unauthenticated("Enter an API key.")
        started = await ctx.catalog.run(lambda s: sessions.start(s, api_key, ttl))
    except Unauthenticated as exc:
        message = exc.message if not api_key else "That API key is invalid or has been revoked."
        values = {"next": next_path, "error": message, "signed_out": False}
        return render.page(request, "sign_in.html", values, status=401)
    response = render.see_other(next_path)
    session.set_session_cookie(response, request, started)
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    """``POST /console/sign-out``: end the session in the catalog, then drop the cookie."""
    token = request.cookies.get(session.SESSION_COOKIE, "")
    await context_of(request).catalog.run(lambda s: sessions.end(s, token))
    response = render.see_other(session.SIGN_IN_PATH + "?signed_out=1")
    session.clear_session_cookie(response)
    return response


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/sign-in", sign_in_form)
    router.add_post("/sign-in", sign_in)
    router.add_post("/sign-out", sign_out)
