"""2-D convolution kernels on channels-last images: im2col / col2im for the packed GEMM,
direct kernels for few output channels, and direct kernels for grouped (depthwise)
convolutions.

Layouts: images are ``(N, H, W, C)``, weights ``(KH, KW, C // groups, CO)``, outputs
``(N, OH, OW, CO)``, all C-contiguous float32 or float64. The operation is PyTorch's
cross-correlation (no kernel flip)::

    z[n, oh, ow, co] = bias[co] + sum_{ki, kj, c} x[n, oh*sh - pt + ki*dh,
                                                    ow*sw - pl + kj*dw, g*Cg + c]
                                               * w[ki, kj, c, co]      (g = co // Og)

with zero padding ``pt`` rows on top and ``pl`` columns on the left (bottom/right
padding only shows in ``OH``/``OW``, which the caller computes, so asymmetric "same"
padding needs nothing here). Kernels take the window as a plain tuple
(``tuple(ConvGeometry(...))``): Numba leaks a little memory on every call that passes a
NamedTuple.

Convolution as three matrix products (``groups == 1``). ``im2col`` writes the receptive
field of every output pixel as one row of ``cols``, ``(N*OH*OW, KH*KW*C)`` in
``(ki, kj, c)`` order, which is exactly the row order of ``w`` seen as a
``(KH*KW*C, CO)`` matrix. Then, with the packed GEMM of :mod:`numbanet.kernels.matmul`:

* forward: ``z = cols @ w`` (bias and activation in the GEMM epilogue), or for a narrow
  output ``z.T = w.T @ cols.T`` and :func:`untranspose_into` (:func:`gemm_prefers_transpose`);
* weight gradient: ``dw = cols.T @ dz`` (or its transpose);
* input gradient: ``dcols = dz @ w.T``, then ``col2im`` adds each row of ``dcols`` back
  onto the input pixels it was read from.

A 1x1 convolution with stride 1 and no padding needs neither: the image ``(N*H*W, C)``
already is ``cols``. With one input channel im2col can write ``cols.T`` instead, whose
rows are runs of input rows.

Few output channels, stride 1 (:func:`direct_applies`): the direct kernels vectorize
over output pixels instead (see the section below) and need no im2col; the input
gradient of a stride-1 convolution with few input channels is then also a direct
convolution, with no col2im (:func:`direct_input_gradient_applies`).

Grouped convolutions (``groups > 1``, depthwise ``groups == C``) run as direct kernels
(:func:`conv2d_grouped_forward` and its two gradients): the GEMM would see ``groups``
products of ``Cg`` inner steps each, and a depthwise one (``Cg == 1``) is one multiply
per weight per pixel, a vector loop over channels.

Parallel contracts (all race-free and thread-count independent):

* ``im2col``: ``prange`` over output rows ``(n, oh)``; task ``r`` writes the ``OW`` rows
  of ``cols`` of output row ``r`` only.
* ``col2im`` (and the grouped input gradient): ``prange`` over input rows ``(n, ih)``;
  task ``r`` writes input row ``r`` of ``dx`` only, gathering the contributions of every
  window that covers it in a fixed order (kernel row, output column, kernel column).
* direct forward: ``prange`` over groups of 4 pixel chunks, disjoint outputs; direct
  weight gradient: ``prange`` over fixed blocks of images, each summing into its own
  float64 partials, which are then added in block order.
* grouped forward: ``prange`` over output rows; grouped weight gradient: ``prange`` over
  kernel taps ``(ki, kj)``, each summing over all pixels in one fixed order, in float64.

Every public function has a serial twin taken below :data:`PARALLEL_MIN` elements
(same loops, same results bit for bit).
"""
from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from numbanet._jit import kernel, parallel_kernel
from numbanet._validation import check_float_array
from numbanet.kernels._simd import (
    lanes_for,
    sload,
    sstore,
    transpose_copy,
    vadd,
    vbroadcast,
    vcopy_masked,
    vfma,
    vlanes,
    vload,
    vrelu,
    vstore,
    vzero,
)
from numbanet.kernels.matmul import MR, NV

__all__ = [
    "DIRECT_MAX_CHANNELS",
    "ConvGeometry",
    "DirectLayout",
    "PARALLEL_MIN",
    "col2im",
    "col2im_into",
    "conv2d_grouped_backward_input",
    "conv2d_grouped_backward_input_into",
    "conv2d_grouped_backward_weight",
    "conv2d_grouped_backward_weight_into",
    "conv2d_grouped_forward",
    "conv2d_grouped_forward_into",
    "direct_applies",
    "direct_backward_weight_into",
    "direct_forward",
    "direct_forward_into",
    "direct_input_gradient_applies",
    "direct_lanes",
    "direct_layout",
    "direct_partials_shape",
    "direct_workspace",
    "flip_weights",
    "gemm_prefers_transpose",
    "im2col",
    "im2col_into",
    "transpose_small",
    "transposed_geometry",
    "untranspose_into",
]

#: Below this many elements (written, or multiply-adds for the direct kernels) the
#: serial twins run: a parallel launch costs microseconds. The value follows the other
#: kernels' thresholds (2**15 to 2**16); it was not tuned here (the machine was shared
#: with other jobs while this was written).
PARALLEL_MIN = 1 << 15


class ConvGeometry(NamedTuple):
    """Everything about a convolution's window but the channel counts.

    Attributes:
        kh, kw: kernel rows and columns.
        sh, sw: strides.
        pt, pl: zero padding on the top and on the left.
        dh, dw: dilations.
        oh, ow: output rows and columns (they imply the bottom and right padding).
    """

    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pl: int
    dh: int
    dw: int
    oh: int
    ow: int


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------


