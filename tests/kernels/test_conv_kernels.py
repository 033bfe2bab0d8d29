"""Convolution and pooling kernels against NumPy references, as plain Python where they
have no SIMD intrinsics, and under 1 and 2 threads."""

from __future__ import annotations

import numpy as np
import pytest

import numbanet as nbn
from numbanet.kernels import conv as kc
from numbanet.kernels import pooling as kp
from numbanet.kernels._simd import lanes_for
from numbanet.kernels.matmul import MR, NV
from numbanet.threads import max_threads

DTYPES = [np.float32, np.float64]


def geometry(h, w, kh, kw, sh=1, sw=1, pads=(0, 0, 0, 0), dh=1, dw=1):
    pt, pb, pl, pr = pads
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    return kc.ConvGeometry(kh, kw, sh, sw, pt, pl, dh, dw, oh, ow)


# (h, w, c, geometry arguments): odd sizes, strides, dilations, asymmetric padding.
GEOMETRIES = [
    (5, 7, 3, dict(kh=3, kw=3)),
    (9, 6, 2, dict(kh=3, kw=2, sh=2, pads=(1, 1, 0, 0))),
    (11, 10, 1, dict(kh=4, kw=4, sh=3, sw=3, pads=(2, 2, 2, 2))),
    (8, 9, 3, dict(kh=3, kw=3, pads=(2, 2, 2, 2), dh=2, dw=2)),
    (7, 6, 2, dict(kh=4, kw=4, pads=(3, 3, 2, 4), dh=2, dw=1)),  # "same", even kernel
    (5, 4, 2, dict(kh=5, kw=4)),
    (6, 6, 5, dict(kh=1, kw=1, sh=2, sw=2)),
]


def padded(x, g, pads_br):
    n, h, w, c = x.shape
    out = np.zeros((n, h + g.pt + pads_br[0], w + g.pl + pads_br[1], c), x.dtype)
    out[:, g.pt:g.pt + h, g.pl:g.pl + w] = x
    return out


