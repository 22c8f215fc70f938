"""Weight dtypes as PyTorch rounds them, and peft's final step: adding a delta to a weight.

bfloat16 has no NumPy dtype: it travels as ``uint16`` bit patterns, widened by ``<< 16`` and
narrowed with round-to-nearest-even like PyTorch's vectorised CPU kernels (which write NaN as
``0xFFFF``). float16 uses NumPy's conversion, which rounds to nearest-even as PyTorch does.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from weightport.errors import InvalidArgument

F32 = npt.NDArray[np.float32]

#: Base-weight dtypes a LoRA delta can be merged into.
MERGEABLE_DTYPES = ("F32", "F16", "BF16")
#: Dtypes accepted for lora_A / lora_B (peft upcasts these to float32 when loading).
FACTOR_DTYPES = ("F32", "F16", "BF16")

_STORAGE: dict[str, np.dtype[np.generic]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}


def storage_dtype(dtype: str) -> np.dtype[np.generic]:
    """The NumPy dtype holding a safetensors ``dtype``'s bytes (``BF16`` → ``<u2`` bits)."""
    try:
        return _STORAGE[dtype]
    except KeyError:
        raise InvalidArgument(f"dtype {dtype} cannot take part in a LoRA merge") from None


def bf16_to_float32(bits: npt.NDArray[np.uint16]) -> F32:
    """Widen bfloat16 bit patterns to float32 (exact)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def float32_to_bf16(values: F32) -> npt.NDArray[np.uint16]:
    """Narrow float32 to bfloat16 bits, round-to-nearest-even; NaN becomes ``0xFFFF``."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    bias = ((u >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    out = ((u + bias) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = 0xFFFF
    return out


def to_float32(raw: npt.NDArray[np.generic], dtype: str) -> F32:
    """Values of ``raw`` (in :func:`storage_dtype` form) as float32 (exact widening)."""
    if dtype == "BF16":
        return bf16_to_float32(raw.view(np.uint16))
    storage_dtype(dtype)
    return raw.astype(np.float32)


def from_float32(values: F32, dtype: str) -> npt.NDArray[np.generic]:
    """Round float32 ``values`` to ``dtype`` (nearest-even), in :func:`storage_dtype` form."""
    if dtype == "BF16":
        return float32_to_bf16(values)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is the rounding
        return values.astype(storage_dtype(dtype))


def add_delta(
    base: npt.NDArray[np.generic], delta: F32, *, dtype: str, round_delta: bool
) -> npt.NDArray[np.generic]:
    """``base + delta`` rounded as peft's merge does; ``base`` and the result in storage form.

    ``Linear`` adds the float32 delta in float32 and rounds once to the weight's dtype;
    ``Embedding`` (``round_delta``) rounds the delta to that dtype first, then adds. Every
    step is a monotone function of ``delta`` (the bracketed merge relies on it).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype == "F32":
            return np.add(base.view(np.float32), delta)
        if round_delta:
            delta = to_float32(from_float32(delta, dtype), dtype)
        widened = to_float32(base, dtype)
        np.add(widened, delta, out=widened)
    return from_float32(widened, dtype)
