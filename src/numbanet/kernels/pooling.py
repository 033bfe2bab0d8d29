"""Pooling kernels on channels-last images ``(N, H, W, C)``: max, average, global average.

Windows are described by a :class:`PoolGeometry` (kernel, stride, top/left padding and
the output size). Semantics follow PyTorch (``ceil_mode=False``):

* max pooling pads with ``-inf``; the first maximum in window order (row-major) wins
  ties, and a NaN takes over from anything before it (``torch.max_pool2d``'s rule). The
  flat per-image index ``(ih * W + iw) * C + c`` of each maximum is kept in an ``int64``
  array for the backward pass, which adds each output gradient to that input element;
* average pooling counts padded zeros (``count_include_pad=True``): every window
  divides by ``KH * KW``;
* global average pooling averages each channel over all ``H * W`` pixels.

The backward kernels can fuse the derivative of a ReLU below the pool (``saved``: that
layer's saved ReLU input or output; the gradient is zeroed where ``saved <= 0``), so
that layer needs no pass of its own.

Parallel contracts (race-free, thread-count independent):

* forward kernels: ``prange`` over output rows ``(n, oh)`` (global pooling: over
  images); each task writes its own outputs only;
* max-pool backward: ``prange`` over images; task ``n`` zeroes ``dx[n]`` and adds the
  gradients of its outputs in output order, so overlapping windows add in a fixed order;
* average-pool backward: ``prange`` over input rows ``(n, ih)``, each gathering from the
  windows that cover it in a fixed order (kernel row, output column).

Serial twins run below :data:`PARALLEL_MIN` elements (same loops, same bits).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from numbanet._jit import kernel, parallel_kernel
from numbanet._validation import check_float_array
from numbanet.kernels._simd import sload, sstore

__all__ = [
    "PARALLEL_MIN",
    "PoolGeometry",
    "avg_pool2d",
    "avg_pool2d_backward",
    "global_avg_pool2d",
    "global_avg_pool2d_backward",
    "max_pool2d",
    "max_pool2d_2x2_into",
    "max_pool2d_backward",
    "tap_offsets",
]

#: Below this many input elements, the serial twins run (a parallel launch costs
#: microseconds; pooling is a few cycles per element).
PARALLEL_MIN = 1 << 15


class PoolGeometry(NamedTuple):
    """A pooling window: kernel ``kh x kw``, strides, top/left padding, output size."""

    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pl: int
    oh: int
    ow: int


def _parallel(size: int) -> bool:
    return size >= PARALLEL_MIN and numba.get_num_threads() > 1


@kernel(inline="always")
def _window(start, taps, size):
    """Taps ``[lo, hi)`` of a window starting at ``start`` that fall in ``[0, size)``."""
    lo = max(0, -start)
    hi = min(taps, size - start)
    if hi < lo:
        hi = lo
    return lo, hi


# ---------------------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------------------


@kernel
def _max_rows(x, y, idx, g, toff, r0, r1):
    """Output rows ``r0 .. r1`` (``r = n * OH + oh``) of max pooling (serial).

    Flat offsets (``sload``/``sstore``) rather than per-pixel slices: a slice costs
    about 20 ns in Numba, more than the few compares of a channel's window.
    """
    kh, kw, sh, sw, pt, pl, out_h, out_w = g
    _, h, w, c = x.shape
    ninf = y.dtype.type(-np.inf)
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    jf = idx.reshape(idx.size)
    taps = kh * kw
    for r in range(r0, r1):
        n = r // out_h
        oh = r - n * out_h
        ih0 = oh * sh - pt
        ilo, ihi = _window(ih0, kh, h)
        image = n * h * w * c
        for ow in range(out_w):
            o = (r * out_w + ow) * c
            iw0 = ow * sw - pl
            jlo, jhi = _window(iw0, kw, w)
            # PyTorch starts from -inf at the first valid position, so an all -inf
            # window sends its gradient there.
            first = ((ih0 + ilo) * w + iw0 + jlo) * c
            inside = ihi - ilo == kh and jhi - jlo == kw
            corner = (ih0 * w + iw0) * c
            for ci in range(c):
                # PyTorch's rule is "a larger value or any NaN takes over". Tested as
                # one condition per value it ran at 0.6 ms for LeNet's first pool; as
                # "not <=" (which NaN passes, but which a NaN best also lets the next
                # value replace) plus the last NaN's position on the side, 0.3 ms.
                best = ninf
                at = first + ci
                nan_at = -1
                if inside:  # the whole window: one loop over its taps
                    for t in range(taps):
                        q = corner + toff[t] + ci
                        v = sload(xf, image + q)
                        if not v <= best:
                            best = v
                            at = q
                        nan_at = q if v != v else nan_at
                else:
                    for ki in range(ilo, ihi):
                        p = ((ih0 + ki) * w + iw0) * c + ci
                        for kj in range(jlo, jhi):
                            q = p + kj * c
                            v = sload(xf, image + q)
                            if not v <= best:
                                best = v
                                at = q
                            nan_at = q if v != v else nan_at
                if nan_at >= 0:
                    best = sload(xf, image + nan_at)
                    at = nan_at
                sstore(yf, o + ci, best)
                jf[o + ci] = at


@parallel_kernel
def _max_parallel(x, y, idx, g, toff):
    for r in numba.prange(x.shape[0] * g[6]):
        _max_rows(x, y, idx, g, toff, r, r + 1)


def tap_offsets(g: tuple[int, ...], width: int, channels: int) -> np.ndarray:
    """int64 offsets of a window's taps from its corner in a ``(H, width, channels)``
    image, row-major (what :func:`max_pool2d_into` takes)."""
    return np.array([(ki * width + kj) * channels for ki in range(g[0]) for kj in range(g[1])],
                    np.int64)


def max_pool2d_into(x: np.ndarray, y: np.ndarray, idx: np.ndarray, g: tuple[int, ...],
                    toff: np.ndarray) -> None:
    """:func:`max_pool2d` without checks (the layer's hot path); ``g`` a plain tuple,
    ``toff`` from :func:`tap_offsets`."""
    if _parallel(x.size):
        _max_parallel(x, y, idx, g, toff)
    else:
        _max_rows(x, y, idx, g, toff, 0, x.shape[0] * g[6])


def _check_pool(x, y, g, names=("x", "y")):
    g = PoolGeometry(*g)
    check_float_array(names[0], x, ndim=4)
    n, _, _, c = x.shape
    check_float_array(names[1], y, dtype=x.dtype, shape=(n, g.oh, g.ow, c))
    return tuple(g)


def max_pool2d(x: np.ndarray, y: np.ndarray, idx: np.ndarray, g: PoolGeometry) -> None:
    """Max pooling: ``y[n, oh, ow, c]`` = the largest ``x`` in the window.

    Args:
        x: ``(N, H, W, C)``, float32/float64, C-contiguous.
        y: ``(N, OH, OW, C)``, writeable; overwritten.
        idx: ``(N, OH, OW, C)`` int64, writeable; receives the flat index into ``x[n]``
            of each maximum.
        g: the window (:class:`PoolGeometry`); every window must hold at least one
            input pixel (PyTorch's ``padding <= kernel_size // 2`` guarantees it).
    """
    g = _check_pool(x, y, g)
    if not isinstance(idx, np.ndarray) or idx.dtype != np.int64 or idx.shape != y.shape:
        raise TypeError(f"idx must be an int64 array of shape {y.shape}")
    max_pool2d_into(x, y, idx, g, tap_offsets(g, x.shape[2], x.shape[3]))


@kernel
def _max_backward_images(dy, idx, dx, saved, masked, n0, n1):
    """Images ``n0 .. n1`` of the max-pool backward pass (serial)."""
    _, h, w, c = dx.shape
    _, oh, ow, _ = dy.shape
    zero = dx.dtype.type(0)
    size = h * w * c
    outs = oh * ow * c
    for n in range(n0, n1):
        dxf = dx[n].reshape(size)
        for j in range(size):
            dxf[j] = zero
        dyf = dy[n].reshape(outs)
        idf = idx[n].reshape(outs)
        if masked:
            sf = saved[n].reshape(size)
            for j in range(outs):
                k = idf[j]
                if not sf[k] <= 0:
                    dxf[k] += dyf[j]
        else:
            for j in range(outs):
                dxf[idf[j]] += dyf[j]


@parallel_kernel
def _max_backward_parallel(dy, idx, dx, saved, masked):
    for n in numba.prange(dx.shape[0]):
        _max_backward_images(dy, idx, dx, saved, masked, n, n + 1)


def max_pool2d_backward_into(dy: np.ndarray, idx: np.ndarray, dx: np.ndarray,
                             saved: np.ndarray | None = None) -> None:
    """:func:`max_pool2d_backward` without checks (the layer's hot path)."""
    masked = saved is not None
    if saved is None:
        saved = dx
    if _parallel(dx.size):
        _max_backward_parallel(dy, idx, dx, saved, masked)
    else:
        _max_backward_images(dy, idx, dx, saved, masked, 0, dx.shape[0])


def max_pool2d_backward(dy: np.ndarray, idx: np.ndarray, dx: np.ndarray,
                        saved: np.ndarray | None = None) -> None:
    """Gradient of :func:`max_pool2d`: each ``dy`` goes to its window's maximum.

    Args:
        dy: ``(N, OH, OW, C)``.
        idx: the ``int64`` indices :func:`max_pool2d` wrote.
        dx: ``(N, H, W, C)``, writeable; overwritten (where windows overlap, gradients
            add up in output order).
        saved: optional ``(N, H, W, C)``; ``dx`` is zero where ``saved <= 0`` (a ReLU
            below the pool, fused).
    """
    check_float_array("dx", dx, ndim=4, writeable=True)
    check_float_array("dy", dy, ndim=4, dtype=dx.dtype)
    if not isinstance(idx, np.ndarray) or idx.dtype != np.int64 or idx.shape != dy.shape:
        raise TypeError(f"idx must be an int64 array of shape {dy.shape}")
    if saved is not None:
        check_float_array("saved", saved, dtype=dx.dtype, shape=dx.shape)
    size = dx[0].size if dx.shape[0] else 0
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise ValueError(f"idx holds indices outside [0, {size}): not from max_pool2d?")
    max_pool2d_backward_into(dy, idx, dx, saved)


# ---------------------------------------------------------------------------------------
# 2x2 max pooling with stride 2 and no padding: the common case, specialised
# ---------------------------------------------------------------------------------------


@kernel(inline="always")
def _isnan(v):
    return v != v


@kernel
def _max2_rows(x, y, idx, r0, r1):
    """Output rows ``r0 .. r1`` (``r = n * OH + oh``) of 2x2 / stride 2 max pooling
    (serial).

    The general kernel loops over taps through an offset table; here the four taps are
    fixed offsets (LeNet's first pool: 0.35 -> 0.21 ms, one thread). Compare-and-branch
    per tap measured faster than branch-free selects of value and index (1.4x slower),
    and scanning ``ow`` inside ``c`` no faster than this order.
    """
    _, h, w, c = x.shape
    _, out_h, out_w, _ = y.shape
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    jf = idx.reshape(idx.size)
    wc = w * c
    for r in range(r0, r1):
        n = r // out_h
        i = r - n * out_h
        image = n * h * wc
        row = 2 * i * wc  # the window's top row within its image
        out = r * out_w * c
        for ow in range(out_w):
            for ci in range(c):
                k = row + 2 * ow * c + ci
                o = out + ow * c + ci
                # PyTorch's scan in row-major order: a larger value takes over. As
                # "not <=" a NaN takes over too but is then replaced by anything after
                # it, so windows holding a NaN are settled separately: the last NaN.
                a = sload(xf, image + k)
                b = sload(xf, image + k + c)
                p = sload(xf, image + k + wc)
                q = sload(xf, image + k + wc + c)
                best = a
                at = k
                if not b <= best:
                    best = b
                    at = k + c
                if not p <= best:
                    best = p
                    at = k + wc
                if not q <= best:
                    best = q
                    at = k + wc + c
                if _isnan(a) or _isnan(b) or _isnan(p) or _isnan(q):
                    at = (k + wc + c if _isnan(q) else k + wc if _isnan(p)
                          else k + c if _isnan(b) else k)
                    best = sload(xf, image + at)
                sstore(yf, o, best)
                jf[o] = at


@parallel_kernel
def _max2_parallel(x, y, idx):
    for r in numba.prange(y.shape[0] * y.shape[1]):
        _max2_rows(x, y, idx, r, r + 1)


def max_pool2d_2x2_into(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> None:
    """:func:`max_pool2d_into` for 2x2 windows, stride 2, no padding (the same results,
    argmax indices included; :func:`max_pool2d_backward_into` takes them)."""
    if _parallel(x.size):
        _max2_parallel(x, y, idx)
    else:
        _max2_rows(x, y, idx, 0, y.shape[0] * y.shape[1])


# ---------------------------------------------------------------------------------------
# Average pooling (count_include_pad=True)
# ---------------------------------------------------------------------------------------


@kernel
def _avg_rows(x, y, g, r0, r1):
    """Output rows ``r0 .. r1`` of average pooling (serial)."""
    kh, kw, sh, sw, pt, pl, out_h, out_w = g
    _, h, w, c = x.shape
    zero = y.dtype.type(0)
    inv = y.dtype.type(1.0 / (kh * kw))
    for r in range(r0, r1):
        n = r // out_h
        oh = r - n * out_h
        ih0 = oh * sh - pt
        ilo, ihi = _window(ih0, kh, h)
        for ow in range(out_w):
            yp = y[n, oh, ow]
            iw0 = ow * sw - pl
            jlo, jhi = _window(iw0, kw, w)
            for ci in range(c):
                yp[ci] = zero
            for ki in range(ilo, ihi):
                for kj in range(jlo, jhi):
                    xp = x[n, ih0 + ki, iw0 + kj]
                    for ci in range(c):
                        yp[ci] += xp[ci]
            for ci in range(c):
                yp[ci] *= inv


@parallel_kernel
def _avg_parallel(x, y, g):
    kh, kw, sh, sw, pt, pl, out_h, out_w = g
    for r in numba.prange(x.shape[0] * out_h):
        _avg_rows(x, y, g, r, r + 1)


def avg_pool2d_into(x: np.ndarray, y: np.ndarray, g: PoolGeometry) -> None:
    """:func:`avg_pool2d` without checks (the layer's hot path)."""
    if _parallel(x.size):
        _avg_parallel(x, y, g)
    else:
        _avg_rows(x, y, g, 0, x.shape[0] * g[6])


def avg_pool2d(x: np.ndarray, y: np.ndarray, g: PoolGeometry) -> None:
    """Average pooling: ``y`` = the window's sum (padding counts as zeros) / ``KH * KW``.

    Args:
        x: ``(N, H, W, C)``; y: ``(N, OH, OW, C)``, writeable; g: the window.
    """
    g = _check_pool(x, y, g)
    avg_pool2d_into(x, y, g)


@kernel
def _avg_backward_rows(dy, dx, g, saved, masked, r0, r1):
    """Input rows ``r0 .. r1`` (``r = n * H + ih``) of the average-pool backward pass."""
    kh, kw, sh, sw, pt, pl, out_h, out_w = g
    _, h, w, c = dx.shape
    zero = dx.dtype.type(0)
    inv = dx.dtype.type(1.0 / (kh * kw))
    for r in range(r0, r1):
        n = r // h
        ih = r - n * h
        dxrow = dx[n, ih].reshape(w * c)
        for j in range(w * c):
            dxrow[j] = zero
        for ki in range(kh):
            t = ih + pt - ki
            if t < 0 or t % sh != 0:
                continue
            oh = t // sh
            if oh >= out_h:
                continue
            for ow in range(out_w):
                iw0 = ow * sw - pl
                jlo, jhi = _window(iw0, kw, w)
                dyp = dy[n, oh, ow]
                for kj in range(jlo, jhi):
                    dst = dxrow[(iw0 + kj) * c : (iw0 + kj) * c + c]
                    for ci in range(c):
                        dst[ci] += dyp[ci]
        for j in range(w * c):
            dxrow[j] *= inv
        if masked:
            sr = saved[n, ih].reshape(w * c)
            for j in range(w * c):
                if sr[j] <= 0:
                    dxrow[j] = zero


@parallel_kernel
def _avg_backward_parallel(dy, dx, g, saved, masked):
    for r in numba.prange(dx.shape[0] * dx.shape[1]):
        _avg_backward_rows(dy, dx, g, saved, masked, r, r + 1)


def avg_pool2d_backward_into(dy: np.ndarray, dx: np.ndarray, g: PoolGeometry,
                             saved: np.ndarray | None = None) -> None:
    """:func:`avg_pool2d_backward` without checks (the layer's hot path)."""
    masked = saved is not None
    if saved is None:
        saved = dx
    if _parallel(dx.size):
        _avg_backward_parallel(dy, dx, g, saved, masked)
    else:
        _avg_backward_rows(dy, dx, g, saved, masked, 0, dx.shape[0] * dx.shape[1])


def avg_pool2d_backward(dy: np.ndarray, dx: np.ndarray, g: PoolGeometry,
                        saved: np.ndarray | None = None) -> None:
    """Gradient of :func:`avg_pool2d`: ``dx`` = the sum of the ``dy`` of the windows
    covering each pixel, divided by ``KH * KW`` (zero where ``saved <= 0`` if given)."""
    check_float_array("dx", dx, ndim=4, writeable=True)
    g = _check_pool(dx, dy, g, ("dx", "dy"))
    if saved is not None:
        check_float_array("saved", saved, dtype=dx.dtype, shape=dx.shape)
    avg_pool2d_backward_into(dy, dx, g, saved)


# ---------------------------------------------------------------------------------------
# Global average pooling
# ---------------------------------------------------------------------------------------


@kernel
def _global_avg_images(x, y, n0, n1):
    _, h, w, c = x.shape
    zero = y.dtype.type(0)
    inv = y.dtype.type(1.0 / (h * w))
    for n in range(n0, n1):
        yp = y[n]
        for ci in range(c):
            yp[ci] = zero
        xs = x[n].reshape(h * w, c)
        for p in range(h * w):
            xp = xs[p]
            for ci in range(c):
                yp[ci] += xp[ci]
        for ci in range(c):
            yp[ci] *= inv


@parallel_kernel
def _global_avg_parallel(x, y):
    for n in numba.prange(x.shape[0]):
        _global_avg_images(x, y, n, n + 1)


def global_avg_pool2d_into(x: np.ndarray, y: np.ndarray) -> None:
    """:func:`global_avg_pool2d` without checks (the layer's hot path)."""
    if _parallel(x.size):
        _global_avg_parallel(x, y)
    else:
        _global_avg_images(x, y, 0, x.shape[0])


def global_avg_pool2d(x: np.ndarray, y: np.ndarray) -> None:
    """``y[n, c]`` = the mean of ``x[n, :, :, c]`` (pixels added in row-major order).

    Args:
        x: ``(N, H, W, C)``; y: ``(N, C)``, writeable.
    """
    check_float_array("x", x, ndim=4)
    check_float_array("y", y, dtype=x.dtype, shape=(x.shape[0], x.shape[3]), writeable=True)
    global_avg_pool2d_into(x, y)


@kernel
def _global_avg_backward_images(dy, dx, saved, masked, n0, n1):
    _, h, w, c = dx.shape
    zero = dx.dtype.type(0)
    inv = dx.dtype.type(1.0 / (h * w))
    for n in range(n0, n1):
        dyp = dy[n]
        ds = dx[n].reshape(h * w, c)
        ss = saved[n].reshape(h * w, c)
        for p in range(h * w):
            dp = ds[p]
            for ci in range(c):
                dp[ci] = dyp[ci] * inv
            if masked:
                sp = ss[p]
                for ci in range(c):
                    if sp[ci] <= 0:
                        dp[ci] = zero


@parallel_kernel
def _global_avg_backward_parallel(dy, dx, saved, masked):
    for n in numba.prange(dx.shape[0]):
        _global_avg_backward_images(dy, dx, saved, masked, n, n + 1)


def global_avg_pool2d_backward_into(dy: np.ndarray, dx: np.ndarray,
                                    saved: np.ndarray | None = None) -> None:
    """:func:`global_avg_pool2d_backward` without checks (the layer's hot path)."""
    masked = saved is not None
    if saved is None:
        saved = dx
    if _parallel(dx.size):
        _global_avg_backward_parallel(dy, dx, saved, masked)
    else:
        _global_avg_backward_images(dy, dx, saved, masked, 0, dx.shape[0])


def global_avg_pool2d_backward(dy: np.ndarray, dx: np.ndarray,
                               saved: np.ndarray | None = None) -> None:
    """Gradient of :func:`global_avg_pool2d`: ``dx[n, h, w, c] = dy[n, c] / (H * W)``
    (zero where ``saved <= 0`` if given)."""
    check_float_array("dx", dx, ndim=4, writeable=True)
    check_float_array("dy", dy, dtype=dx.dtype, shape=(dx.shape[0], dx.shape[3]))
    if saved is not None:
        check_float_array("saved", saved, dtype=dx.dtype, shape=dx.shape)
    global_avg_pool2d_backward_into(dy, dx, saved)
