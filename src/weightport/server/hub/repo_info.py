"""Repo info and refs: ``GET /api/models/{repo}[/revision/{rev}]``, ``…/refs``."""

from __future__ import annotations

from aiohttp import web

from weightport.server.envelopes import json_response
from weightport.server.hub.lookup import find, find_repo_only
from weightport.server.hub.paths import repo_target, revision_target
from weightport.server.hub.shapes import model_info_json, refs_json
from weightport.server.requests import query_bool
from weightport.services.hub.revisions import MAIN


async def _info(request: web.Request, revision: str) -> web.Response:
    blobs = query_bool(request, "blobs")
    found = await find(request, repo_target(request), revision)
    return json_response(model_info_json(found.repo, found.revision, found.files, blobs=blobs))


async def repo_info(request: web.Request) -> web.Response:
    """The repository at ``main`` (``resolve_revision``, ``repo_exists``, HfFileSystem)."""
    return await _info(request, MAIN)


async def revision_info(request: web.Request) -> web.Response:
    """The repository at a revision (``snapshot_download``, ``model_info(revision=…)``)."""
    return await _info(request, revision_target(request))


async def refs(request: web.Request) -> web.Response:
    """Every branch with its commit (``list_repo_refs``)."""
    repo = await find_repo_only(request, repo_target(request))
    return json_response(refs_json(repo))
