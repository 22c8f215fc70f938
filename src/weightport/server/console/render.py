"""Rendering console pages: one Jinja environment, the filters the templates use, and the
headers every page carries (no caching of private data, a strict Content-Security-Policy).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2
from aiohttp import web

from weightport.catalog import accounts
from weightport.server.console import csrf, session
from weightport.server.console.assets import ASSETS, asset_url

#: Scripts and styles only from weightport itself; no inline script can run, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # Pages show private metadata and, once, new API keys: never keep them in a cache.
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def human_size(size: int | None) -> str:
    """Bytes in decimal units, three significant digits: ``1.23 GB``."""
    if size is None:
        return "—"
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in _UNITS[1:]:
        value /= 1000
        if value < 999.5:
            return f"{value:.3g} {unit}"
    return f"{value:,.0f} {_UNITS[-1]}"


def utc_time(moment: datetime | None) -> str:
    """``2026-11-28 10:04 UTC`` (the full ISO time goes in a ``<time datetime>`` attribute)."""
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def make_environment() -> jinja2.Environment:
    """The console's template environment: autoescaping everywhere, undefined names fail."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("weightport.server.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = human_size
    env.filters["utc"] = utc_time
    env.filters["iso"] = iso_time
    return env


ENVIRONMENT = web.AppKey("weightport_console_templates", jinja2.Environment)


def page(
    request: web.Request, template: str, values: dict[str, Any], *, status: int = 200
) -> web.Response:
    """Render ``template`` with ``values`` plus what every page needs (the signed-in identity,
    the CSRF token, asset URLs) into an HTML response."""
    assets = request.config_dict[ASSETS]
    common = {
        "who": session.known_identity(request),
        "csrf_token": csrf.token_for(request),
        "path": request.path,
        "admin_account": accounts.ADMIN_ACCOUNT,
        "asset": lambda name: asset_url(assets, name),
    }
    html = request.config_dict[ENVIRONMENT].get_template(template).render({**common, **values})
    return web.Response(text=html, status=status, content_type="text/html", headers=PAGE_HEADERS)


def see_other(location: str) -> web.Response:
    """``303 See Other``: where a browser goes after a form succeeds (a reload won't resend)."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})
