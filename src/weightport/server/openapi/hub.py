"""The Hugging Face Hub read routes as OpenAPI, under ``/hf`` (``HF_ENDPOINT=<base>/hf``).

Shapes follow what ``huggingface_hub`` reads (``ModelInfo``, ``RepoFile``/``RepoFolder``,
``GitRefs``). Errors are the Hub's: the client decides by the ``X-Error-Code`` header
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``, …); the body is
``{"error": message}``.
"""

from __future__ import annotations

from weightport.server.hub import PREFIX
from weightport.server.openapi.bytes import REQUEST_HEADERS, byte_responses
from weightport.server.openapi.kit import (
    BOOLEAN,
    INTEGER,
    STRING,
    Schema,
    array,
    enum,
    json_content,
    obj,
    ok_json,
    operation,
    param,
    ref,
)

TAG = "Hugging Face Hub"
ENVELOPE = "HubError"
REPO = PREFIX + "/api/models/{namespace}/{name}"
COMMIT: Schema = {"type": "string", "pattern": "^[0-9a-f]{40}$"}
HUB_DATE: Schema = {
    "type": "string",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$",
}
REPO_PARAMS = [
    param("namespace", "path", STRING, description="The account"),
    param("name", "path", STRING, description="A model, or a fine-tune's repository"),
]
REVISION = param("revision", "path", STRING, description="Branch or 40-hex commit (quoted)")
_ERROR_HEADERS = {
    "X-Error-Code": {"schema": STRING, "description": "RepoNotFound, EntryNotFound, …"},
    "X-Error-Message": {"schema": STRING},
}


def _errors(*statuses: int) -> dict[str, Schema]:
    return {
        str(status): {
            "description": f"HTTP {status}: X-Error-Code says which",
            "headers": _ERROR_HEADERS,
            "content": json_content(ref(ENVELOPE)),
        }
        for status in sorted(statuses)
    }


COMMON = (400, 401, 404, 503)


def schemas() -> dict[str, Schema]:
    lfs = obj({"oid": STRING, "size": INTEGER, "pointerSize": INTEGER})
    return {
        ENVELOPE: obj({"error": STRING}, required=("error",)),
        "HubModelInfo": obj(
            {
                "_id": STRING,
                "id": STRING,
                "modelId": STRING,
                "author": STRING,
                "sha": COMMIT,
                "lastModified": HUB_DATE,
                "createdAt": HUB_DATE,
                "private": BOOLEAN,
                "tags": array(STRING),
                "siblings": array(
                    obj(
                        {
                            "rfilename": STRING,
                            "size": INTEGER,
                            "blobId": STRING,
                            "lfs": obj({"sha256": STRING, "size": INTEGER, "pointerSize": INTEGER}),
                        },
                        required=("rfilename",),
                    )
                ),
            },
            required=("id", "sha", "siblings"),
        ),
        "HubTreeEntry": obj(
            {
                "type": enum(["file", "directory"]),
                "oid": STRING,
                "size": INTEGER,
                "path": STRING,
                "lfs": lfs,
                "lastCommit": obj({"id": COMMIT, "title": STRING, "date": HUB_DATE}),
            },
            required=("type", "oid", "path"),
        ),
        "HubRefs": obj(
            {
                "branches": array(
                    obj({"name": STRING, "ref": STRING, "targetCommit": COMMIT}),
                ),
                "converts": array({}),
                "tags": array({}),
                "pullRequests": array({}),
            },
            required=("branches",),
        ),
    }


def paths() -> dict[str, Schema]:
    flags = [param(n, "query", BOOLEAN) for n in ("blobs",)]
    info = ok_json(ref("HubModelInfo"))
    tree_params = [
        *REPO_PARAMS,
        REVISION,
        param("recursive", "query", BOOLEAN),
        param("expand", "query", BOOLEAN),
        param("cursor", "query", STRING, description="From the previous page's Link header"),
    ]
    tree_ok = {
        "200": {
            "description": 'Entries; `Link: <url>; rel="next"` when more follow',
            "content": json_content(array(ref("HubTreeEntry"))),
        }
    }
    resolve = operation(
        "hubResolve",
        "A file at a revision (Range, ETag; X-Repo-Commit, X-Linked-Size, X-Linked-Etag)",
        tags=[TAG],
        parameters=[
            *REPO_PARAMS,
            REVISION,
            param("path", "path", STRING, description="The file's path (its `/` kept)"),
            *REQUEST_HEADERS,
        ],
        responses={
            **byte_responses("*/*"),
            "302": {
                "description": "To the store's presigned URL (S3), metadata on the redirect",
                "headers": {"Location": {"schema": STRING}},
            },
            **_errors(*COMMON, 412, 429),  # 429: merged shards count against the cap
        },
    )
    return {
        REPO: {
            "get": operation(
                "hubRepoInfo",
                "Repository info at main",
                tags=[TAG],
                parameters=[*REPO_PARAMS, *flags],
                responses={**info, **_errors(*COMMON)},
            )
        },
        REPO + "/revision/{revision}": {
            "get": operation(
                "hubRevisionInfo",
                "Repository info at a revision",
                tags=[TAG],
                parameters=[*REPO_PARAMS, REVISION, *flags],
                responses={**info, **_errors(*COMMON)},
            )
        },
        REPO + "/refs": {
            "get": operation(
                "hubRefs",
                "Branches and their commits",
                tags=[TAG],
                parameters=REPO_PARAMS,
                responses={**ok_json(ref("HubRefs")), **_errors(*COMMON)},
            )
        },
        REPO + "/tree/{revision}": {
            "get": operation(
                "hubTree",
                "The root folder's entries at a revision",
                tags=[TAG],
                parameters=tree_params,
                responses={**tree_ok, **_errors(*COMMON)},
            )
        },
        REPO + "/tree/{revision}/{path}": {
            "get": operation(
                "hubTreePath",
                "A folder's entries at a revision",
                tags=[TAG],
                parameters=[*tree_params, param("path", "path", STRING)],
                responses={**tree_ok, **_errors(*COMMON)},
            )
        },
        REPO + "/paths-info/{revision}": {
            "post": operation(
                "hubPathsInfo",
                "Entries for the given paths",
                tags=[TAG],
                parameters=[*REPO_PARAMS, REVISION],
                body={
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": obj({"paths": array(STRING), "expand": BOOLEAN})
                        }
                    },
                },
                responses={**tree_ok, **_errors(*COMMON, 413)},
            )
        },
        PREFIX + "/{namespace}/{name}/resolve/{revision}/{path}": {
            "get": resolve,
            "head": {**resolve, "operationId": "hubResolveHead"},
        },
    }
