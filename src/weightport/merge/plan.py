"""Which bytes of a merged model come from where: checked once, from headers only.

A merge plan pairs every LoRA factor pair in the adapter with the base tensor it changes,
every ``modules_to_save`` (or trained bias) tensor with the base tensor it replaces, and sorts
the base model's files into merged shards, files passed through unchanged, and files dropped
(weights in other formats, which would hold the *unmerged* weights). Nothing but the
safetensors headers and the two small JSON files is read, so :func:`validate_merge` is cheap
enough to run when an adapter is registered and again before every download.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace

from weightport.errors import InvalidArgument
from weightport.merge.adapter import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    AdapterConfig,
    AdapterKey,
    Role,
    parse_adapter_key,
)
from weightport.merge.safetensors_format import SafetensorsHeader, TensorInfo, read_header
from weightport.merge.tensor import FACTOR_DTYPES, MERGEABLE_DTYPES
from weightport.storage.base import ByteSource

INDEX_FILE = "model.safetensors.index.json"
# Base files that hold weights in another format: passing them through would ship the
# unmerged weights next to the merged ones.
_OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
_OTHER_WEIGHT_INDEXES = (".bin.index.json", ".h5.index.json", ".msgpack.index.json")
_MAX_JSON = 64 << 20


@dataclass(frozen=True)
class LoraTarget:
    """A base weight that receives ``delta = left @ right * scaling``."""

    base: TensorInfo
    a: TensorInfo  # lora_A (or lora_embedding_A) in the adapter weights file
    b: TensorInfo  # lora_B (or lora_embedding_B)
    scaling: float
    transposed: bool  # fan_in_fan_out, or an embedding: the weight is stored [in, out]
    round_delta: bool  # peft's Embedding rounds the delta to the weight dtype first
    #: The weight to merge into, when the adapter carries it (``<module>.base_layer.weight``);
    #: cast to the base dtype first, as loading it into the base parameter does.
    weight_source: TensorInfo | None = None


@dataclass(frozen=True)
class Replacement:
    """A base tensor whose bytes come from the adapter (cast to the base dtype if needed)."""

    base: TensorInfo
    source: TensorInfo


@dataclass(frozen=True)
class ShardPlan:
    """One base safetensors file and what the merge changes in it."""

    path: str
    header: SafetensorsHeader
    base: ByteSource
    adapter: ByteSource
    targets: Mapping[str, LoraTarget]
    replacements: Mapping[str, Replacement]


@dataclass(frozen=True)
class MergeSummary:
    """What a merge will produce; returned by :func:`validate_merge`."""

    config: AdapterConfig
    merged_tensors: tuple[str, ...]  # base tensors that receive a LoRA delta
    replaced_tensors: tuple[str, ...]  # base tensors taken from the adapter
    shards: tuple[str, ...]  # base safetensors files, served merged
    passthrough: tuple[str, ...]  # other base files, served unchanged
    dropped: tuple[str, ...]  # base files left out of the merged model
    total_size: int  # bytes of all files of the merged model


@dataclass(frozen=True)
class MergePlan:
    summary: MergeSummary
    shards: Mapping[str, ShardPlan]
    passthrough: Mapping[str, ByteSource]


def validate_merge(
    base: Mapping[str, ByteSource], adapter: Mapping[str, ByteSource]
) -> MergeSummary:
    """Check that ``adapter`` merges cleanly into ``base``; raise InvalidArgument otherwise.

    Both map relative paths inside the model directory to their bytes. Every LoRA pair must
    have its base tensor with matching shapes and a mergeable dtype; the message names the
    first problem found.
    """
    return plan_merge(base, adapter).summary


def plan_merge(base: Mapping[str, ByteSource], adapter: Mapping[str, ByteSource]) -> MergePlan:
    """Read the headers of ``base`` and ``adapter``; decide where every output byte comes from."""
    config = AdapterConfig.from_json(_read_small(adapter, ADAPTER_CONFIG_FILE, "adapter"))
    weights = adapter.get(ADAPTER_WEIGHTS_FILE)
    if weights is None:
        raise InvalidArgument(
            f"the adapter has no {ADAPTER_WEIGHTS_FILE} "
            "(a pickled adapter_model.bin is not supported)"
        )
    adapter_header = read_header(weights, what=ADAPTER_WEIGHTS_FILE)

    shard_paths = sorted(p for p in base if _is_model_shard(p))
    if not shard_paths:
        raise InvalidArgument("the base model has no .safetensors weights")
    headers = {p: read_header(base[p], what=p) for p in shard_paths}
    located: dict[str, tuple[str, TensorInfo]] = {}
    for path, header in headers.items():
        for t in header.tensors:
            if t.name in located:
                raise InvalidArgument(
                    f"tensor {t.name!r} is in both {located[t.name][0]} and {path}"
                )
            located[t.name] = (path, t)
    if INDEX_FILE in base:
        _check_index(_read_small(base, INDEX_FILE, "base model"), located)

    targets, replacements = _pair_adapter_tensors(config, adapter_header, located)
    shards = {
        path: ShardPlan(
            path=path,
            header=headers[path],
            base=base[path],
            adapter=weights,
            targets={n: t for n, t in targets.items() if located[n][0] == path},
            replacements={n: r for n, r in replacements.items() if located[n][0] == path},
        )
        for path in shard_paths
    }
    dropped = sorted(p for p in base if p not in shards and _is_other_weights(p))
    passthrough = {p: base[p] for p in sorted(base) if p not in shards and p not in dropped}
    summary = MergeSummary(
        config=config,
        merged_tensors=tuple(sorted(targets)),
        replaced_tensors=tuple(sorted(replacements)),
        shards=tuple(shard_paths),
        passthrough=tuple(passthrough),
        dropped=tuple(dropped),
        total_size=sum(h.file_size for h in headers.values())
        + sum(s.size for s in passthrough.values()),
    )
    return MergePlan(summary=summary, shards=shards, passthrough=passthrough)


def _pair_adapter_tensors(
    config: AdapterConfig,
    adapter_header: SafetensorsHeader,
    located: Mapping[str, tuple[str, TensorInfo]],
) -> tuple[dict[str, LoraTarget], dict[str, Replacement]]:
    factors: dict[str, dict[Role, TensorInfo]] = {}
    keys: dict[str, AdapterKey] = {}
    replacements: dict[str, Replacement] = {}
    base_layers: dict[str, TensorInfo] = {}
    for t in adapter_header.tensors:
        key = parse_adapter_key(t.name)
        base = located.get(key.base_tensor)
        if base is None:
            raise InvalidArgument(
                f"adapter tensor {t.name!r} changes {key.base_tensor!r}, "
                "which the base model does not have"
            )
        if key.role is Role.REPLACEMENT:
            replacements[key.base_tensor] = _replacement(config, key, t, base[1])
        elif key.role is Role.BASE_LAYER:
            _check_same_layout(t, base[1])
            base_layers[key.base_tensor] = t
        else:
            keys[key.base_tensor] = key
            factors.setdefault(key.base_tensor, {})[key.role] = t

    targets: dict[str, LoraTarget] = {}
    for name, pair in factors.items():
        key = keys[name]
        if name in replacements:
            raise InvalidArgument(f"{name!r} is both LoRA-adapted and replaced by the adapter")
        targets[name] = replace(
            _target(config, key, pair, located[name][1]), weight_source=base_layers.pop(name, None)
        )
    for name, source in base_layers.items():
        if name in replacements:
            raise InvalidArgument(f"the adapter replaces {name!r} twice")
        replacements[name] = Replacement(base=located[name][1], source=source)
    return targets, replacements


def _target(
    config: AdapterConfig, key: AdapterKey, pair: Mapping[Role, TensorInfo], base: TensorInfo
) -> LoraTarget:
    embedding = Role.EMBEDDING_A in pair or Role.EMBEDDING_B in pair
    a = pair.get(Role.EMBEDDING_A if embedding else Role.LORA_A)
    b = pair.get(Role.EMBEDDING_B if embedding else Role.LORA_B)
    if a is None or b is None or len(pair) != 2:
        raise InvalidArgument(f"module {key.module!r} needs exactly one lora_A and one lora_B")
    if not config.targets(key.module):
        raise InvalidArgument(
            f"the adapter holds LoRA weights for {key.module!r}, which its target_modules "
            "does not select"
        )
    for t in (a, b):
        if t.dtype not in FACTOR_DTYPES:
            raise InvalidArgument(f"adapter tensor {t.name!r} has unsupported dtype {t.dtype}")
        if len(t.shape) != 2:
            raise InvalidArgument(f"adapter tensor {t.name!r} must be 2-D, not {list(t.shape)}")
    if base.dtype not in MERGEABLE_DTYPES:
        raise InvalidArgument(f"cannot merge into {base.name!r}: dtype {base.dtype}")
    rank = config.rank_for(key.module)
    if a.shape[0] != rank or b.shape[1] != rank:
        raise InvalidArgument(
            f"LoRA rank of {key.module!r} is {a.shape[0]}x{b.shape[1]} in the weights file but "
            f"{rank} in {ADAPTER_CONFIG_FILE}"
        )
    transposed = embedding or config.fan_in_fan_out
    expected = (a.shape[1], b.shape[0]) if transposed else (b.shape[0], a.shape[1])
    if base.shape != expected:
        raise InvalidArgument(
            f"LoRA delta for {base.name!r} has shape {list(expected)} but the base tensor has "
            f"{list(base.shape)}"
        )
    return LoraTarget(
        base=base,
        a=a,
        b=b,
        scaling=config.scaling_for(key.module),
        transposed=transposed,
        round_delta=embedding,
    )


def _replacement(
    config: AdapterConfig, key: AdapterKey, source: TensorInfo, base: TensorInfo
) -> Replacement:
    param = key.base_tensor.rsplit(".", 1)[-1]
    trained_bias = config.bias != "none" and param == "bias"
    if not (config.saves_module(key.module) or trained_bias):
        raise InvalidArgument(
            f"adapter tensor {source.name!r} is neither a LoRA factor nor part of modules_to_save"
        )
    _check_same_layout(source, base)
    return Replacement(base=base, source=source)


def _check_same_layout(source: TensorInfo, base: TensorInfo) -> None:
    """A tensor from the adapter must fit the base's header: same shape, castable dtype."""
    if source.shape != base.shape:
        raise InvalidArgument(
            f"adapter tensor {source.name!r} has shape {list(source.shape)} but "
            f"{base.name!r} has {list(base.shape)} (a resized vocabulary cannot be served "
            "with the base model's layout)"
        )
    if source.dtype != base.dtype and not (
        source.dtype in MERGEABLE_DTYPES and base.dtype in MERGEABLE_DTYPES
    ):
        raise InvalidArgument(
            f"adapter tensor {source.name!r} is {source.dtype} and cannot replace "
            f"{base.dtype} {base.name!r}"
        )


