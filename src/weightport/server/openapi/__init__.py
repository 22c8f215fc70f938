"""The OpenAPI 3.1 document of the server, served at ``/openapi.json``.

Built from one module per API surface (``fireworks``, ``files``, ``together``, ``console``);
``docs/openapi.json`` is the same document checked in (``python -m
weightport.server.openapi > docs/openapi.json``), and the tests hold both to the routes the
application really registers.
"""

from __future__ import annotations

from aiohttp import web

from weightport.server.openapi.document import PATH, document, document_text

__all__ = ["PATH", "add_routes", "document", "document_text"]


async def serve_document(request: web.Request) -> web.Response:
    return web.Response(text=document_text(), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, serve_document)
