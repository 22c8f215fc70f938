"""A second, independent derivation of PyTorch's CPU ``B @ A`` in plain NumPy, for the tests.

PyTorch's CPU sgemm (MKL) accumulates each element over the rank in order with a fused
multiply-add per step: ``acc = fma(B[i, k], A[k, j], acc)``. The product uses FMA
instructions (:mod:`weightport.merge.kernel`); this module gets the same result without them,
by emulating the sequential FMA in float64: a float32 × float32 product is exact in float64,
the float64 sum is rounded once more, and rounding that to float32 is wrong only when the
float64 sum is inexact and lands exactly on a float32 midpoint; those rare elements are
detected and recomputed with an error-free sum. It was the product's own arithmetic before the
compiled kernel, and checks that kernel on inputs torch is not needed for.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

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
_NONE: npt.NDArray[np.intp] = np.empty(0, dtype=np.intp)


def lora_product(left: F32, right: F32) -> F32:
    """``left @ right`` in float32, accumulated as PyTorch's CPU sgemm does.

    Element ``(i, j)`` is ``fma(left[i, r-1], right[r-1, j], … fma(left[i, 0], right[0, j],
    0))``: one rounding per rank step, in rank order. Exact for every input; inputs outside
    ``[2**-40, 2**60]`` in magnitude (or non-finite) take a slower fully checked path.
    """
    n, rank = left.shape
    if right.shape[0] != rank:
        raise ValueError(f"LoRA factors do not chain: {left.shape} @ {right.shape}")
    m = right.shape[1]
    out = np.empty((n, m), dtype=np.float32)
    if out.size == 0:
        return out
    if rank == 0:
        out.fill(0)
        return out
    left64 = left.astype(np.float64)
    right64 = right.astype(np.float64)
    checked = not (in_fast_range(left) and in_fast_range(right))
    rights = [right64[k : k + 1, :] for k in range(rank)]
    rows = max(1, _CHUNK_ELEMENTS // m)
    scratch = _Scratch(min(rows, n) * m)
    # inf and NaN propagate as in IEEE arithmetic; they are results, not errors.
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            lefts = [left64[start:stop, k : k + 1] for k in range(rank)]
            _fma_chain(lefts, rights, out[start:stop], scratch, checked)
    return out


def in_fast_range(x: F32) -> bool:
    """Whether every non-zero magnitude of ``x`` is within ``[2**-40, 2**60]`` (finite)."""
    if x.size == 0:
        return True
    mag = np.abs(x)
    smallest = float(np.min(mag, where=mag != 0, initial=np.inf))
    largest = float(mag.max())
    return (smallest >= _MIN_FAST or smallest == np.inf) and largest <= _MAX_FAST


class _Scratch:
    """Reusable work buffers for one chunk (allocating per step costs ~2x)."""

    def __init__(self, size: int) -> None:
        self.product = np.empty(size, dtype=np.float64)
        self.total = np.empty(size, dtype=np.float64)
        self.low = np.empty(size, dtype=np.uint64)
        self.flag = np.empty(size, dtype=np.bool_)


def _fma_chain(
    lefts: Sequence[F64], rights: Sequence[F64], out: F32, s: _Scratch, checked: bool
) -> None:
    """``out = fma(lefts[r-1] * rights[r-1], … fma(lefts[0] * rights[0], 0))`` element-wise.

    ``lefts[k] * rights[k]`` (broadcast to ``out``'s shape) is rank step ``k``'s term.
    """
    size = out.size
    product = s.product[:size].reshape(out.shape)
    total = s.total[:size].reshape(out.shape)
    low = s.low[:size]
    flag = s.flag[:size]
    flat_out = out.reshape(-1)
    flat_product = product.reshape(-1)
    flat_total = total.reshape(-1)
    # Step 0: fma(l, r, 0) is the product rounded once; float64 holds the product exactly.
    np.multiply(lefts[0], rights[0], out=product)
    out[...] = product
    for k in range(1, len(lefts)):
        np.multiply(lefts[k], rights[k], out=product)
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
