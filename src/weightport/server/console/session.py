"""Who is signed in: the session cookie, resolved against the catalog once per request.

The cookie holds only a random session token (never the API key): ``HttpOnly`` (no script
can read it), ``SameSite=Strict`` (no other site can make the browser send it), ``Secure``
when the console is reached over https, scoped to ``/console`` and expiring with the
session. What it stands for lives in the catalog (:mod:`weightport.catalog.sessions`), so it
works on every replica and ends for good on sign-out or when its key is revoked.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web

from weightport.catalog import sessions
from weightport.catalog.sessions import SignedIn
from weightport.server.context import context_of

SESSION_COOKIE = "wp_session"
#: Before sign-in, the sign-in form's CSRF token is bound to this random cookie instead.
PRESESSION_COOKIE = "wp_presession"
COOKIE_PATH = "/console"
SIGN_IN_PATH = "/console/sign-in"
PRESESSION_TTL_S = 3600


@dataclass(frozen=True)
class _Lookup:
    who: SignedIn | None


_IDENTITY = web.RequestKey("weightport_console_identity", _Lookup)
_NEW_PRESESSION = web.RequestKey("weightport_console_new_presession", str)

SignedInHandler = Callable[[web.Request, SignedIn], Awaitable[web.StreamResponse]]


async def identify(request: web.Request) -> SignedIn | None:
    """The live session behind the request's cookie, or None (looked up once per request)."""
    if _IDENTITY in request:
        return request[_IDENTITY].who
    token = request.cookies.get(SESSION_COOKIE, "")
    who = None
    if token:
        who = await context_of(request).catalog.run(lambda s: sessions.resolve(s, token))
    request[_IDENTITY] = _Lookup(who)
    return who


def known_identity(request: web.Request) -> SignedIn | None:
    """What :func:`identify` found for this request, without a lookup."""
    lookup = request.get(_IDENTITY)
    return lookup.who if lookup is not None else None


def signed_in(handler: SignedInHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Route decorator: call ``handler(request, who)``, or send the browser to sign in (and
    back here afterwards)."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        who = await identify(request)
        if who is None:
            raise web.HTTPSeeOther(f"{SIGN_IN_PATH}?next={quote(request.path_qs, safe='/')}")
        return await handler(request, who)

    return wrapper


def uses_https(request: web.Request) -> bool:
    """Whether the browser reached us over https (directly, or per ``public_url``)."""
    return request.secure or context_of(request).settings.public_url.startswith("https://")


def _set(
    response: web.StreamResponse, request: web.Request, name: str, value: str, ttl: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=ttl,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=uses_https(request) or None,
    )


def set_session_cookie(
    response: web.StreamResponse, request: web.Request, started: sessions.StartedSession
) -> None:
    ttl = context_of(request).settings.console_session_ttl
    _set(response, request, SESSION_COOKIE, started.token, ttl)
    response.del_cookie(PRESESSION_COOKIE, path=COOKIE_PATH)


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)


def presession(request: web.Request) -> str:
    """The request's pre-sign-in binding value, minting one if it has none yet (the response
    must then carry it: see :func:`settle_cookies`)."""
    return request.cookies.get(PRESESSION_COOKIE) or request.setdefault(
        _NEW_PRESESSION, secrets.token_urlsafe(32)
    )


def settle_cookies(request: web.Request, response: web.StreamResponse) -> None:
    """Send a pre-sign-in cookie minted while rendering this response, and drop a session
    cookie that no longer opens anything (ended, expired, or its key revoked)."""
    minted = request.get(_NEW_PRESESSION)
    if minted is not None:
        _set(response, request, PRESESSION_COOKIE, minted, PRESESSION_TTL_S)
    lookup = request.get(_IDENTITY)
    stale = lookup is not None and lookup.who is None and SESSION_COOKIE in request.cookies
    if stale and SESSION_COOKIE not in response.cookies:
        clear_session_cookie(response)
