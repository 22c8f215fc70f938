"""The Together fine-tune API and weightport's registration routes as OpenAPI.

Shapes follow the official ``together`` SDK (``FinetuneResponse``, the checkpoint list,
whoami); errors are Together's ``{"error": {"message", "type", "param", "code"}}``, which the
registration routes (``/weightport/v1``) share.
"""

from __future__ import annotations

from weightport.catalog.finetunes import MAX_STEP
from weightport.server.openapi.bytes import REDIRECT_TO_STORE, REQUEST_HEADERS, byte_responses
from weightport.server.openapi.kit import (
    INTEGER,
    NULLABLE_STRING,
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
from weightport.services.finetune_archives import CHECKPOINT_VALUES

TAG = "Together fine-tunes"
ADMIN_TAG = "weightport fine-tune registration"
ENVELOPE = "TogetherError"
ADMIN = "/weightport/v1/fine-tunes"
FT_ID = param("ft_id", "path", STRING, description="Fine-tune id, `ft-…`")
STEP: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_STEP}
COMMON = (400, 401, 404, 503)
JOB_OPERATIONS = ("getFineTune", "listCheckpoints", "registerCheckpoint", "buildArchive")
CREATED = {"ft_id": "$response.body#/id"}


def schemas() -> dict[str, Schema]:
    training_type = obj(
        {
            "type": enum(["Lora", "Full"]),
            "lora_r": INTEGER,
            "lora_alpha": {"type": "number"},
            "lora_dropout": {"type": "number"},
            "lora_trainable_modules": STRING,
        },
        required=("type",),
    )
    archive = obj(
        {
            "step": INTEGER,
            "artifact": STRING,
            "state": STRING,
            "done_bytes": INTEGER,
            "total_bytes": INTEGER,
            "size": {"type": ["integer", "null"]},
            "level": INTEGER,
            "error": NULLABLE_STRING,
        },
        description="A compressed archive build of one of the job's artifacts.",
    )
    return {
        ENVELOPE: obj(
            {
                "error": obj(
                    {
                        "message": STRING,
                        "type": STRING,
                        "param": NULLABLE_STRING,
                        "code": NULLABLE_STRING,
                    },
                    required=("message", "type", "param", "code"),
                )
            },
            required=("error",),
            description="Together's ErrorData envelope.",
        ),
        "FinetuneResponse": obj(
            {
                "id": {"type": "string", "pattern": "^ft-"},
                "object": enum(["fine-tune"]),
                "status": enum(
                    [
                        "pending",
                        "queued",
                        "running",
                        "compressing",
                        "uploading",
                        "cancel_requested",
                        "cancelled",
                        "error",
                        "user_error",
                        "completed",
                    ]
                ),
                "user_id": STRING,
                "model": STRING,
                "model_output_name": STRING,
                "model_output_path": STRING,
                "suffix": NULLABLE_STRING,
                "training_type": training_type,
                "n_checkpoints": INTEGER,
                "created_at": TIMESTAMP,
                "updated_at": TIMESTAMP,
                "started_at": TIMESTAMP,
                "total_price": INTEGER,
                "events": array({"type": "object"}),
                "weightport_archives": array(archive),
            },
            required=(
                "id",
                "status",
                "user_id",
                "model_output_name",
                "training_type",
                "created_at",
                "updated_at",
                "total_price",
            ),
        ),
        "FinetuneList": obj(
            {"object": enum(["list"]), "data": array(ref("FinetuneResponse"))},
            required=("data",),
        ),
        "CheckpointList": obj(
            {
                "object": enum(["list"]),
                "data": array(
                    obj(
                        {
                            "step": INTEGER,
                            "checkpoint_type": enum(
                                ["Intermediate", "Final", "Final Merged", "Final Adapter"]
                            ),
                            "created_at": TIMESTAMP,
                            "path": STRING,
                            "checkpoint": enum(["model", "adapter"]),
                        },
                        required=("step", "checkpoint_type", "created_at", "path"),
                    )
                ),
            },
            required=("data",),
        ),
        "Whoami": obj(
            {
                "type": STRING,
                "api_key": obj({"id": STRING}),
                "organization": obj({"id": STRING, "name": STRING}),
                "project": obj({"id": STRING, "name": STRING, "slug": STRING}),
            },
            required=("type",),
        ),
        "CheckpointRegistration": obj(
            {
                "step": STEP,
                "kind": enum(["intermediate", "final"]),
                "model": {"type": "string", "description": "A READY model of this account"},
            },
            required=("step", "model"),
        ),
        "FinetuneRegistration": obj(
            {
                "base_model": STRING,
                "training_type": enum(["Lora", "Full"]),
                "model_output_name": STRING,
                "suffix": STRING,
                "checkpoints": array(ref("CheckpointRegistration")),
            },
            required=("base_model", "training_type"),
        ),
        "ArchiveBuildRequest": obj(
            {
                "checkpoint": {"anyOf": [enum(sorted(CHECKPOINT_VALUES)), {"type": "null"}]},
                "checkpoint_step": {"anyOf": [STEP, {"type": "null"}]},
            }
        ),
        "ArchiveBuildQueued": obj(
            {"plan_digest": STRING, "queued": {"type": "boolean"}},
            required=("plan_digest", "queued"),
        ),
    }


