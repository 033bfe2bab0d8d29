"""Deterministic reductions against float64 NumPy sums, across shapes, dtypes and threads."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numbanet.kernels import reductions as R

DTYPES = [np.float32, np.float64]
# Empty, single, primes, tall-narrow (many row chunks), short-wide (many column blocks),
# and shapes on both sides of the parallel threshold.
SHAPES = [(0, 3), (1, 1), (7, 13), (131, 3), (8009, 17), (3, 2053), (300, 257), (1031, 67)]
assert any(r * c >= R.COLUMN_SUM_PARALLEL_MIN for r, c in SHAPES)
assert any(c > R.COL_BLOCK for _, c in SHAPES) and any(r > R.ROW_CHUNK for r, _ in SHAPES)


def _data(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _fsum_columns(x):
    # Correctly rounded float64 column sums: an independent truth for the error bound.
    return np.array([math.fsum(col) for col in x.astype(np.float64).T])


@pytest.fixture
def restore_threads():
    n = numba.get_num_threads()
    yield
    numba.set_num_threads(n)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_column_sum_matches_float64_sum(dtype, shape):
    x = _data(shape, dtype)
    out = np.empty(shape[1], dtype)
    R.column_sum(x, out)
    truth = _fsum_columns(x)
    # float64 accumulation: only the final rounding to dtype remains.
    if dtype == np.float32:
        np.testing.assert_array_equal(out, truth.astype(np.float32))
    else:
        np.testing.assert_allclose(out, truth, rtol=0, atol=1e-12 * max(1, shape[0]))
    np.testing.assert_allclose(out, x.sum(axis=0, dtype=np.float64), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_total_sum_and_sum_of_squares_match_float64_sum(dtype, shape):
    x = _data(shape, dtype, seed=1)
    x64 = x.astype(np.float64).ravel()
    total, squares = R.total_sum(x), R.sum_of_squares(x)
    assert isinstance(total, float) and isinstance(squares, float)
    assert total == pytest.approx(math.fsum(x64), rel=1e-12, abs=1e-10)
    assert squares == pytest.approx(math.fsum(x64 * x64), rel=1e-12, abs=1e-10)


def test_float32_sums_keep_float64_accuracy():
    # 2**20 float32 values of 0.1: a sequential float32 running sum drifts by ~1%.
    x = np.full(1 << 20, 0.1, dtype=np.float32)
    exact = float(np.float32(0.1)) * x.size
    assert R.total_sum(x) == pytest.approx(exact, rel=1e-14)
    assert R.sum_of_squares(x) == pytest.approx(float(np.float32(0.1)) ** 2 * x.size, rel=1e-14)
    col = np.empty(1, np.float32)
    R.column_sum(x.reshape(-1, 1), col)
    assert col[0] == np.float32(exact)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_results_are_bit_identical_under_1_and_2_threads(dtype, restore_threads):
    # Scaled data with wide dynamic range, so any change of summation order would show.
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4099, 37)) * 10.0 ** rng.uniform(-6, 6, (4099, 37))).astype(dtype)
    wide = (rng.standard_normal((61, 3001)) * 1e4).astype(dtype)
    results = []
    for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        numba.set_num_threads(threads)
        a, b = np.empty(37, dtype), np.empty(3001, dtype)
        R.column_sum(x, a)
        R.column_sum(wide, b)
        results.append((a, b, R.total_sum(x), R.sum_of_squares(x), R.total_sum(wide)))
    for first, second in zip(*results, strict=True):
        np.testing.assert_array_equal(first, second)


def test_serial_twins_match_parallel_kernels_bit_for_bit():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((1000, 1500)) * 10.0 ** rng.uniform(-5, 5, (1000, 1500))).astype(
        np.float32
    )
    a, b = np.empty(1500, np.float32), np.empty(1500, np.float32)
    R._column_sum_serial(x, a, R.column_sum_partials(*x.shape))
    R._column_sum_parallel(x, b, R.column_sum_partials(*x.shape))
    np.testing.assert_array_equal(a, b)
    flat = x.reshape(-1)
    for squares in (False, True):
        p = R.sum_partials(flat.size)
        assert R._chunked_sum_serial(flat, p, squares) == R._chunked_sum_parallel(flat, p, squares)


def test_workspace_variant_reuses_the_callers_buffer():
    x = _data((300, 257), np.float64, seed=4)
    ws = R.column_sum_partials(*x.shape)
    assert ws.dtype == np.float64 and ws.shape == (math.ceil(300 / R.ROW_CHUNK), 257)
    out1, out2 = np.empty(257), np.empty(257)
    R.column_sum(x, out1, ws)
    ws[:] = np.nan  # stale contents must not leak into the next result
    R.column_sum(x, out2, ws)
    np.testing.assert_array_equal(out1, out2)
    sp = R.sum_partials(x.size)
    sp[:] = np.nan
    assert R.total_sum(x, sp) == R.total_sum(x)
    assert R.sum_of_squares(x, sp) == R.sum_of_squares(x)


def test_sums_propagate_nan_and_inf():
    x = np.ones((5, 3))
    x[2, 1] = np.nan
    x[4, 2] = np.inf
    out = np.empty(3)
    R.column_sum(x, out)
    assert out[0] == 5 and np.isnan(out[1]) and out[2] == np.inf
    assert np.isnan(R.total_sum(x)) and np.isnan(R.sum_of_squares(x))


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(0, 300), st.integers(1, 5)),
        elements=st.floats(-1e6, 1e6, allow_nan=False),
    )
)
def test_sums_agree_with_each_other(x):
    out = np.empty(x.shape[1])
    R.column_sum(x, out)
    assert R.total_sum(x) == pytest.approx(math.fsum(out), rel=1e-9, abs=1e-6)
    assert R.total_sum(out) == pytest.approx(R.total_sum(x), rel=1e-9, abs=1e-6)
    assert R.sum_of_squares(x) >= 0
    assert R.sum_of_squares(x) == pytest.approx(float(np.sum(x * x)), rel=1e-12, abs=1e-6)


def test_column_sum_rejects_bad_input():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match="x must be 2-D, got 1-D"):
        R.column_sum(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match=r"out must have shape \(3,\), got \(4,\)"):
        R.column_sum(x, np.zeros(4))
    with pytest.raises(TypeError, match="out must have dtype float64, got float32"):
        R.column_sum(x, np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int32"):
        R.column_sum(np.zeros((4, 3), np.int32), np.zeros(3))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        R.column_sum(np.zeros((3, 4)).T, np.zeros(3))
    with pytest.raises(ValueError, match=r"partials must have shape \(1, 3\)"):
        R.column_sum(x, np.zeros(3), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="partials must have dtype float64"):
        R.column_sum(x.astype(np.float32), np.zeros(3, np.float32), np.zeros((1, 3), np.float32))


def test_total_sum_rejects_bad_input():
    with pytest.raises(TypeError, match="x must be a numpy.ndarray, got list"):
        R.total_sum([1.0, 2.0])
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        R.sum_of_squares(np.zeros((4, 4))[:, 1])
    with pytest.raises(ValueError, match=r"partials must have shape \(1,\)"):
        R.total_sum(np.zeros(10), np.zeros(2))
