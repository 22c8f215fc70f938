"""The OpenAPI document: valid 3.1, every route the application registers is in it, every
operation in it reaches a registered route, and the served and checked-in copies match."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from openapi_spec_validator import validate

from tests.conftest import LiveServer
from weightport.config import Settings
from weightport.server.app import build_context, create_app
from weightport.server.fireworks import MODEL_VERBS
from weightport.server.openapi import document, document_text

ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = ROOT / "docs" / "openapi.json"
METHODS = ("get", "head", "post", "put", "patch", "delete")
#: A value per path parameter that every route's pattern accepts (``path`` spans segments).
SAMPLE = {"path": "dir/file.bin", "ft_id": "ft-1", "step": "10"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[web.Application]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("openapi"))
    ctx = build_context(settings)
    yield create_app(ctx)
    ctx.builder.close()
    ctx.catalog.close()


def registered(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, canonical path) of every route, sub-applications included."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }


def documented() -> Iterator[tuple[str, str]]:
    for path, item in document()["paths"].items():
        for method in METHODS:
            if method in item:
                yield method.upper(), path


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLE.get(m.group(1), f"x-{m.group(1)}"), template)


def resolve(app: web.Application, method: str, template: str) -> tuple[str, str]:
    """The registered route (method, canonical) a request to a documented path reaches."""

    async def run() -> tuple[str, str]:
        request = make_mocked_request(method, concrete(template), app=app)
        match = await app.router.resolve(request)
        if match.http_exception is not None:
            raise AssertionError(f"{method} {template}: {match.http_exception.status}")
        resource = match.route.resource
        assert resource is not None
        return match.route.method, resource.canonical

    return asyncio.run(run())


def test_the_document_is_valid_openapi_31() -> None:
    validate(document())
    assert document()["openapi"].startswith("3.1")


def test_every_documented_operation_reaches_a_route(app: web.Application) -> None:
    for method, path in documented():
        reached = resolve(app, method, path)
        assert reached in registered(app), (method, path, reached)


def test_every_registered_route_is_documented(app: web.Application) -> None:
    covered = {resolve(app, method, path) for method, path in documented()}
    # aiohttp answers HEAD for every GET route; the document says so once, for all.
    heads = {("HEAD", path) for method, path in covered if method == "GET"}
    missing = sorted(registered(app) - covered - heads)
    assert missing == [], f"document these routes in weightport.server.openapi: {missing}"


def test_operation_ids_are_unique() -> None:
    ids = [
        item[m]["operationId"]
        for item in document()["paths"].values()
        for m in METHODS
        if m in item
    ]
    assert len(ids) == len(set(ids))


def test_the_checked_in_copy_is_current() -> None:
    assert CHECKED_IN.read_text() == document_text(), (
        "regenerate: python -m weightport.server.openapi > docs/openapi.json"
    )


def test_the_server_serves_it(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.base_url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == json.loads(CHECKED_IN.read_text())


def test_every_fireworks_model_verb_is_documented() -> None:
    # One aiohttp route serves every ``:verb``, so the router walk above cannot see them.
    paths = document()["paths"]
    item = "/v1/accounts/{account}/models/{model}"
    missing = [
        (method, verb)
        for method, verb in MODEL_VERBS
        if method.lower() not in paths.get(item + (f":{verb}" if verb else ""), {})
    ]
    assert missing == [], f"document these in weightport.server.openapi.fireworks: {missing}"
