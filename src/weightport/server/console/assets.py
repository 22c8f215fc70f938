"""The console's static files (one stylesheet, one script, an icon), served from memory.

They are a few kB, read once from the package; each URL carries a hash of the content
(``?v=…``) so browsers may cache it forever and a new release is fetched at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from weightport.errors import NotFound

CONTENT_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    version: str


def load_assets() -> dict[str, Asset]:
    """Every file of the package's ``static`` folder, by name."""
    assets: dict[str, Asset] = {}
    for entry in resources.files(__package__).joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if suffix not in CONTENT_TYPES:
            continue
        body = entry.read_bytes()
        version = hashlib.sha256(body).hexdigest()[:12]
        assets[entry.name] = Asset(body, CONTENT_TYPES[suffix], version)
    return assets


ASSETS = web.AppKey("weightport_console_assets", dict[str, Asset])


def asset_url(assets: dict[str, Asset], name: str) -> str:
    """The cache-busting URL of a static file, for templates."""
    return f"/console/static/{name}?v={assets[name].version}"


async def serve_asset(request: web.Request) -> web.Response:
    """``GET /console/static/{name}``: immutable when the version matches, else revalidated."""
    asset = request.config_dict[ASSETS].get(request.match_info["name"])
    if asset is None:
        raise NotFound(f"no static file {request.match_info['name']!r}")
    etag = f'"{asset.version}"'
    current = request.query.get("v") == asset.version
    headers = {
        "ETag": etag,
        "Cache-Control": "public, max-age=31536000, immutable" if current else "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})
