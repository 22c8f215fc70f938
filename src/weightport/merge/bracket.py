"""The fast path of a bf16/fp16 merge: bracket the delta, settle nearly every element at once.

peft's merged weight is ``f(x) = round(W + x)`` with ``x = fl32(T * scaling)``, where ``T`` is
PyTorch's float32 ``B @ A`` (sequential fused multiply-adds over the rank, which
:mod:`weightport.merge.fma` reproduces at about five passes per rank step). Every step of
``f`` — the float32 add, the rounding to bf16/fp16, the Embedding's extra rounding of the
delta — is a monotone function of ``x``. So if ``x_lo <= x <= x_hi`` is known for sure and
``f(x_lo) == f(x_hi)``, then ``f(x)`` is that value, whatever ``x`` exactly is.

The bracket comes from one BLAS ``sgemm`` of the scaled factors, ``D = fl(scaling·B) @ A``
(any summation order), and a rigorous bound on how far ``x`` can be from ``D``. With
``P = Σ_k |B[i,k]·A[k,j]|`` and ``u = 2**-24``, every float32 dot product of length ``r``
(PyTorch's FMA chain and whatever order BLAS picks) is within ``γ_r·P`` of the exact sum,
``γ_r = r·u / (1 - r·u)`` (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1),
plus ``2**-150`` per operation where results are subnormal. Adding the roundings of
``scaling·B``, of ``T·scaling`` and of ``D ∓ bound`` gives ``|x - D| < (2r + 6)·u·|s|·P``
(kept with a 0.1 % margin) plus a tiny absolute term; ``P <= ‖B[i]‖·‖A[:,j]‖``
(Cauchy–Schwarz) turns it into an outer product of row and column norms, one pass.

Weights are bf16/fp16, 16 bits shorter than float32, so the bracket straddles a rounding
boundary for only ~0.1–2 % of the elements (more for large scalings and weights near zero);
those are recomputed exactly, element by element, with :func:`~weightport.merge.fma.
paired_products`. float32 weights would need most elements recomputed: they take the exact
path. The work runs on sub-blocks of 64 Ki elements in per-thread buffers (~1.4 MB, within a
2 MB L2; fresh arrays would cost page faults), few and large enough NumPy calls that a second
merging thread is not held up by the GIL.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weightport.merge.fma import F64, in_fast_range, paired_products
from weightport.merge.rounding import F32, add_delta

_U = 2.0**-24
_MARGIN = 1.001
_UP = 1 + 2.0**-20  # rounds a float64 bound safely up when it is narrowed to float32
#: Largest row or column norm of the factors bracketed (real LoRA factors are below 100).
_MAX_NORM = 2.0**50
#: Ranks above this make γ_r's ``1 - r·u`` noticeable; no LoRA comes close.
_MAX_RANK = 4096
_SUB_ELEMENTS = 64 * 1024
_GEMM_SINGLE_THREAD = 1 << 19
_S16 = np.uint32(16)
_ONE = np.uint32(1)
_S31 = np.uint32(31)
_HALF = np.uint32(0x8000)
_HALF_MINUS_ONE = np.uint32(0x7FFF)
_LOW_HALF = np.uint32(0xFFFF)
_HIGH_HALF = np.uint32(0xFFFF0000)
_NONE: npt.NDArray[np.intp] = np.empty(0, dtype=np.intp)


@dataclass(frozen=True)
class Bracket:
    """One weight's LoRA delta, prepared for bracketed merges of any of its rows.

    ``left``/``right`` are the float32 factors (``delta = left @ right``, laid out like the
    weight), ``scaled`` is ``fl32(scaling · left)``, and ``row_bound ⊗ col_bound`` bounds how
    far each element of ``scaled @ right`` can be from peft's delta.
    """

    left: F32
    right: F32
    left64t: F64  # the factors again, rank-major float64: the exact path's gathers
    right64: F64
    checked: bool  # the exact path must check every step (factors outside its fast range)
    scaling: np.float32
    scaled: F32
    row_bound: F32
    col_bound: F32
    dtype: str
    round_delta: bool

    def merge_rows(
        self, base: npt.NDArray[np.generic], start: int, out: npt.NDArray[np.generic]
    ) -> None:
        """Merged rows ``[start, start + len(base))`` of the weight into ``out``.

        ``base`` holds those rows of the weight in storage form; ``out`` has its shape and
        dtype and may be ``base`` itself (the merge is then done in place).
        """
        h, m = base.shape
        rank = self.left.shape[1]
        # OpenBLAS splits a gemm over threads once m·n·k reaches 2**19; on a busy 2-core
        # server its spinning threads made merges 20x slower, so each call stays below that.
        gemm_rows = max(1, (_GEMM_SINGLE_THREAD - 1) // (m * rank))
        rows = gemm_rows * max(1, _SUB_ELEMENTS // (gemm_rows * m))
        work = _work(min(rows, h) * m)
        unsettled: list[npt.NDArray[np.intp]] = []
        unsettled_base: list[npt.NDArray[np.generic]] = []
        with np.errstate(over="ignore", invalid="ignore"):
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                bad, bad_base = _settle(
                    self, base[r0:r1], start + r0, out[r0:r1], work, gemm_rows=gemm_rows
                )
                if bad.size:
                    unsettled.append(bad + r0 * m)
                    unsettled_base.append(bad_base)
            if unsettled:
                flat = np.concatenate(unsettled)
                _recompute(self, out, start, flat, np.concatenate(unsettled_base))


def prepare_bracket(
    left: F32, right: F32, scaling: float, *, dtype: str, round_delta: bool
) -> Bracket | None:
    """The bracket of ``delta = fl32(left @ right as torch) * scaling``, or None.

    None means: use the exact path — float32 weights (the bracket would rarely settle an
    element), and factors that are not finite or large enough to overflow.
    """
    n, rank = left.shape
    m = right.shape[1]
    s = np.float32(scaling)
    if dtype not in ("BF16", "F16") or not 0 < rank <= _MAX_RANK or n * m == 0:
        return None
    left64 = left.astype(np.float64)
    right64 = right.astype(np.float64)
    row_norms = np.sqrt(np.einsum("ij,ij->i", left64, left64))
    col_norms = np.sqrt(np.einsum("ij,ij->j", right64, right64))
    s_abs = abs(float(s))
    row_top, col_top = float(row_norms.max()), float(col_norms.max())
    # Each factor (and the scaled left one) at most 2**50: no product or bound overflows.
    if not (row_top <= _MAX_NORM and col_top <= _MAX_NORM and s_abs * row_top <= _MAX_NORM):
        return None  # (also for NaN and inf)
    row_bound, col_bound = _bounds(row_norms, col_norms, s_abs, rank)
    return Bracket(
        left=np.ascontiguousarray(left),
        right=np.ascontiguousarray(right),
        left64t=np.ascontiguousarray(left64.T),
        right64=right64,
        checked=not (in_fast_range(left) and in_fast_range(right)),
        scaling=s,
        scaled=np.multiply(left, s),
        row_bound=row_bound,
        col_bound=col_bound,
        dtype=dtype,
        round_delta=round_delta,
    )


def bracketed_merge(
    base: npt.NDArray[np.generic],
    left: F32,
    right: F32,
    scaling: float,
    *,
    dtype: str,
    round_delta: bool,
) -> npt.NDArray[np.generic] | None:
    """``add_delta(base, fl32(left @ right as torch) * scaling)``, or None if not bracketable.

    Same result as the exact path bit for bit; see :func:`prepare_bracket` for None.
    """
    bracket = prepare_bracket(left, right, scaling, dtype=dtype, round_delta=round_delta)
    if bracket is None:
        return None
    out = np.empty(base.shape, dtype=base.dtype)
    bracket.merge_rows(base, 0, out)
    return out


def _bounds(
    row_norms: npt.NDArray[np.float64], col_norms: npt.NDArray[np.float64], s_abs: float, rank: int
) -> tuple[F32, F32]:
    """Row and column factors whose outer product bounds ``|x - D|`` element-wise."""
    relative = (2 * rank + 6) * _U * _MARGIN * s_abs
    # Subnormal results lose up to 2**-150 per operation; (a + α)(b + α) >= ab + α².
    absolute = 2.0**-147 * (1 + rank * (s_abs + 2) + math.sqrt(rank) * float(col_norms.max()))
    alpha = math.sqrt(absolute)
    row_bound = ((relative * row_norms + alpha) * _UP).astype(np.float32)
    col_bound = ((col_norms + alpha) * _UP).astype(np.float32)
    return row_bound, col_bound


class _Work:
    """Buffers for one sub-block, reused across sub-blocks (fresh arrays cost page faults)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.lo = np.empty(size, dtype=np.float32)
        self.hi = np.empty(size, dtype=np.float32)
        self.bound = np.empty(size, dtype=np.float32)
        self.wide = np.empty(size, dtype=np.float32)
        self.bits = np.empty(size, dtype=np.uint32)
        self.bad = np.empty(size, dtype=np.bool_)


