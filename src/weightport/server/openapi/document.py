"""The whole OpenAPI 3.1 document, assembled from one module per API surface."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from weightport.server.openapi import console, files, fireworks, hub, operations, together
from weightport.server.openapi.kit import Schema, operation

PATH = "/openapi.json"
DESCRIPTION = """\
weightport speaks four APIs over the same bytes: the Fireworks model API (signed URLs per
file), the Together fine-tune API (one deterministic `.tar.zst` per artifact, with Range), the
Hugging Face Hub read protocol under `/hf`, and its own fine-tune registration routes, plus
signed file URLs and a web console.

Errors come in the caller's envelope: `FireworksError` (google.rpc.Status) on `/v1/accounts`,
`/files` and the operator's routes, `TogetherError` on the Together and
`/weightport/v1/fine-tunes` routes, HTML pages in the
console, `X-Error-Code` headers on `/hf`. Fireworks and Together errors carry
`x-should-retry`. Another account's resources answer 404, exactly
like missing ones. Every `GET` route also answers `HEAD` with the same headers and no body.
"""


def _self() -> dict[str, Schema]:
    return {
        PATH: {
            "get": operation(
                "openapi",
                "This document",
                tags=["Meta"],
                security=[],
                responses={
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            )
        }
    }


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route the server registers."""
    from weightport import __version__

    paths = {
        **fireworks.paths(),
        **files.paths(),
        **together.paths(),
        **hub.paths(),
        **console.paths(),
        **operations.paths(),
        **_self(),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "weightport", "version": __version__, "description": DESCRIPTION},
        "paths": paths,
        "security": [{"bearerKey": []}],
        "components": {
            "securitySchemes": {
                "bearerKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A weightport API key (`weightport keys create`).",
                },
                "consoleSession": {"type": "apiKey", "in": "cookie", "name": "wp_session"},
            },
            "headers": {
                "ShouldRetry": {
                    "description": "Whether the same request may succeed if retried",
                    "schema": {"type": "string", "enum": ["true", "false"]},
                }
            },
            "schemas": {
                **fireworks.schemas(),
                **together.schemas(),
                **hub.schemas(),
                **operations.schemas(),
            },
        },
    }


def document_text() -> str:
    """The document as the checked-in ``docs/openapi.json`` holds it."""
    return json.dumps(document(), indent=1, sort_keys=True) + "\n"
