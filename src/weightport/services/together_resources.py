"""Rendering Together fine-tune resources (``FinetuneResponse``, checkpoint list, whoami)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from weightport.catalog import finetunes
from weightport.catalog.schema import ArchiveBuild, Checkpoint, FineTune


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _number(value: float | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def training_type_json(job: FineTune) -> dict[str, Any]:
    if job.training_type == finetunes.LORA:
        return {
            "type": "Lora",
            "lora_r": job.lora_r,
            "lora_alpha": _number(job.lora_alpha),
            "lora_dropout": 0.0,
            "lora_trainable_modules": "all-linear",
        }
    return {"type": "Full"}


def output_path(job: FineTune, step: int | None = None, artifact: str = "") -> str:
    tail = f"/step-{step}" if step is not None else ""
    return f"weightport://{job.id}{tail}{'/' + artifact if artifact else ''}"


def archive_json(build: ArchiveBuild) -> dict[str, Any]:
    return {
        "step": build.step,
        "artifact": build.artifact,
        "state": build.state,
        "done_bytes": build.done_bytes,
        "total_bytes": build.total_bytes,
        "size": build.size,
        "level": build.level,
        "error": build.error or None,
    }


def fine_tune_json(job: FineTune, builds: Sequence[ArchiveBuild] = ()) -> dict[str, Any]:
    base = job.base_model
    return {
        "id": job.id,
        "object": "fine-tune",
        "status": job.status,
        "user_id": job.account_id,
        "owner_address": job.account_id,
        "model": f"{base.account_id}/{base.model_id}",
        "model_output_name": job.model_output_name,
        "model_output_path": output_path(job),
        "suffix": job.suffix or None,
        "training_type": training_type_json(job),
        "training_method": {"method": "sft"},
        "n_epochs": 1,
        "n_checkpoints": len(job.checkpoints),
        "n_evals": 0,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.created_at),
        "total_price": 0,
        "events": [],
        "weightport_archives": [archive_json(b) for b in builds],
    }


def checkpoint_entries(job: FineTune, checkpoint: Checkpoint) -> list[dict[str, Any]]:
    """Together's checkpoint rows: a final LoRA checkpoint is listed merged and adapter."""
    artifacts = {f.artifact for f in checkpoint.files}
    base = {"step": checkpoint.step, "created_at": iso(checkpoint.created_at)}
    if checkpoint.kind == finetunes.INTERMEDIATE:
        kind = finetunes.ADAPTER if finetunes.ADAPTER in artifacts else finetunes.MODEL
        return [
            {
                **base,
                "checkpoint_type": "Intermediate",
                "path": output_path(job, checkpoint.step, kind),
                "checkpoint": kind,
            }
        ]
    if job.training_type == finetunes.LORA:
        return [
            {
                **base,
                "checkpoint_type": "Final Merged",
                "path": output_path(job, checkpoint.step, "merged"),
                "checkpoint": "model",
            },
            {
                **base,
                "checkpoint_type": "Final Adapter",
                "path": output_path(job, checkpoint.step, "adapter"),
                "checkpoint": "adapter",
            },
        ]
    return [
        {
            **base,
            "checkpoint_type": "Final",
            "path": output_path(job, checkpoint.step, "model"),
            "checkpoint": "model",
        }
    ]


def whoami_json(account_id: str) -> dict[str, Any]:
    return {
        "type": "project_api_key",
        "api_key": {"id": "key"},
        "organization": {"id": account_id, "name": account_id},
        "project": {"id": account_id, "name": "Default", "slug": "default"},
    }
