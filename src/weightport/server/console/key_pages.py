"""API keys, for the admin account: create (the secret is shown once), list, revoke.

A revoked key stops working at once: on the APIs, and for console sessions opened with it.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.orm import Session

from weightport.catalog import accounts
from weightport.catalog.sessions import SignedIn
from weightport.errors import InvalidArgument, PermissionDenied
from weightport.server.console import render
from weightport.server.console.session import signed_in
from weightport.server.context import context_of

KEYS_PATH = "/console/keys"
MAX_NAME = 255


def require_admin(who: SignedIn, what: str = "manages API keys") -> None:
    """Refuse (403) a session of any account but the admin account."""
    if who.account_id != accounts.ADMIN_ACCOUNT:
        raise PermissionDenied(
            f"Only the {accounts.ADMIN_ACCOUNT!r} account {what}; you are signed in "
            f"as {who.account_id!r}."
        )


async def _keys_page(
    request: web.Request,
    who: SignedIn,
    *,
    issued: accounts.IssuedKey | None = None,
    error: str = "",
    status: int = 200,
) -> web.Response:
    keys = await context_of(request).catalog.run(lambda s: accounts.list_keys(s))
    values = {
        "keys": sorted(keys, key=lambda k: (k.revoked, k.account_id, k.created_at)),
        "issued": issued,
        "error": error,
        "revoked": request.query.get("revoked", ""),
        "current_key": who.key_id,
    }
    return render.page(request, "keys.html", values, status=status)


@signed_in
async def key_list(request: web.Request, who: SignedIn) -> web.StreamResponse:
    """``GET /console/keys``."""
    require_admin(who)
    return await _keys_page(request, who)


@signed_in
async def create_key(request: web.Request, who: SignedIn) -> web.StreamResponse:
    """``POST /console/keys``: a new key for an account (created if new), shown this once."""
    require_admin(who)
    form = await request.post()
    account_id = str(form.get("account", "")).strip() or accounts.ADMIN_ACCOUNT
    name = str(form.get("name", "")).strip()
    if len(name) > MAX_NAME:
        return await _keys_page(
            request, who, error=f"A key name has at most {MAX_NAME} characters.", status=400
        )

    def run(session: Session) -> accounts.IssuedKey:
        accounts.ensure_account(session, account_id)
        return accounts.create_key(session, account_id, name)

    try:
        issued = await context_of(request).catalog.run(run)
    except InvalidArgument as exc:
        return await _keys_page(request, who, error=exc.message, status=400)
    return await _keys_page(request, who, issued=issued, status=201)


@signed_in
async def revoke_key(request: web.Request, who: SignedIn) -> web.StreamResponse:
    """``POST /console/keys/{key_id}/revoke``."""
    require_admin(who)
    key_id = request.match_info["key_id"]
    await context_of(request).catalog.run(lambda s: accounts.revoke_key(s, key_id))
    return render.see_other(f"{KEYS_PATH}?revoked={key_id}")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/keys", key_list)
    router.add_post("/keys", create_key)
    router.add_post("/keys/{key_id}/revoke", revoke_key)
