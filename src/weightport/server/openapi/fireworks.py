"""The Fireworks Gateway model API as OpenAPI: ``/v1/accounts/{account}/models…``.

Shapes follow the official ``fireworks-ai`` client's types (``Model``,
``ModelGetDownloadEndpointResponse``, …) in protojson style: lowerCamelCase, enum strings,
int64 as decimal strings. Errors are ``google.rpc.Status``.
"""

from __future__ import annotations

from typing import Any

from weightport.catalog.registry import KINDS, MODEL_ID
from weightport.catalog.uploads import MAX_FILES
from weightport.server.openapi.kit import (
    BOOLEAN,
    INT64_STRING,
    INTEGER,
    SHA256_HEX,
    STRING,
    TIMESTAMP,
    Schema,
    array,
    enum,
    error_responses,
    json_body,
    links_to,
    obj,
    ok_json,
    operation,
    param,
    ref,
)

TAG = "Fireworks models"
ENVELOPE = "FireworksError"
COLLECTION = "/v1/accounts/{account}/models"
ITEM = COLLECTION + "/{model}"

ACCOUNT = param("account", "path", STRING, description="Account id (your key's account).")
MODEL = param(
    "model",
    "path",
    {"type": "string", "pattern": MODEL_ID.pattern},
    description="Model id; `/` and `:` travel percent-encoded.",
)
READ_MASK = param(
    "readMask",
    "query",
    STRING,
    description="Comma-separated top-level fields to return (lowerCamel or snake_case); "
    "empty or `*` for all.",
)

#: What every authenticated Fireworks route can answer besides its own errors.
COMMON = (400, 401, 404, 503)
#: What a created model leads to (the stateful tests walk create → upload → validate → …).
MODEL_OPERATIONS = (
    "getModel",
    "updateModel",
    "getUploadEndpoint",
    "validateUpload",
    "getDownloadEndpoint",
    "prepareModel",
    "deleteModel",
)
CREATED = {"account": "$request.path.account", "model": "$request.body#/modelId"}
WRITES = (*COMMON, 413, 507)


def schemas() -> dict[str, Schema]:
    status = obj({"code": STRING, "message": STRING}, required=("code", "message"))
    return {
        ENVELOPE: obj(
            {
                "code": {"type": "integer", "format": "int32", "description": "google.rpc.Code"},
                "message": STRING,
                "details": array({"type": "object"}),
            },
            required=("code", "message", "details"),
            description="google.rpc.Status, as the grpc-gateway renders it.",
        ),
        "Model": obj(
            {
                "name": {"type": "string", "pattern": "^accounts/[^/]+/models/[^/]+$"},
                "displayName": STRING,
                "description": STRING,
                "createTime": TIMESTAMP,
                "updateTime": TIMESTAMP,
                "state": enum(["UPLOADING", "READY"]),
                "status": status,
                "kind": enum(sorted(KINDS)),
                "githubUrl": STRING,
                "huggingFaceUrl": STRING,
                "baseModelDetails": {"type": ["object", "null"]},
                "peftDetails": {"type": ["object", "null"]},
                "public": BOOLEAN,
                "contextLength": INTEGER,
                "supportsImageInput": BOOLEAN,
                "supportsTools": BOOLEAN,
                "supportsLora": BOOLEAN,
                "importedFrom": STRING,
                "fineTuningJob": STRING,
                "cluster": STRING,
            },
            required=(
                "name",
                "displayName",
                "description",
                "createTime",
                "updateTime",
                "state",
                "status",
                "kind",
            ),
            description="The Fireworks Model resource. Fields a caller sets that weightport "
            "does not interpret are kept and returned as given.",
        ),
        "ModelInput": obj(
            {
                "displayName": {"type": "string", "maxLength": 63},
                "description": {"type": "string", "maxLength": 999},
                "kind": enum(sorted(KINDS)),
                "baseModelDetails": {"type": ["object", "null"]},
                "peftDetails": {"type": ["object", "null"]},
            },
            description="Model fields to set; read-only ones (name, state, …) are ignored.",
        ),
        "ListModelsResponse": obj(
            {"models": array(ref("Model")), "nextPageToken": STRING, "totalSize": INTEGER},
            required=("models", "nextPageToken", "totalSize"),
        ),
        "GetDownloadEndpointResponse": obj(
            {
                "filenameToSignedUrls": obj({}, extra={"type": "string", "format": "uri"}),
                "filenameToSize": obj({}, extra=INT64_STRING),
                "filenameToSha256": obj({}, extra=SHA256_HEX),
            },
            description="Signed GET URLs per file (weightport adds each file's size and "
            "sha256 for clients that verify).",
        ),
        "GetUploadEndpointRequest": obj(
            {
                "filenameToSize": obj(
                    {},
                    extra={"oneOf": [INT64_STRING, {"type": "integer", "minimum": 0}]},
                    description="Relative path → size in bytes (a number or a decimal string).",
                )
                | {"minProperties": 1, "maxProperties": MAX_FILES},
                "filenameToSha256": obj(
                    {},
                    extra=SHA256_HEX,
                    description="weightport's extension: the sha256 each file must have.",
                ),
                "enableResumableUpload": BOOLEAN,
                "readMask": STRING,
            },
            required=("filenameToSize",),
        ),
        "GetUploadEndpointResponse": obj(
            {
                "filenameToSignedUrls": obj({}, extra={"type": "string", "format": "uri"}),
                "filenameToUnsignedUris": obj({}, extra=STRING),
            },
            required=("filenameToUnsignedUris",),
        ),
        "ImportModelRequest": obj(
            {
                "awsS3Source": obj(
                    {"s3Uri": {"type": "string", "pattern": "^s3://"}}, required=("s3Uri",)
                )
            },
            required=("awsS3Source",),
        ),
        "ImportModelOperation": obj(
            {
                "name": {"type": "string", "pattern": "^accounts/[^/]+/models/[^/]+/operations/"},
                "done": {"type": "boolean", "enum": [True]},
                "response": ref("Model"),
            },
            required=("name", "done", "response"),
            description="A finished google.longrunning.Operation whose response is the model.",
        ),
        "ValidateUploadResponse": obj({"warnings": array(STRING)}, required=("warnings",)),
        "Empty": obj({}, extra=False),
    }


