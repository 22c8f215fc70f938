"""The bracketed bf16/fp16 merge against the exact emulation of PyTorch's arithmetic.

:func:`bracketed_merge` must give the same bytes as ``add_delta(lora_product(...) * s)`` for
every input it accepts: ordinary weights and scalings, elements sitting on rounding
boundaries (where it must fall back), zeros, NaN and infinite weights, subnormal and huge
factors, any rank. torch itself is compared in test_merge_units / test_merge_oracle.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from weightport.errors import InvalidArgument
from weightport.merge.bracket import bracketed_merge
from weightport.merge.fma import lora_product, paired_products
from weightport.merge.rounding import add_delta, from_float32, storage_dtype
from weightport.merge.tensor import LoraDelta, merge_rows

RNG = np.random.default_rng(4)


def _exact(
    base: npt.NDArray[np.generic],
    left: npt.NDArray[np.float32],
    right: npt.NDArray[np.float32],
    scaling: float,
    dtype: str,
    round_delta: bool,
) -> npt.NDArray[np.generic]:
    with np.errstate(over="ignore", invalid="ignore"):
        delta = lora_product(left, right) * np.float32(scaling)
    return add_delta(base, delta, dtype=dtype, round_delta=round_delta)


def _check(
    base: npt.NDArray[np.generic],
    left: npt.NDArray[np.float32],
    right: npt.NDArray[np.float32],
    scaling: float,
    dtype: str,
    round_delta: bool = False,
) -> None:
    fast = bracketed_merge(base, left, right, scaling, dtype=dtype, round_delta=round_delta)
    assert fast is not None
    expected = _exact(base, left, right, scaling, dtype, round_delta)
    assert fast.dtype == expected.dtype
    assert fast.tobytes() == expected.tobytes()


def _weights(shape: tuple[int, int], dtype: str, std: float = 0.02) -> npt.NDArray[np.generic]:
    values = (RNG.standard_normal(shape) * std).astype(np.float32)
    return np.asarray(from_float32(values, dtype))


def _factors(
    rows: int, rank: int, cols: int, std: float = 0.02
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    left = (RNG.standard_normal((rows, rank)) * std).astype(np.float32)
    right = (RNG.standard_normal((rank, cols)) * std).astype(np.float32)
    return left, right


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
@pytest.mark.parametrize("round_delta", [False, True])
@pytest.mark.parametrize(
    ("rows", "rank", "cols", "scaling"),
    [
        (300, 16, 2048, 2.0),  # several sub-blocks and gemm calls
        (77, 16, 5632, 32.0),  # large scaling: many elements fall back
        (129, 1, 333, 0.5),
        (64, 64, 257, 1 / 8),
        (1, 8, 40_000, 7 / 2**0.5),  # one row longer than a sub-block
        (50, 4, 30, -1.5),  # a negative scaling reverses the bracket
        (20, 16, 20, 0.0),
    ],
)
def test_same_bytes_as_the_exact_path(
    dtype: str, round_delta: bool, rows: int, rank: int, cols: int, scaling: float
) -> None:
    left, right = _factors(rows, rank, cols)
    _check(_weights((rows, cols), dtype), left, right, scaling, dtype, round_delta)


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_elements_on_rounding_boundaries_fall_back(dtype: str) -> None:
    """Weights chosen so that ``W + x`` lands within a float32 ulp or two of the midpoint
    between two representable weights: every such element needs the exact product."""
    rows, rank, cols = 40, 16, 64
    left, right = _factors(rows, rank, cols, std=0.1)
    delta = lora_product(left, right) * np.float32(1.0)
    # Weights w such that w + delta is a few float32 ulps from a midpoint of the grid.
    step = np.float32(2.0**-7)  # weights in [1, 2): their ulp is 2**-7 (bf16) / 2**-10 (f16)
    if dtype == "F16":
        step = np.float32(2.0**-10)
    grid = (1 + np.round(RNG.uniform(0, 100, (rows, cols))) * step).astype(np.float32)
    w32 = grid - delta + step / 2  # w32 + delta == grid + step/2, a midpoint
    w32 += RNG.integers(-3, 4, (rows, cols)).astype(np.float32) * np.float32(2.0**-23)
    base = np.asarray(from_float32(w32.astype(np.float32), dtype))
    _check(base, left, right, 1.0, dtype)


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_special_weights(dtype: str) -> None:
    rows, rank, cols = 16, 8, 96
    left, right = _factors(rows, rank, cols)
    w32 = (RNG.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    w32[0, :8] = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 6e-8, -6e-8]
    w32[1, :] = 0.0
    w32[2, :] = 65000.0  # f16 weights near overflow
    base = np.asarray(from_float32(w32, dtype))
    right[:, 5] = 0.0  # a zero column: the delta is exactly ±0
    _check(base, left, right, 2.0, dtype)
    _check(base, left, right, 2.0, dtype, round_delta=True)


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
@pytest.mark.parametrize("std", [1e-21, 1e-13, 1e-3, 30.0, 1e12])
def test_tiny_and_huge_factors(dtype: str, std: float) -> None:
    """Products in the subnormal range (absolute error terms) and far above the weights."""
    rows, rank, cols = 33, 16, 70
    left, right = _factors(rows, rank, cols, std=std)
    _check(_weights((rows, cols), dtype), left, right, 1.5, dtype)


def test_declines_what_it_cannot_bracket() -> None:
    left, right = _factors(4, 2, 5)
    base32 = np.zeros((4, 5), dtype=np.float32)
    assert bracketed_merge(base32, left, right, 1.0, dtype="F32", round_delta=False) is None
    base = _weights((4, 5), "BF16")
    for bad in (np.inf, np.nan, 1e16):  # 1e16 > 2**50
        poisoned = left.copy()
        poisoned[1, 1] = bad
        assert bracketed_merge(base, poisoned, right, 1.0, dtype="BF16", round_delta=False) is None
    assert bracketed_merge(base, left, right, float("inf"), dtype="BF16", round_delta=False) is None


def test_paired_products_pick_elements_of_the_product() -> None:
    left, right = _factors(30, 16, 40, std=1.0)
    full = lora_product(left, right)
    rows = RNG.integers(0, 30, 200)
    cols = RNG.integers(0, 40, 200)
    left64t, right64 = left.T.astype(np.float64), right.astype(np.float64)
    picked = paired_products(left64t[:, rows], right64[:, cols], checked=False)
    assert np.array_equal(picked.view(np.uint32), full[rows, cols].view(np.uint32))
    picked = paired_products(left64t[:, rows], right64[:, cols], checked=True)
    assert np.array_equal(picked.view(np.uint32), full[rows, cols].view(np.uint32))


# Factors up to 1e6 (subnormals included) are always bracketed: the property covers the fast
# path; test_declines_what_it_cannot_bracket covers the rest.
_FLOATS = st.floats(-1e6, 1e6, width=32, allow_subnormal=True)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from(["BF16", "F16"]),
    rank=st.integers(1, 6),
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    scaling=st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, 1.0, 2.0, 0.5])),
    round_delta=st.booleans(),
)
def test_property_same_bytes_for_arbitrary_floats(
    data: st.DataObject,
    dtype: str,
    rank: int,
    rows: int,
    cols: int,
    scaling: float,
    round_delta: bool,
) -> None:
    left = data.draw(hnp.arrays(np.float32, (rows, rank), elements=_FLOATS))
    right = data.draw(hnp.arrays(np.float32, (rank, cols), elements=_FLOATS))
    raw = data.draw(hnp.arrays(storage_dtype(dtype), (rows, cols)))
    fast = bracketed_merge(raw, left, right, scaling, dtype=dtype, round_delta=round_delta)
    assert fast is not None
    expected = _exact(raw, left, right, scaling, dtype, round_delta)
    if dtype == "F16":  # NaN payloads: compare NaN-ness, then the other bits exactly
        nan = np.isnan(expected)
        assert np.array_equal(np.isnan(fast), nan)
        assert fast[~nan].tobytes() == expected[~nan].tobytes()
    else:
        assert fast.tobytes() == expected.tobytes()


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_lora_delta_merges_any_rows_in_place(dtype: str) -> None:
    """What the view does: rows [start, stop) read into a buffer and merged in place."""
    left, right = _factors(700, 16, 300)
    base = _weights((700, 300), dtype)
    whole = merge_rows(base, left, right, 2.0, dtype=dtype)
    delta = LoraDelta.prepare(left, right, 2.0, dtype=dtype)
    assert (delta.bracket is None) == (dtype == "F32")
    for start, stop in [(0, 700), (0, 1), (123, 456), (699, 700)]:
        rows = base[start:stop].copy()
        assert delta.merge_rows(rows, start, out=rows) is rows
        assert rows.tobytes() == whole[start:stop].tobytes()


def test_lora_delta_rejects_rows_that_do_not_fit() -> None:
    left, right = _factors(10, 4, 6)
    delta = LoraDelta.prepare(left, right, 1.0, dtype="BF16")
    with pytest.raises(InvalidArgument, match="do not fit"):
        delta.merge_rows(_weights((3, 6), "BF16"), 8)
    with pytest.raises(InvalidArgument, match="do not fit"):
        delta.merge_rows(_weights((3, 5), "BF16"), 0)
    with pytest.raises(InvalidArgument, match="cannot merge"):
        LoraDelta.prepare(left, right, 1.0, dtype="I32")
    with pytest.raises(InvalidArgument, match="do not chain"):
        LoraDelta.prepare(left, right.T.copy(), 1.0, dtype="BF16")