def _errors(*statuses: int) -> dict[str, Schema]:
    return error_responses(ENVELOPE, statuses)


def paths() -> dict[str, Schema]:
    whoami = operation(
        "whoami",
        "Who the API key belongs to (the Together CLI asks first)",
        tags=[TAG],
        responses={**ok_json(ref("Whoami")), **_errors(401, 503)},
    )
    v1_whoami = {**whoami, "operationId": "whoamiV1"}
    download = operation(
        "downloadFineTune",
        "One deterministic .tar.zst of a fine-tune's artifact (merged, adapter, full output, "
        "or the checkpoint at a step)",
        tags=[TAG],
        parameters=[
            param("ft_id", "query", {"type": "string", "pattern": "^ft-"}, required=True),
            param("checkpoint", "query", enum(sorted(CHECKPOINT_VALUES))),
            param("checkpoint_step", "query", STEP),
            *REQUEST_HEADERS,
        ],
        responses={
            **byte_responses("application/zstd"),
            **REDIRECT_TO_STORE,
            **_errors(*COMMON, 412, 429),
        },
    )
    head = {**download, "operationId": "headFineTuneDownload"}
    return {
        "/v3/whoami": {"get": whoami},
        "/v1/whoami": {"get": v1_whoami},
        "/v1/fine-tunes": {
            "get": operation(
                "listFineTunes",
                "The account's fine-tune jobs",
                tags=[TAG],
                responses={**ok_json(ref("FinetuneList")), **_errors(401, 503)},
            )
        },
        "/v1/fine-tunes/{ft_id}": {
            "get": operation(
                "getFineTune",
                "One fine-tune job",
                tags=[TAG],
                parameters=[FT_ID],
                responses={**ok_json(ref("FinetuneResponse")), **_errors(*COMMON)},
            )
        },
        "/v1/fine-tunes/{ft_id}/checkpoints": {
            "get": operation(
                "listCheckpoints",
                "The job's checkpoints, newest first",
                tags=[TAG],
                parameters=[FT_ID],
                responses={**ok_json(ref("CheckpointList")), **_errors(*COMMON)},
            )
        },
        "/v1/finetune/download": {"get": download, "head": head},
        ADMIN: {
            "post": operation(
                "registerFineTune",
                "Register a fine-tune from READY models of this account (no bytes copied)",
                tags=[ADMIN_TAG],
                body=json_body(ref("FinetuneRegistration")),
                responses={
                    **ok_json(ref("FinetuneResponse"), links=links_to(JOB_OPERATIONS, CREATED)),
                    **_errors(*COMMON, 409, 413, 507),
                },
            )
        },
        ADMIN + "/{ft_id}/checkpoints": {
            "post": operation(
                "registerCheckpoint",
                "Add a checkpoint to a registered fine-tune",
                tags=[ADMIN_TAG],
                parameters=[FT_ID],
                body=json_body(ref("CheckpointRegistration")),
                responses={**ok_json(ref("FinetuneResponse")), **_errors(*COMMON, 409, 413, 507)},
            )
        },
        ADMIN + "/{ft_id}/archives": {
            "post": operation(
                "buildArchive",
                "Queue a compressed archive build (progress in weightport_archives)",
                tags=[ADMIN_TAG],
                parameters=[FT_ID],
                body=json_body(ref("ArchiveBuildRequest"), required=False),
                responses={
                    **ok_json(ref("ArchiveBuildQueued"), "Queued (or already built)", 202),
                    **_errors(*COMMON, 413, 507),
                },
            )
        },
    }
