"""Folder listings: ``GET /api/models/{repo}/tree/{rev}[/{path}]`` and ``POST …/paths-info/{rev}``.

A listing is paged GitHub-style: ``Link: <absolute URL>; rel="next"``. Clients follow that
URL verbatim and fail on a relative one, so it carries this server's public base URL and
every query parameter of the request.
"""

from __future__ import annotations

from aiohttp import web

from weightport.errors import InvalidArgument
from weightport.server.context import context_of
from weightport.server.envelopes import json_response
from weightport.server.hub.lookup import find
from weightport.server.hub.paths import split_target
from weightport.server.hub.shapes import last_commit_json, tree_entry_json
from weightport.server.requests import query_bool, read_form
from weightport.services.hub.tree import list_tree, paths_info

#: Entries per page, as the Hub pages them (expanded entries cost more there).
PAGE_SIZE = 1000
EXPANDED_PAGE_SIZE = 50


def _cursor(request: web.Request) -> int:
    raw = request.query.get("cursor", "")
    if not raw:
        return 0
    if not raw.isdigit():
        raise InvalidArgument(f"cursor {raw!r} did not come from this server", param="cursor")
    return int(raw)


def _next_link(request: web.Request, start: int) -> str:
    base = context_of(request).public_base(request)
    url = request.rel_url.update_query(cursor=str(start))
    return f'<{base}{url}>; rel="next"'


async def tree(request: web.Request) -> web.Response:
    """The entries under a folder, recursively or not, a page at a time."""
    target = split_target(request, api=True, path_required=False)
    recursive = query_bool(request, "recursive")
    expand = query_bool(request, "expand")
    found = await find(request, target.repo_id, target.revision)
    entries = list_tree(found.files, target.path, recursive=recursive)
    start = _cursor(request)
    size = EXPANDED_PAGE_SIZE if expand else PAGE_SIZE
    last = last_commit_json(found.repo, found.revision) if expand else None
    page = [tree_entry_json(e, last) for e in entries[start : start + size]]
    response = json_response(page)
    if start + size < len(entries):
        response.headers["Link"] = _next_link(request, start + size)
    return response


async def paths_info_route(request: web.Request) -> web.Response:
    """Entries for the form's ``paths`` that exist (missing ones are left out)."""
    target = split_target(request, api=True, path_required=False)
    form = await read_form(request)
    paths = [p for p in form.getall("paths", []) if isinstance(p, str)]
    expand = str(form.get("expand", "false")).lower() in ("true", "1")
    found = await find(request, target.repo_id, target.revision)
    last = last_commit_json(found.repo, found.revision) if expand else None
    return json_response([tree_entry_json(e, last) for e in paths_info(found.files, paths)])
