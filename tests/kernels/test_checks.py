"""all_finite: the allocation-free NaN/inf scan that guards model inputs and saves.

The reference is numpy.isfinite. Sizes cover the serial path (chunk edges included) and
the parallel one (at least 65,536 elements).
"""

from __future__ import annotations

import numpy as np
import pytest

from numbanet.kernels.checks import _CHUNK, _PARALLEL_MIN_SIZE, all_finite

SIZES = [1, 100, _CHUNK - 1, _CHUNK, _CHUNK + 1, 3 * _CHUNK + 7, _PARALLEL_MIN_SIZE + 5]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_one_nan_or_inf_anywhere_is_found(n, dtype):
    for position in sorted({0, n // 2, _CHUNK - 1, _CHUNK, n - 1} & set(range(n))):
        for bad in (np.nan, np.inf, -np.inf):
            x = np.ones(n, dtype)
            x[position] = bad
            assert not all_finite(x), (position, bad)
            assert not np.isfinite(x).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_finite_extremes_pass(n, dtype):
    info = np.finfo(dtype)
    values = np.array([info.max, -info.max, info.tiny, info.smallest_subnormal, -0.0, 0.0],
                      dtype)
    x = np.resize(values, n)
    assert np.isfinite(x).all()
    assert all_finite(x)


def test_two_dimensional_input_is_scanned_whole():
    x = np.zeros((300, 301), np.float32)
    x[-1, -1] = np.nan
    assert not all_finite(x)
    x[-1, -1] = 1.0
    assert all_finite(x)
