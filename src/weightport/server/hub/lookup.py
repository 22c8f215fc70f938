"""From a request to the repository, revision and files it names — the caller's own only."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy.orm import Session

from weightport.catalog import accounts
from weightport.errors import Unauthenticated
from weightport.server.context import context_of
from weightport.server.requests import CALLER, bearer_secret
from weightport.services.hub.files import RevisionFiles
from weightport.services.hub.repos import Repo, find_repo
from weightport.services.hub.revisions import MAIN, Revision


def hub_secret(request: web.Request) -> str:
    """The key the request presents (``HF_TOKEN`` is sent as a bearer key), unchecked."""
    if not request.headers.get("Authorization"):
        raise Unauthenticated(
            "no API key: set HF_TOKEN to a weightport API key (sent as Authorization: Bearer)"
        )
    return bearer_secret(request)


def _visible_repo(session: Session, secret: str, repo_id: str) -> tuple[accounts.Caller, Repo]:
    # The key check and the lookup share one transaction: one trip to a worker thread and
    # one transaction per request instead of two (HEADs are many and small).
    caller = accounts.authenticate(session, secret)
    return caller, find_repo(session, caller.account_id, repo_id)


@dataclass(frozen=True)
class Found:
    """A repository, one of its revisions and that revision's files."""

    repo: Repo
    revision: Revision
    files: RevisionFiles


async def find(request: web.Request, repo_id: str, revision: str = MAIN) -> Found:
    """Authenticate, then look up the repository, the revision (a branch or a commit) and
    the revision's files. Raises the Hub's not-found errors."""
    secret = hub_secret(request)
    ctx = context_of(request)

    def run() -> Found:
        caller, repo = ctx.catalog.call(lambda s: _visible_repo(s, secret, repo_id))
        request[CALLER] = caller  # who asks, for the access and audit logs
        chosen = repo.revision(revision)
        return Found(repo, chosen, ctx.hub_files.get(ctx.store, chosen))

    return await asyncio.to_thread(run)


async def find_repo_only(request: web.Request, repo_id: str) -> Repo:
    """Authenticate, then the repository with its branches (no files are computed)."""
    secret = hub_secret(request)
    ctx = context_of(request)
    caller, repo = await ctx.catalog.run(lambda s: _visible_repo(s, secret, repo_id))
    request[CALLER] = caller
    return repo
