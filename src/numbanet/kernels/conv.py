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


# ---------------------------------------------------------------------------------------
# im2col
# ---------------------------------------------------------------------------------------


@kernel
def _im2col_rows(x, cols, g, r0, r1):
    """Output rows ``r0 .. r1`` (``r = n * OH + oh``) of ``im2col`` (serial)."""
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    _, h, w, c = x.shape
    kwc = kw * c
    zero = cols.dtype.type(0)
    for r in range(r0, r1):
        n = r // out_h
        oh = r - n * out_h
        ih0 = oh * sh - pt
        for ow in range(out_w):
            row = cols[r * out_w + ow]
            iw0 = ow * sw - pl
            jlo, jhi = _valid_taps(iw0, dil_w, kw, w)
            for ki in range(kh):
                seg = row[ki * kwc : (ki + 1) * kwc]
                ih = ih0 + ki * dil_h
                if ih < 0 or ih >= h or jlo == jhi:
                    for j in range(kwc):
                        seg[j] = zero
                    continue
                xrow = x[n, ih].reshape(w * c)
                for j in range(jlo * c):
                    seg[j] = zero
                if dil_w == 1:
                    # The valid taps read one contiguous run of the input row.
                    length = (jhi - jlo) * c
                    src = xrow[(iw0 + jlo) * c : (iw0 + jlo) * c + length]
                    dst = seg[jlo * c : jlo * c + length]
                    for j in range(length):
                        dst[j] = src[j]
                else:
                    for kj in range(jlo, jhi):
                        iw = iw0 + kj * dil_w
                        src = xrow[iw * c : iw * c + c]
                        dst = seg[kj * c : kj * c + c]
                        for j in range(c):
                            dst[j] = src[j]
                tail = seg[jhi * c : kwc]
                for j in range(tail.shape[0]):
                    tail[j] = zero


@parallel_kernel
def _im2col_parallel(x, cols, g):
    """:func:`im2col` on validated arrays; ``prange`` over output rows ``(n, oh)``."""
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    rows = x.shape[0] * out_h
    for r in numba.prange(rows):
        _im2col_rows(x, cols, g, r, r + 1)


def im2col_into(x: np.ndarray, cols: np.ndarray, g: ConvGeometry) -> None:
    """:func:`im2col` without checks (the layer's hot path); parallel by size."""
    if cols.size >= PARALLEL_MIN and numba.get_num_threads() > 1:
        _im2col_parallel(x, cols, g)
    else:
        _im2col_rows(x, cols, g, 0, x.shape[0] * g[8])


def im2col(x: np.ndarray, cols: np.ndarray, g: ConvGeometry) -> None:
    """Gather every output pixel's receptive field into one row of ``cols``.

    Args:
        x: ``(N, H, W, C)`` images, float32/float64, C-contiguous.
        cols: ``(N * OH * OW, KH * KW * C)``, same dtype, writeable. Afterwards row
            ``(n * OH + oh) * OW + ow`` holds ``x[n, ih, iw, :]`` for the window's
            ``(ki, kj)`` in row-major order (zeros where the window covers padding).
        g: the window (:class:`ConvGeometry`).

    Raises:
        TypeError, ValueError: wrong dtypes, ranks or shapes.
    """
    g = ConvGeometry(*g)
    check_float_array("x", x, ndim=4)
    n, _, _, c = x.shape
    check_float_array("cols", cols, dtype=x.dtype, writeable=True,
                      shape=(n * g.oh * g.ow, g.kh * g.kw * c))
    im2col_into(x, cols, tuple(g))


# ---------------------------------------------------------------------------------------
# col2im
# ---------------------------------------------------------------------------------------


@kernel
def _col2im_rows(dcols, dx, g, saved, masked, r0, r1):
    """Input rows ``r0 .. r1`` (``r = n * H + ih``) of ``col2im`` (serial)."""
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    _, h, w, c = dx.shape
    kwc = kw * c
    zero = dx.dtype.type(0)
    for r in range(r0, r1):
        n = r // h
        ih = r - n * h
        dxrow = dx[n, ih].reshape(w * c)
        for j in range(w * c):
            dxrow[j] = zero
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
                seg = dcols[base + ow, ki * kwc : (ki + 1) * kwc]
                if dil_w == 1:
                    length = (jhi - jlo) * c
                    src = seg[jlo * c : jlo * c + length]
                    dst = dxrow[(iw0 + jlo) * c : (iw0 + jlo) * c + length]
                    for j in range(length):
                        dst[j] += src[j]
                else:
                    for kj in range(jlo, jhi):
                        iw = iw0 + kj * dil_w
                        src = seg[kj * c : kj * c + c]
                        dst = dxrow[iw * c : iw * c + c]
                        for j in range(c):
                            dst[j] += src[j]
        if masked:
            _keep_where_positive(dxrow, saved[n, ih].reshape(w * c))


@parallel_kernel
def _col2im_parallel(dcols, dx, g, saved, masked):
    """:func:`col2im` on validated arrays; ``prange`` over input rows ``(n, ih)``."""
    kh, kw, sh, sw, pt, pl, dil_h, dil_w, out_h, out_w = g
    rows = dx.shape[0] * dx.shape[1]
    for r in numba.prange(rows):
        _col2im_rows(dcols, dx, g, saved, masked, r, r + 1)


def col2im_into(dcols: np.ndarray, dx: np.ndarray, g: ConvGeometry,
                saved: np.ndarray | None = None) -> None:
    """:func:`col2im` without checks (the layer's hot path); parallel by size."""
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