def _bottom_right(x, g):
    _, h, w, _ = x.shape
    return (max(0, (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1 - h - g.pt),
            max(0, (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1 - w - g.pl))


def im2col_reference(x, g):
    n, _, _, c = x.shape
    xp = padded(x, g, _bottom_right(x, g))
    cols = np.empty((n * g.oh * g.ow, g.kh * g.kw * c), x.dtype)
    for ki in range(g.kh):
        for kj in range(g.kw):
            patch = xp[:, ki * g.dh: ki * g.dh + g.sh * (g.oh - 1) + 1: g.sh,
                       kj * g.dw: kj * g.dw + g.sw * (g.ow - 1) + 1: g.sw]
            t = ki * g.kw + kj
            cols[:, t * c:(t + 1) * c] = patch.reshape(-1, c)
    return cols


def col2im_reference(dcols, shape, g):
    n, h, w, c = shape
    br = (max(0, (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1 - h - g.pt),
          max(0, (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1 - w - g.pl))
    dxp = np.zeros((n, h + g.pt + br[0], w + g.pl + br[1], c))
    for ki in range(g.kh):
        for kj in range(g.kw):
            t = ki * g.kw + kj
            dxp[:, ki * g.dh: ki * g.dh + g.sh * (g.oh - 1) + 1: g.sh,
                kj * g.dw: kj * g.dw + g.sw * (g.ow - 1) + 1: g.sw] += (
                dcols[:, t * c:(t + 1) * c].reshape(n, g.oh, g.ow, c))
    return dxp[:, g.pt:g.pt + h, g.pl:g.pl + w]


def grouped_reference(x, w, bias, g, groups):
    """z per group as im2col @ weight slice."""
    n, _, _, c = x.shape
    kh, kw, cg, co = w.shape
    og = co // groups
    z = np.empty((n, g.oh, g.ow, co))
    for gi in range(groups):
        cols = im2col_reference(np.ascontiguousarray(x[..., gi * cg:(gi + 1) * cg]), g)
        wg = w[..., gi * og:(gi + 1) * og].reshape(kh * kw * cg, og)
        z[..., gi * og:(gi + 1) * og] = (cols @ wg).reshape(n, g.oh, g.ow, og)
    if bias is not None:
        z += bias
    return z


def close(a, b, dtype):
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize(("h", "w", "c", "args"), GEOMETRIES)
def test_im2col_matches_numpy(h, w, c, args, transposed, dtype):
    g = geometry(h, w, **args)
    x = np.random.default_rng(0).standard_normal((2, h, w, c)).astype(dtype)
    expected = im2col_reference(x, g)
    cols = np.full(expected.T.shape if transposed else expected.shape, np.nan, dtype)
    kc.im2col(x, cols, g, transposed=transposed)
    np.testing.assert_array_equal(cols.T if transposed else cols, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("h", "w", "c", "args"), GEOMETRIES)
def test_col2im_is_the_adjoint_of_im2col(h, w, c, args, masked, dtype):
    g = geometry(h, w, **args)
    rng = np.random.default_rng(1)
    shape = (2, h, w, c)
    dcols = rng.standard_normal((2 * g.oh * g.ow, g.kh * g.kw * c)).astype(dtype)
    saved = rng.standard_normal(shape).astype(dtype) if masked else None
    dx = np.full(shape, np.nan, dtype)
    kc.col2im(dcols, dx, g, saved)
    expected = col2im_reference(dcols.astype(np.float64), shape, g)
    if masked:
        expected = np.where(saved <= 0, 0.0, expected)
    close(dx, expected, dtype)


GROUPED = [
    (6, 5, 4, 4, 4, dict(kh=3, kw=3, pads=(1, 1, 1, 1))),           # depthwise
    (7, 7, 3, 6, 3, dict(kh=3, kw=3, sh=2, sw=2)),                  # depth multiplier 2
    (6, 7, 4, 6, 2, dict(kh=2, kw=3, dh=2, pads=(1, 1, 1, 1))),     # two groups
    (5, 5, 6, 3, 3, dict(kh=5, kw=5)),                              # kernel = image
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("h", "w", "c", "co", "groups", "args"), GROUPED)
def test_grouped_kernels_match_numpy(h, w, c, co, groups, args, dtype):
    g = geometry(h, w, **args)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, h, w, c)).astype(dtype)
    wt = rng.standard_normal((g.kh, g.kw, c // groups, co)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    z = np.empty((2, g.oh, g.ow, co), dtype)
    kc.conv2d_grouped_forward(x, wt, b, z, g, groups)
    close(z, grouped_reference(x.astype(float), wt.astype(float), b, g, groups), dtype)

    # Gradients from the forward reference's adjoint: d(sum(dz * z))/dx and /dw.
    dz = rng.standard_normal(z.shape).astype(dtype)
    dx = np.empty_like(x)
    kc.conv2d_grouped_backward_input(dz, wt, dx, g, groups)
    dw = np.empty_like(wt)
    kc.conv2d_grouped_backward_weight(x, dz, dw, g, groups)
    cg, og = c // groups, co // groups
    ref_dx = np.zeros(x.shape)
    ref_dw = np.zeros(wt.shape)
    for gi in range(groups):
        cols = im2col_reference(np.ascontiguousarray(x[..., gi * cg:(gi + 1) * cg]), g)
        dzg = dz[..., gi * og:(gi + 1) * og].reshape(-1, og).astype(float)
        wg = wt[..., gi * og:(gi + 1) * og].reshape(-1, og).astype(float)
        ref_dw[..., gi * og:(gi + 1) * og] = (cols.T.astype(float) @ dzg).reshape(
            g.kh, g.kw, cg, og)
        ref_dx[..., gi * cg:(gi + 1) * cg] = col2im_reference(dzg @ wg.T,
                                                              (2, h, w, cg), g)
    close(dx, ref_dx, dtype)
    close(dw, ref_dw, dtype)


def test_grouped_forward_runs_as_plain_python():
    g = tuple(geometry(6, 5, 3, 3, pads=(1, 1, 1, 1)))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 6, 5, 4))
    wt = rng.standard_normal((3, 3, 1, 4))
    b = rng.standard_normal(4)
    z_jit, z_py = np.empty((1, 6, 5, 4)), np.empty((1, 6, 5, 4))
    kc._grouped_forward_rows(x, wt, b, True, z_jit, g, 4, 0, 6)
    kc._grouped_forward_rows.py_func(x, wt, b, True, z_py, g, 4, 0, 6)
    close(z_jit, z_py, np.float64)


# (h, w, c, co, geometry arguments) for the direct kernels: one and several input
# channels, rows wider and narrower than a vector, strides along columns, dilation.
DIRECT = [
    (20, 20, 1, 6, dict(kh=5, kw=5, pads=(2, 2, 2, 2))),          # LeNet's first layer
    (14, 14, 6, 16, dict(kh=5, kw=5)),                             # LeNet's second
    (20, 37, 1, 6, dict(kh=3, kw=2, dh=2, dw=3, pads=(1, 1, 0, 0))),
    (9, 11, 3, 5, dict(kh=3, kw=3, pads=(1, 1, 1, 1))),            # one partial chunk
    (8, 21, 2, 16, dict(kh=2, kw=4, pads=(0, 1, 2, 1))),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("h", "w", "c", "co", "args"), DIRECT)
def test_direct_kernels_match_numpy(h, w, c, co, args, dtype):
    g = geometry(h, w, **args)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, h, w, c)).astype(dtype)
    wt = rng.standard_normal((g.kh, g.kw, c, co)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    z = np.empty((3, g.oh, g.ow, co), dtype)
    kc.direct_forward(x, wt, b, z, g, relu=True)
    cols = im2col_reference(x, g).astype(float)
    ref = np.maximum(cols @ wt.reshape(-1, co).astype(float) + b, 0)
    close(z.reshape(-1, co), ref, dtype)

    t = tuple(g)
    lanes = kc.direct_lanes(dtype)
    layout = kc.direct_layout(t, lanes)
    xp = np.empty((3, c, layout.plane), dtype)
    tiles_shape, per_block = kc.direct_workspace(max_threads(), layout, c, co, lanes)
    tiles = np.empty(tiles_shape, dtype)
    kc.direct_forward_into(x, xp, wt, None, z, False, t, layout, tiles)
    close(z.reshape(-1, co), cols @ wt.reshape(-1, co).astype(float), dtype)
    dz = rng.standard_normal(z.shape).astype(dtype)
    dw, db = np.empty_like(wt), np.empty_like(b)
    kc.direct_backward_weight_into(xp, dz, dw, db, t, layout, tiles,
                                   np.empty(kc.direct_partials_shape(3, layout, per_block)))
    close(dw.reshape(-1, co), cols.T @ dz.reshape(-1, co).astype(float), dtype)
    close(db, dz.reshape(-1, co).astype(float).sum(axis=0), dtype)

    gx = kc.transposed_geometry(t, (h, w))
    if gx is not None:  # stride 1: the input gradient as a direct convolution
        wf = np.empty((g.kh, g.kw, co, c), dtype)
        kc.flip_weights(wt, wf)
        lay = kc.direct_layout(gx, lanes)
        dx = np.empty_like(x)
        saved = rng.standard_normal(x.shape).astype(dtype)
        big = kc.direct_workspace(max_threads(), lay, co, c, lanes)[0]
        kc.direct_forward_into(dz, np.empty((3, co, lay.plane), dtype), wf, None, dx,
                               False, gx, lay, np.empty(big, dtype), saved)
        ref_dx = col2im_reference(dz.reshape(-1, co).astype(float)
                                  @ wt.reshape(-1, co).astype(float).T, x.shape, g)
        close(dx, np.where(saved <= 0, 0.0, ref_dx), dtype)


def test_direct_forward_refuses_what_it_cannot_take():
    g = geometry(6, 9, 3, 3, sw=2)
    with pytest.raises(ValueError, match="needs stride 1"):
        kc.direct_forward(np.zeros((1, 6, 9, 1)), np.zeros((3, 3, 1, 2)), None,
                          np.zeros((1, 4, 4, 2)), g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "co"), [(100, 16), (37, 5), (16, 40), (7, 3)])
