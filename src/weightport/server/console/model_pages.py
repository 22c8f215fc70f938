"""Model pages: the paged, filterable list; a model with its files and download commands;
and a per-file link that mints a fresh signed URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy.orm import Session

from weightport.catalog import registry
from weightport.catalog.audit import Subject
from weightport.catalog.sessions import SignedIn
from weightport.errors import InvalidArgument, NotFound
from weightport.server.blobs import signed_download_urls
from weightport.server.console import commands, render
from weightport.server.console.session import signed_in
from weightport.server.context import context_of
from weightport.server.transfers import record_grant

PAGE_SIZE = 50
STATES = (registry.UPLOADING, registry.READY)
#: The list's sort choices: value in the URL → (label, the API's ``orderBy``).
SORTS = {
    "name": ("Name (A–Z)", "name"),
    "-name": ("Name (Z–A)", "name desc"),
    "newest": ("Newest first", "createTime desc"),
    "oldest": ("Oldest first", "createTime"),
    "updated": ("Recently updated", "updateTime desc"),
}


@dataclass(frozen=True)
class ListQuery:
    """What the model list was asked for, validated (every field round-trips into links)."""

    search: str
    kind: str
    state: str
    sort: str
    page: int

    @classmethod
    def parse(cls, query: Any) -> ListQuery:
        kind, state = query.get("kind", ""), query.get("state", "")
        sort = query.get("sort", "") or "name"
        if kind and kind not in registry.KINDS:
            raise InvalidArgument(f"Unknown kind {kind!r}.")
        if state and state not in STATES:
            raise InvalidArgument(f"Unknown state {state!r}: use {' or '.join(STATES)}.")
        if sort not in SORTS:
            raise InvalidArgument(f"Unknown sort {sort!r}.")
        raw_page = query.get("page", "") or "1"
        if not raw_page.isdigit() or int(raw_page) < 1:
            raise InvalidArgument(f"Page must be a positive number, not {raw_page!r}.")
        return cls(query.get("q", "").strip(), kind, state, sort, int(raw_page))

    def filter_text(self) -> str:
        terms = [
            f'{field} = "{value}"'
            for field, value in (("kind", self.kind), ("state", self.state))
            if value
        ]
        return " AND ".join(terms)

    def link(self, page: int) -> str:
        params = {"q": self.search, "kind": self.kind, "state": self.state, "sort": self.sort}
        params = {k: v for k, v in params.items() if v and not (k == "sort" and v == "name")}
        if page > 1:
            params["page"] = str(page)
        return "/console/models" + ("?" + urlencode(params) if params else "")


@signed_in
async def model_list(request: web.Request, who: SignedIn) -> web.StreamResponse:
    """``GET /console/models``."""
    wanted = ListQuery.parse(request.query)

    def run(session: Session) -> registry.Page:
        return registry.list_models(
            session,
            who.account_id,
            page_size=PAGE_SIZE,
            page_token=registry.page_token_at((wanted.page - 1) * PAGE_SIZE),
            order_by=SORTS[wanted.sort][1],
            filter_text=wanted.filter_text(),
            search=wanted.search,
        )

    found = await context_of(request).catalog.run(run)
    pages = max(1, -(-found.total_size // PAGE_SIZE))
    values = {
        "query": wanted,
        "models": found.models,
        "total": found.total_size,
        "pages": pages,
        "kinds": sorted(registry.KINDS),
        "states": STATES,
        "sorts": SORTS,
        "previous": wanted.link(wanted.page - 1) if wanted.page > 1 else None,
        "next": wanted.link(wanted.page + 1) if found.next_page_token else None,
    }
    return render.page(request, "models.html", values)


@signed_in
async def model_page(request: web.Request, who: SignedIn) -> web.StreamResponse:
    """``GET /console/models/{model_id}``; another account's model is simply not found."""
    model_id = request.match_info["model_id"]
    ctx = context_of(request)
    model = await ctx.catalog.run(lambda s: registry.get_model(s, who.account_id, model_id))
    ready = model.state == registry.READY
    base = ctx.public_base(request)
    values = {
        "model": model,
        "resource_name": registry.resource_name(model.account_id, model.model_id),
        "total_size": sum(f.declared_size for f in model.files),
        "commands": commands.model_commands(base, model.account_id, model.model_id)
        if ready
        else [],
        "ready": ready,
    }
    return render.page(request, "model.html", values)


@signed_in
async def file_download(request: web.Request, who: SignedIn) -> web.StreamResponse:
    """``GET /console/models/{model_id}/files/{path}``: redirect to a freshly signed URL."""
    model_id, path = request.match_info["model_id"], request.match_info["path"]
    ctx = context_of(request)
    model = await ctx.catalog.run(lambda s: registry.get_downloadable(s, who.account_id, model_id))
    file = model.file(path)
    if file is None:
        raise NotFound(f"Model {model_id} has no file {path!r}.")
    # Bound to the key the session was opened with: revoking it revokes this URL too.
    (url,) = signed_download_urls(
        ctx,
        ctx.public_base(request),
        model,
        [path],
        [file.sha256],
        minted_by=who.key_id,
        for_browser=True,
    )
    resource = registry.resource_name(model.account_id, model.model_id)
    record_grant(request, Subject(model.account_id, resource, "file", file=path))
    raise web.HTTPFound(url)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/models", model_list)
    router.add_get("/models/{model_id}", model_page)
    router.add_get("/models/{model_id}/files/{path:.+}", file_download)