@kernel(inline="always")
def _valid_taps(start, dilation, taps, size):
    """``(lo, hi)``: the taps ``t`` in ``[lo, hi)`` for which ``start + t * dilation``
    lies in ``[0, size)`` (an empty range when none does)."""
    lo = 0
    if start < 0:
        lo = (-start + dilation - 1) // dilation
    hi = taps
    last = size - 1 - start  # the largest t * dilation that stays inside
    if last < 0:
        hi = 0
    else:
        hi = min(taps, last // dilation + 1)
    if hi < lo:
        hi = lo
    return lo, hi


@kernel(inline="always")
def _keep_where_positive(row, saved):
    """``row = 0`` where ``saved <= 0`` (ReLU's derivative; NaN passes, as in Dense)."""
    for j in range(row.shape[0]):
        if saved[j] <= 0:
            row[j] = 0


# Flat-offset helpers. Numba builds an array struct (with bounds arithmetic) for every
# slice, about 20 ns: with the short runs of im2col (5 to 30 elements) slicing took 3-5x
# longer than the copying itself, so these kernels address flat arrays by offset.


@kernel(inline="always")
def _copy(src, so, dst, do, count):
    """``dst.flat[do : do + count] = src.flat[so : so + count]`` (``count >= 0``)."""
    lanes = vlanes(dst)
    j = 0
    while j + lanes <= count:
        vstore(dst, do + j, vload(src, so + j))
        j += lanes
    if j < count:
        vcopy_masked(src, so + j, dst, do + j, count - j)


@kernel(inline="always")
def _add(src, so, dst, do, count):
    """``dst.flat[do : do + count] += src.flat[so : so + count]``."""
    lanes = vlanes(dst)
    j = 0
    while j + lanes <= count:
        vstore(dst, do + j, vadd(vload(dst, do + j), vload(src, so + j)))
        j += lanes
    for t in range(j, count):
        sstore(dst, do + t, sload(dst, do + t) + sload(src, so + t))


@kernel(inline="always")
def _zero(dst, do, count):
    """``dst.flat[do : do + count] = 0``."""
    zero = dst.dtype.type(0)
    for j in range(count):
        sstore(dst, do + j, zero)


# ---------------------------------------------------------------------------------------
# im2col
# ---------------------------------------------------------------------------------------


@kernel
def _im2col_rows(x, cols, g, r0, r1):
    """Output rows ``r0 .. r1`` (``r = n * OH + oh``) of ``im2col`` (serial)."""
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    _, h, w, c = x.shape
    kwc = kw * c
    depth = kh * kwc
    xf = x.reshape(x.size)
    cf = cols.reshape(cols.size)
    for r in range(r0, r1):
        n = r // out_h
        oh = r - n * out_h
        ih0 = oh * sh - pt
        for ow in range(out_w):
            d = (r * out_w + ow) * depth
            iw0 = ow * sw - pl
            jlo, jhi = _valid_taps(iw0, dil_w, kw, w)
            for ki in range(kh):
                ih = ih0 + ki * dil_h
                dk = d + ki * kwc
                if ih < 0 or ih >= h or jlo == jhi:
                    _zero(cf, dk, kwc)
                    continue
                s = ((n * h + ih) * w + iw0) * c  # the tap kj = 0 (maybe outside)
                _zero(cf, dk, jlo * c)
                if dil_w == 1:
                    # The valid taps read one contiguous run of the input row.
                    _copy(xf, s + jlo * c, cf, dk + jlo * c, (jhi - jlo) * c)
                else:
                    for kj in range(jlo, jhi):
                        _copy(xf, s + kj * dil_w * c, cf, dk + kj * c, c)
                _zero(cf, dk + jhi * c, kwc - jhi * c)


@parallel_kernel
def _im2col_parallel(x, cols, g):
    """:func:`im2col` on validated arrays; ``prange`` over output rows ``(n, oh)``."""
    rows = x.shape[0] * g[8]
    for r in numba.prange(rows):
        _im2col_rows(x, cols, g, r, r + 1)


@kernel
def _im2col_t_rows(x, cols_t, g, r0, r1):
    """Output rows ``r0 .. r1`` of the transposed ``im2col`` (serial)."""
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    _, h, w, c = x.shape
    m = cols_t.shape[1]
    xf = x.reshape(x.size)
    cf = cols_t.reshape(cols_t.size)
    for r in range(r0, r1):
        n = r // out_h
        oh = r - n * out_h
        for ki in range(kh):
            ih = oh * sh - pt + ki * dil_h
            for kj in range(kw):
                # Output columns ow whose tap kj reads inside the row: iw0 + ow * sw.
                iw0 = kj * dil_w - pl
                olo, ohi = _valid_taps(iw0, sw, out_w, w)
                if ih < 0 or ih >= h:
                    olo, ohi = 0, 0
                for ci in range(c):
                    d = ((ki * kw + kj) * c + ci) * m + r * out_w
                    _zero(cf, d, olo)
                    s = ((n * h + ih) * w + iw0) * c + ci
                    if sw * c == 1:
                        _copy(xf, s + olo, cf, d + olo, ohi - olo)
                    else:
                        for ow in range(olo, ohi):
                            sstore(cf, d + ow, sload(xf, s + ow * sw * c))
                    _zero(cf, d + ohi, out_w - ohi)


@parallel_kernel
def _im2col_t_parallel(x, cols_t, g):
    """:func:`im2col` transposed on validated arrays; ``prange`` over output rows."""
    rows = x.shape[0] * g[8]
    for r in numba.prange(rows):
        _im2col_t_rows(x, cols_t, g, r, r + 1)


def im2col_into(x: np.ndarray, cols: np.ndarray, g: tuple[int, ...],
                transposed: bool = False) -> None:
    """:func:`im2col` without checks (the layer's hot path); parallel by size.

    ``g`` is a plain tuple (``tuple(ConvGeometry(...))``): Numba leaks a little memory
    on every call that passes a NamedTuple.
    """
    parallel = cols.size >= PARALLEL_MIN and numba.get_num_threads() > 1
    if transposed:
        if parallel:
            _im2col_t_parallel(x, cols, g)
        else:
            _im2col_t_rows(x, cols, g, 0, x.shape[0] * g[8])
    elif parallel:
        _im2col_parallel(x, cols, g)
    else:
        _im2col_rows(x, cols, g, 0, x.shape[0] * g[8])


def im2col(x: np.ndarray, cols: np.ndarray, g: ConvGeometry, transposed: bool = False) -> None:
    """Gather every output pixel's receptive field into one row (or column) of ``cols``.

    Args:
        x: ``(N, H, W, C)`` images, float32/float64, C-contiguous.
        cols: ``(N * OH * OW, KH * KW * C)``, same dtype, writeable. Afterwards row
            ``(n * OH + oh) * OW + ow`` holds ``x[n, ih, iw, :]`` for the window's
            ``(ki, kj)`` in row-major order (zeros where the window covers padding).
            With ``transposed``, ``cols`` is ``(KH * KW * C, N * OH * OW)`` and holds
            the transpose.
        g: the window (:class:`ConvGeometry`).
        transposed: write the transposed matrix. For one input channel and stride 1 its
            rows are contiguous runs of input rows (measured 5x faster than the
            untransposed layout's runs of ``KW`` values for LeNet's 5x5 over 28x28x1),
            and the GEMM reads either layout.

    Raises:
        TypeError, ValueError: wrong dtypes, ranks or shapes.
    """
    g = ConvGeometry(*g)
    check_float_array("x", x, ndim=4)
    n, _, _, c = x.shape
    shape = (n * g.oh * g.ow, g.kh * g.kw * c)
    check_float_array("cols", cols, dtype=x.dtype, writeable=True,
                      shape=shape[::-1] if transposed else shape)
    im2col_into(x, cols, tuple(g), transposed)


# ---------------------------------------------------------------------------------------
# col2im
# ---------------------------------------------------------------------------------------


@kernel
def _col2im_rows(dcols, dx, g, saved, masked, r0, r1):
    """Input rows ``r0 .. r1`` (``r = n * H + ih``) of ``col2im`` (serial)."""
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    _, h, w, c = dx.shape
    kwc = kw * c
    depth = kh * kwc
    df = dcols.reshape(dcols.size)
    xf = dx.reshape(dx.size)
    for r in range(r0, r1):
        n = r // h
        ih = r - n * h
        row = r * w * c
        _zero(xf, row, w * c)
        for ki in range(kh):
            t = ih + pt - ki * dil_h
            if t < 0 or t % sh != 0:
                continue
            oh = t // sh
            if oh >= out_h:
                continue
            base = (n * out_h + oh) * out_w
            for ow in range(out_w):
                iw0 = ow * sw - pl
                jlo, jhi = _valid_taps(iw0, dil_w, kw, w)
                src = (base + ow) * depth + ki * kwc
                if dil_w == 1:
                    _add(df, src + jlo * c, xf, row + (iw0 + jlo) * c, (jhi - jlo) * c)
                else:
                    for kj in range(jlo, jhi):
                        _add(df, src + kj * c, xf, row + (iw0 + kj * dil_w) * c, c)
        if masked:
            _keep_where_positive(dx[n, ih].reshape(w * c), saved[n, ih].reshape(w * c))


@parallel_kernel
def _col2im_parallel(dcols, dx, g, saved, masked):
    """:func:`col2im` on validated arrays; ``prange`` over input rows ``(n, ih)``."""
    rows = dx.shape[0] * dx.shape[1]
    for r in numba.prange(rows):
        _col2im_rows(dcols, dx, g, saved, masked, r, r + 1)


def col2im_into(dcols: np.ndarray, dx: np.ndarray, g: tuple[int, ...],
                saved: np.ndarray | None = None) -> None:
    """:func:`col2im` without checks (the layer's hot path); parallel by size.

    ``g`` is a plain tuple, as for :func:`im2col_into`.
    """
    masked = saved is not None
    if saved is None:
        saved = dx
    if dcols.size >= PARALLEL_MIN and numba.get_num_threads() > 1:
        _col2im_parallel(dcols, dx, g, saved, masked)
    else:
        _col2im_rows(dcols, dx, g, saved, masked, 0, dx.shape[0] * dx.shape[1])


def col2im(dcols: np.ndarray, dx: np.ndarray, g: ConvGeometry,
           saved: np.ndarray | None = None) -> None:
    """The adjoint of :func:`im2col`: add each row of ``dcols`` onto the pixels it reads.

    Args:
        dcols: ``(N * OH * OW, KH * KW * C)``, the gradient of ``cols``.
        dx: ``(N, H, W, C)``, writeable; overwritten with the input gradient (each
            element sums its contributions in a fixed order: kernel row, output column,
            kernel column).
        g: the window (:class:`ConvGeometry`).
        saved: optional ``(N, H, W, C)``: the layer below's saved ReLU input or output;
            ``dx`` is then zeroed where ``saved <= 0`` (ReLU's derivative fused in).

    Raises:
        TypeError, ValueError: wrong dtypes, ranks or shapes.
    """
    g = ConvGeometry(*g)
    check_float_array("dx", dx, ndim=4, writeable=True)
    n, _, _, c = dx.shape
    check_float_array("dcols", dcols, dtype=dx.dtype,
                      shape=(n * g.oh * g.ow, g.kh * g.kw * c))
    if saved is not None:
        check_float_array("saved", saved, dtype=dx.dtype, shape=dx.shape)
    col2im_into(dcols, dx, tuple(g), saved)


# ---------------------------------------------------------------------------------------
# Narrow GEMM outputs: compute the transpose, then transpose back with the epilogue
# ---------------------------------------------------------------------------------------


def gemm_prefers_transpose(m: int, n: int, dtype: object) -> bool:
    """Whether an ``(m, n)`` GEMM output is better computed as its ``(n, m)`` transpose.

    The GEMM's register tile is ``MR`` rows by ``NR = NV * lanes`` columns (12 x 32
    float32 with AVX-512), so 16 output channels fill half of its columns but two thirds
    of two row panels. A parallel GEMM swaps by itself when that saves half the padded
    area (its transpose back is serial); this asks for the transpose when it saves a
    fifth (measured: a 6400 x 150 x 16 product 1.05 ms -> 0.70 ms, its weight gradient
    1.06 -> 0.71 ms, one thread).
    """
    lanes = lanes_for(dtype)
    nr = NV * lanes

    def area(rows: int, cols: int) -> int:
        return -(-rows // MR) * MR * (-(-cols // nr)) * nr

    normal, transposed = area(m, n), area(n, m)
    return 2 * transposed >= normal and 5 * transposed < 4 * normal


@kernel
def _untranspose_blocks(zt, bias, has_bias, relu, z, btile, b0, b1):
    """Blocks ``b0 .. b1`` of ``lanes`` rows of :func:`untranspose_into` (serial)."""
    co, m = zt.shape
    lanes = vlanes(z)
    tf = zt.reshape(zt.size)
    zf = z.reshape(z.size)
    zero = z.dtype.type(0)
    width = lanes * co
    for j in range(width):
        btile[j] = bias[j % co] if has_bias else zero
    for b in range(b0, b1):
        m0 = b * lanes
        if m0 + lanes <= m:
            for c0 in range(0, co, lanes):
                cnt = min(lanes, co - c0)
                transpose_copy(tf, c0 * m + m0, m, cnt, zf, m0 * co + c0, co, cnt)
            block = z[m0 : m0 + lanes].reshape(width)
            if relu:
                for j in range(width):
                    v = block[j] + btile[j]
                    block[j] = v if v >= zero or v != v else zero
            elif has_bias:
                for j in range(width):
                    block[j] += btile[j]
        else:
            for r in range(m0, m):
                for c in range(co):
                    v = tf[c * m + r] + btile[c]
                    if relu and v < zero:
                        v = zero
                    zf[r * co + c] = v


@parallel_kernel
def _untranspose_parallel(zt, bias, has_bias, relu, z, btiles):
    lanes = vlanes(z)
    blocks = (zt.shape[1] + lanes - 1) // lanes
    for b in numba.prange(blocks):
        _untranspose_blocks(zt, bias, has_bias, relu, z, btiles[numba.get_thread_id()],
                            b, b + 1)


def untranspose_into(zt: np.ndarray, bias: np.ndarray | None, relu: bool, z: np.ndarray,
                     btiles: np.ndarray) -> None:
    """``z = act(zt.T + bias)`` with ``act`` ReLU or identity; unchecked.

    Args:
        zt: ``(CO, M)``, a GEMM output computed transposed.
        bias: ``(CO,)`` or ``None``.
        relu: apply ReLU (NaN passes, as in the GEMM epilogue).
        z: ``(M, CO)``, writeable.
        btiles: ``(threads, lanes * CO)`` scratch (the bias repeated per row).

    ``prange`` over blocks of ``lanes`` rows of ``z``, each transposed in registers.
    """
    has_bias = bias is not None
    if bias is None:
        bias = zt.reshape(-1)[:1]
    if z.size >= PARALLEL_MIN and numba.get_num_threads() > 1:
        _untranspose_parallel(zt, bias, has_bias, relu, z, btiles)
    else:
        _untranspose_blocks(zt, bias, has_bias, relu, z, btiles[0], 0,
                            -(-z.shape[0] // direct_lanes(z.dtype)))


@kernel
def transpose_small(src, dst):
    """``dst = src.T`` for small 2-D arrays (a weight gradient computed transposed)."""
    r, c = src.shape
    for i in range(c):
        for j in range(r):
            dst[i, j] = src[j, i]


# ---------------------------------------------------------------------------------------
# Few channels, stride 1: direct kernels vectorized over output pixels
# ---------------------------------------------------------------------------------------
#
# With few output channels the GEMM's register tile is mostly padding (LeNet's 6 and 16
# channels fill 6 or 16 of its 32 columns), and im2col and col2im move KH*KW copies of
# every value through memory. These kernels put ``lanes`` neighbouring output pixels in
# a vector instead. The input is first copied channels-first and zero-padded, each
# channel a ``Hp x Wp`` plane with ``Wp = OW + (KW-1)*dw``. Output pixels are numbered
# over a grid as wide as the plane, ``m = oh * Wp + ow``: then the input of pixel ``m``
# at tap ``(ki, kj)`` sits at ``m + ki*dh*Wp + kj*dw`` in the plane, an affine function
# of ``m``, so ``lanes`` consecutive pixels read one vector load per tap and channel,
# even across output rows. Grid columns ``ow >= OW`` are computed and dropped (LeNet:
# 28 of 32 columns useful in the first layer, 10 of 14 in the second).
#
# A register tile of four pixel chunks by four output channels keeps sixteen FMA chains
# in flight (one chain per vector ran 1.7x slower: FMA latency, not throughput, bound
# it): per input channel and tap, four vector loads and four weight broadcasts feed
# sixteen FMAs. Two chunks by four channels (eight FMAs per four broadcasts) ran
# 1.1-1.25x slower on resnet-small's and LeNet's layers, and two chunks by eight
# channels no faster: the broadcasts per FMA, not the loads, bound it.
# The weight gradient pairs the same input vectors with the output gradient of
# ``lanes`` pixels, transposed into channel vectors, in twelve accumulators (three taps
# by four channels) swept over a block of images.
#
# Chunks of ``lanes`` pixels start at 0, lanes, 2*lanes, ... and the last one at
# ``M - lanes`` (``M = OH * Wp``), overlapping its neighbour: the overlap is recomputed
# in the forward pass and masked out of the gradient.
#
# The input gradient of a stride-1 convolution is itself such a convolution (of the
# zero-padded output gradient with the kernel flipped and its channel axes swapped), so
# the same forward kernel computes it, without col2im.

#: Output channels up to which the direct kernels replace im2col + GEMM (and input
#: channels up to which they compute a stride-1 input gradient). At 32 channels the
#: GEMM's register tile is full, but im2col, col2im and packing the im2col matrix for a
#: single 32-column panel cost more than the direct kernels' extra loads: resnet-small's
#: 32 -> 32 3x3 over 16x16 (batch 64, one thread, interleaved medians) forward 6.3 ->
#: 4.9 ms, input gradient 7.0 -> 4.9 ms, weight gradient 5.6 -> 6.4 ms. At 64 channels
#: (8x8) the GEMM wins every part (forward 4.1 vs 5.4 ms).
DIRECT_MAX_CHANNELS = 32
# Pixel chunks a weight-gradient task sweeps before reducing its vector accumulators
# (each reduction is a store and `lanes` scalar float64 adds, the time of dozens of
# FMAs; LeNet's second conv has only 9 chunks per image): images are grouped into
# blocks of at least this many chunks. The grouping depends on the shapes only. 128
# rather than 64: 1.05-1.15x faster weight gradients on resnet-small's 16- and
# 32-channel layers (256 was no faster on 32 channels and leaves a batch of 64 at
# 16x16 only 4 tasks).
_MIN_CHUNKS_PER_BLOCK = 128
# Pixel chunks per direct forward task: the chunks of the register tile.
_CHUNKS_PER_TASK = 4


def direct_lanes(dtype: object) -> int:
    """Output pixels per vector in the direct kernels (16 float32 / 8 float64 values with
    AVX-512, else 8 / 4)."""
    return lanes_for(dtype)


def direct_applies(g: tuple[int, ...], out_channels: int, groups: int, dtype: object) -> bool:
    """Whether the direct kernels compute this convolution: no groups, stride 1, at most
    :data:`DIRECT_MAX_CHANNELS` output channels and at least one vector of pixels per
    image."""
    kh, kw, sh, sw, _, _, _, dw, oh, ow = g
    return (groups == 1 and (sh, sw) == (1, 1) and out_channels <= DIRECT_MAX_CHANNELS
            and oh * (ow + (kw - 1) * dw) >= direct_lanes(dtype))


class DirectLayout(NamedTuple):
    """The padded channels-first input of the direct kernels and offsets into it.

    Attributes:
        hp, wp: rows and columns of a padded channel plane (``wp`` is also the width of
            the output grid, ``OW`` of whose columns are real).
        plane: elements from one channel plane to the next (``hp * wp`` and a zero tail
            that the last chunk's vectors may read).
        toff: int64, the offset of each tap ``(ki, kj)`` within a plane.
        qoff: int64, the first grid pixel of each chunk of an image.
        block: images per weight-gradient task.
    """

    hp: int
    wp: int
    plane: int
    toff: np.ndarray
    qoff: np.ndarray
    block: int


def direct_layout(g: tuple[int, ...], lanes: int, in_w: int | None = None) -> DirectLayout:
    """The :class:`DirectLayout` for window ``g`` and vectors of ``lanes`` values.

    With the input width ``in_w`` the planes are narrower when there is padding on both
    sides: a tap reading past a plane row's end reads the next row's left padding, so
    only the wider of the two paddings needs columns (``wp = in_w + max(pl, pr)``
    instead of ``in_w + pl + pr``; the input gradient of LeNet's valid 5x5 over 14x14,
    padded by 4 on each side: 14 columns instead of 18).
    """
    kh, kw, _, _, _, pl, dh, dw, oh, ow = g
    wp = ow + (kw - 1) * dw
    if in_w is not None:
        pr = wp - pl - in_w
        if pl >= 0 and pr >= 0:
            wp = max(ow, in_w + max(pl, pr))
    hp = oh + (kh - 1) * dh
    toff = np.array([ki * dh * wp + kj * dw for ki in range(kh) for kj in range(kw)],
                    np.int64)
    grid = oh * wp
    chunks = -(-grid // lanes)
    qoff = np.array([min(q * lanes, grid - lanes) for q in range(chunks)], np.int64)
    block = max(1, -(-_MIN_CHUNKS_PER_BLOCK // chunks))
    return DirectLayout(hp, wp, hp * wp + (kw - 1) * dw + lanes, toff, qoff, block)


def direct_workspace(threads: int, layout: DirectLayout, in_channels: int,
                     out_channels: int, lanes: int) -> tuple[tuple[int, int], int]:
    """``(tiles shape, partials per image block)`` of the direct kernels.

    ``tiles`` is per thread: the forward pass's ``4 x CO`` vectors and their transpose,
    or the weight gradient's transposed output gradient of one block of images and four
    vectors to reduce. The float64 partials hold a block's weight and bias gradient sums.
    """
    chunks = layout.qoff.shape[0]
    size = max((_CHUNKS_PER_TASK + 1) * out_channels * lanes,
               (-(-out_channels // lanes) * lanes * layout.block * chunks + 4) * lanes)
    taps = layout.toff.shape[0]
    return (threads, size), taps * in_channels * out_channels + out_channels


@kernel
def _pad_cf_images(x, xp, pt, pl, hp, wp, n0, n1):
    """``xp[n, c]`` = the ``hp x wp`` plane of ``x[n, :, :, c]`` shifted by ``(pt, pl)``
    (either may be negative: rows/columns cut off), zeros around and in the tail;
    images ``n0 .. n1`` (serial)."""
    _, h, w, c = x.shape
    plane = xp.shape[2]
    xf = x.reshape(x.size)
    pf = xp.reshape(xp.size)
    lo = min(max(pl, 0), wp)
    hi = max(min(pl + w, wp), lo)
    lanes = vlanes(xp)
    # Whole blocks of `lanes` channels are transposed in registers, `lanes` pixels at a
    # time (a strided scalar gather per element took a quarter of a 16-channel forward).
    blocked = c % lanes == 0
    for n in range(n0, n1):
        for ci in range(c):
            base = (n * c + ci) * plane
            for r in range(hp):
                d = base + r * wp
                ih = r - pt
                if ih < 0 or ih >= h:
                    _zero(pf, d, wp)
                    continue
                _zero(pf, d, lo)
                s = ((n * h + ih) * w + lo - pl) * c + ci
                if c == 1:
                    _copy(xf, s, pf, d + lo, hi - lo)
                elif not blocked:
                    for q in range(hi - lo):
                        sstore(pf, d + lo + q, sload(xf, s + q * c))
                _zero(pf, d + hi, wp - hi)
            _zero(pf, base + hp * wp, plane - hp * wp)
        if blocked and c > 1:
            for r in range(max(pt, 0), min(hp, pt + h)):
                s = ((n * h + r - pt) * w + lo - pl) * c
                for c0 in range(0, c, lanes):
                    d = (n * c + c0) * plane + r * wp + lo
                    for p0 in range(0, hi - lo, lanes):
                        cnt = min(lanes, hi - lo - p0)
                        transpose_copy(xf, s + p0 * c + c0, c, cnt, pf, d + p0, plane, cnt)


@parallel_kernel
def _pad_cf_parallel(x, xp, pt, pl, hp, wp):
    for n in numba.prange(x.shape[0]):
        _pad_cf_images(x, xp, pt, pl, hp, wp, n, n + 1)


@kernel(inline="always")
def _grid_run(m, lanes_left, wp, n, out_h, out_w, co):
    """For grid pixel ``m`` (of an image's ``wp``-wide grid) and the ``lanes_left``
    pixels from it in the current chunk: ``(run, real, d)``, the pixels left in this
    grid row, how many of them are real output columns (0 past ``out_w``), and the
    flat offset of the first one in image ``n``'s ``(out_h, out_w, co)`` output."""
    oh = m // wp
    ow = m - oh * wp
    run = min(lanes_left, wp - ow)
    if ow >= out_w:
        return run, 0, 0
    return run, min(run, out_w - ow), ((n * out_h + oh) * out_w + ow) * co


@kernel(inline="always")
def _store_chunk(tile, first, zf, n, m0, out_h, out_w, wp, co, saved, masked):
    """Write the ``co`` channel vectors at ``tile[first * lanes:]`` (grid pixels
    ``m0 ..``) into ``z[n]`` (flat ``zf``, pixels of ``co`` channels), dropping grid
    columns ``>= out_w``; zero where ``saved <= 0`` if ``masked``.

    The vectors are transposed in registers into ``tile`` after them (``lanes`` pixels
    of ``co`` values), then each run of real pixels within an output row is one copy.
    """
    lanes = vlanes(tile)
    tr = _CHUNKS_PER_TASK * co * lanes  # the transposed block, after the chunks' vectors
    for o0 in range(0, co, lanes):
        cnt = min(lanes, co - o0)
        transpose_copy(tile, (first + o0) * lanes, lanes, cnt, tile, tr + o0, co, cnt)
    p = 0
    while p < lanes:
        run, real, d = _grid_run(m0 + p, lanes - p, wp, n, out_h, out_w, co)
        if real > 0:
            _copy(tile, tr + p * co, zf, d, real * co)
            if masked:
                zero = zf.dtype.type(0)
                for j in range(real * co):
                    if sload(saved, d + j) <= 0:
                        sstore(zf, d + j, zero)
        p += run


@kernel(inline="always")
def _chunk_of(k, nq, chunks):
    """``(image, chunk)`` of the batch's chunk ``min(k, chunks - 1)``."""
    k = min(k, chunks - 1)
    n = k // nq
    return n, k - n * nq


@kernel(inline="always")
def _store_vectors(tile, k, co, o, o1, o2, o3, v0, v1, v2, v3, relu):
    """Channel vectors ``o .. o3`` of chunk ``k`` of a task into ``tile`` (ReLU first if
    ``relu``)."""
    lanes = vlanes(tile)
    if relu:
        v0 = vrelu(v0)
        v1 = vrelu(v1)
        v2 = vrelu(v2)
        v3 = vrelu(v3)
    vstore(tile, (k * co + o) * lanes, v0)
    vstore(tile, (k * co + o1) * lanes, v1)
    vstore(tile, (k * co + o2) * lanes, v2)
    vstore(tile, (k * co + o3) * lanes, v3)


@kernel
def _direct_forward_tasks(xp, w, bias, has_bias, z, relu, saved, masked, g, wp, toff,
                          qoff, tile, t0, t1):
    """Tasks ``t0 .. t1`` of :func:`direct_forward_into` (serial); ``tile`` is this
    thread's scratch.

    The batch's pixel chunks are numbered image after image (chunk ``k`` is chunk
    ``k % nq`` of image ``k // nq``) and task ``t`` computes chunks ``4t .. 4t + 3``,
    which may straddle two images: grouping within an image left a 16x16 image's 17
    chunks in 5 groups (15% of the work discarded), 8x8's 5 chunks in 2 (38%). A chunk
    past the batch's last one repeats it, and a channel block past the last output
    channel repeats the last channel (the same values, computed again and not stored,
    or stored twice).
    """
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    _, cin, plane = xp.shape
    co = z.shape[3]
    taps = kh * kw
    pf = xp.reshape(xp.size)
    wf = w.reshape(w.size)
    zf = z.reshape(z.size)
    sf = saved.reshape(saved.size)
    nq = qoff.shape[0]
    chunks = z.shape[0] * nq
    for task in range(t0, t1):
        k = task * _CHUNKS_PER_TASK
        # (image, first grid pixel) of each chunk, and its start in xp's first channel
        na, qa = _chunk_of(k, nq, chunks)
        nb, qb = _chunk_of(k + 1, nq, chunks)
        nc, qc = _chunk_of(k + 2, nq, chunks)
        nd, qd = _chunk_of(k + 3, nq, chunks)
        ma = na * cin * plane + qoff[qa]
        mb = nb * cin * plane + qoff[qb]
        mc = nc * cin * plane + qoff[qc]
        md = nd * cin * plane + qoff[qd]
        for o in range(0, co, 4):
            o1 = min(o + 1, co - 1)
            o2 = min(o + 2, co - 1)
            o3 = min(o + 3, co - 1)
            if has_bias:
                a0 = vbroadcast(bias, o)
                a1 = vbroadcast(bias, o1)
                a2 = vbroadcast(bias, o2)
                a3 = vbroadcast(bias, o3)
            else:
                a0 = vzero(z)
                a1 = vzero(z)
                a2 = vzero(z)
                a3 = vzero(z)
            b0, b1, b2, b3 = a0, a1, a2, a3
            c0, c1, c2, c3 = a0, a1, a2, a3
            d0, d1, d2, d3 = a0, a1, a2, a3
            for ci in range(cin):
                base = ci * plane
                for t in range(taps):
                    s = base + toff[t]
                    xa = vload(pf, s + ma)
                    xb = vload(pf, s + mb)
                    xc = vload(pf, s + mc)
                    xd = vload(pf, s + md)
                    tw = (t * cin + ci) * co
                    w0 = vbroadcast(wf, tw + o)
                    a0 = vfma(xa, w0, a0)
                    b0 = vfma(xb, w0, b0)
                    c0 = vfma(xc, w0, c0)
                    d0 = vfma(xd, w0, d0)
                    w1 = vbroadcast(wf, tw + o1)
                    a1 = vfma(xa, w1, a1)
                    b1 = vfma(xb, w1, b1)
                    c1 = vfma(xc, w1, c1)
                    d1 = vfma(xd, w1, d1)
                    w2 = vbroadcast(wf, tw + o2)
                    a2 = vfma(xa, w2, a2)
                    b2 = vfma(xb, w2, b2)
                    c2 = vfma(xc, w2, c2)
                    d2 = vfma(xd, w2, d2)
                    w3 = vbroadcast(wf, tw + o3)
                    a3 = vfma(xa, w3, a3)
                    b3 = vfma(xb, w3, b3)
                    c3 = vfma(xc, w3, c3)
                    d3 = vfma(xd, w3, d3)
            _store_vectors(tile, 0, co, o, o1, o2, o3, a0, a1, a2, a3, relu)
            _store_vectors(tile, 1, co, o, o1, o2, o3, b0, b1, b2, b3, relu)
            _store_vectors(tile, 2, co, o, o1, o2, o3, c0, c1, c2, c3, relu)
            _store_vectors(tile, 3, co, o, o1, o2, o3, d0, d1, d2, d3, relu)
        _store_chunk(tile, 0, zf, na, qoff[qa], out_h, out_w, wp, co, sf, masked)
        if k + 1 < chunks:
            _store_chunk(tile, co, zf, nb, qoff[qb], out_h, out_w, wp, co, sf, masked)
        if k + 2 < chunks:
            _store_chunk(tile, 2 * co, zf, nc, qoff[qc], out_h, out_w, wp, co, sf, masked)
        if k + 3 < chunks:
            _store_chunk(tile, 3 * co, zf, nd, qoff[qd], out_h, out_w, wp, co, sf, masked)


@parallel_kernel
def _direct_forward_parallel(xp, w, bias, has_bias, z, relu, saved, masked, g, wp, toff,
                             qoff, tiles):
    tasks = -(-(z.shape[0] * qoff.shape[0]) // _CHUNKS_PER_TASK)
    for task in numba.prange(tasks):
        # A thread runs one iteration at a time: its row of tiles is private.
        _direct_forward_tasks(xp, w, bias, has_bias, z, relu, saved, masked, g, wp, toff,
                              qoff, tiles[numba.get_thread_id()], task, task + 1)


def direct_forward_into(x: np.ndarray, xp: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                        z: np.ndarray, relu: bool, g: tuple[int, ...], layout: DirectLayout,
                        tiles: np.ndarray, saved: np.ndarray | None = None) -> None:
    """:func:`direct_forward` without checks (the layer's hot path).

    Copies ``x`` into ``xp`` (``(N, C, layout.plane)``, kept for the weight gradient),
    then computes ``z``; with ``saved`` (shaped like ``z``) ``z`` is zeroed where
    ``saved <= 0`` (the input-gradient use, with a ReLU below). ``g`` is a plain tuple;
    ``tiles`` from :func:`direct_workspace`.
    """
    has_bias = bias is not None
    if bias is None:
        bias = z.reshape(-1)[:1]
    masked = saved is not None
    if saved is None:
        saved = z
    lay = layout
    if z.size * w.shape[2] * g[0] * g[1] >= PARALLEL_MIN and numba.get_num_threads() > 1:
        _pad_cf_parallel(x, xp, g[4], g[5], lay.hp, lay.wp)
        _direct_forward_parallel(xp, w, bias, has_bias, z, relu, saved, masked, g, lay.wp,
                                 lay.toff, lay.qoff, tiles)
    else:
        _pad_cf_images(x, xp, g[4], g[5], lay.hp, lay.wp, 0, x.shape[0])
        tasks = -(-(z.shape[0] * lay.qoff.shape[0]) // _CHUNKS_PER_TASK)
        _direct_forward_tasks(xp, w, bias, has_bias, z, relu, saved, masked, g, lay.wp,
                              lay.toff, lay.qoff, tiles[0], 0, tasks)


def direct_forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, z: np.ndarray,
                   g: ConvGeometry, relu: bool = False) -> None:
    """Convolution with few output channels, vectorized over output pixels.

    Args:
        x: ``(N, H, W, C)``.
        w: ``(KH, KW, C, CO)``.
        bias: ``(CO,)`` or ``None``.
        z: ``(N, OH, OW, CO)``, writeable; receives the convolution (plus bias, then ReLU
            if ``relu``).
        g: the window; stride 1 (:func:`direct_applies`).
        relu: apply ReLU before storing.

    Each output adds its terms in the order (bias, input channel, tap) with FMAs.
    ``prange`` over groups of four pixel chunks, each written by one task.
    """
    g = ConvGeometry(*g)
    check_float_array("x", x, ndim=4)
    n, _, _, c = x.shape
    co = w.shape[3]
    check_float_array("w", w, dtype=x.dtype, shape=(g.kh, g.kw, c, co))
    check_float_array("z", z, dtype=x.dtype, shape=(n, g.oh, g.ow, co), writeable=True)
    if bias is not None:
        check_float_array("bias", bias, dtype=x.dtype, shape=(co,))
    t = tuple(g)
    if not direct_applies(t, co, 1, x.dtype):
        raise ValueError(f"direct_forward needs stride 1, at most {DIRECT_MAX_CHANNELS} "
                         f"output channels and at least {direct_lanes(x.dtype)} output "
                         f"pixels per image; got {co} channels, {g}")
    lanes = direct_lanes(x.dtype)
    layout = direct_layout(t, lanes, x.shape[2])
    tiles_shape, _ = direct_workspace(numba.config.NUMBA_NUM_THREADS, layout, c, co, lanes)
    direct_forward_into(x, np.empty((n, c, layout.plane), x.dtype), w, bias, z, relu, t,
                        layout, np.empty(tiles_shape, x.dtype))


@kernel(inline="always")
def _lane_sum(tile, off, v):
    """float64 sum of the lanes of ``v`` (stored at ``tile.flat[off:]`` first), in lane
    order."""
    vstore(tile, off, v)
    s = 0.0
    for p in range(vlanes(tile)):
        s += np.float64(sload(tile, off + p))
    return s


@kernel(inline="always")
def _channel_rows(co, lanes):
    """Channel vectors per pixel chunk that :func:`_gather_chunk` writes: ``co`` rounded
    up to whole transposed blocks of ``lanes`` (the rows past ``co`` are scratch)."""
    return -(-co // lanes) * lanes


@kernel(inline="always")
def _gather_chunk(df, tile, n, v, vq, q, qoff, wp, out_h, out_w, co):
    """Write the output gradient of chunk ``q`` of image ``n`` as channel vectors
    ``tile[(o * vq + v) * lanes:]``, which must be zero beforehand (grid columns past
    the image and the last chunk's overlap, counted by its neighbour, stay zero).

    Each run of real pixels within a grid row is transposed in registers in blocks of
    ``lanes`` channels (:func:`transpose_copy`; a scalar loop per element took 0.3-0.4
    ms of LeNet's first weight gradient). A block's rows past ``co`` land in scratch
    rows; its reads past ``co`` stay inside ``dz`` except at its very end, copied by
    scalars.
    """
    lanes = vlanes(tile)
    nq = qoff.shape[0]
    m0 = qoff[q]
    p = 0 if q < nq - 1 else (nq - 1) * lanes - m0
    while p < lanes:
        run, real, d = _grid_run(m0 + p, lanes - p, wp, n, out_h, out_w, co)
        if real > 0:
            for c0 in range(0, co, lanes):
                dst = (c0 * vq + v) * lanes + p
                if d + (real - 1) * co + c0 + lanes <= df.shape[0]:
                    transpose_copy(df, d + c0, co, real, tile, dst, vq * lanes, real)
                else:
                    for t in range(real):
                        for o in range(c0, min(co, c0 + lanes)):
                            sstore(tile, dst + (o - c0) * vq * lanes + t,
                                   sload(df, d + t * co + o))
        p += run


@kernel
def _direct_weight_blocks(xp, dz, g, wp, toff, qoff, block, tile, partials, b0, b1):
    """Weight and bias gradient sums of image blocks ``b0 .. b1`` (serial).

    Block ``b`` (images ``b * block ..``) writes ``partials[b, (t * C + c) * CO + o]``
    (float64): the sum over its pixels of ``xp[n, c]`` at tap ``t`` times ``dz[..., o]``,
    and ``partials[b, T * C * CO + o]``: the sum of ``dz[..., o]``. ``tile`` is this
    thread's scratch (:func:`direct_workspace`): first the block's ``dz`` as channel
    vectors of ``lanes`` grid pixels (zero for grid columns past the image and for the
    last chunk's overlap, which its neighbour counts), then, per three taps, input
    channel and block of four output channels, twelve register accumulators swept over
    the block.
    """
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    nimg, _, _, co = dz.shape
    _, cin, plane = xp.shape
    lanes = vlanes(dz)
    taps = kh * kw
    pf = xp.reshape(xp.size)
    df = dz.reshape(dz.size)
    zero = dz.dtype.type(0)
    nq = qoff.shape[0]
    for b in range(b0, b1):
        first = b * block
        count = min(block, nimg - first)
        vq = count * nq  # vectors per channel in this block
        red = _channel_rows(co, lanes) * vq * lanes  # offset of the reduction scratch
        part = partials[b]
        for j in range(co * vq * lanes):
            sstore(tile, j, zero)
        for i in range(count):
            for q in range(nq):
                _gather_chunk(df, tile, first + i, i * nq + q, vq, q, qoff, wp, out_h,
                              out_w, co)
        for o in range(co):
            acc = vzero(dz)
            for v in range(vq):
                acc = vadd(acc, vload(tile, (o * vq + v) * lanes))
            part[taps * cin * co + o] = _lane_sum(tile, red, acc)
        # Three taps by four output channels: twelve FMA chains over the block's vectors
        # (a row of a 3x3 kernel: no tap computed twice; pairs of taps computed the ninth
        # twice and loaded 0.75 vectors per FMA instead of 0.58: 1.3-1.6x slower on
        # resnet-small's 16- and 32-channel layers and LeNet's second). A group past the
        # last tap repeats it (the same sums, stored twice).
        for t in range(0, taps, 3):
            t1 = min(t + 1, taps - 1)
            t2 = min(t + 2, taps - 1)
            for ci in range(cin):
                pa = (t * cin + ci) * co
                pb = (t1 * cin + ci) * co
                pc = (t2 * cin + ci) * co
                for o in range(0, co, 4):
                    o1 = min(o + 1, co - 1)
                    o2 = min(o + 2, co - 1)
                    o3 = min(o + 3, co - 1)
                    a0 = vzero(dz)
                    a1 = vzero(dz)
                    a2 = vzero(dz)
                    a3 = vzero(dz)
                    b0_ = vzero(dz)
                    b1_ = vzero(dz)
                    b2_ = vzero(dz)
                    b3_ = vzero(dz)
                    c0_ = vzero(dz)
                    c1_ = vzero(dz)
                    c2_ = vzero(dz)
                    c3_ = vzero(dz)
                    for i in range(count):
                        ta = ((first + i) * cin + ci) * plane + toff[t]
                        tb = ((first + i) * cin + ci) * plane + toff[t1]
                        tc = ((first + i) * cin + ci) * plane + toff[t2]
                        for q in range(nq):
                            v = i * nq + q
                            xa = vload(pf, ta + qoff[q])
                            xb = vload(pf, tb + qoff[q])
                            xc = vload(pf, tc + qoff[q])
                            d0 = vload(tile, (o * vq + v) * lanes)
                            a0 = vfma(xa, d0, a0)
                            b0_ = vfma(xb, d0, b0_)
                            c0_ = vfma(xc, d0, c0_)
                            d1 = vload(tile, (o1 * vq + v) * lanes)
                            a1 = vfma(xa, d1, a1)
                            b1_ = vfma(xb, d1, b1_)
                            c1_ = vfma(xc, d1, c1_)
                            d2 = vload(tile, (o2 * vq + v) * lanes)
                            a2 = vfma(xa, d2, a2)
                            b2_ = vfma(xb, d2, b2_)
                            c2_ = vfma(xc, d2, c2_)
                            d3 = vload(tile, (o3 * vq + v) * lanes)
                            a3 = vfma(xa, d3, a3)
                            b3_ = vfma(xb, d3, b3_)
                            c3_ = vfma(xc, d3, c3_)
                    part[pa + o] = _lane_sum(tile, red, a0)
                    part[pa + o1] = _lane_sum(tile, red, a1)
                    part[pa + o2] = _lane_sum(tile, red, a2)
                    part[pa + o3] = _lane_sum(tile, red, a3)
                    part[pb + o] = _lane_sum(tile, red, b0_)
                    part[pb + o1] = _lane_sum(tile, red, b1_)
                    part[pb + o2] = _lane_sum(tile, red, b2_)
                    part[pb + o3] = _lane_sum(tile, red, b3_)
                    part[pc + o] = _lane_sum(tile, red, c0_)
                    part[pc + o1] = _lane_sum(tile, red, c1_)
                    part[pc + o2] = _lane_sum(tile, red, c2_)
                    part[pc + o3] = _lane_sum(tile, red, c3_)


@parallel_kernel
def _direct_weight_parallel(xp, dz, g, wp, toff, qoff, block, tiles, partials):
    for b in numba.prange(partials.shape[0]):
        _direct_weight_blocks(xp, dz, g, wp, toff, qoff, block, tiles[numba.get_thread_id()],
                              partials, b, b + 1)


@kernel
def _combine_partials(partials, dw, db, has_bias):
    """``dw``/``db`` = the per-block partials added in block order."""
    n = partials.shape[0]
    dwf = dw.reshape(dw.size)
    k = dw.size
    for t in range(k):
        s = 0.0
        for i in range(n):
            s += partials[i, t]
        dwf[t] = s
    if has_bias:
        for o in range(db.shape[0]):
            s = 0.0
            for i in range(n):
                s += partials[i, k + o]
            db[o] = s


def direct_partials_shape(batch: int, layout: DirectLayout, per_block: int) -> tuple[int, int]:
    """Shape of the float64 partials of :func:`direct_backward_weight_into`."""
    return (-(-batch // layout.block), per_block)


def direct_backward_weight_into(xp: np.ndarray, dz: np.ndarray, dw: np.ndarray,
                                db: np.ndarray | None, g: tuple[int, ...],
                                layout: DirectLayout, tiles: np.ndarray,
                                partials: np.ndarray) -> None:
    """Weight (and bias) gradient of :func:`direct_forward`, without checks.

    ``xp`` is the padded input the forward pass wrote; ``partials`` is float64
    (:func:`direct_partials_shape`). Each block of images is summed by one task (pixels in
    a fixed order, then lanes), and the blocks are added in order: the result does not
    depend on the thread count.
    """
    lay = layout
    if dz.size * xp.shape[1] * g[0] * g[1] >= PARALLEL_MIN and numba.get_num_threads() > 1:
        _direct_weight_parallel(xp, dz, g, lay.wp, lay.toff, lay.qoff, lay.block, tiles,
                                partials)
    else:
        _direct_weight_blocks(xp, dz, g, lay.wp, lay.toff, lay.qoff, lay.block, tiles[0],
                              partials, 0, partials.shape[0])
    has_bias = db is not None
    _combine_partials(partials, dw, dw.reshape(-1)[:1] if db is None else db, has_bias)


def transposed_geometry(g: tuple[int, ...], in_hw: tuple[int, int]) -> tuple[int, ...] | None:
    """The window of the convolution that computes a stride-1 convolution's input
    gradient from its output gradient (kernel flipped, channel axes swapped), or
    ``None`` for a strided one."""
    kh, kw, sh, sw, pt, pl, dh, dw, _, _ = g
    if (sh, sw) != (1, 1):
        return None
    return (kh, kw, 1, 1, (kh - 1) * dh - pt, (kw - 1) * dw - pl, dh, dw, in_hw[0], in_hw[1])


def direct_input_gradient_applies(g: tuple[int, ...], in_hw: tuple[int, int],
                                  in_channels: int, dtype: object) -> bool:
    """Whether the direct kernel computes the input gradient: a stride-1 convolution with
    few input channels whose gradient grid (input rows by the compact plane width of
    :func:`direct_layout`) is at most twice the output. The gradient's convolution
    computes every tap at every input pixel, padding included; LeNet's valid 5x5 over
    14x14 (a 14 x 14 grid for 10 x 10 outputs) measured 1.9 -> 1.5 ms against im2col's
    GEMM + col2im (one thread, loaded machine)."""
    gx = transposed_geometry(g, in_hw)
    if gx is None or not direct_applies(gx, in_channels, 1, dtype):
        return False
    wp = direct_layout(gx, direct_lanes(dtype), g[9]).wp
    return in_hw[0] * wp <= 2 * g[8] * g[9]


@kernel
def flip_weights(w, wf):
    """``wf[a, b, o, c] = w[KH-1-a, KW-1-b, c, o]``: the kernel of the input gradient."""
    kh, kw, c, co = w.shape
    for a in range(kh):
        for b in range(kw):
            src = w[kh - 1 - a, kw - 1 - b]
            dst = wf[a, b]
            for o in range(co):
                for ci in range(c):
                    dst[o, ci] = src[ci, o]


# ---------------------------------------------------------------------------------------
# Grouped (depthwise) convolution: direct kernels
# ---------------------------------------------------------------------------------------


@kernel
def _grouped_forward_rows(x, w, bias, has_bias, z, g, groups, r0, r1):
    """Output rows ``r0 .. r1`` (``r = n * OH + oh``) of the grouped forward (serial)."""
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    _, h, wd, c = x.shape
    co = z.shape[3]
    cg = c // groups
    og = co // groups
    zero = z.dtype.type(0)
    depthwise = cg == 1 and og == 1
    for r in range(r0, r1):
        n = r // out_h
        oh = r - n * out_h
        ih0 = oh * sh - pt
        for ow in range(out_w):
            zp = z[n, oh, ow]
            if has_bias:
                for o in range(co):
                    zp[o] = bias[o]
            else:
                for o in range(co):
                    zp[o] = zero
            iw0 = ow * sw - pl
            ilo, ihi = _valid_taps(ih0, dil_h, kh, h)
            jlo, jhi = _valid_taps(iw0, dil_w, kw, wd)
            for ki in range(ilo, ihi):
                ih = ih0 + ki * dil_h
                for kj in range(jlo, jhi):
                    xp = x[n, ih, iw0 + kj * dil_w]
                    wk = w[ki, kj]
                    if depthwise:
                        wr = wk[0]
                        for o in range(co):
                            zp[o] += xp[o] * wr[o]
                    else:
                        for gi in range(groups):
                            zg = zp[gi * og : gi * og + og]
                            for ci in range(cg):
                                xv = xp[gi * cg + ci]
                                wr = wk[ci, gi * og : gi * og + og]
                                for o in range(og):
                                    zg[o] += xv * wr[o]


@parallel_kernel
def _grouped_forward_parallel(x, w, bias, has_bias, z, g, groups):
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    rows = x.shape[0] * out_h
    for r in numba.prange(rows):
        _grouped_forward_rows(x, w, bias, has_bias, z, g, groups, r, r + 1)


def conv2d_grouped_forward_into(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                                z: np.ndarray, g: ConvGeometry, groups: int) -> None:
    """:func:`conv2d_grouped_forward` without checks; parallel by size."""
    has_bias = bias is not None
    if bias is None:
        bias = z.reshape(-1)[:0]
    if z.size * w.shape[2] * g[0] * g[1] >= PARALLEL_MIN and numba.get_num_threads() > 1:
        _grouped_forward_parallel(x, w, bias, has_bias, z, g, groups)
    else:
        _grouped_forward_rows(x, w, bias, has_bias, z, g, groups, 0, x.shape[0] * g[8])


def _check_grouped(x, w, z, g, groups, names):
    nx, nw, nz = names
    check_float_array(nx, x, ndim=4)
    check_float_array(nw, w, ndim=4, dtype=x.dtype)
    check_float_array(nz, z, ndim=4, dtype=x.dtype)
    n, _, _, c = x.shape
    kh, kw, cg, co = w.shape
    if groups < 1 or c % groups or co % groups or cg != c // groups or (kh, kw) != (g.kh, g.kw):
        raise ValueError(
            f"{nw} must have shape ({g.kh}, {g.kw}, {c} // groups, out_channels) with "
            f"groups ({groups}) dividing both channel counts; got {w.shape} for {c} input "
            f"channels"
        )
    if z.shape != (n, g.oh, g.ow, co):
        raise ValueError(f"{nz} must have shape {(n, g.oh, g.ow, co)}, got {z.shape}")


def conv2d_grouped_forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                           z: np.ndarray, g: ConvGeometry, groups: int) -> None:
    """Grouped convolution, directly: ``z = conv(x, w) + bias``.

    Args:
        x: ``(N, H, W, C)``.
        w: ``(KH, KW, C // groups, CO)``; output channel ``co`` belongs to group
            ``co // (CO // groups)`` and reads input channels ``g*Cg .. g*Cg + Cg``.
        bias: ``(CO,)`` or ``None``.
        z: ``(N, OH, OW, CO)``, writeable; overwritten.
        g: the window; groups: divides ``C`` and ``CO``.

    Serial per output pixel in tap order ``(ki, kj, c)``; ``prange`` over output rows.
    """
    g = ConvGeometry(*g)
    _check_grouped(x, w, z, g, groups, ("x", "w", "z"))
    if bias is not None:
        check_float_array("bias", bias, dtype=x.dtype, shape=(w.shape[3],))
    conv2d_grouped_forward_into(x, w, bias, z, tuple(g), groups)


@kernel
def _grouped_input_rows(dz, w, dx, g, groups, saved, masked, r0, r1):
    """Input rows ``r0 .. r1`` (``r = n * H + ih``) of the grouped input gradient."""
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    _, h, wd, c = dx.shape
    co = dz.shape[3]
    cg = c // groups
    og = co // groups
    zero = dx.dtype.type(0)
    depthwise = cg == 1 and og == 1
    for r in range(r0, r1):
        n = r // h
        ih = r - n * h
        dxrow = dx[n, ih]
        for iw in range(wd):
            dxp = dxrow[iw]
            for ci in range(c):
                dxp[ci] = zero
            for ki in range(kh):
                t = ih + pt - ki * dil_h
                if t < 0 or t % sh != 0:
                    continue
                oh = t // sh
                if oh >= out_h:
                    continue
                for kj in range(kw):
                    u = iw + pl - kj * dil_w
                    if u < 0 or u % sw != 0:
                        continue
                    ow = u // sw
                    if ow >= out_w:
                        continue
                    dzp = dz[n, oh, ow]
                    wk = w[ki, kj]
                    if depthwise:
                        wr = wk[0]
                        for o in range(co):
                            dxp[o] += dzp[o] * wr[o]
                    else:
                        for gi in range(groups):
                            dzg = dzp[gi * og : gi * og + og]
                            for ci in range(cg):
                                wr = wk[ci, gi * og : gi * og + og]
                                s = zero
                                for o in range(og):
                                    s += dzg[o] * wr[o]
                                dxp[gi * cg + ci] += s
        if masked:
            _keep_where_positive(dxrow.reshape(wd * c), saved[n, ih].reshape(wd * c))


@parallel_kernel
def _grouped_input_parallel(dz, w, dx, g, groups, saved, masked):
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    rows = dx.shape[0] * dx.shape[1]
    for r in numba.prange(rows):
        _grouped_input_rows(dz, w, dx, g, groups, saved, masked, r, r + 1)


def conv2d_grouped_backward_input_into(dz: np.ndarray, w: np.ndarray, dx: np.ndarray,
                                       g: ConvGeometry, groups: int,
                                       saved: np.ndarray | None = None) -> None:
    """:func:`conv2d_grouped_backward_input` without checks; parallel by size."""
    masked = saved is not None
    if saved is None:
        saved = dx
    if dz.size * w.shape[2] * g[0] * g[1] >= PARALLEL_MIN and numba.get_num_threads() > 1:
        _grouped_input_parallel(dz, w, dx, g, groups, saved, masked)
    else:
        _grouped_input_rows(dz, w, dx, g, groups, saved, masked, 0, dx.shape[0] * dx.shape[1])


def conv2d_grouped_backward_input(dz: np.ndarray, w: np.ndarray, dx: np.ndarray,
                                  g: ConvGeometry, groups: int,
                                  saved: np.ndarray | None = None) -> None:
    """Input gradient of :func:`conv2d_grouped_forward`.

    Args:
        dz: ``(N, OH, OW, CO)``, the gradient of the output (pre-activation).
        w: ``(KH, KW, C // groups, CO)``.
        dx: ``(N, H, W, C)``, writeable; overwritten. Each element gathers its terms in
            the fixed order (ki, kj, output channel).
        g, groups: as in the forward pass.
        saved: optional ``(N, H, W, C)``: zero ``dx`` where ``saved <= 0`` (the layer
            below's ReLU derivative).
    """
    g = ConvGeometry(*g)
    _check_grouped(dx, w, dz, g, groups, ("dx", "w", "dz"))
    if saved is not None:
        check_float_array("saved", saved, dtype=dx.dtype, shape=dx.shape)
    conv2d_grouped_backward_input_into(dz, w, dx, tuple(g), groups, saved)


@kernel
def _grouped_weight_tap(x, dz, acc, dw, g, groups, tap):
    """``dw[ki, kj] = sum over pixels of x * dz`` for one tap, accumulated in float64 in
    ``acc[ki, kj]`` in the order (n, oh, ow) (serial)."""
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    _, h, wd, c = x.shape
    nb = x.shape[0]
    co = dz.shape[3]
    cg = c // groups
    og = co // groups
    depthwise = cg == 1 and og == 1
    ki = tap // kw
    kj = tap - ki * kw
    a = acc[ki, kj]
    for ci in range(cg):
        ar = a[ci]
        for o in range(co):
            ar[o] = 0.0
    for n in range(nb):
        for oh in range(out_h):
            ih = oh * sh - pt + ki * dil_h
            if ih < 0 or ih >= h:
                continue
            for ow in range(out_w):
                iw = ow * sw - pl + kj * dil_w
                if iw < 0 or iw >= wd:
                    continue
                xp = x[n, ih, iw]
                dzp = dz[n, oh, ow]
                if depthwise:
                    ar = a[0]
                    for o in range(co):
                        ar[o] += np.float64(xp[o]) * np.float64(dzp[o])
                else:
                    for gi in range(groups):
                        dzg = dzp[gi * og : gi * og + og]
                        for ci in range(cg):
                            xv = np.float64(xp[gi * cg + ci])
                            ar = a[ci, gi * og : gi * og + og]
                            for o in range(og):
                                ar[o] += xv * np.float64(dzg[o])
    out = dw[ki, kj]
    for ci in range(cg):
        orow = out[ci]
        ar = a[ci]
        for o in range(co):
            orow[o] = ar[o]


@parallel_kernel
def _grouped_weight_parallel(x, dz, acc, dw, g, groups):
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    for tap in numba.prange(kh * kw):
        _grouped_weight_tap(x, dz, acc, dw, g, groups, tap)


@kernel
def _grouped_weight_serial(x, dz, acc, dw, g, groups):
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    for tap in range(kh * kw):
        _grouped_weight_tap(x, dz, acc, dw, g, groups, tap)


def conv2d_grouped_backward_weight_into(x: np.ndarray, dz: np.ndarray, acc: np.ndarray,
                                        dw: np.ndarray, g: ConvGeometry,
                                        groups: int) -> None:
    """:func:`conv2d_grouped_backward_weight` without checks; parallel by size."""
    if dz.size * dw.shape[2] * g[0] * g[1] >= PARALLEL_MIN and numba.get_num_threads() > 1:
        _grouped_weight_parallel(x, dz, acc, dw, g, groups)
    else:
        _grouped_weight_serial(x, dz, acc, dw, g, groups)


def conv2d_grouped_backward_weight(x: np.ndarray, dz: np.ndarray, dw: np.ndarray,
                                   g: ConvGeometry, groups: int,
                                   acc: np.ndarray | None = None) -> None:
    """Weight gradient of :func:`conv2d_grouped_forward`: ``dw = sum x * dz``.

    Args:
        x: ``(N, H, W, C)``, the forward input.
        dz: ``(N, OH, OW, CO)``.
        dw: ``(KH, KW, C // groups, CO)``, writeable; overwritten.
        g, groups: as in the forward pass.
        acc: optional float64 workspace shaped like ``dw`` (allocated if omitted).

    Each element sums over the pixels in the order (n, oh, ow) in float64, then rounds
    once to ``dw``'s dtype; ``prange`` over the kernel taps.
    """
    g = ConvGeometry(*g)
    _check_grouped(x, dw, dz, g, groups, ("x", "dw", "dz"))
    check_float_array("dw", dw, writeable=True)
    if acc is None:
        acc = np.empty(dw.shape, np.float64)
    else:
        check_float_array("acc", acc, dtype=np.dtype(np.float64), shape=dw.shape,
                          writeable=True)
    conv2d_grouped_backward_weight_into(x, dz, acc, dw, tuple(g), groups)