def _errors(*statuses: int) -> dict[str, Schema]:
    return error_responses(ENVELOPE, statuses)


def _item_op(operation_id: str, summary: str, ok: dict[str, Schema], **more: Any) -> Schema:
    errors = more.pop("errors", COMMON)
    parameters = [ACCOUNT, MODEL, *more.pop("parameters", ())]
    return operation(
        operation_id,
        summary,
        tags=[TAG],
        parameters=parameters,
        responses={**ok, **_errors(*errors)},
        **more,
    )


def paths() -> dict[str, Schema]:
    query_bool = [
        param(name, "query", BOOLEAN)
        for name in ("configOnly", "skipHfConfigValidation", "trustRemoteCode")
    ]
    return {
        COLLECTION: {
            "get": operation(
                "listModels",
                "List the account's models",
                tags=[TAG],
                parameters=[
                    ACCOUNT,
                    param("filter", "query", STRING, description='e.g. state="READY"'),
                    param("orderBy", "query", STRING, description='e.g. "createTime desc"'),
                    param("pageSize", "query", {"type": "integer", "minimum": 0}),
                    param("pageToken", "query", STRING),
                    READ_MASK,
                ],
                responses={**ok_json(ref("ListModelsResponse")), **_errors(*COMMON)},
            ),
            "post": operation(
                "createModel",
                "Create a model (state UPLOADING)",
                tags=[TAG],
                parameters=[ACCOUNT],
                body=json_body(
                    obj(
                        {
                            "modelId": {"type": "string", "pattern": MODEL_ID.pattern},
                            "model": {"anyOf": [ref("ModelInput"), {"type": "null"}]},
                            "cluster": {"description": "Accepted and ignored"},
                        },
                        required=("modelId",),
                    )
                ),
                responses={
                    **ok_json(ref("Model"), links=links_to(MODEL_OPERATIONS, CREATED)),
                    **_errors(*WRITES, 409),
                },
            ),
        },
        ITEM: {
            "get": _item_op(
                "getModel", "Get a model", ok_json(ref("Model")), parameters=[READ_MASK]
            ),
            "patch": _item_op(
                "updateModel",
                "Update the given fields of a model",
                ok_json(ref("Model")),
                parameters=[param("updateMask", "query", STRING)],
                body=json_body(ref("ModelInput")),
                errors=WRITES,
            ),
            "delete": _item_op(
                "deleteModel",
                "Delete a model (refused while a fine-tune uses it as its base)",
                ok_json(ref("Empty")),
                errors=(*COMMON, 507),
            ),
        },
        ITEM + ":getDownloadEndpoint": {
            "get": _item_op(
                "getDownloadEndpoint",
                "Signed download URLs for every file of a READY model",
                ok_json(ref("GetDownloadEndpointResponse")),
                parameters=[READ_MASK],
            ),
        },
        ITEM + ":getUploadEndpoint": {
            "post": _item_op(
                "getUploadEndpoint",
                "Declare the model's files; signed upload URLs for those not landed yet",
                ok_json(
                    ref("GetUploadEndpointResponse"),
                    links=links_to(
                        ("validateUpload", "getDownloadEndpoint"),
                        {"account": "$request.path.account", "model": "$request.path.model"},
                    ),
                ),
                body=json_body(ref("GetUploadEndpointRequest")),
                errors=(*WRITES, 409),
            ),
        },
        ITEM + ":validateUpload": {
            "get": _item_op(
                "validateUpload",
                "Check every declared file landed (400 FAILED_PRECONDITION until then); READY",
                ok_json(ref("ValidateUploadResponse")),
                parameters=query_bool,
                errors=(*COMMON, 409, 507),
            ),
        },
        ITEM + ":import": {
            "post": _item_op(
                "importModel",
                "Fill an UPLOADING model from an S3 folder under one of the operator's "
                "s3_import_prefixes (copied server-side, hashed); then validateUpload",
                ok_json(ref("ImportModelOperation")),
                body=json_body(ref("ImportModelRequest")),
                errors=WRITES,
            ),
        },
        ITEM + ":prepare": {
            "post": _item_op(
                "prepareModel",
                "Accepted for compatibility; nothing to prepare",
                ok_json(ref("Empty")),
                body=json_body(
                    obj(
                        {"precision": {}, "readMask": {}},
                        description="Accepted and ignored: weightport serves files as stored.",
                    ),
                    required=False,
                ),
                errors=(*COMMON, 413),
            ),
        },
    }
