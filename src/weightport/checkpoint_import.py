"""Registering fine-tunes and their checkpoints, with the checks that keep downloads honest.

Shared by ``weightport finetunes import`` (local directories), the demo seed and the HTTP
registration route: an adapter must parse and fit the base model tensor for tensor; full
weights must have the base model's tensor shapes. Mismatches are clear 400s here, not
broken archives later.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from weightport.catalog import finetunes, registry
from weightport.catalog.db import Catalog
from weightport.catalog.schema import Model
from weightport.errors import InvalidArgument
from weightport.ingest import FileData, store_data
from weightport.merge.adapter import AdapterConfig
from weightport.merge.safetensors_format import read_header
from weightport.merge.view import validate_merge
from weightport.services.gc import pin_stored
from weightport.storage.base import BlobSource, BlobStore
from weightport.storage.s3.folder import S3Folder


@dataclass(frozen=True)
class CheckpointSpec:
    """One checkpoint to register: its step, kind and files (by artifact)."""

    step: int
    kind: str
    artifact: str
    files: Mapping[str, BlobSource]


def model_sources(store: BlobStore, model: Model) -> dict[str, BlobSource]:
    return {f.path: BlobSource(store, f.sha256, f.declared_size) for f in model.files if f.sha256}


def _read_small(source: BlobSource, what: str, limit: int = 4 << 20) -> bytes:
    if source.size > limit:
        raise InvalidArgument(f"{what} is larger than {limit} bytes")
    buf = bytearray(source.size)
    source.readinto(0, memoryview(buf))
    return bytes(buf)


def adapter_config(files: Mapping[str, BlobSource]) -> AdapterConfig:
    source = files.get("adapter_config.json")
    if source is None:
        raise InvalidArgument("an adapter checkpoint needs adapter_config.json")
    return AdapterConfig.from_json(_read_small(source, "adapter_config.json"))


def _tensor_shapes(files: Mapping[str, BlobSource]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for path, source in sorted(files.items()):
        if path.endswith(".safetensors"):
            for tensor in read_header(source, what=path).tensors:
                shapes[tensor.name] = tuple(tensor.shape)
    return shapes


def check_checkpoint(base: Mapping[str, BlobSource], spec: CheckpointSpec) -> None:
    """Raise InvalidArgument unless the checkpoint fits the base model."""
    if spec.artifact == finetunes.ADAPTER:
        adapter_config(spec.files)
        validate_merge(base, spec.files)
        return
    if "config.json" not in spec.files:
        raise InvalidArgument("a full-weights checkpoint needs config.json")
    try:
        json.loads(_read_small(spec.files["config.json"], "config.json"))
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"config.json is not valid JSON: {exc}") from None
    mine, theirs = _tensor_shapes(spec.files), _tensor_shapes(base)
    if not mine:
        raise InvalidArgument("a full-weights checkpoint needs *.safetensors files")
    for name, shape in mine.items():
        expected = theirs.get(name)
        if expected is None:
            raise InvalidArgument(f"tensor {name!r} is not in the base model")
        if expected != shape:
            raise InvalidArgument(f"tensor {name!r} has shape {shape}, base has {expected}")


def store_files(store: BlobStore, files: Mapping[str, FileData]) -> dict[str, BlobSource]:
    stored = {}
    for path, data in sorted(files.items()):
        info = store_data(store, data)
        stored[path] = BlobSource(store, info.key, info.size)
    return stored


def store_folder(store: BlobStore, folder: S3Folder) -> dict[str, BlobSource]:
    """Every file of an S3 folder, imported in place (hashed, then copied server-side)."""
    stored = {}
    for path in folder.files():
        info = folder.import_file(store, path)
        stored[path] = BlobSource(store, info.key, info.size)
    return stored


def register_fine_tune(
    catalog: Catalog,
    store: BlobStore,
    account_id: str,
    *,
    base_model_id: str,
    training_type: str,
    checkpoints: Sequence[CheckpointSpec],
    model_output_name: str = "",
    suffix: str = "",
) -> str:
    """Validate every checkpoint against the base model, then create the job; its id."""
    base_model = catalog.call(lambda s: registry.get_model(s, account_id, base_model_id))
    if base_model.state != registry.READY:
        raise InvalidArgument(f"base model {base_model_id!r} is not READY")
    base = model_sources(store, base_model)
    lora_r: int | None = None
    lora_alpha: float | None = None
    for spec in checkpoints:
        check_checkpoint(base, spec)
        if spec.artifact == finetunes.ADAPTER and (spec.kind == finetunes.FINAL or lora_r is None):
            config = adapter_config(spec.files)
            lora_r, lora_alpha = config.r, config.lora_alpha

    def run(session: Session) -> str:
        # Imported files were just stored; files of models are referenced already.
        pin_stored(session, store, {src.key for spec in checkpoints for src in spec.files.values()})
        job = finetunes.create_fine_tune(
            session,
            account_id,
            base_model_id=base_model_id,
            training_type=training_type,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            model_output_name=model_output_name,
            suffix=suffix,
        )
        for spec in sorted(checkpoints, key=lambda c: c.step):
            refs = [
                finetunes.FileRef(spec.artifact, path, src.size, src.key)
                for path, src in spec.files.items()
            ]
            finetunes.add_checkpoint(
                session, account_id, job.id, step=spec.step, kind=spec.kind, files=refs
            )
        return job.id

    return catalog.call(run)
