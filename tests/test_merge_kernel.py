"""The compiled merge (FMA instructions) against the NumPy emulation of PyTorch's arithmetic.

Every merge must give the same bytes as ``add_delta(reference_product(...) * s)``, where the
reference emulates torch's sequential fused multiply-adds in float64 (``fma_reference``): for
ordinary weights and scalings, elements sitting on rounding boundaries, zeros, NaN and
infinite weights, subnormal and huge factors, any rank, rows merged in place. torch itself is
compared in test_merge_units / test_merge_oracle.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.fma_reference import lora_product as reference_product
from tests.merge_fixtures import merge_rows
from weightport.errors import InvalidArgument
from weightport.merge.kernel import lora_delta
from weightport.merge.rounding import add_delta, from_float32, storage_dtype
from weightport.merge.tensor import LoraDelta, lora_product

RNG = np.random.default_rng(4)
DTYPES = ["BF16", "F16", "F32"]


def _exact(
    base: npt.NDArray[np.generic],
    left: npt.NDArray[np.float32],
    right: npt.NDArray[np.float32],
    scaling: float,
    dtype: str,
    round_delta: bool,
) -> npt.NDArray[np.generic]:
    with np.errstate(over="ignore", invalid="ignore"):
        delta = reference_product(left, right) * np.float32(scaling)
    return add_delta(base, delta, dtype=dtype, round_delta=round_delta)


def _same(ours: npt.NDArray[np.generic], expected: npt.NDArray[np.generic], dtype: str) -> None:
    assert ours.dtype == expected.dtype
    if dtype == "BF16":  # NaN is always written as 0xFFFF: compare every bit
        assert ours.tobytes() == expected.tobytes()
        return
    # float16/float32 NaN payloads depend on operand order inside the CPU's add, which no
    # compiler promises (torch's neither): compare NaN-ness, then every other bit.
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(ours), nan)
    assert ours[~nan].tobytes() == expected[~nan].tobytes()


def _check(
    base: npt.NDArray[np.generic],
    left: npt.NDArray[np.float32],
    right: npt.NDArray[np.float32],
    scaling: float,
    dtype: str,
    round_delta: bool = False,
) -> None:
    ours = merge_rows(base, left, right, scaling, dtype=dtype, round_delta=round_delta)
    _same(ours, _exact(base, left, right, scaling, dtype, round_delta), dtype)


def _weights(shape: tuple[int, int], dtype: str, std: float = 0.02) -> npt.NDArray[np.generic]:
    values = (RNG.standard_normal(shape) * std).astype(np.float32)
    return np.asarray(from_float32(values, dtype))


def _factors(
    rows: int, rank: int, cols: int, std: float = 0.02
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    left = (RNG.standard_normal((rows, rank)) * std).astype(np.float32)
    right = (RNG.standard_normal((rank, cols)) * std).astype(np.float32)
    return left, right


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("round_delta", [False, True])
@pytest.mark.parametrize(
    ("rows", "rank", "cols", "scaling"),
    [
        (300, 16, 2048, 2.0),
        (77, 16, 5632, 32.0),
        (129, 1, 333, 0.5),  # rank 1: no fused step at all
        (64, 64, 257, 1 / 8),
        (1, 7, 40_000, 7 / 2**0.5),  # rank 7: one pass of four steps, then two single ones
        (50, 4, 30, -1.5),
        (20, 16, 20, 0.0),
        (5, 0, 9, 3.0),  # rank 0: an empty sum
    ],
)
def test_same_bytes_as_the_reference(
    dtype: str, round_delta: bool, rows: int, rank: int, cols: int, scaling: float
) -> None:
    left, right = _factors(rows, rank, cols)
    _check(_weights((rows, cols), dtype), left, right, scaling, dtype, round_delta)


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_elements_on_rounding_boundaries(dtype: str) -> None:
    """Weights chosen so that ``W + x`` lands within a float32 ulp or two of the midpoint
    between two representable weights: any error in the product would show."""
    rows, rank, cols = 40, 16, 64
    left, right = _factors(rows, rank, cols, std=0.1)
    delta = reference_product(left, right)
    step = np.float32(2.0**-7 if dtype == "BF16" else 2.0**-10)  # the ulp in [1, 2)
    grid = (1 + np.round(RNG.uniform(0, 100, (rows, cols))) * step).astype(np.float32)
    w32 = grid - delta + step / 2  # w32 + delta == grid + step/2, a midpoint
    w32 += RNG.integers(-3, 4, (rows, cols)).astype(np.float32) * np.float32(2.0**-23)
    base = np.asarray(from_float32(w32.astype(np.float32), dtype))
    _check(base, left, right, 1.0, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_weights(dtype: str) -> None:
    rows, rank, cols = 16, 8, 96
    left, right = _factors(rows, rank, cols)
    w32 = (RNG.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    w32[0, :8] = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 6e-8, -6e-8]
    w32[1, :] = 0.0
    w32[2, :] = 65000.0  # f16 weights near overflow
    base = np.asarray(from_float32(w32, dtype))
    right[:, 5] = 0.0  # a zero column: the delta is exactly ±0
    left[3, :] = -0.0  # a row of -0 factors: every product -0, the first one kept as -0
    _check(base, left, right, 2.0, dtype)
    _check(base, left, right, 2.0, dtype, round_delta=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("std", [1e-21, 1e-13, 1e-3, 30.0, 1e12, 1e20])
def test_tiny_and_huge_factors(dtype: str, std: float) -> None:
    """Products in the subnormal range, far above the weights, and overflowing float32."""
    rows, rank, cols = 33, 16, 70
    left, right = _factors(rows, rank, cols, std=std)
    _check(_weights((rows, cols), dtype), left, right, 1.5, dtype)


def test_non_finite_factors_and_scalings() -> None:
    left, right = _factors(12, 5, 20)
    left[1, 1], right[2, 3], right[4, 7] = np.inf, np.nan, -np.inf
    for dtype in DTYPES:
        base = _weights((12, 20), dtype)
        for scaling in (1.0, float("inf"), float("nan"), 1e30):
            _check(base, left, right, scaling, dtype)


_FLOATS = st.floats(width=32, allow_subnormal=True, allow_nan=True, allow_infinity=True)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    rank=st.integers(0, 9),
    rows=st.integers(1, 6),
    cols=st.integers(1, 40),
    scaling=st.one_of(st.floats(width=32), st.sampled_from([0.0, 1.0, 2.0, 0.5, -1.0])),
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
    _check(raw, left, right, scaling, dtype, round_delta)


def test_lora_product_equals_the_reference_bit_for_bit() -> None:
    for std in (1e-30, 1e-3, 1.0, 1e18):
        left, right = _factors(65, 13, 129, std=std)
        ours, theirs = lora_product(left, right), reference_product(left, right)
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_lora_delta_rows_of_a_larger_product() -> None:
    left, right = _factors(50, 6, 31)
    whole = lora_product(left, right) * np.float32(-3.0)
    rows = np.empty((7, 31), dtype=np.float32)
    lora_delta(left, right, -3.0, 40, rows)
    assert np.array_equal(rows.view(np.uint32), whole[40:47].view(np.uint32))
    with pytest.raises(ValueError, match="do not fit"):
        lora_delta(left, right, 1.0, 45, rows)
    with pytest.raises(TypeError, match="float32"):
        lora_delta(left.astype(np.float64), right, 1.0, 0, rows)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lora_delta_merges_any_rows_in_place(dtype: str) -> None:
    """What the view does: rows [start, stop) read into a buffer and merged in place."""
    left, right = _factors(700, 16, 300)
    base = _weights((700, 300), dtype)
    whole = merge_rows(base, left, right, 2.0, dtype=dtype)
    delta = LoraDelta.prepare(left, right, 2.0, dtype=dtype)
    for start, stop in [(0, 700), (0, 1), (123, 456), (699, 700)]:
        rows = base[start:stop].copy()
        assert delta.merge_rows(rows, start, out=rows) is rows
        assert rows.tobytes() == whole[start:stop].tobytes()


def test_non_contiguous_rows_and_outputs() -> None:
    left, right = _factors(40, 8, 60)
    base = _weights((40, 120), "BF16")[:, ::2]  # every other column: not contiguous
    delta = LoraDelta.prepare(left[:, :], right, 2.0, dtype="BF16")
    expected = merge_rows(np.ascontiguousarray(base), left, right, 2.0, dtype="BF16")
    out = np.zeros((40, 120), dtype=np.uint16)[:, 1::2]
    assert delta.merge_rows(base, 0, out=out) is out
    assert np.array_equal(out, expected)


def test_merges_run_in_parallel_threads_with_the_same_result() -> None:
    """The compiled loops release the GIL and keep no shared state."""
    left, right = _factors(400, 16, 512)
    base = _weights((400, 512), "BF16")
    expected = merge_rows(base, left, right, 2.0, dtype="BF16")
    delta = LoraDelta.prepare(left, right, 2.0, dtype="BF16")
    results: list[bytes] = []

    def merge() -> None:
        for _ in range(5):
            results.append(delta.merge_rows(base, 0).tobytes())

    threads = [threading.Thread(target=merge) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected.tobytes()] * 20


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