_local = threading.local()


def _work(size: int) -> _Work:
    """This thread's buffers, at least ``size`` elements (merges run on several threads)."""
    work: _Work | None = getattr(_local, "work", None)
    if work is None or work.size < size:
        work = _Work(max(size, _SUB_ELEMENTS))
        _local.work = work
    return work


def _settle(
    b: Bracket,
    base: npt.NDArray[np.generic],
    start: int,
    out: npt.NDArray[np.generic],
    work: _Work,
    *,
    gemm_rows: int,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.generic]]:
    """Write ``f(x_lo)`` for rows ``[start, start + h)`` into ``out``.

    Returns the flat indices where ``f(x_hi)`` differs, and the base values there (``out``
    may overwrite ``base``).
    """
    h, m = out.shape
    size = h * m
    lo = work.lo[:size].reshape(h, m)
    hi = work.hi[:size].reshape(h, m)
    bound = work.bound[:size].reshape(h, m)
    wide = work.wide[:size].reshape(h, m)
    bits = work.bits[:size].reshape(h, m)
    bad = work.bad[:size].reshape(h, m)
    scaled = b.scaled[start : start + h]
    for r0 in range(0, h, gemm_rows):
        np.matmul(scaled[r0 : r0 + gemm_rows], b.right, out=lo[r0 : r0 + gemm_rows])
    np.multiply(b.row_bound[start : start + h, None], b.col_bound[None, :], out=bound)
    np.add(lo, bound, out=hi)
    np.subtract(lo, bound, out=lo)
    if b.dtype == "BF16":
        if b.round_delta:
            _round_bf16(lo, bits)
            _round_bf16(hi, bits)
        np.left_shift(base.view(np.uint16), _S16, out=wide.view(np.uint32))
        np.add(wide, lo, out=lo)
        np.add(wide, hi, out=hi)
        # Cheaper than rounding both ends to nearest-even: round lo's magnitude half down
        # (half up if negative) and hi's the other way, a lower and an upper bound of the
        # nearest-even roundings of lo <= x <= hi. Where their bf16 halves are equal, all
        # agree, and lo's is the answer.
        lo_bits, hi_bits = lo.view(np.uint32), hi.view(np.uint32)
        np.right_shift(lo_bits, _S31, out=bits)
        np.add(lo_bits, bits, out=lo_bits)
        np.add(lo_bits, _HALF_MINUS_ONE, out=lo_bits)
        np.right_shift(hi_bits, _S31, out=bits)
        np.subtract(hi_bits, bits, out=hi_bits)
        np.add(hi_bits, _HALF, out=hi_bits)
        # The bf16 results are the high halves: they differ where the XOR reaches them.
        np.bitwise_xor(lo_bits, hi_bits, out=bits)
        np.greater(bits, _LOW_HALF, out=bad)
        unsettled = _unsettled(bad, base)
        np.right_shift(lo_bits, _S16, out=out.view(np.uint16), casting="unsafe")
        if np.isnan(wide.max()):  # NaN only where the weight is NaN: torch writes 0xFFFF
            out.view(np.uint16)[np.isnan(wide)] = 0xFFFF
        return unsettled
    halves = bits.reshape(-1).view(np.float16)  # 2 × size halves: room for both results
    lo16 = halves[:size].reshape(h, m)
    hi16 = halves[size:].reshape(h, m)
    if b.round_delta:
        for x in (lo, hi):
            np.copyto(lo16, x, casting="same_kind")
            np.copyto(x, lo16)
    np.copyto(wide, base.view(np.float16))
    np.add(wide, lo, out=lo)
    np.add(wide, hi, out=hi)
    np.copyto(lo16, lo, casting="same_kind")
    np.copyto(hi16, hi, casting="same_kind")
    np.not_equal(lo16.view(np.uint16), hi16.view(np.uint16), out=bad)
    unsettled = _unsettled(bad, base)
    np.copyto(out.view(np.float16), lo16)
    return unsettled


