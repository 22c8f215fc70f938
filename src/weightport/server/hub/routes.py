"""Every Hub route in one table: method, path (under :data:`PREFIX`), handler, purpose.

Datasets and spaces are not served: their URLs fall through to a 404 ``RepoNotFound``,
which the clients turn into ``RepositoryNotFoundError``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from weightport.server.hub import PREFIX
from weightport.server.hub.repo_info import refs, repo_info, revision_info
from weightport.server.hub.resolve import resolve
from weightport.server.hub.tree import paths_info_route, tree

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REPO = "/api/models/{namespace}/{name}"


@dataclass(frozen=True)
class Route:
    """One route: ``GET`` routes answer ``HEAD`` too."""

    method: str
    path: str
    handler: Handler
    summary: str


ROUTES = (
    Route("GET", _REPO, repo_info, "repo info at main: sha, siblings"),
    Route("GET", _REPO + "/revision/{revision:.+}", revision_info, "repo info at a revision"),
    Route("GET", _REPO + "/refs", refs, "branches and their commits"),
    Route("GET", _REPO + "/tree/{rest:.+}", tree, "folder listing at a revision, paged by Link"),
    Route("POST", _REPO + "/paths-info/{rest:.+}", paths_info_route, "entries for given paths"),
    Route("GET", "/{namespace}/{name}/resolve/{rest:.+}", resolve, "a file (Range, ETag)"),
)


def add_routes(app: web.Application) -> None:
    """Mount :data:`ROUTES` under :data:`PREFIX`."""
    for route in ROUTES:
        if route.method == "GET":
            app.router.add_get(PREFIX + route.path, route.handler, allow_head=True)
        else:
            app.router.add_route(route.method, PREFIX + route.path, route.handler)
