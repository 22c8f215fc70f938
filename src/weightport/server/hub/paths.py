"""Reading repository, revision and file path out of a Hub URL's raw path.

Clients send the repository id as-is (``org/name``), the revision as one quoted segment
(``quote(rev, safe="")``, so ``refs/heads/main`` arrives as ``refs%2Fheads%2Fmain``) and
the file path quoted with its ``/`` kept (tree paths may come fully quoted). The router
decodes ``%2F`` before matching, which would blur where the revision ends, so these
functions split the *raw* path and decode each piece on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web

from weightport.errors import InvalidArgument, RepoNotFound
from weightport.paths import validate_relative_path
from weightport.server.hub import PREFIX


@dataclass(frozen=True)
class Target:
    """What a request names: ``repo_id`` (``org/name``), a revision and a path in it
    (``""`` for the root of a tree listing)."""

    repo_id: str
    revision: str
    path: str


def _segment(raw: str) -> str:
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{raw!r} is not percent-encoded UTF-8") from None


def _parts(request: web.Request) -> list[str]:
    # ["", org, name, "resolve", rev, ...] or ["", "api", "models", org, name, verb, rev, ...]
    return request.rel_url.raw_path.removeprefix(PREFIX).split("/")


def _repo_id(namespace: str, name: str) -> str:
    repo_id = f"{_segment(namespace)}/{_segment(name)}"
    if repo_id.count("/") != 1 or repo_id.startswith("/") or repo_id.endswith("/"):
        raise RepoNotFound(f"Repository {repo_id} not found")
    return repo_id


def repo_target(request: web.Request) -> str:
    """The repository id of an ``/api/models/{org}/{name}[/…]`` route."""
    parts = _parts(request)
    return _repo_id(parts[3], parts[4])


def revision_target(request: web.Request) -> str:
    """The revision of ``/api/models/{org}/{name}/revision/{rev}`` (one quoted segment)."""
    return _segment("/".join(_parts(request)[6:]))


def split_target(request: web.Request, *, api: bool, path_required: bool) -> Target:
    """Split ``/{org}/{name}/resolve/{rev}/{path}`` or, with ``api``,
    ``/api/models/{org}/{name}/{verb}/{rev}[/{path}]`` (after the prefix).

    Raises :class:`InvalidArgument` for a file path that is not a safe relative path.
    """
    parts = _parts(request)
    verb = 5 if api else 3  # fixed positions: an org or repo may be named like a verb
    repo_id = _repo_id(parts[verb - 2], parts[verb - 1])
    revision = _segment(parts[verb + 1]) if len(parts) > verb + 1 else ""
    if not revision:
        raise InvalidArgument("the revision is missing from the URL")
    path = _segment("/".join(parts[verb + 2 :]))
    if path_required or path:
        path = validate_relative_path(path, what="path in repository")
    return Target(repo_id, revision, path)
