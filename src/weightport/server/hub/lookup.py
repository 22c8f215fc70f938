"""From a request to the repository, revision and files it names — the caller's own only."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from weightport.errors import Unauthenticated
from weightport.server.context import context_of
from weightport.server.requests import authenticated_account
from weightport.services.hub.files import RevisionFiles
from weightport.services.hub.repos import Repo, find_repo
from weightport.services.hub.revisions import MAIN, Revision


async def hub_account(request: web.Request) -> str:
    """The account of the request's key (``HF_TOKEN`` is sent as a bearer key)."""
    if not request.headers.get("Authorization"):
        raise Unauthenticated(
            "no API key: set HF_TOKEN to a weightport API key (sent as Authorization: Bearer)"
        )
    return await authenticated_account(request)


@dataclass(frozen=True)
class Found:
    """A repository, one of its revisions and that revision's files."""

    repo: Repo
    revision: Revision
    files: RevisionFiles


async def find(request: web.Request, repo_id: str, revision: str = MAIN) -> Found:
    """Authenticate, then look up the repository, the revision (a branch or a commit) and
    the revision's files. Raises the Hub's not-found errors."""
    account = await hub_account(request)
    ctx = context_of(request)

    def run() -> Found:
        repo = ctx.catalog.call(lambda s: find_repo(s, account, repo_id))
        chosen = repo.revision(revision)
        return Found(repo, chosen, ctx.hub_files.get(ctx.store, chosen))

    return await asyncio.to_thread(run)


async def find_repo_only(request: web.Request, repo_id: str) -> Repo:
    """Authenticate, then the repository with its branches (no files are computed)."""
    account = await hub_account(request)
    ctx = context_of(request)
    return await ctx.catalog.run(lambda s: find_repo(s, account, repo_id))
