"""The merge arithmetic as compiled loops: PyTorch's float32 ``B @ A`` with real fused
multiply-adds, scaled, added to the weight and rounded, in one pass over each row.

PyTorch's CPU sgemm (MKL) accumulates each element of a LoRA product over the rank in order,
one fused multiply-add per step: ``acc = fma(B[i, k], A[k, j], acc)``, starting from the first
product rounded once. NumPy has no fused multiply-add, so the merge used to emulate it in
float64 (five passes per rank step) or bracket it with an error bound — about twenty passes
over every element in all. Here the loops are compiled with numba and call LLVM's ``llvm.fma``
intrinsic: one instruction on every x86-64 CPU with FMA3 (a correctly rounded library call on
any other), and by definition the same result, so the bytes do not depend on the CPU. The
compiler vectorises across columns; each element's rank order stays sequential (no fast-math
flags: no reassociation, and separate multiplications and additions are never contracted).

Per element and rank step this is one FMA; a bf16 merge of a rank-16 weight costs about
1.1 ns per element on one core where the bracketed NumPy path took 3–5 (BENCHMARKS.md). The
functions release the GIL, so merges on several threads run in parallel.

numba (and LLVM with it) is imported on the first merge, not with this module: the CLI and a
server that never merges do not pay its half second and ~40 MB of private memory (plus the
~100 MB LLVM library, mapped from disk and shared). The loops are compiled then (about two
seconds) or loaded from numba's on-disk cache (next to this file, or the user's cache
directory; about half a second).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from weightport.merge.rounding import F32

U16 = npt.NDArray[np.uint16]

# Epilogues: what is done with the scaled delta ``x`` of each element.
_DELTA = 0  # out = x (float32)
_F32 = 1  # out = w + x (float32 weight)
_BF16 = 2  # out = bf16(w + x)
_BF16_ROUNDED = 3  # out = bf16(w + bf16(x)), peft's Embedding
#: Columns per tile: 16 rank rows of 512 float32 are 32 KB.
_TILE = 512


def _fma32_codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
    from llvmlite import ir

    f32 = ir.FloatType()
    fma = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32] * 3))
    return builder.call(fma, args)


def _fma32_typer(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    from numba import types

    return types.float32(types.float32, types.float32, types.float32), _fma32_codegen


def _bits_codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
    return builder.bitcast(args[0], context.get_value_type(signature.return_type))


def _as_float_typer(typingctx: Any, bits: Any) -> Any:
    from numba import types

    return types.float32(types.uint32), _bits_codegen


def _as_bits_typer(typingctx: Any, value: Any) -> Any:
    from numba import types

    return types.uint32(types.float32), _bits_codegen


# fma(a, b, c) with a single rounding; the bit patterns of a float32 and back; set by
# _compiled() (typed as Any: only compiled code calls them, with numba's own typing).
_fma32: Any = None
_as_float: Any = None
_as_bits: Any = None
_round_bf16: Any = None


def _round_bf16_py(value: Any) -> Any:
    """Nearest-even bfloat16 bits (as uint32) of a float32; NaN gives 0xFFFF, as in torch."""
    bits = _as_bits(value)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return np.uint32(0xFFFF) if value != value else rounded


def _rows(base: Any, left: Any, right: Any, scaling: Any, start: Any, out: Any, mode: Any) -> None:
    """Rows ``[start, start + len(out))`` of the merge selected by ``mode`` into ``out``."""
    h, m = out.shape
    rank = right.shape[0]
    acc = np.empty(_TILE, dtype=np.float32)
    wide = np.empty(_TILE, dtype=np.float32)
    # Column tiles: the rank rows of ``right`` for one tile (32 KB) stay in the L1 cache for
    # all the rows, instead of streaming all of ``right`` from L2 or L3 for every row.
    for j0 in range(0, m, _TILE):
        j1 = min(m, j0 + _TILE)
        n = j1 - j0
        for i in range(h):
            row = left[start + i]
            if rank == 0:
                acc[:] = 0  # an empty sum, as torch's matmul gives it
            else:
                first, r0 = row[0], right[0, j0:j1]
                for j in range(n):
                    acc[j] = first * r0[j]  # fma(a, b, 0) would turn a -0 product into +0
            k = 1
            # Four rank steps per pass keep the accumulator in registers for four FMAs; the
            # order of the steps for each element is unchanged.
            while k + 4 <= rank:
                la, lb, lc, ld = row[k], row[k + 1], row[k + 2], row[k + 3]
                ra, rb = right[k, j0:j1], right[k + 1, j0:j1]
                rc, rd = right[k + 2, j0:j1], right[k + 3, j0:j1]
                for j in range(n):
                    acc[j] = _fma32(
                        ld, rd[j], _fma32(lc, rc[j], _fma32(lb, rb[j], _fma32(la, ra[j], acc[j])))
                    )
                k += 4
            while k < rank:
                lk, rk = row[k], right[k, j0:j1]
                for j in range(n):
                    acc[j] = _fma32(lk, rk[j], acc[j])
                k += 1
            # (Slices, not j0 + j indexing: numba would check every index for wraparound
            # and the loops would not vectorise.)
            target = out[i, j0:j1]
            if mode == _DELTA:
                for j in range(n):
                    target[j] = acc[j] * scaling
                continue
            # Widen the weights first: ``out`` may be ``base`` itself, and a separate buffer
            # lets the compiler vectorise the last loop without an aliasing fallback.
            weights = base[i, j0:j1]
            if mode == _F32:
                for j in range(n):
                    wide[j] = weights[j]
                for j in range(n):
                    target[j] = wide[j] + acc[j] * scaling
                continue
            for j in range(n):
                wide[j] = _as_float(np.uint32(weights[j]) << np.uint32(16))
            if mode == _BF16:
                for j in range(n):
                    target[j] = np.uint16(_round_bf16(wide[j] + acc[j] * scaling))
            else:
                for j in range(n):
                    x = acc[j] * scaling
                    rounded = _as_float(_round_bf16(x) << np.uint32(16))
                    delta = x if x != x else rounded  # NaN stays NaN (0xFFFF is a NaN too)
                    target[j] = np.uint16(_round_bf16(wide[j] + delta))


_Kernel = Callable[[Any, F32, F32, np.float32, int, Any, int], None]
_kernel: _Kernel | None = None
_load_lock = threading.Lock()


def _compiled() -> _Kernel:
    """The compiled :func:`_rows`, importing numba and compiling (or loading) it once."""
    global _kernel, _fma32, _as_float, _as_bits, _round_bf16
    with _load_lock:
        if _kernel is None:
            import numba
            from numba.extending import intrinsic

            _fma32 = intrinsic(_fma32_typer)
            _as_float = intrinsic(_as_float_typer)
            _as_bits = intrinsic(_as_bits_typer)
            _round_bf16 = numba.njit(inline="always")(_round_bf16_py)
            _kernel = numba.njit(nogil=True, cache=True)(_rows)
        return _kernel


def _run(base: Any, left: F32, right: F32, scaling: float, start: int, out: Any, mode: int) -> None:
    kernel = _kernel if _kernel is not None else _compiled()
    kernel(base, left, right, np.float32(scaling), start, out, mode)


def _check(left: F32, right: F32, start: int, rows: int) -> None:
    if left.dtype != np.float32 or right.dtype != np.float32:
        raise TypeError("LoRA factors must be float32")
    if left.shape[1] != right.shape[0] or not 0 <= start <= start + rows <= left.shape[0]:
        raise ValueError(f"rows {start}..{start + rows} do not fit {left.shape} @ {right.shape}")


def lora_delta(left: F32, right: F32, scaling: float, start: int, out: F32) -> None:
    """``out = fl32(T * fl32(scaling))`` for rows ``[start, start + len(out))`` of ``T``,
    PyTorch's float32 ``left @ right`` (``scaling`` 1 gives ``T`` itself)."""
    _check(left, right, start, out.shape[0])
    _run(out, left, right, scaling, start, out, _DELTA)


def merge_float32(base: F32, left: F32, right: F32, scaling: float, start: int, out: F32) -> None:
    """float32 weight rows plus their delta; ``out`` may be ``base``."""
    _check(left, right, start, out.shape[0])
    _run(base, left, right, scaling, start, out, _F32)


def merge_bfloat16(
    base: U16,
    left: F32,
    right: F32,
    scaling: float,
    start: int,
    out: U16,
    *,
    round_delta: bool,
) -> None:
    """bfloat16 weight rows (as ``uint16`` bits) plus their delta, rounded to nearest-even;
    ``round_delta`` rounds the delta to bfloat16 first. ``out`` may be ``base``."""
    _check(left, right, start, out.shape[0])
    mode = _BF16_ROUNDED if round_delta else _BF16
    _run(base, left, right, scaling, start, out, mode)
