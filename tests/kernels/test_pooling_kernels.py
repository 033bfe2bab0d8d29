"""The specialised 2x2 max-pool kernel against the general one."""

from __future__ import annotations

import numpy as np
import pytest

from numbanet.kernels.pooling import (
    max_pool2d_2x2_into,
    max_pool2d_into,
    tap_offsets,
)


def _general(x):
    n, h, w, c = x.shape
    g = (2, 2, 2, 2, 0, 0, h // 2, w // 2)
    y = np.empty((n, h // 2, w // 2, c), x.dtype)
    idx = np.empty(y.shape, np.int64)
    max_pool2d_into(x, y, idx, g, tap_offsets(g, w, c))
    return y, idx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 2, 2, 1), (3, 7, 9, 5), (16, 28, 28, 6)])
@pytest.mark.parametrize("values", ["normal", "ties", "nan-inf"])
def test_max_pool_2x2_matches_general_kernel(shape, values, dtype):
    rng = np.random.default_rng(0)
    if values == "ties":
        x = rng.integers(-2, 3, shape).astype(dtype)
    else:
        x = rng.standard_normal(shape).astype(dtype)
    if values == "nan-inf":
        flat = x.reshape(-1)
        flat[rng.integers(0, flat.size, max(1, flat.size // 5))] = np.nan
        flat[rng.integers(0, flat.size, max(1, flat.size // 5))] = -np.inf
    y_ref, idx_ref = _general(x)
    y = np.empty_like(y_ref)
    idx = np.empty_like(idx_ref)
    max_pool2d_2x2_into(x, y, idx)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