def _unsettled(
    bad: npt.NDArray[np.bool_], base: npt.NDArray[np.generic]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.generic]]:
    """Flat indices of the elements ``bad`` marks, and their weights (before ``out`` is
    written: it may be ``base``)."""
    if not bad.any():
        return _NONE, base.reshape(-1)[:0]
    flat = np.flatnonzero(bad)
    return flat, base.reshape(-1)[flat]


def _round_bf16(values: F32, bits: npt.NDArray[np.uint32]) -> None:
    """Round ``values`` to bfloat16 in place (nearest-even, as :func:`float32_to_bf16`),
    leaving them as float32 (peft's Embedding rounds its delta so before adding it)."""
    raw = values.view(np.uint32)
    np.right_shift(raw, _S16, out=bits)
    np.bitwise_and(bits, _ONE, out=bits)
    np.add(raw, bits, out=raw)
    np.add(raw, _HALF_MINUS_ONE, out=raw)
    np.bitwise_and(raw, _HIGH_HALF, out=raw)


def _recompute(
    b: Bracket,
    out: npt.NDArray[np.generic],
    start: int,
    flat: npt.NDArray[np.intp],
    base: npt.NDArray[np.generic],
) -> None:
    """The exact merge of the elements ``flat`` (row-major in ``out``, whose first row is
    row ``start`` of the weight) that the bracket left open; ``base`` holds their weights."""
    m = out.shape[1]
    rows, cols = np.divmod(flat, m)
    # Rank-major gathers: [rank, count], each rank step contiguous.
    products = paired_products(b.left64t[:, rows + start], b.right64[:, cols], checked=b.checked)
    deltas = np.multiply(products, b.scaling)
    merged = add_delta(base, deltas, dtype=b.dtype, round_delta=b.round_delta)
    out.reshape(-1)[flat] = merged
