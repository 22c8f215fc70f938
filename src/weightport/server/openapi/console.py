"""The web console as OpenAPI: server-rendered HTML pages under ``/console``.

Pages need the session cookie that signing in sets; without one a page answers 303 to the
sign-in form. Every ``POST`` is a form carrying the CSRF token of a current page (403 without).
Errors are HTML pages with the right status.
"""

from __future__ import annotations

from typing import Any

from weightport.catalog.registry import KINDS
from weightport.server.console.audit_page import ACTIONS as AUDIT_ACTIONS
from weightport.server.console.audit_page import PERIODS as AUDIT_PERIODS
from weightport.server.openapi.bytes import REQUEST_HEADERS, byte_responses
from weightport.server.openapi.kit import (
    INTEGER,
    STRING,
    Schema,
    binary_content,
    enum,
    obj,
    operation,
    param,
)

TAG = "Web console"
HTML: Schema = {"text/html": {"schema": STRING}}
SESSION: list[dict[str, list[str]]] = [{"consoleSession": []}]
REDIRECT = {"description": "Redirect", "headers": {"Location": {"schema": STRING}}}
_ERROR_PAGE = {"content": HTML}
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _html(status: int, description: str) -> dict[str, Schema]:
    return {str(status): {"description": description, **_ERROR_PAGE}}


def _page(operation_id: str, summary: str, *params: Schema, **more: Any) -> Schema:
    extra = more.pop("responses", {})
    return operation(
        operation_id,
        summary,
        tags=[TAG],
        security=more.pop("security", SESSION),
        parameters=list(params),
        responses={
            **_html(200, "The page"),
            "303": REDIRECT,
            **_html(400, "Bad parameter (an error page)"),
            **_html(404, "No such page, or not this account's"),
            **_html(503, "The catalog is unavailable for now"),
            **extra,
        },
        **more,
    )


def _form(operation_id: str, summary: str, fields: dict[str, Schema], *params: Schema) -> Schema:
    schema = obj({"csrf_token": STRING, **fields}, required=("csrf_token",))
    return _page(
        operation_id,
        summary,
        *params,
        body={"required": True, "content": {t: {"schema": schema} for t in FORM_TYPES}},
        responses={**_html(403, "Missing or stale CSRF token, or not allowed"), "201": REDIRECT},
    )


FT_ID = param("ft_id", "path", STRING)


def paths() -> dict[str, Schema]:
    to_console = operation(
        "consoleHome",
        "Redirect to the console",
        tags=[TAG],
        security=[],
        responses={"302": REDIRECT},
    )
    archive_query = (param("checkpoint", "query", STRING), param("step", "query", STRING))
    return {
        "/": {"get": to_console},
        "/console": {"get": {**to_console, "operationId": "consoleRoot"}},
        "/console/": {"get": {**to_console, "operationId": "consoleIndex"}},
        "/console/static/{name}": {
            "get": operation(
                "consoleAsset",
                "The console's stylesheet, script and icon",
                tags=[TAG],
                security=[],
                parameters=[param("name", "path", STRING)],
                responses={
                    "200": {"description": "The asset", "content": binary_content("*/*")},
                    **_html(404, "No such asset"),
                },
            )
        },
        "/console/sign-in": {
            "get": _page(
                "signInForm",
                "The sign-in form",
                param("next", "query", STRING),
                security=[],
                responses={"302": REDIRECT},
            ),
            "post": _page(
                "signIn",
                "Exchange an API key for a session cookie",
                body={
                    "required": True,
                    "content": {
                        t: {
                            "schema": obj(
                                {"csrf_token": STRING, "api_key": STRING, "next": STRING},
                                required=("csrf_token",),
                            )
                        }
                        for t in FORM_TYPES
                    },
                },
                security=[],
                responses={
                    **_html(401, "Invalid or revoked key"),
                    **_html(403, "Missing or stale CSRF token"),
                },
            ),
        },
        "/console/sign-out": {"post": _form("signOut", "End the session", {})},
        "/console/models": {
            "get": _page(
                "consoleModels",
                "The account's models (paged, filtered, sorted)",
                param("q", "query", STRING),
                param("kind", "query", enum(sorted(KINDS))),
                param("state", "query", enum(["UPLOADING", "READY"])),
                param("sort", "query", STRING),
                param("page", "query", {"type": "integer", "minimum": 1}),
            )
        },
        "/console/models/{model_id}": {
            "get": _page("consoleModel", "A model", param("model_id", "path", STRING))
        },
        "/console/models/{model_id}/files/{path}": {
            "get": _page(
                "consoleModelFile",
                "Redirect to a signed URL of the file (minted for the session's key)",
                param("model_id", "path", STRING),
                param("path", "path", STRING),
                responses={"302": REDIRECT},
            )
        },
        "/console/fine-tunes": {"get": _page("consoleFineTunes", "The account's fine-tunes")},
        "/console/fine-tunes/{ft_id}": {"get": _page("consoleFineTune", "A fine-tune", FT_ID)},
        "/console/fine-tunes/{ft_id}/steps/{step}": {
            "get": _page(
                "consoleFineTuneStep",
                "One checkpoint's commands and builds",
                FT_ID,
                param("step", "path", INTEGER),
            )
        },
        "/console/fine-tunes/{ft_id}/archives": {
            "get": operation(
                "consoleArchiveProgress",
                "Archive build states (JSON, for the page's live view)",
                tags=[TAG],
                security=SESSION,
                parameters=[FT_ID],
                responses={
                    "200": {
                        "description": "Build states",
                        "content": {
                            "application/json": {
                                "schema": obj(
                                    {"archives": {"type": "array"}, "active": {"type": "boolean"}},
                                    required=("archives", "active"),
                                )
                            }
                        },
                    },
                    "303": REDIRECT,
                    **_html(404, "Not this account's"),
                },
            ),
            "post": _form(
                "consoleQueueBuild",
                "Queue a compressed archive build",
                {"checkpoint": STRING, "step": STRING},
                FT_ID,
            ),
        },
        "/console/fine-tunes/{ft_id}/download": {
            "get": _page(
                "consoleArchiveDownload",
                "The archive the Together API serves, for the browser",
                FT_ID,
                *archive_query,
                *REQUEST_HEADERS,
                responses={
                    **byte_responses("application/zstd"),
                    "302": REDIRECT,
                    **_html(412, "If-Match did not match"),
                },
            )
        },
        "/console/keys": {
            "get": _page(
                "consoleKeys",
                "API keys (admin account)",
                responses=_html(403, "Only the admin account manages keys"),
            ),
            "post": _form("consoleCreateKey", "Create an API key", {"name": STRING}),
        },
        "/console/keys/{key_id}/revoke": {
            "post": _form(
                "consoleRevokeKey", "Revoke an API key", {}, param("key_id", "path", STRING)
            )
        },
        "/console/audit": {
            "get": _page(
                "consoleAudit",
                "The download audit log (admin account), filterable, newest first",
                param("account", "query", STRING),
                param("key", "query", STRING),
                param("action", "query", enum(sorted(AUDIT_ACTIONS))),
                param("period", "query", enum(sorted(AUDIT_PERIODS))),
                param("before", "query", STRING, description="Page token: older records"),
                responses=_html(403, "Only the admin account reads the audit log"),
            )
        },
    }
