"""Inverted dropout against the NumPy one-liner, across dtypes, sizes and threads."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from numbanet.kernels import dropout as D

DTYPES = [np.float32, np.float64]
SHAPES = [(1,), (13,), (7, 11), (521, 263)]
assert 521 * 263 >= D.PARALLEL_MIN


def _data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(dtype), rng.random(shape, dtype=dtype)


@pytest.mark.parametrize("keep_prob", [0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_dropout_matches_numpy(dtype, shape, keep_prob):
    x, u = _data(shape, dtype)
    y = np.empty_like(x)
    D.dropout_forward(x, u, keep_prob, y)
    mask = u < dtype(keep_prob)
    expected = x.astype(np.float64) * mask / keep_prob
    rtol = 1e-6 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(y, expected, rtol=rtol, atol=0)
    assert (y[~mask] == 0).all()
    dy = x[::-1].copy()
    dx = np.empty_like(x)
    D.dropout_backward(dy, u, keep_prob, dx)
    np.testing.assert_allclose(dx, dy.astype(np.float64) * mask / keep_prob, rtol=rtol, atol=0)


def test_keep_prob_one_is_the_identity_and_in_place_works():
    x, u = _data((1000,), np.float32)
    y = x.copy()
    D.dropout_forward(y, u, 1.0, y)
    np.testing.assert_array_equal(y, x)


def test_keep_prob_zero_drops_everything_like_torch_p_1():
    x, u = _data((33,), np.float64)
    y = np.full_like(x, 7.0)
    D.dropout_forward(x, u, 0.0, y)
    np.testing.assert_array_equal(y, np.zeros_like(x))
    D.dropout_backward(x, u, 0.0, y)
    np.testing.assert_array_equal(y, np.zeros_like(x))


def test_dropout_keeps_the_expected_fraction_and_mean():
    x = np.ones(200_000)
    u = np.random.default_rng(1).random(x.shape)
    y = np.empty_like(x)
    D.dropout_forward(x, u, 0.8, y)
    assert np.count_nonzero(y) / y.size == pytest.approx(0.8, abs=0.005)
    assert y.mean() == pytest.approx(1.0, abs=0.01)


def test_dropout_propagates_nan_like_numpy():
    x = np.array([np.nan, np.nan, 1.0])
    u = np.array([0.1, 0.9, 0.9])
    y = np.empty(3)
    D.dropout_forward(x, u, 0.5, y)
    np.testing.assert_array_equal(y, x * (u < 0.5) / 0.5)


def test_dropout_is_bit_identical_under_1_and_2_threads():
    x, u = _data((521, 263), np.float32, seed=2)
    saved = numba.get_num_threads()
    outs = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            y = np.empty_like(x)
            D.dropout_forward(x, u, 0.7, y)
            outs.append(y)
    finally:
        numba.set_num_threads(saved)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_dropout_rejects_bad_input():
    x, u = _data((4,), np.float64)
    y = np.empty_like(x)
    with pytest.raises(ValueError, match=r"keep_prob must be in \[0, 1\], got -0.1"):
        D.dropout_forward(x, u, -0.1, y)
    with pytest.raises(ValueError, match=r"keep_prob must be in \[0, 1\], got 1.5"):
        D.dropout_forward(x, u, 1.5, y)
    with pytest.raises(ValueError, match=r"keep_prob must be in \[0, 1\], got nan"):
        D.dropout_forward(x, u, float("nan"), y)
    with pytest.raises(TypeError, match="keep_prob must be a real number, got str"):
        D.dropout_forward(x, u, "0.5", y)
    with pytest.raises(TypeError, match="u must have dtype float64, got float32"):
        D.dropout_forward(x, u.astype(np.float32), 0.5, y)
    with pytest.raises(ValueError, match=r"u must have shape \(4,\), got \(5,\)"):
        D.dropout_forward(x, np.zeros(5), 0.5, y)
    with pytest.raises(ValueError, match="dx must be C-contiguous"):
        D.dropout_backward(x, u, 0.5, np.zeros(8)[::2])
    with pytest.raises(TypeError, match="dy must have dtype float32 or float64, got int64"):
        D.dropout_backward(np.zeros(4, np.int64), u, 0.5, y)
