"""CSRF protection for every state-changing console request.

Each form carries a token derived from a secret the browser holds in an ``HttpOnly`` cookie:
``HMAC-SHA256(key=session token, "weightport console csrf v1")`` once signed in, and the same
over a random pre-sign-in cookie on the sign-in form. Another site can neither read the cookie
nor the page, so it cannot forge the token; and the page never reveals the session token
itself. (``SameSite=Strict`` already keeps the cookies off cross-site requests; this is the
second lock.) The console's middleware checks the token on every request that is not
``GET``/``HEAD``, so no handler can forget to.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from weightport.errors import PermissionDenied
from weightport.server.console import session
from weightport.server.requests import read_form

FIELD = "csrf_token"
_PURPOSE = b"weightport console csrf v1"


def _derive(binding: str) -> str:
    return hmac.new(binding.encode(), _PURPOSE, "sha256").hexdigest()


def _binding(request: web.Request) -> str:
    if session.known_identity(request) is not None:
        return request.cookies[session.SESSION_COOKIE]
    return session.presession(request)


def token_for(request: web.Request) -> str:
    """The token forms on this page must send back (call after the identity is known)."""
    return _derive(_binding(request))


async def check(request: web.Request) -> None:
    """Refuse (403) a state-changing request whose form lacks the right token."""
    form = await read_form(request)
    submitted = form.get(FIELD)
    has_binding = (
        session.known_identity(request) is not None or session.PRESESSION_COOKIE in request.cookies
    )
    if (
        not has_binding
        or not isinstance(submitted, str)
        # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError).
        or not hmac.compare_digest(submitted.encode(), token_for(request).encode())
    ):
        raise PermissionDenied(
            "This form was not sent from a current page of this console (its security token "
            "is missing or out of date). Go back, reload the page and try again."
        )
