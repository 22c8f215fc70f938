"""Rendering Fireworks resources as protojson (lowerCamelCase, int64 as strings)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from weightport.catalog.registry import resource_name
from weightport.catalog.schema import Model
from weightport.errors import InvalidArgument


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def model_json(model: Model) -> dict[str, Any]:
    """The Model resource as the Fireworks gateway renders it (unpopulated fields emitted)."""
    body: dict[str, Any] = {
        "githubUrl": "",
        "huggingFaceUrl": "",
        "public": False,
        "contextLength": 0,
        "supportsImageInput": False,
        "supportsTools": False,
        "supportsLora": model.kind == "HF_BASE_MODEL",
        "importedFrom": "",
        "fineTuningJob": "",
        "cluster": "",
    }
    body.update(model.extra)
    body.update(
        {
            "name": resource_name(model.account_id, model.model_id),
            "displayName": model.display_name,
            "description": model.description,
            "createTime": rfc3339(model.created_at),
            "updateTime": rfc3339(model.updated_at),
            "state": model.state,
            "status": {"code": "OK", "message": ""},
            "kind": model.kind,
        }
    )
    if model.base_model_details is not None:
        body["baseModelDetails"] = model.base_model_details
    if model.peft_details is not None:
        body["peftDetails"] = model.peft_details
    return body


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def parse_read_mask(raw: str | None, allowed: Iterable[str]) -> set[str] | None:
    """Top-level fields to keep; ``None`` means all (empty mask or ``*``)."""
    if raw is None or raw.strip() in ("", "*"):
        return None
    known = set(allowed)
    fields: set[str] = set()
    for item in raw.split(","):
        name = _camel(item.strip().split(".", 1)[0])
        if name not in known:
            raise InvalidArgument(f"readMask: unknown field {item.strip()!r}", param="readMask")
        fields.add(name)
    return fields


def apply_read_mask(body: dict[str, Any], mask: set[str] | None) -> dict[str, Any]:
    if mask is None:
        return body
    return {key: value for key, value in body.items() if key in mask}


MODEL_FIELDS = frozenset(
    {
        "name",
        "displayName",
        "description",
        "createTime",
        "updateTime",
        "createdBy",
        "state",
        "status",
        "kind",
        "githubUrl",
        "huggingFaceUrl",
        "baseModelDetails",
        "peftDetails",
        "teftDetails",
        "public",
        "conversationConfig",
        "contextLength",
        "trainingContextLength",
        "supportsImageInput",
        "supportsTools",
        "supportsLora",
        "supportsServerless",
        "importedFrom",
        "fineTuningJob",
        "defaultDraftModel",
        "defaultDraftTokenCount",
        "deployedModelRefs",
        "cluster",
        "deprecationDate",
        "calibrated",
        "tunable",
        "rlTunable",
        "useHfApplyChatTemplate",
        "defaultSamplingParams",
        "supportedPrecisions",
        "supportedPrecisionsWithCalibration",
        "snapshotType",
    }
)
