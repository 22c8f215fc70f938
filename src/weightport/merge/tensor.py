"""The arithmetic of a LoRA merge, reproducing peft's ``merge_and_unload`` on CPU bit for bit.

peft (``peft/tuners/lora/layer.py``), loading an adapter the default way
(``autocast_adapter_dtype=True``), holds ``lora_A`` and ``lora_B`` in float32 whatever dtype
they were saved in, and merges each layer as:

- ``Linear``: ``delta = transpose(B @ A, fan_in_fan_out) * scaling`` in float32, then
  ``W += delta`` — PyTorch computes a mixed-dtype in-place add in float32 and rounds once to
  W's dtype;
- ``Embedding``: ``delta = (B @ A).T * scaling`` in float32, then ``W += delta.to(W.dtype)`` —
  the delta is rounded to W's dtype *before* the add, which rounds again.

PyTorch's CPU ``B @ A`` (MKL sgemm) accumulates each element over the rank in order with a
fused multiply-add per step: ``acc = fma(B[i, k], A[k, j], acc)``. NumPy's matmul sums in
another order (about 1 in 20 elements differ). :func:`lora_product` emulates the sequential
FMA exactly in float64: a float32 × float32 product is exact in float64, the float64 sum is
rounded once more, and rounding that to float32 is wrong only when the float64 sum is inexact
and lands exactly on a float32 midpoint; those rare elements are detected and recomputed with
an error-free sum. The result does not depend on the CPU or BLAS build, so every replica
serves the same bytes.

bfloat16 has no NumPy dtype: it travels as ``uint16`` bit patterns, widened by ``<< 16`` and
narrowed with round-to-nearest-even like PyTorch's vectorised CPU kernels (which write NaN as
``0xFFFF``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from weightport.errors import InvalidArgument

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Base-weight dtypes a LoRA delta can be merged into.
MERGEABLE_DTYPES = ("F32", "F16", "BF16")
#: Dtypes accepted for lora_A / lora_B (peft upcasts these to float32 when loading).
FACTOR_DTYPES = ("F32", "F16", "BF16")

_STORAGE: dict[str, np.dtype[np.generic]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}

# float64 keeps 29 more fraction bits than float32; a float32 midpoint has exactly the top
# one of them set.
_LOW29 = np.uint64((1 << 29) - 1)
_MIDPOINT = np.uint64(1 << 28)
# Inside these magnitude bounds every partial sum is a multiple of 2**-126, so it is either
# zero or a normal float32, and the midpoint test above is complete (see lora_product).
_MIN_FAST = 2.0**-40
_MAX_FAST = 2.0**60
# Elements per working chunk: about 256 KiB per float64 buffer keeps the loop in L2.
_CHUNK_ELEMENTS = 32 * 1024


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


def lora_factors(a: F32, b: F32, *, transposed: bool) -> tuple[F32, F32]:
    """``(left, right)`` with ``delta = left @ right`` laid out like the base weight.

    ``a`` is ``lora_A`` (``[r, in]``, or ``lora_embedding_A``), ``b`` is ``lora_B``
    (``[out, r]``). ``transposed`` is peft's ``fan_in_fan_out`` (and always true for
    embeddings): the weight is stored ``[in, out]`` and ``delta = (B @ A).T = A.T @ B.T``.
    Row ``i`` of the weight then needs only row ``i`` of ``left``.
    """
    if transposed:
        return np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
    return np.ascontiguousarray(b), np.ascontiguousarray(a)


def lora_product(left: F32, right: F32) -> F32:
    """``left @ right`` in float32, accumulated as PyTorch's CPU sgemm does.

    Element ``(i, j)`` is ``fma(left[i, r-1], right[r-1, j], … fma(left[i, 0], right[0, j],
    0))``: one rounding per rank step, in rank order. Exact for every input; inputs outside
    ``[2**-40, 2**60]`` in magnitude (or non-finite) take a slower fully checked path.
    """
    n, rank = left.shape
    if right.shape[0] != rank:
        raise InvalidArgument(f"LoRA factors do not chain: {left.shape} @ {right.shape}")
    m = right.shape[1]
    out = np.empty((n, m), dtype=np.float32)
    if out.size == 0:
        return out
    if rank == 0:
        out.fill(0)
        return out
    left64 = left.astype(np.float64)
    right64 = right.astype(np.float64)
    checked = not (_in_fast_range(left) and _in_fast_range(right))
    rows = max(1, _CHUNK_ELEMENTS // m)
    scratch = _Scratch(min(rows, n) * m)
    # inf and NaN propagate as in IEEE arithmetic; they are results, not errors.
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            _product_chunk(left64[start:stop], right64, out[start:stop], scratch, checked)
    return out


def merge_rows(
    base_rows: npt.NDArray[np.generic],
    left_rows: F32,
    right: F32,
    scaling: float,
    *,
    dtype: str,
    round_delta: bool = False,
) -> npt.NDArray[np.generic]:
    """Rows of a merged weight: ``base_rows + (left_rows @ right) * scaling``, peft's rounding.

    ``base_rows`` is in :func:`storage_dtype` form and the result is too. ``round_delta``
    rounds the delta to ``dtype`` before adding (peft's ``Embedding`` does this; ``Linear``
    does not).
    """
    if dtype not in MERGEABLE_DTYPES:
        raise InvalidArgument(f"cannot merge a LoRA delta into a {dtype} weight")
    # torch multiplies a float32 tensor by a Python scalar in float32.
    delta = lora_product(left_rows, right)
    with np.errstate(over="ignore", invalid="ignore"):
        np.multiply(delta, np.float32(scaling), out=delta)
        if dtype == "F32":
            return np.add(base_rows.view(np.float32), delta)
        if round_delta:
            delta = to_float32(from_float32(delta, dtype), dtype)
        widened = to_float32(base_rows, dtype)
        np.add(widened, delta, out=widened)
    return from_float32(widened, dtype)


def merge_tensor(
    weight: npt.NDArray[np.generic],
    a: F32,
    b: F32,
    scaling: float,
    *,
    dtype: str,
    fan_in_fan_out: bool = False,
    embedding: bool = False,
) -> npt.NDArray[np.generic]:
    """The merged weight of one layer, bit-identical to peft's ``merge_and_unload`` on CPU.

    ``weight`` is the base weight in :func:`storage_dtype` form (bfloat16 as ``uint16``);
    ``a``/``b`` are ``lora_A``/``lora_B`` (or ``lora_embedding_A``/``_B``) as float32.
    """
    left, right = lora_factors(a, b, transposed=fan_in_fan_out or embedding)
    if weight.shape != (left.shape[0], right.shape[1]):
        raise InvalidArgument(
            f"LoRA delta {left.shape[0]}x{right.shape[1]} does not fit weight {weight.shape}"
        )
    return merge_rows(weight, left, right, scaling, dtype=dtype, round_delta=embedding)


class _Scratch:
    """Reusable work buffers for one chunk (allocating per step costs ~2x)."""

    def __init__(self, size: int) -> None:
        self.product = np.empty(size, dtype=np.float64)
        self.total = np.empty(size, dtype=np.float64)
        self.low = np.empty(size, dtype=np.uint64)
        self.flag = np.empty(size, dtype=np.bool_)


def _in_fast_range(x: F32) -> bool:
    mag = np.abs(x)
    nonzero = mag[mag != 0]
    if nonzero.size == 0:
        return True
    return bool(nonzero.min() >= _MIN_FAST and nonzero.max() <= _MAX_FAST)


def _product_chunk(left64: F64, right64: F64, out: F32, s: _Scratch, checked: bool) -> None:
    h, rank = left64.shape
    m = right64.shape[1]
    size = h * m
    product = s.product[:size].reshape(h, m)
    total = s.total[:size].reshape(h, m)
    low = s.low[:size]
    flag = s.flag[:size]
    flat_out = out.reshape(-1)
    flat_product = product.reshape(-1)
    flat_total = total.reshape(-1)
    # Step 0: fma(l, r, 0) is the product rounded once; float64 holds the product exactly.
    np.multiply(left64[:, 0:1], right64[0:1, :], out=product)
    out[...] = product
    for k in range(1, rank):
        np.multiply(left64[:, k : k + 1], right64[k : k + 1, :], out=product)
        np.add(product, out, out=total)  # the float32 accumulator widens exactly
        if checked:
            idx: npt.NDArray[np.intp] = np.arange(size)
        else:
            np.bitwise_and(flat_total.view(np.uint64), _LOW29, out=low)
            np.equal(low, _MIDPOINT, out=flag)
            idx = np.flatnonzero(flag) if flag.any() else _NONE
        previous = flat_out[idx].astype(np.float64)
        out[...] = total
        if idx.size:
            _correct(flat_total[idx], flat_product[idx], previous, flat_out, idx)


_NONE: npt.NDArray[np.intp] = np.empty(0, dtype=np.intp)


def _correct(
    total: F64,
    product: F64,
    acc: F64,
    out: F32,
    idx: npt.NDArray[np.intp],
) -> None:
    """Fix ``out[idx] = f32(total)`` where ``total = f64(product + acc)`` was double-rounded.

    A double rounding is wrong only if ``total`` is inexact and exactly halfway between two
    float32 values: then the exact sum lies on the side given by the sign of the float64
    rounding error (Knuth's TwoSum), and the float32 neighbour on that side is correct.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        virtual = total - product
        err = (product - (total - virtual)) + (acc - virtual)
        near = out[idx]
        near64 = near.astype(np.float64)
        toward = np.where(total > near64, np.inf, -np.inf).astype(np.float32)
        other = np.nextafter(near, toward)
        other64 = other.astype(np.float64)
        halfway = (near64 + other64) * 0.5
        wrong = (
            (total == halfway) & (err != 0) & np.isfinite(err) & ((err > 0) == (other64 > total))
        )
    if wrong.any():
        out[idx[wrong]] = other[wrong]