def _check_index(data: bytes, located: Mapping[str, tuple[str, TensorInfo]]) -> None:
    try:
        index = json.loads(data)
        weight_map = index["weight_map"]
        items = list(weight_map.items())
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise InvalidArgument(f"{INDEX_FILE} has no valid weight_map") from exc
    for name, path in items:
        entry = located.get(name)
        if entry is None or entry[0] != path:
            raise InvalidArgument(f"{INDEX_FILE} puts {name!r} in {path!r}, which lacks it")


def _read_small(files: Mapping[str, ByteSource], path: str, what: str) -> bytes:
    source = files.get(path)
    if source is None:
        raise InvalidArgument(f"the {what} has no {path}")
    if source.size > _MAX_JSON:
        raise InvalidArgument(f"{path} is too large ({source.size} bytes)")
    buf = bytearray(source.size)
    source.readinto(0, memoryview(buf))
    return bytes(buf)


def _is_model_shard(path: str) -> bool:
    # Only top-level files: nested ones (sentence-transformers' 2_Dense/, …) are other modules.
    return "/" not in path and path.endswith(".safetensors")


def _is_other_weights(path: str) -> bool:
    if "/" in path:
        return False
    return path.endswith(_OTHER_WEIGHT_SUFFIXES) or path.endswith(_OTHER_WEIGHT_INDEXES)
