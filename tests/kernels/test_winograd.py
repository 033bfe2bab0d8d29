"""Winograd F(4x4, 3x3) kernels against a direct NumPy convolution in float64: forward
(bias, ReLU), input gradient (flipped kernel, ReLU derivative of the layer below) and
weight gradient, on awkward shapes and paddings; 1 vs 2 threads bit-identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import numbanet as nbn
from numbanet.kernels import _gen_tiles, winograd
from numbanet.kernels._simd import LANES_FLOAT32, LANES_FLOAT64
from numbanet.threads import max_threads

TOLERANCE = {np.float32: 2e-6, np.float64: 1e-13}

# (batch, height, width, in_channels, out_channels, (pad_top, pad_left)); the output is
# (height + 2 * pad - 2) wide, so sizes that are not multiples of 4 leave tiles cut at the
# bottom and right (by 1, 2 or 3 pixels).
CASES = [
    (2, 7, 5, 16, 16, (1, 1)),
    (1, 8, 8, 32, 48, (1, 1)),
    (3, 9, 10, 16, 64, (0, 0)),
    (2, 6, 11, 32, 16, (2, 2)),
    (1, 3, 3, 16, 32, (1, 1)),   # a 3x3 output: one tile, cut on both sides
    (2, 6, 10, 16, 16, (1, 1)),  # 6x10 outputs: tiles cut by two rows and columns
    (2, 5, 12, 48, 32, (0, 1)),  # asymmetric padding
    (5, 16, 16, 16, 16, (1, 1)),  # enough tiles for several tasks
]


def _padded(x: np.ndarray, pt: int, pl: int, oh: int, ow: int) -> np.ndarray:
    """``x`` in a zero frame: element ``[i + pt, j + pl]`` is ``x[i, j]``, big enough for
    every 3x3 window of an ``oh x ow`` output."""
    n, h, w, c = x.shape
    big = np.zeros((n, max(h, oh) + pt + 4, max(w, ow) + pl + 4, c))
    big[:, pt:pt + h, pl:pl + w] = x
    return big


def reference(x, w, dz, pads, oh, ow):
    """Forward, input gradient and weight gradient by direct sums in float64."""
    pt, pl = pads
    x64, w64, dz64 = (a.astype(np.float64) for a in (x, w, dz))
    big = _padded(x64, pt, pl, oh, ow)
    z = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    dbig = np.zeros_like(big)
    dw = np.zeros(w.shape)
    for a in range(3):
        for b in range(3):
            window = big[:, a:a + oh, b:b + ow]
            z += window @ w64[a, b]
            dbig[:, a:a + oh, b:b + ow] += dz64 @ w64[a, b].T
            dw[a, b] = np.einsum("nhwc,nhwk->ck", window, dz64)
    h, wd = x.shape[1:3]
    return z, dbig[:, pt:pt + h, pl:pl + wd], dw


def _run(x, w, bias, dz, pads, relu, saved):
    """Forward, input gradient and weight gradient through the Winograd kernels."""
    n, h, wd, c = x.shape
    k = w.shape[3]
    pt, pl = pads
    oh, ow = h + 2 * pt - 2, wd + 2 * pl - 2
    dtype = x.dtype
    work = np.zeros(winograd.winograd_workspace(max_threads(), c, k), dtype)
    u = np.empty((winograd.POSITIONS, c, k), dtype)
    scratch = np.empty(winograd.weight_scratch_shape(max_threads(), c, k))
    winograd.transform_weights_into(w, u, scratch)
    z = np.empty((n, oh, ow, k), dtype)
    winograd.winograd_conv_into(x, u, bias, relu, z, pads, work)
    ud = np.empty((winograd.POSITIONS, k, c), dtype)
    winograd.transform_weights_into(w, ud, scratch, flip=True)
    dx = np.empty_like(x)
    winograd.winograd_conv_into(dz, ud, None, False, dx, (2 - pt, 2 - pl), work, saved)
    parts = np.empty(winograd.weight_partials_shape(n, oh, ow, c, k), dtype)
    dw = np.empty_like(w)
    winograd.winograd_weight_gradient_into(x, dz, pads, dw, work, parts,
                                           np.empty((winograd.POSITIONS, c * k)))
    return z, dx, dw


def _inputs(case, dtype, seed=0):
    n, h, wd, c, k, (pt, pl) = case
    rng = np.random.default_rng(seed)
    oh, ow = h + 2 * pt - 2, wd + 2 * pl - 2
    x = rng.standard_normal((n, h, wd, c)).astype(dtype)
    w = rng.standard_normal((3, 3, c, k)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype)
    dz = rng.standard_normal((n, oh, ow, k)).astype(dtype)
    saved = rng.standard_normal(x.shape).astype(dtype)
    return x, w, bias, dz, saved, (oh, ow)


def _assert_close(actual, expected, dtype, what):
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE[dtype] * scale * 10,
                               err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_winograd_matches_direct_sums(case, dtype):
    x, w, bias, dz, saved, (oh, ow) = _inputs(case, dtype)
    z_ref, dx_ref, dw_ref = reference(x, w, dz, case[5], oh, ow)
    z, dx, dw = _run(x, w, None, dz, case[5], False, None)
    _assert_close(z, z_ref, dtype, "forward")
    _assert_close(dx, dx_ref, dtype, "input gradient")
    _assert_close(dw, dw_ref, dtype, "weight gradient")
    # Bias and ReLU in the forward epilogue, ReLU's derivative in the input gradient's.
    z, dx, _ = _run(x, w, bias, dz, case[5], True, saved)
    _assert_close(z, np.maximum(z_ref + bias, 0), dtype, "forward + bias + relu")
    _assert_close(dx, np.where(saved > 0, dx_ref, 0), dtype, "masked input gradient")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_winograd_is_bit_identical_for_1_and_2_threads(dtype):
    x, w, bias, dz, saved, _ = _inputs(CASES[-1], dtype, seed=1)
    old = nbn.get_num_threads()
    try:
        nbn.set_num_threads(1)
        one = _run(x, w, bias, dz, CASES[-1][5], True, saved)
        nbn.set_num_threads(min(2, max_threads()))
        two = _run(x, w, bias, dz, CASES[-1][5], True, saved)
    finally:
        nbn.set_num_threads(old)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


# The F(4x4, 3x3) kernel transform, written out (rows of G: the interpolation points 0,
# 1, -1, 2, -2 and infinity).
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("flip", [False, True], ids=["forward", "flipped"])
def test_weight_transform_matches_numpy_on_any_thread_count(flip, dtype):
    """``G g G^T`` per channel pair (flipped: the kernel rotated by 180 degrees, the
    channel axes swapped), serial and parallel (32 x 48 channels: 55,296 values, above
    the parallel threshold) bit-identical."""
    c, k = 32, 48
    w = np.random.default_rng(3).standard_normal((3, 3, c, k)).astype(dtype)
    g = w[::-1, ::-1].transpose(0, 1, 3, 2) if flip else w
    expected = np.einsum("ia,abck,jb->ijck", G, g.astype(np.float64), G).reshape(36, *g.shape[2:])
    scratch = np.empty(winograd.weight_scratch_shape(max_threads(), c, k))
    old = nbn.get_num_threads()
    results = []
    try:
        for threads in (1, min(2, max_threads())):
            nbn.set_num_threads(threads)
            u = np.empty(expected.shape, dtype)
            winograd.transform_weights_into(w, u, scratch, flip=flip)
            results.append(u)
    finally:
        nbn.set_num_threads(old)
    np.testing.assert_array_equal(results[0], results[1])
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(results[0], expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def test_weight_tasks_depend_on_shapes_only():
    assert winograd.weight_tasks(1, 2, 2) == 1
    assert winograd.weight_tasks(64, 32, 32) == winograd.MAX_WEIGHT_TASKS
    # 64 images of 8x8 outputs: 256 tiles of 4x4.
    shares = 256 // winograd.WEIGHT_TASK_TILES
    assert winograd.weight_tasks(64, 8, 8) == min(winograd.MAX_WEIGHT_TASKS, shares)
    assert winograd.weight_tasks(1, 8, 8) == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_winograd_applies_to_3x3_stride_1_whole_vectors(dtype):
    lanes = LANES_FLOAT32 if dtype == "float32" else LANES_FLOAT64
    c = max(16, lanes)
    g = (3, 3, 1, 1, 1, 1, 1, 1, 8, 8)  # kh, kw, sh, sw, pt, pl, dh, dw, oh, ow
    assert winograd.winograd_applies(g, c, c, 1, dtype)
    assert not winograd.winograd_applies(g, c + lanes // 2 if lanes > 1 else c + 1, c, 1,
                                         dtype)
    assert not winograd.winograd_applies(g, 8, 8, 1, dtype)          # too few channels
    assert not winograd.winograd_applies(g, c, c, 2, dtype)          # groups
    assert not winograd.winograd_applies((3, 3, 2, 2, 1, 1, 1, 1, 4, 4), c, c, 1, dtype)
    assert not winograd.winograd_applies((3, 3, 1, 1, 2, 2, 2, 2, 8, 8), c, c, 1, dtype)
    assert not winograd.winograd_applies((5, 5, 1, 1, 2, 2, 1, 1, 8, 8), c, c, 1, dtype)


def test_generated_tiles_match_their_template():
    module = Path(_gen_tiles.__file__).with_name("_tiles.py")
    assert module.read_text() == _gen_tiles.render(), (
        "run `python -m numbanet.kernels._gen_tiles` after editing the template")
