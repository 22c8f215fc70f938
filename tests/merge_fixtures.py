"""Builders for the merge tests: safetensors bytes without torch, file-backed sources, and a
reference merged shard assembled tensor by tensor (independent of the view's block logic)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from weightport.merge.adapter import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from weightport.merge.plan import plan_merge
from weightport.merge.safetensors_format import read_header
from weightport.merge.tensor import (
    F32,
    LoraDelta,
    from_float32,
    lora_factors,
    storage_dtype,
    to_float32,
)
from weightport.storage.base import ByteSource, MemorySource
from weightport.storage.files import PathSource

_NUMPY = {
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "F64": "<f8",
    "I64": "<i8",
    "I32": "<i4",
    "U8": "u1",
    "BOOL": "?",
}


def merge_rows(
    base_rows: npt.NDArray[np.generic],
    left: F32,
    right: F32,
    scaling: float,
    *,
    dtype: str,
    round_delta: bool = False,
) -> npt.NDArray[np.generic]:
    """``base_rows + (left @ right) * scaling`` with peft's rounding, in one call: the
    :class:`LoraDelta` the merged view prepares per weight, used once."""
    delta = LoraDelta.prepare(left, right, scaling, dtype=dtype, round_delta=round_delta)
    return delta.merge_rows(base_rows)


def safetensors_bytes(
    tensors: Mapping[str, tuple[str, np.ndarray]],
    *,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """A safetensors file: name -> (dtype, array in storage form). BF16 arrays are uint16."""
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    chunks: list[bytes] = []
    offset = 0
    for name, (dtype, array) in tensors.items():
        data = np.ascontiguousarray(array, dtype=_NUMPY[dtype]).tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + b"".join(chunks)


def bf16(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 bit patterns (uint16)."""
    return np.asarray(from_float32(np.asarray(values, dtype=np.float32), "BF16"))


def dir_sources(root: Path) -> dict[str, ByteSource]:
    """Every regular file under ``root`` by its relative POSIX path."""
    return {
        p.relative_to(root).as_posix(): PathSource(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def memory_sources(files: Mapping[str, bytes]) -> dict[str, ByteSource]:
    return {path: MemorySource(data) for path, data in files.items()}


def adapter_files(
    config: Mapping[str, object], tensors: Mapping[str, tuple[str, np.ndarray]]
) -> dict[str, bytes]:
    return {
        ADAPTER_CONFIG_FILE: json.dumps(config).encode(),
        ADAPTER_WEIGHTS_FILE: safetensors_bytes(tensors),
    }


def read_all(source: ByteSource) -> bytes:
    buf = bytearray(source.size)
    source.readinto(0, memoryview(buf))
    return bytes(buf)


def reference_shard(
    base: Mapping[str, ByteSource], adapter: Mapping[str, ByteSource], path: str
) -> bytes:
    """The merged shard ``path`` built whole: each tensor through ``merge_rows`` at once."""
    plan = plan_merge(base, adapter).shards[path]
    base_bytes = read_all(plan.base)
    adapter_bytes = read_all(plan.adapter)
    out = bytearray(base_bytes)
    for target in plan.targets.values():
        t, src = target.base, target.weight_source
        if src is None:
            weight = np.frombuffer(base_bytes[t.begin : t.end], dtype=storage_dtype(t.dtype))
        else:
            w = _factor(adapter_bytes, src.begin, src.end, src.dtype, src.shape)
            weight = np.asarray(from_float32(w, t.dtype))
        a = _factor(adapter_bytes, target.a.begin, target.a.end, target.a.dtype, target.a.shape)
        b = _factor(adapter_bytes, target.b.begin, target.b.end, target.b.dtype, target.b.shape)
        left, right = lora_factors(a, b, transposed=target.transposed)
        merged = merge_rows(
            weight.reshape(t.shape),
            left,
            right,
            target.scaling,
            dtype=t.dtype,
            round_delta=target.round_delta,
        )
        out[t.begin : t.end] = merged.tobytes()
    for rep in plan.replacements.values():
        src, t = rep.source, rep.base
        values = _factor(adapter_bytes, src.begin, src.end, src.dtype, src.shape)
        out[t.begin : t.end] = from_float32(values, t.dtype).tobytes()
    read_header(MemorySource(bytes(out)))  # still a valid file
    return bytes(out)


def _factor(data: bytes, begin: int, end: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    raw = np.frombuffer(data[begin:end], dtype=storage_dtype(dtype))
    return to_float32(raw, dtype).reshape(shape)