def test_untranspose_applies_bias_and_relu(m, co, dtype):
    rng = np.random.default_rng(5)
    zt = rng.standard_normal((co, m)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    z = np.empty((m, co), dtype)
    tiles = np.empty((max_threads(), kc.direct_lanes(dtype) * co), dtype)
    kc.untranspose_into(zt, b, True, z, tiles)
    np.testing.assert_array_equal(z, np.maximum(zt.T + b, 0))
    kc.untranspose_into(zt, None, False, z, tiles)
    np.testing.assert_array_equal(z, zt.T)


def test_gemm_prefers_transpose_for_narrow_outputs_the_gemm_does_not_swap():
    # The register tile's columns: 32 float32 with AVX-512, 16 with AVX2.
    nr = NV * lanes_for(np.float32)
    # Half a tile of output channels (LeNet's second conv has 16: half, with AVX-512).
    assert kc.gemm_prefers_transpose(6400, nr // 2, np.float32)
    assert not kc.gemm_prefers_transpose(6400, 2 * nr, np.float32)
    if nr > 2 * MR:  # only then can a transpose save more than half the padded area
        assert not kc.gemm_prefers_transpose(50176, 6, np.float32)  # the GEMM swaps itself


# -- pooling -------------------------------------------------------------------------


def pool_windows(x, g, fill):
    """(N, OH, OW, KH*KW, C) windows of the padded input."""
    n, h, w, c = x.shape
    br_h = max(0, (g.oh - 1) * g.sh + g.kh - h - g.pt)
    br_w = max(0, (g.ow - 1) * g.sw + g.kw - w - g.pl)
    xp = np.full((n, h + g.pt + br_h, w + g.pl + br_w, c), fill, x.dtype)
    xp[:, g.pt:g.pt + h, g.pl:g.pl + w] = x
    out = np.empty((n, g.oh, g.ow, g.kh * g.kw, c), x.dtype)
    for ki in range(g.kh):
        for kj in range(g.kw):
            out[:, :, :, ki * g.kw + kj] = xp[:, ki: ki + g.sh * (g.oh - 1) + 1: g.sh,
                                              kj: kj + g.sw * (g.ow - 1) + 1: g.sw]
    return out


POOLS = [(6, 8, 3, (2, 2, 2, 2, 0, 0)), (9, 8, 2, (3, 3, 2, 2, 1, 1)),
         (7, 10, 4, (3, 2, 2, 3, 1, 0)), (5, 4, 2, (5, 4, 1, 1, 0, 0))]


def pool_geometry(h, w, kh, kw, sh, sw, ph, pw):
    return kp.PoolGeometry(kh, kw, sh, sw, ph, pw, (h + 2 * ph - kh) // sh + 1,
                           (w + 2 * pw - kw) // sw + 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("h", "w", "c", "args"), POOLS)
def test_pooling_kernels_match_numpy(h, w, c, args, dtype):
    g = pool_geometry(h, w, *args)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, h, w, c)).astype(dtype)
    y = np.empty((2, g.oh, g.ow, c), dtype)
    idx = np.empty(y.shape, np.int64)
    kp.max_pool2d(x, y, idx, g)
    np.testing.assert_array_equal(y, pool_windows(x, g, -np.inf).max(axis=3))
    np.testing.assert_array_equal(np.take_along_axis(x.reshape(2, -1),
                                                     idx.reshape(2, -1), 1).reshape(y.shape), y)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = np.empty_like(x)
    kp.max_pool2d_backward(dy, idx, dx)
    ref = np.zeros((2, h * w * c))
    for n in range(2):
        np.add.at(ref[n], idx[n].ravel(), dy[n].ravel())
    close(dx.reshape(2, -1), ref, dtype)

    kp.avg_pool2d(x, y, g)
    close(y, pool_windows(x, g, 0).astype(float).mean(axis=3), dtype)
    kp.avg_pool2d_backward(dy, dx, g)
    # The adjoint: <avg(x), dy> == <x, avg_backward(dy)> for every x.
    close(np.vdot(x.astype(float), dx.astype(float)),
          np.vdot(pool_windows(x, g, 0).astype(float).mean(axis=3), dy.astype(float)), dtype)

    gy = np.empty((2, c), dtype)
    kp.global_avg_pool2d(x, gy)
    close(gy, x.astype(float).mean(axis=(1, 2)), dtype)
    kp.global_avg_pool2d_backward(gy, dx)
    close(dx, np.broadcast_to(gy[:, None, None, :] / (h * w), x.shape), dtype)


def test_avg_pool_kernels_run_as_plain_python():
    g = tuple(pool_geometry(7, 10, 3, 2, 2, 3, 1, 0))
    x = np.random.default_rng(7).standard_normal((1, 7, 10, 2))
    y_jit, y_py = np.empty((1, g[6], g[7], 2)), np.empty((1, g[6], g[7], 2))
    kp._avg_rows(x, y_jit, g, 0, g[6])
    kp._avg_rows.py_func(x, y_py, g, 0, g[6])
    close(y_jit, y_py, np.float64)
    dx_jit, dx_py = np.empty_like(x), np.empty_like(x)
    kp._avg_backward_rows(y_jit, dx_jit, g, x, False, 0, 7)
    kp._avg_backward_rows.py_func(y_jit, dx_py, g, x, False, 0, 7)
    close(dx_jit, dx_py, np.float64)


@pytest.mark.skipif(max_threads() < 2, reason="needs two threads")
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_are_bit_identical_for_1_and_2_threads(dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((16, 20, 20, 6)).astype(dtype)
    g = geometry(20, 20, 5, 5, pads=(2, 2, 2, 2))
    gp = pool_geometry(20, 20, 3, 3, 2, 2, 1, 1)
    wdw = rng.standard_normal((5, 5, 1, 6)).astype(dtype)
    dz = rng.standard_normal((16, g.oh, g.ow, 6)).astype(dtype)

    def run():
        cols = np.empty((16 * g.oh * g.ow, 150), dtype)
        kc.im2col(x, cols, g)
        dx = np.empty_like(x)
        kc.col2im(cols, dx, g, x)
        z = np.empty((16, g.oh, g.ow, 6), dtype)
        kc.conv2d_grouped_forward(x, wdw, None, z, g, 6)
        dxg = np.empty_like(x)
        kc.conv2d_grouped_backward_input(dz, wdw, dxg, g, 6)
        dw = np.empty_like(wdw)
        kc.conv2d_grouped_backward_weight(x, dz, dw, g, 6)
        y = np.empty((16, gp.oh, gp.ow, 6), dtype)
        idx = np.empty(y.shape, np.int64)
        kp.max_pool2d(x, y, idx, gp)
        dxp = np.empty_like(x)
        kp.max_pool2d_backward(y, idx, dxp, x)
        ya = np.empty_like(y)
        kp.avg_pool2d(x, ya, gp)
        dxa = np.empty_like(x)
        kp.avg_pool2d_backward(ya, dxa, gp, x)
        return cols, dx, z, dxg, dw, y, idx, dxp, ya, dxa

    results = []
    for threads in (1, 2):
        nbn.set_num_threads(threads)
        try:
            results.append(run())
        finally:
            nbn.set_num_threads(max_threads())
    for a, b in zip(*results, strict=True):
        assert np.array_equal(a, b)


def test_public_kernels_check_their_arguments():
    g = geometry(5, 5, 3, 3)
    x = np.zeros((1, 5, 5, 2))
    with pytest.raises(ValueError, match=r"cols must have shape \(9, 18\)"):
        kc.im2col(x, np.zeros((9, 17)), g)
    with pytest.raises(TypeError, match="cols"):
        kc.im2col(x, np.zeros((9, 18), np.float32), g)
    with pytest.raises(ValueError, match="x must be 4-D|x must have 4 dimensions|ndim"):
        kc.im2col(np.zeros((5, 5, 2)), np.zeros((9, 18)), g)
    with pytest.raises(ValueError, match=r"w must have shape \(3, 3, 2 // groups"):
        kc.conv2d_grouped_forward(x, np.zeros((3, 3, 2, 3)), None, np.zeros((1, 3, 3, 3)), g,
                                  2)
    gp = pool_geometry(5, 5, 2, 2, 2, 2, 0, 0)
    with pytest.raises(TypeError, match="idx must be an int64 array"):
        kp.max_pool2d(x, np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2, 2)), gp)
    with pytest.raises(ValueError, match="outside"):
        kp.max_pool2d_backward(np.zeros((1, 2, 2, 2)), np.full((1, 2, 2, 2), 99, np.int64),
                               np.zeros((1, 5, 5, 2)))
