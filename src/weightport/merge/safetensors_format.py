"""The safetensors file layout, read from any :class:`~weightport.storage.base.ByteSource`.

A safetensors file is an 8-byte little-endian unsigned header length ``N``, then ``N`` bytes of
UTF-8 JSON, then the tensor data. The JSON maps each tensor name to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets relative to the first data byte) and may hold a
``"__metadata__"`` object of string values. The reference implementation requires the tensors
to tile the data section exactly: sorted by offset they start at 0, follow each other without
gaps, each spans ``prod(shape) * itemsize`` bytes, and the last one ends at the end of the file.
We check the same, and more (duplicate keys, header size bounds), because the bytes come from
uploads. Every problem is an :class:`~weightport.errors.InvalidArgument`.

Offsets in :class:`TensorInfo` are *absolute* file offsets, half-open ``[begin, end)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from weightport.errors import InvalidArgument
from weightport.storage.base import ByteSource

#: The reference implementation refuses headers above this size (100 MB).
MAX_HEADER_SIZE = 100_000_000

#: Bytes per element of every whole-byte dtype safetensors defines. Sub-byte types (F4, F6_*)
#: are not accepted: no model we merge uses them and their sizes are not per-element.
DTYPE_SIZES: Mapping[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "C64": 8,
    "I64": 8,
    "U64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file; ``[begin, end)`` are absolute offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed, validated safetensors header.

    ``prefix`` is the file's first ``data_start`` bytes exactly as stored (length field, JSON
    and its padding), so a view can reproduce them byte for byte. ``tensors`` is sorted by offset.
    """

    prefix: bytes
    file_size: int
    tensors: tuple[TensorInfo, ...]
    metadata: Mapping[str, str] | None

    @property
    def data_start(self) -> int:
        return len(self.prefix)

    def tensor(self, name: str) -> TensorInfo | None:
        """The tensor called ``name``, or ``None``."""
        return self._by_name.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    @cached_property
    def _by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}


def read_header(source: ByteSource, *, what: str = "safetensors file") -> SafetensorsHeader:
    """Read and validate the header of the safetensors file in ``source``.

    ``what`` names the file in error messages (e.g. its relative path).
    Raises :class:`~weightport.errors.InvalidArgument` describing the first problem found.
    """
    size = source.size
    if size < 8:
        raise InvalidArgument(f"{what}: {size} bytes is too short for a safetensors file")
    length_field = bytearray(8)
    source.readinto(0, memoryview(length_field))
    n = int.from_bytes(length_field, "little")
    if n > MAX_HEADER_SIZE:
        raise InvalidArgument(f"{what}: header length {n} exceeds {MAX_HEADER_SIZE} bytes")
    if 8 + n > size:
        raise InvalidArgument(f"{what}: header length {n} runs past the end of the file ({size})")
    prefix = bytearray(8 + n)
    source.readinto(0, memoryview(prefix))
    return parse_header(bytes(prefix), size, what=what)


def parse_header(
    prefix: bytes, file_size: int, *, what: str = "safetensors file"
) -> SafetensorsHeader:
    """Validate ``prefix`` (length field + JSON header) of a file of ``file_size`` bytes."""
    if len(prefix) < 8:
        raise InvalidArgument(f"{what}: missing the 8-byte header length")
    n = int.from_bytes(prefix[:8], "little")
    if n > MAX_HEADER_SIZE or len(prefix) != 8 + n:
        raise InvalidArgument(f"{what}: header length {n} does not match the header read")
    if 8 + n > file_size:
        raise InvalidArgument(f"{what}: header runs past the end of the file")
    raw = prefix[8:]
    if not raw.startswith(b"{"):
        raise InvalidArgument(f"{what}: header is not a JSON object")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{what}: header is not UTF-8") from exc
    except (json.JSONDecodeError, _DuplicateKey, RecursionError) as exc:
        raise InvalidArgument(f"{what}: header is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what}: header is not a JSON object")

    metadata = _parse_metadata(doc.pop("__metadata__", None), what)
    data_start = 8 + n
    tensors = sorted(
        (_parse_tensor(name, entry, data_start, what) for name, entry in doc.items()),
        key=lambda t: (t.begin, t.end),
    )
    cursor = data_start
    for t in tensors:
        if t.begin != cursor:
            raise InvalidArgument(
                f"{what}: tensor {t.name!r} starts at data offset {t.begin - data_start}, "
                f"expected {cursor - data_start} (tensors must tile the data section)"
            )
        cursor = t.end
    if cursor != file_size:
        raise InvalidArgument(
            f"{what}: tensors end at byte {cursor} but the file has {file_size} bytes"
        )
    return SafetensorsHeader(
        prefix=bytes(prefix), file_size=file_size, tensors=tuple(tensors), metadata=metadata
    )


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_metadata(value: object, what: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument(f"{what}: __metadata__ must map strings to strings")
    return dict(value)


def _parse_tensor(name: str, entry: object, data_start: int, what: str) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise InvalidArgument(
            f"{what}: tensor {name!r} must have exactly dtype, shape and data_offsets"
        )
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise InvalidArgument(f"{what}: tensor {name!r} has unsupported dtype {dtype!r}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise InvalidArgument(f"{what}: tensor {name!r} has an invalid shape {shape!r}")
    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise InvalidArgument(f"{what}: tensor {name!r} has invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise InvalidArgument(
            f"{what}: tensor {name!r} spans {offsets[1] - offsets[0]} bytes but "
            f"{dtype}{shape} needs {expected}"
        )
    return TensorInfo(
        name=name,
        dtype=dtype,
        shape=tuple(shape),
        begin=data_start + offsets[0],
        end=data_start + offsets[1],
    )


def _is_count(value: object) -> bool:
    # bool is an int subclass in Python; JSON true is not a dimension.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
