"""2-D convolution kernels on channels-last images: im2col / col2im for the packed GEMM,
and direct kernels for grouped (depthwise) convolutions.

Layouts: images are ``(N, H, W, C)``, weights ``(KH, KW, C // groups, CO)``, outputs
``(N, OH, OW, CO)``, all C-contiguous float32 or float64. The operation is PyTorch's
cross-correlation (no kernel flip)::

    z[n, oh, ow, co] = bias[co] + sum_{ki, kj, c} x[n, oh*sh - pt + ki*dh,
                                                    ow*sw - pl + kj*dw, g*Cg + c]
                                               * w[ki, kj, c, co]      (g = co // Og)

with zero padding ``pt`` rows on top and ``pl`` columns on the left (bottom/right
padding only shows in ``OH``/``OW``, which the caller computes, so asymmetric "same"
padding needs nothing here).

Convolution as three matrix products (``groups == 1``). ``im2col`` writes the receptive
field of every output pixel as one row of ``cols``, ``(N*OH*OW, KH*KW*C)`` in
``(ki, kj, c)`` order, which is exactly the row order of ``w`` seen as a
``(KH*KW*C, CO)`` matrix. Then, with the packed GEMM of :mod:`numbanet.kernels.matmul`:

* forward: ``z = cols @ w`` (bias and activation in the GEMM epilogue);
* weight gradient: ``dw = cols.T @ dz``;
* input gradient: ``dcols = dz @ w.T``, then ``col2im`` adds each row of ``dcols`` back
  onto the input pixels it was read from.

A 1x1 convolution with stride 1 and no padding needs neither: the image ``(N*H*W, C)``
already is ``cols``.

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
    WIDE_VECTORS,
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
    "ConvGeometry",
    "PARALLEL_MIN",
    "col2im",
    "conv2d_grouped_backward_input",
    "conv2d_grouped_backward_weight",
    "conv2d_grouped_forward",
    "im2col",
]

#: Below this many elements written, the serial twins run. Measured on 2 threads,
#: float32 (im2col of a 5x5 kernel over 6 channels): serial / parallel time 0.8 at
#: 2**14 elements, 1.5 at 2**16.
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
    of two row panels. The GEMM swaps by itself when that saves half the padded area;
    this asks for the transpose when it saves a fifth (measured: a 6400 x 150 x 16
    product 1.05 ms -> 0.70 ms, its weight gradient 1.06 -> 0.71 ms, one thread).
    """
    lanes = (64 if WIDE_VECTORS else 32) // np.dtype(dtype).itemsize
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
                            -(-z.shape[0] // c1_lanes(z.dtype)))


@kernel
def transpose_small(src, dst):
    """``dst = src.T`` for small 2-D arrays (a weight gradient computed transposed)."""
    r, c = src.shape
    for i in range(c):
        for j in range(r):
            dst[i, j] = src[j, i]


# ---------------------------------------------------------------------------------------
# One input channel, stride 1 along rows: direct kernels vectorized over output pixels
# ---------------------------------------------------------------------------------------
#
# A first layer on grayscale images (LeNet's 5x5 over 28x28x1) has K = KH*KW taps and few
# output channels: as a GEMM its tiles are mostly padding and im2col writes 25 values
# per output pixel. These kernels instead put ``lanes`` neighbouring output pixels of one
# output row in a vector: for a tap, their inputs are ``lanes`` consecutive values of a
# (zero-padded) input row, one vector load, and the tap's weight for an output channel is
# one broadcast. The weight gradient pairs the same input vectors with the output
# gradient of ``lanes`` pixels, transposed into channel vectors.
#
# Chunks of ``lanes`` pixels start at 0, lanes, 2*lanes, ... and the last one at
# ``OW - lanes`` (overlapping its neighbour; its overlap is recomputed in the forward
# pass and masked out of the gradient), so no lane reads past the row: these paths
# need ``OW >= lanes``.


def c1_lanes(dtype: object) -> int:
    """Output pixels per vector in the single-channel kernels (16/8 with AVX-512)."""
    return (64 if WIDE_VECTORS else 32) // np.dtype(dtype).itemsize


def c1_applies(g: tuple[int, ...], channels: int, groups: int, dtype: object) -> bool:
    """Whether the single-channel kernels take this convolution: one input channel, no
    groups, stride 1 along rows and at least one vector of output columns."""
    return channels == 1 and groups == 1 and g[3] == 1 and g[9] >= c1_lanes(dtype)


def c1_padded_width(g: tuple[int, ...]) -> int:
    """Columns of the padded input :func:`conv2d_c1_forward` reads: ``OW + (KW-1)*dw``."""
    return g[9] + (g[1] - 1) * g[7]


def c1_padded_height(g: tuple[int, ...]) -> int:
    """Rows of the padded input the single-channel kernels read."""
    return (g[8] - 1) * g[2] + (g[0] - 1) * g[6] + 1


def c1_offsets(g: tuple[int, ...], lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(toff, qoff)``, int64: the padded-image offset of each tap ``(ki, kj)``, and of
    each pixel chunk ``q = oh * chunks + ch`` of an image (its first pixel, tap 0)."""
    kh, kw, sh, _, _, _, dh, dw, oh, ow = g
    wp = c1_padded_width(g)
    toff = np.array([ki * dh * wp + kj * dw for ki in range(kh) for kj in range(kw)],
                    np.int64)
    chunks = -(-ow // lanes)
    qoff = np.array([r * sh * wp + min(ch * lanes, ow - lanes)
                     for r in range(oh) for ch in range(chunks)], np.int64)
    return toff, qoff


@kernel
def _pad_c1_images(x, xp, pt, pl, n0, n1):
    """``xp[n] = x[n, :, :, 0]`` shifted by ``(pt, pl)``, zeros around (serial)."""
    _, h, w, _ = x.shape
    _, hp, wp = xp.shape
    xf = x.reshape(x.size)
    pf = xp.reshape(xp.size)
    for n in range(n0, n1):
        for r in range(hp):
            d = (n * hp + r) * wp
            ih = r - pt
            if ih < 0 or ih >= h:
                _zero(pf, d, wp)
                continue
            lo = min(max(pl, 0), wp)
            hi = min(pl + w, wp)
            _zero(pf, d, lo)
            if hi > lo:
                _copy(xf, (n * h + ih) * w + lo - pl, pf, d + lo, hi - lo)
            _zero(pf, d + max(hi, lo), wp - max(hi, lo))


@kernel
def _c1_chunks(out_w, lanes):
    """Number of pixel chunks per output row (the last one may overlap)."""
    return (out_w + lanes - 1) // lanes


@kernel
def _c1_forward_rows(xp, w, bias, has_bias, z, relu, g, toff, tile, r0, r1):
    """Output rows ``r0 .. r1`` of :func:`conv2d_c1_forward` (serial); ``tile`` is this
    thread's scratch (``2 * CO * lanes`` elements at least), ``toff`` the taps' offsets
    in the padded image (:func:`c1_offsets`).

    Register tile: two pixel chunks by four output channels, eight independent FMA
    chains (one chain ran 3x slower: FMA latency, not throughput, bound it); per tap two
    vector loads and four broadcasts feed eight FMAs. A block past the last channel
    repeats the last one (same values, stored twice).
    """
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    _, hp, wp = xp.shape
    co = z.shape[3]
    lanes = vlanes(z)
    taps = kh * kw
    pf = xp.reshape(xp.size)
    wf = w.reshape(w.size)
    zf = z.reshape(z.size)
    nch = _c1_chunks(out_w, lanes)
    last = out_w - lanes
    for r in range(r0, r1):
        n = r // out_h
        oh = r - n * out_h
        row = (n * hp + oh * sh) * wp
        for cp in range(0, nch, 2):
            owa = row + min(cp * lanes, last)
            owb = row + min((cp + 1) * lanes, last)
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
                b0 = a0
                b1 = a1
                b2 = a2
                b3 = a3
                for t in range(taps):
                    xa = vload(pf, owa + toff[t])
                    xb = vload(pf, owb + toff[t])
                    tw = t * co
                    w0 = vbroadcast(wf, tw + o)
                    a0 = vfma(xa, w0, a0)
                    b0 = vfma(xb, w0, b0)
                    w1 = vbroadcast(wf, tw + o1)
                    a1 = vfma(xa, w1, a1)
                    b1 = vfma(xb, w1, b1)
                    w2 = vbroadcast(wf, tw + o2)
                    a2 = vfma(xa, w2, a2)
                    b2 = vfma(xb, w2, b2)
                    w3 = vbroadcast(wf, tw + o3)
                    a3 = vfma(xa, w3, a3)
                    b3 = vfma(xb, w3, b3)
                if relu:
                    a0 = vrelu(a0)
                    a1 = vrelu(a1)
                    a2 = vrelu(a2)
                    a3 = vrelu(a3)
                    b0 = vrelu(b0)
                    b1 = vrelu(b1)
                    b2 = vrelu(b2)
                    b3 = vrelu(b3)
                vstore(tile, o * lanes, a0)
                vstore(tile, o1 * lanes, a1)
                vstore(tile, o2 * lanes, a2)
                vstore(tile, o3 * lanes, a3)
                vstore(tile, (co + o) * lanes, b0)
                vstore(tile, (co + o1) * lanes, b1)
                vstore(tile, (co + o2) * lanes, b2)
                vstore(tile, (co + o3) * lanes, b3)
            # The tile holds channel vectors of lanes pixels; z wants pixels of CO
            # channels: transpose blocks of up to lanes channels in registers.
            for half in range(2):
                if half == 1 and cp + 1 >= nch:
                    break
                ow0 = min((cp + half) * lanes, last)
                d = (r * out_w + ow0) * co
                for o0 in range(0, co, lanes):
                    cnt = min(lanes, co - o0)
                    transpose_copy(tile, (half * co + o0) * lanes, lanes, cnt, zf, d + o0,
                                   co, cnt)


@parallel_kernel
def _c1_forward_parallel(xp, w, bias, has_bias, z, relu, g, toff, tiles):
    rows = z.shape[0] * g[8]
    for r in numba.prange(rows):
        # A thread runs one iteration at a time: its row of tiles is private.
        _c1_forward_rows(xp, w, bias, has_bias, z, relu, g, toff,
                         tiles[numba.get_thread_id()], r, r + 1)


def c1_workspace(threads: int, g: tuple[int, ...], out_channels: int,
                 lanes: int) -> tuple[tuple[int, int], tuple[int]]:
    """Shapes of the scratch the single-channel kernels need: ``(tiles, partials)``.

    ``tiles`` is per thread: the forward pass's ``2 x CO`` vectors, or the weight
    gradient's transposed ``dz`` of one image (``CO x OH x chunks`` vectors) and four
    vectors to reduce. ``partials`` (float64) has this shape per image.
    """
    taps = g[0] * g[1]
    chunks = -(-g[9] // lanes)
    size = max(2 * out_channels * lanes, (out_channels * g[8] * chunks + 4) * lanes)
    return (threads, size), (taps * out_channels + out_channels,)


def conv2d_c1_forward_into(x: np.ndarray, xp: np.ndarray, w: np.ndarray,
                           bias: np.ndarray | None, z: np.ndarray, relu: bool,
                           g: tuple[int, ...], offsets: tuple[np.ndarray, np.ndarray],
                           tiles: np.ndarray) -> None:
    """:func:`conv2d_c1_forward` without checks (the layer's hot path).

    Pads ``x`` into ``xp`` (``(N, c1_padded_height(g), c1_padded_width(g))``, kept for
    the weight gradient), then computes ``z``. ``offsets`` from :func:`c1_offsets`;
    ``tiles`` from :func:`c1_workspace`.
    """
    has_bias = bias is not None
    if bias is None:
        bias = z.reshape(-1)[:1]
    parallel = z.size * g[0] * g[1] >= PARALLEL_MIN and numba.get_num_threads() > 1
    if parallel:
        _pad_c1_parallel(x, xp, g[4], g[5])
        _c1_forward_parallel(xp, w, bias, has_bias, z, relu, g, offsets[0], tiles)
    else:
        _pad_c1_images(x, xp, g[4], g[5], 0, x.shape[0])
        _c1_forward_rows(xp, w, bias, has_bias, z, relu, g, offsets[0], tiles[0], 0,
                         z.shape[0] * g[8])


@parallel_kernel
def _pad_c1_parallel(x, xp, pt, pl):
    for n in numba.prange(x.shape[0]):
        _pad_c1_images(x, xp, pt, pl, n, n + 1)


def conv2d_c1_forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, z: np.ndarray,
                      g: ConvGeometry, relu: bool = False) -> None:
    """Convolution of single-channel images, vectorized over output pixels.

    Args:
        x: ``(N, H, W, 1)``.
        w: ``(KH, KW, 1, CO)``.
        bias: ``(CO,)`` or ``None``.
        z: ``(N, OH, OW, CO)``, writeable; receives the convolution (plus bias, then ReLU
            if ``relu``).
        g: the window; stride 1 along rows (``sw == 1``) and ``OW >= lanes`` (16 float32
            / 8 float64 values with AVX-512, else 8 / 4).
        relu: apply ReLU before storing.

    Each output sums its taps in row-major order with FMAs (bias first). ``prange`` over
    output rows ``(n, oh)``.
    """
    g = ConvGeometry(*g)
    check_float_array("x", x, ndim=4)
    n, _, _, c = x.shape
    co = w.shape[3]
    check_float_array("w", w, dtype=x.dtype, shape=(g.kh, g.kw, 1, co))
    check_float_array("z", z, dtype=x.dtype, shape=(n, g.oh, g.ow, co), writeable=True)
    if bias is not None:
        check_float_array("bias", bias, dtype=x.dtype, shape=(co,))
    lanes = c1_lanes(x.dtype)
    if not c1_applies(tuple(g), c, 1, x.dtype):
        raise ValueError(f"conv2d_c1_forward needs one input channel, stride 1 along rows and "
                         f"at least {lanes} output columns; got {c} channels, {g}")
    t = tuple(g)
    xp = np.empty((n, c1_padded_height(t), c1_padded_width(t)), x.dtype)
    tiles_shape, _ = c1_workspace(numba.config.NUMBA_NUM_THREADS, t, co, lanes)
    conv2d_c1_forward_into(x, xp, w, bias, z, relu, t, c1_offsets(t, lanes),
                           np.empty(tiles_shape, x.dtype))


@kernel(inline="always")
def _lane_sum(tile, off, v):
    """float64 sum of the lanes of ``v`` (stored at ``tile.flat[off:]`` first), in lane
    order."""
    vstore(tile, off, v)
    s = 0.0
    for p in range(vlanes(tile)):
        s += np.float64(sload(tile, off + p))
    return s


@kernel
def _c1_weight_images(xp, dz, g, toff, qoff, tile, partials, n0, n1):
    """Per-image weight and bias gradient sums of the single-channel convolution.

    For each image ``n``, ``partials[n, t * CO + o]`` (float64) receives the sum over its
    pixels of ``xp`` at tap ``t`` times ``dz[..., o]``, and ``partials[n, T * CO + o]`` the
    sum of ``dz[..., o]``. ``tile`` is this thread's scratch (:func:`c1_workspace`):
    first the image's ``dz`` as channel vectors of ``lanes`` pixels (pixels a previous
    chunk covered are zero there), then, per tap and block of four channels, four
    register accumulators swept over the image.
    """
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    _, hp, wp = xp.shape
    co = dz.shape[3]
    lanes = vlanes(dz)
    taps = kh * kw
    pf = xp.reshape(xp.size)
    df = dz.reshape(dz.size)
    zero = dz.dtype.type(0)
    nch = _c1_chunks(out_w, lanes)
    nq = out_h * nch  # vectors per channel
    red = co * nq * lanes  # offset of the reduction scratch
    for n in range(n0, n1):
        part = partials[n]
        for oh in range(out_h):
            done = 0
            for ch in range(nch):
                ow0 = min(ch * lanes, out_w - lanes)
                d = ((n * out_h + oh) * out_w + ow0) * co
                q = oh * nch + ch
                skip = done - ow0 if done > ow0 else 0
                for o in range(co):
                    base = (o * nq + q) * lanes
                    for p in range(skip):
                        sstore(tile, base + p, zero)
                    for p in range(skip, lanes):
                        sstore(tile, base + p, sload(df, d + p * co + o))
                done = ow0 + lanes
        for o in range(co):
            acc = vzero(dz)
            for q in range(nq):
                acc = vadd(acc, vload(tile, (o * nq + q) * lanes))
            part[taps * co + o] = _lane_sum(tile, red, acc)
        # Two taps by four channels: eight FMA chains over the image's vectors.
        image = n * hp * wp
        for t in range(0, taps, 2):
            t1 = min(t + 1, taps - 1)
            ta = image + toff[t]
            tb = image + toff[t1]
            for o in range(0, co, 4):
                o1 = min(o + 1, co - 1)
                o2 = min(o + 2, co - 1)
                o3 = min(o + 3, co - 1)
                a0 = vzero(dz)
                a1 = vzero(dz)
                a2 = vzero(dz)
                a3 = vzero(dz)
                b0 = vzero(dz)
                b1 = vzero(dz)
                b2 = vzero(dz)
                b3 = vzero(dz)
                for q in range(nq):
                    xa = vload(pf, ta + qoff[q])
                    xb = vload(pf, tb + qoff[q])
                    d0 = vload(tile, (o * nq + q) * lanes)
                    a0 = vfma(xa, d0, a0)
                    b0 = vfma(xb, d0, b0)
                    d1 = vload(tile, (o1 * nq + q) * lanes)
                    a1 = vfma(xa, d1, a1)
                    b1 = vfma(xb, d1, b1)
                    d2 = vload(tile, (o2 * nq + q) * lanes)
                    a2 = vfma(xa, d2, a2)
                    b2 = vfma(xb, d2, b2)
                    d3 = vload(tile, (o3 * nq + q) * lanes)
                    a3 = vfma(xa, d3, a3)
                    b3 = vfma(xb, d3, b3)
                part[t * co + o] = _lane_sum(tile, red, a0)
                part[t * co + o1] = _lane_sum(tile, red, a1)
                part[t * co + o2] = _lane_sum(tile, red, a2)
                part[t * co + o3] = _lane_sum(tile, red, a3)
                part[t1 * co + o] = _lane_sum(tile, red, b0)
                part[t1 * co + o1] = _lane_sum(tile, red, b1)
                part[t1 * co + o2] = _lane_sum(tile, red, b2)
                part[t1 * co + o3] = _lane_sum(tile, red, b3)


@parallel_kernel
def _c1_weight_parallel(xp, dz, g, toff, qoff, tiles, partials):
    for n in numba.prange(dz.shape[0]):
        _c1_weight_images(xp, dz, g, toff, qoff, tiles[numba.get_thread_id()], partials,
                          n, n + 1)


@kernel
def _c1_combine(partials, dw, db, has_bias):
    """``dw``/``db`` = the per-image partials added in image order."""
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


def conv2d_c1_backward_weight_into(xp: np.ndarray, dz: np.ndarray, dw: np.ndarray,
                                   db: np.ndarray | None, g: tuple[int, ...],
                                   offsets: tuple[np.ndarray, np.ndarray], tiles: np.ndarray,
                                   partials: np.ndarray) -> None:
    """Weight (and bias) gradient of :func:`conv2d_c1_forward`, without checks.

    ``xp`` is the padded input the forward pass wrote; ``partials`` is float64
    ``(N, KH*KW*CO + CO)``. Each image is summed by one task (lanes then taps in a fixed
    order), and the images are added in order: the result does not depend on the
    thread count.
    """
    if dz.size * g[0] * g[1] >= PARALLEL_MIN and numba.get_num_threads() > 1:
        _c1_weight_parallel(xp, dz, g, offsets[0], offsets[1], tiles, partials)
    else:
        _c1_weight_images(xp, dz, g, offsets[0], offsets[1], tiles[0], partials, 0,
                          dz.shape[0])
    has_bias = db is not None
    _c1_combine(partials, dw, dw.reshape(-1)[:1] if db is None else db, has_bias)


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
