"""Winograd F(2x2, 3x3) kernels for 3x3, stride-1 convolutions on channels-last images.

A 3x3 convolution computes each 2x2 block of outputs from a 4x4 block of inputs with 36
multiply-adds per input and output channel pair. Winograd's minimal filtering algorithm
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) needs 16::

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, 4x4)

    B^T = [[1, 0, -1,  0],    G = [[1,    0,   0],    A^T = [[1, 1,  1,  0],
           [0, 1,  1,  0],         [1/2,  1/2, 1/2],          [0, 1, -1, -1]]
           [0, -1, 1,  0],         [1/2, -1/2, 1/2],
           [0, 1,  0, -1]]         [0,    0,   1]]

so with ``U[xi] = (G g G^T)[xi]`` (per channel pair, once per step) and
``V[xi] = (B^T d B)[xi]`` (per tile and input channel), each of the 16 positions ``xi`` of
the 4x4 transformed tile is a matrix product over the channels,
``M[xi][t, k] = sum_c V[xi][t, c] U[xi][c, k]``, and the output tile is ``A^T M A``: 2.25x
fewer multiply-adds than the direct convolution, paid for with the transforms (additions
only). The transforms are exact up to rounding (the only constants are 1 and 1/2); the
results differ from the direct sum by a few units in the last place (about 2e-7
relative in float32 at the tested shapes).

Layouts: images ``(N, H, W, C)``, weights ``(3, 3, C, K)``, outputs ``(N, OH, OW, K)``,
C-contiguous float32 or float64, ``C`` and ``K`` multiples of the SIMD width (so every
transform works on whole vectors of channels). The output is cut into tiles of 2x2
pixels, numbered image by image, row by row; a tile past the bottom or right edge
computes and drops its missing pixels. Tile ``(th, tw)`` reads the 4x4 input block at
``(2*th - pt, 2*tw - pl)``, zeros outside the image, so any padding works (the input
gradient uses ``2 - pt``).

The three products of a training step:

* forward, :func:`winograd_conv_into`: per block of ``TILE_BLOCK`` tiles, the input
  transforms go to a per-thread scratch ``vs[xi][t][c]``, the 16 products (register
  tiles of ``TILE_BLOCK`` tiles x 1-2 vectors of output channels, reading ``vs`` and
  ``U[xi][c][k]`` directly) to ``ms[xi][t][k]``, and the output transforms (with the
  bias, ReLU, or for an input gradient the ReLU derivative of the layer below) to
  ``z``. Everything a block touches stays in L1/L2.
* input gradient: the same kernel on the output gradient, with the kernel flipped and
  its channel axes swapped (:func:`transform_weights_into` with ``flip=True``).
* weight gradient, :func:`winograd_weight_gradient_into`:
  ``dU[xi][c, k] = sum_t V[xi][t, c] dM[xi][t, k]`` with ``dM = A dY A^T`` (the output
  gradient's tile transform), summed over blocks of ``WEIGHT_BLOCK`` tiles, then
  ``dW = G^T dU G``.

Parallel contracts (race-free, results independent of the thread count):

* forward: ``prange`` over fixed chunks of ``CHUNK_TILES`` tiles; a task writes the
  output pixels of its tiles only and its thread's scratch slot
  (``numba.get_thread_id()``). Each tile's arithmetic does not depend on the chunk.
* weight gradient: ``prange`` over :func:`weight_tasks` fixed ranges of tiles (from the
  shapes only), each summing into its own partial ``dU``; the partials are then added in
  task order, in float64, ``prange`` over ``(xi, c)`` rows.

Each entry point runs its serial twin below ``PARALLEL_MIN`` multiply-adds or on one
thread (same loops, same results bit for bit).
"""

from __future__ import annotations

import numba
import numpy as np

from numbanet._jit import ELEMENTWISE_FASTMATH, kernel, parallel_kernel
from numbanet.kernels._simd import (
    lanes_for,
    vadd,
    vkeep_where_positive,
    vlanes,
    vload,
    vrelu,
    vstore,
    vsub,
    vzero,
)
from numbanet.kernels._tiles import (
    _tile_4x1,
    _tile_4x2,
    _tile_8x1,
    _tile_8x2,
    _tile_12x1,
    _tile_12x2,
)

__all__ = [
    "CHUNK_TILES",
    "TILE_BLOCK",
    "WEIGHT_BLOCK",
    "transform_weights_into",
    "weight_partials_shape",
    "weight_tasks",
    "winograd_applies",
    "winograd_conv_into",
    "winograd_weight_gradient_into",
    "winograd_workspace",
]

#: Tiles per block of the forward products: the register tile's rows.
TILE_BLOCK = 12
#: Tiles per forward task (8 blocks): 1,366 tasks for a batch of 64 32x32 images.
CHUNK_TILES = 96
#: Tiles per block of the weight gradient: the products' inner length.
WEIGHT_BLOCK = 48
#: Most tasks (and partial sums) of a weight gradient.
MAX_WEIGHT_TASKS = 8
#: Elements at the end of a thread's scratch for a 4x4 block of vectors at the edge.
EDGE = 16 * 16
#: Below this many multiply-adds the serial twins run (as the other conv kernels).
PARALLEL_MIN = 1 << 15

#: No ``reassoc``: the serial and parallel twins inline the tile transforms into
#: different loops, and with it LLVM regrouped their additions differently there (the
#: float32 forward differed between one and two threads in 5% of the outputs). Nothing
#: here needs it: the products are explicit FMAs, the partial sums run in task order.
_FLAGS = {"fastmath": set(ELEMENTWISE_FASTMATH)}


def winograd_applies(g: tuple[int, ...], in_channels: int, out_channels: int, groups: int,
                     dtype: object) -> bool:
    """Whether these kernels compute a convolution: a 3x3 kernel, stride 1, no dilation,
    no groups, and both channel counts whole vectors (16 float32 with AVX-512, 8
    without; half that in float64) of at least 16 channels (fewer lose to the direct
    kernels: the transforms' cost does not shrink with the channels)."""
    kh, kw, sh, sw, _, _, dh, dw, _, _ = g
    lanes = lanes_for(dtype)
    return ((kh, kw, sh, sw, dh, dw) == (3, 3, 1, 1, 1, 1) and groups == 1
            and in_channels >= 16 and out_channels >= 16
            and in_channels % lanes == 0 and out_channels % lanes == 0)


def winograd_workspace(threads: int, in_channels: int, out_channels: int) -> tuple[int, int]:
    """Shape of the per-thread scratch (``vs`` then ``ms``) of the kernels below, for any
    of a layer's three products."""
    per_tile = 16 * (in_channels + out_channels)
    return threads, per_tile * max(TILE_BLOCK, WEIGHT_BLOCK) + EDGE


@kernel(inline="always", **_FLAGS)
def _tile_count(batch, oh, ow):
    """Tiles of ``batch`` outputs of ``oh x ow`` pixels (2x2 each, cut at the edges)."""
    return batch * ((oh + 1) // 2) * ((ow + 1) // 2)


def weight_tasks(batch: int, oh: int, ow: int) -> int:
    """Tasks (and partial sums) of the weight gradient: one per ``WEIGHT_BLOCK`` tiles, at
    most ``MAX_WEIGHT_TASKS``; from the shapes only."""
    blocks = -(-_tile_count(batch, oh, ow) // WEIGHT_BLOCK)
    return max(1, min(MAX_WEIGHT_TASKS, blocks))


def weight_partials_shape(batch: int, oh: int, ow: int, in_channels: int,
                          out_channels: int) -> tuple[int, int]:
    """Shape of the weight gradient's partial sums ``(tasks, 16 * C * K)``."""
    return weight_tasks(batch, oh, ow), 16 * in_channels * out_channels


# ---------------------------------------------------------------------------------------
# Weight transforms
# ---------------------------------------------------------------------------------------


@kernel(**_FLAGS)
def _transform_weights(w, u, flip, t):
    """``u[xi, c, k] = (G g G^T)[xi]`` of ``g = w[:, :, c, k]``, in float64 then rounded;
    with ``flip``, ``u[xi, k, c]`` of ``w[2 - a, 2 - b, c, k]`` (the input gradient's
    kernel). ``w`` ``(3, 3, C, K)``; ``u`` ``(16, C, K)`` or ``(16, K, C)``; ``t``
    float64 scratch ``(12, K)``.

    Row by row of ``K`` values, in passes of at most four streams: the 25 planes of ``w``
    and ``u`` lie a multiple of 4 KiB apart, so a loop over all of them at once maps
    every access to one L1 set (measured 45 ns per weight at 64x64 channels).
    """
    _, _, c_in, c_out = w.shape
    for c in range(c_in):
        # t[3 * i + b] = (G g)[i, b] for all k.
        for b in range(3):
            bb = 2 - b if flip else b
            g0 = w[2, bb, c] if flip else w[0, bb, c]
            g1 = w[1, bb, c]
            g2 = w[0, bb, c] if flip else w[2, bb, c]
            for k in range(c_out):
                a0, a1, a2 = np.float64(g0[k]), np.float64(g1[k]), np.float64(g2[k])
                t[b, k] = a0
                t[3 + b, k] = 0.5 * (a0 + a1 + a2)
                t[6 + b, k] = 0.5 * (a0 - a1 + a2)
                t[9 + b, k] = a2
        # u[4 * i + j] = ((G g) G^T)[i, j].
        for i in range(4):
            r0, r1, r2 = t[3 * i], t[3 * i + 1], t[3 * i + 2]
            for j in range(4):
                xi = 4 * i + j
                for k in range(c_out):
                    if j == 0:
                        v = r0[k]
                    elif j == 1:
                        v = 0.5 * (r0[k] + r1[k] + r2[k])
                    elif j == 2:
                        v = 0.5 * (r0[k] - r1[k] + r2[k])
                    else:
                        v = r2[k]
                    if flip:
                        u[xi, k, c] = v
                    else:
                        u[xi, c, k] = v


def transform_weights_into(w: np.ndarray, u: np.ndarray, scratch: np.ndarray,
                           flip: bool = False) -> None:
    """``u`` ``(16, C, K)``: the transformed kernels of ``w`` ``(3, 3, C, K)``; with
    ``flip``, ``u`` ``(16, K, C)`` holds those of the input gradient (kernel rotated by 180
    degrees, channel axes swapped). ``scratch``: float64 with at least ``12 * K``
    elements. Serial (``16 * C * K`` elements)."""
    k = w.shape[3]
    _transform_weights(w, u, flip, scratch.reshape(-1)[:12 * k].reshape(12, k))


@kernel(**_FLAGS)
def _weights_from_transformed(du, dw, c_in, c_out):
    """``dw[a, b, c, k] = (G^T dU G)[a, b]`` of ``dU = du[:, c * K + k]`` (``du`` float64
    ``(16, C * K)``, overwritten: it holds ``dU G`` in between).

    Plane by plane, a few streams per loop: the 16 rows of ``du`` lie a multiple of
    4 KiB apart, and reading all of them per element thrashed one L1 set (64 channels:
    101 us).
    """
    n = c_in * c_out
    planes = dw.reshape(9, n)
    for i in range(4):  # row i of dU G, in place of du[4i : 4i + 3]
        d0, d1, d2, d3 = du[4 * i], du[4 * i + 1], du[4 * i + 2], du[4 * i + 3]
        for e in range(n):
            half = 0.5 * (d1[e] + d2[e])
            diff = 0.5 * (d1[e] - d2[e])
            d0[e] = d0[e] + half
            d1[e] = diff
            d2[e] = half + d3[e]
    for b in range(3):  # G^T (dU G), column b
        s0, s1, s2, s3 = du[b], du[4 + b], du[8 + b], du[12 + b]
        y0, y1, y2 = planes[b], planes[3 + b], planes[6 + b]
        for e in range(n):
            half = 0.5 * (s1[e] + s2[e])
            y0[e] = s0[e] + half
            y1[e] = 0.5 * (s1[e] - s2[e])
            y2[e] = half + s3[e]


# ---------------------------------------------------------------------------------------
# Tile transforms (one tile, one vector of channels)
# ---------------------------------------------------------------------------------------


@kernel(inline="always", **_FLAGS)
def _input_tile(xf, h, w, c, n, ih0, iw0, c0, vs, o, stride, edge):
    """``V = B^T d B`` of the 4x4 block at ``(ih0, iw0)`` of image ``n`` of ``xf`` (an
    ``(N, h, w, c)`` image batch, flat), zeros outside the image, channels
    ``c0 .. c0 + lanes``; ``V[xi]`` goes to ``vs[o + xi * stride]``.

    A block that crosses the image's edge is first copied into ``edge`` (16 vectors,
    zeros outside the image); an inner one is read in place.
    """
    if ih0 >= 0 and iw0 >= 0 and ih0 + 4 <= h and iw0 + 4 <= w:
        _transform_block(xf, ((n * h + ih0) * w + iw0) * c + c0, c, w * c, vs, o, stride)
        return
    lanes = vlanes(xf)
    zero = vzero(xf)
    for i in range(4):
        for j in range(4):
            ih = ih0 + i
            iw = iw0 + j
            if 0 <= ih < h and 0 <= iw < w:
                vstore(edge, (i * 4 + j) * lanes, vload(xf, ((n * h + ih) * w + iw) * c + c0))
            else:
                vstore(edge, (i * 4 + j) * lanes, zero)
    _transform_block(edge, 0, lanes, 4 * lanes, vs, o, stride)


@kernel(inline="always", **_FLAGS)
def _transform_block(src, p, col, row, vs, o, stride):
    """``V = B^T d B`` of the 4x4 block of vectors ``src[p + i * row + j * col]``."""
    d00, d01 = vload(src, p), vload(src, p + col)
    d02, d03 = vload(src, p + 2 * col), vload(src, p + 3 * col)
    p += row
    d10, d11 = vload(src, p), vload(src, p + col)
    d12, d13 = vload(src, p + 2 * col), vload(src, p + 3 * col)
    p += row
    d20, d21 = vload(src, p), vload(src, p + col)
    d22, d23 = vload(src, p + 2 * col), vload(src, p + 3 * col)
    p += row
    d30, d31 = vload(src, p), vload(src, p + col)
    d32, d33 = vload(src, p + 2 * col), vload(src, p + 3 * col)
    # B^T d: rows (d0 - d2, d1 + d2, d2 - d1, d1 - d3), column by column.
    a00, a01, a02, a03 = vsub(d00, d20), vsub(d01, d21), vsub(d02, d22), vsub(d03, d23)
    a10, a11, a12, a13 = vadd(d10, d20), vadd(d11, d21), vadd(d12, d22), vadd(d13, d23)
    a20, a21, a22, a23 = vsub(d20, d10), vsub(d21, d11), vsub(d22, d12), vsub(d23, d13)
    a30, a31, a32, a33 = vsub(d10, d30), vsub(d11, d31), vsub(d12, d32), vsub(d13, d33)
    # (B^T d) B: the same combination of the columns, row by row.
    vstore(vs, o, vsub(a00, a02))
    vstore(vs, o + stride, vadd(a01, a02))
    vstore(vs, o + 2 * stride, vsub(a02, a01))
    vstore(vs, o + 3 * stride, vsub(a01, a03))
    vstore(vs, o + 4 * stride, vsub(a10, a12))
    vstore(vs, o + 5 * stride, vadd(a11, a12))
    vstore(vs, o + 6 * stride, vsub(a12, a11))
    vstore(vs, o + 7 * stride, vsub(a11, a13))
    vstore(vs, o + 8 * stride, vsub(a20, a22))
    vstore(vs, o + 9 * stride, vadd(a21, a22))
    vstore(vs, o + 10 * stride, vsub(a22, a21))
    vstore(vs, o + 11 * stride, vsub(a21, a23))
    vstore(vs, o + 12 * stride, vsub(a30, a32))
    vstore(vs, o + 13 * stride, vadd(a31, a32))
    vstore(vs, o + 14 * stride, vsub(a32, a31))
    vstore(vs, o + 15 * stride, vsub(a31, a33))


@kernel(inline="always", **_FLAGS)
def _output_tile(ms, o, stride, z, n, oh0, ow0, k0, bias, has_bias, relu, saved, masked):
    """``Y = A^T M A`` of ``M[xi] = ms[o + xi * stride]`` (+ bias, ReLU, or zeroed where
    ``saved <= 0``) into the pixels of ``z[n, oh0:oh0+2, ow0:ow0+2, k0:k0+lanes]`` that
    exist."""
    _, oh, ow, k = z.shape
    m00, m01 = vload(ms, o), vload(ms, o + stride)
    m02, m03 = vload(ms, o + 2 * stride), vload(ms, o + 3 * stride)
    m10, m11 = vload(ms, o + 4 * stride), vload(ms, o + 5 * stride)
    m12, m13 = vload(ms, o + 6 * stride), vload(ms, o + 7 * stride)
    m20, m21 = vload(ms, o + 8 * stride), vload(ms, o + 9 * stride)
    m22, m23 = vload(ms, o + 10 * stride), vload(ms, o + 11 * stride)
    m30, m31 = vload(ms, o + 12 * stride), vload(ms, o + 13 * stride)
    m32, m33 = vload(ms, o + 14 * stride), vload(ms, o + 15 * stride)
    # A^T M: rows (m0 + m1 + m2, m1 - m2 - m3), column by column.
    b00, b01 = vadd(vadd(m00, m10), m20), vadd(vadd(m01, m11), m21)
    b02, b03 = vadd(vadd(m02, m12), m22), vadd(vadd(m03, m13), m23)
    b10, b11 = vsub(vsub(m10, m20), m30), vsub(vsub(m11, m21), m31)
    b12, b13 = vsub(vsub(m12, m22), m32), vsub(vsub(m13, m23), m33)
    y00, y01 = vadd(vadd(b00, b01), b02), vsub(vsub(b01, b02), b03)
    y10, y11 = vadd(vadd(b10, b11), b12), vsub(vsub(b11, b12), b13)
    if has_bias:
        bv = vload(bias, k0)
        y00, y01, y10, y11 = vadd(y00, bv), vadd(y01, bv), vadd(y10, bv), vadd(y11, bv)
    if relu:
        y00, y01, y10, y11 = vrelu(y00), vrelu(y01), vrelu(y10), vrelu(y11)
    p = ((n * oh + oh0) * ow + ow0) * k + k0
    right = ow0 + 1 < ow
    below = oh0 + 1 < oh
    if masked:
        y00 = vkeep_where_positive(vload(saved, p), y00)
        if right:
            y01 = vkeep_where_positive(vload(saved, p + k), y01)
        if below:
            y10 = vkeep_where_positive(vload(saved, p + ow * k), y10)
            if right:
                y11 = vkeep_where_positive(vload(saved, p + ow * k + k), y11)
    vstore(z, p, y00)
    if right:
        vstore(z, p + k, y01)
    if below:
        vstore(z, p + ow * k, y10)
        if right:
            vstore(z, p + ow * k + k, y11)


@kernel(inline="always", **_FLAGS)
def _output_gradient_tile(dz, n, oh0, ow0, k0, ms, o, stride):
    """``dM = A dY A^T`` of the 2x2 block of ``dz[n]`` at ``(oh0, ow0)`` (zeros past the
    edge), channels ``k0 .. k0 + lanes``; ``dM[xi]`` goes to ``ms[o + xi * stride]``."""
    _, oh, ow, k = dz.shape
    zero = vzero(dz)
    p = ((n * oh + oh0) * ow + ow0) * k + k0
    right = ow0 + 1 < ow
    below = oh0 + 1 < oh
    y00 = vload(dz, p)
    y01 = vload(dz, p + k) if right else zero
    y10 = vload(dz, p + ow * k) if below else zero
    y11 = vload(dz, p + ow * k + k) if right and below else zero
    # A dY: rows (y0, y0 + y1, y0 - y1, -y1); then the same on the columns of each row.
    r00, r01 = y00, y01
    r10, r11 = vadd(y00, y10), vadd(y01, y11)
    r20, r21 = vsub(y00, y10), vsub(y01, y11)
    r30, r31 = vsub(zero, y10), vsub(zero, y11)
    vstore(ms, o, r00)
    vstore(ms, o + stride, vadd(r00, r01))
    vstore(ms, o + 2 * stride, vsub(r00, r01))
    vstore(ms, o + 3 * stride, vsub(zero, r01))
    vstore(ms, o + 4 * stride, r10)
    vstore(ms, o + 5 * stride, vadd(r10, r11))
    vstore(ms, o + 6 * stride, vsub(r10, r11))
    vstore(ms, o + 7 * stride, vsub(zero, r11))
    vstore(ms, o + 8 * stride, r20)
    vstore(ms, o + 9 * stride, vadd(r20, r21))
    vstore(ms, o + 10 * stride, vsub(r20, r21))
    vstore(ms, o + 11 * stride, vsub(zero, r21))
    vstore(ms, o + 12 * stride, r30)
    vstore(ms, o + 13 * stride, vadd(r30, r31))
    vstore(ms, o + 14 * stride, vsub(r30, r31))
    vstore(ms, o + 15 * stride, vsub(zero, r31))


@kernel(inline="always", **_FLAGS)
def _tile_position(t, tiles_h, tiles_w):
    """Image, first output row and column of tile ``t``."""
    per_image = tiles_h * tiles_w
    r = t % per_image
    return t // per_image, 2 * (r // tiles_w), 2 * (r % tiles_w)


@kernel(**_FLAGS)
def _input_tiles(x, pt, pl, tiles_h, tiles_w, b0, count, slot, block_c):
    """``V`` of tiles ``b0 .. b0 + count`` into ``slot``: tile ``i``'s channels at
    ``slot[xi * block_c + i * C:]``; the last :data:`EDGE` elements of ``slot`` are the
    edge blocks' scratch."""
    _, h, w, c = x.shape
    xf = x.reshape(x.size)
    edge = slot[slot.size - EDGE:]
    lanes = vlanes(x)
    for i in range(count):
        n, r0, q0 = _tile_position(b0 + i, tiles_h, tiles_w)
        for c0 in range(0, c, lanes):
            _input_tile(xf, h, w, c, n, r0 - pt, q0 - pl, c0, slot, i * c + c0, block_c, edge)


# ---------------------------------------------------------------------------------------
# Forward (and input gradient)
# ---------------------------------------------------------------------------------------


@kernel(**_FLAGS)
def _conv_tiles(x, u, bias, has_bias, relu, z, pt, pl, saved, masked, slot, t0, t1):
    """Tiles ``t0 .. t1`` of ``z``, ``TILE_BLOCK`` at a time (serial)."""
    c = x.shape[3]
    _, oh, ow, k = z.shape
    tiles_h, tiles_w = (oh + 1) // 2, (ow + 1) // 2
    lanes = vlanes(x)
    block_c = TILE_BLOCK * c
    block_k = TILE_BLOCK * k
    ms_start = 16 * block_c
    for b0 in range(t0, t1, TILE_BLOCK):
        count = min(TILE_BLOCK, t1 - b0)
        _input_tiles(x, pt, pl, tiles_h, tiles_w, b0, count, slot, block_c)
        # M[xi] = V[xi] @ U[xi]: rows past `count` hold an earlier block's tiles, and
        # their results are never read.
        for xi in range(16):
            oa = xi * block_c
            ob = xi * c * k
            oc = ms_start + xi * block_k
            k0 = 0
            while k0 + 2 * lanes <= k:
                _tile_12x2(c, slot, oa, c, 1, u, ob + k0, k, slot, oc + k0, k, False)
                k0 += 2 * lanes
            if k0 < k:
                _tile_12x1(c, slot, oa, c, 1, u, ob + k0, k, slot, oc + k0, k, False)
        for i in range(count):
            n, r0, q0 = _tile_position(b0 + i, tiles_h, tiles_w)
            for k0 in range(0, k, lanes):
                _output_tile(slot, ms_start + i * k + k0, block_k, z, n, r0, q0, k0, bias,
                             has_bias, relu, saved, masked)


@parallel_kernel(**_FLAGS)
def _conv_parallel(x, u, bias, has_bias, relu, z, pt, pl, saved, masked, work):
    tiles = _tile_count(z.shape[0], z.shape[1], z.shape[2])
    for q in numba.prange(-(-tiles // CHUNK_TILES)):
        # A thread runs one iteration at a time: its slot of `work` is private.
        _conv_tiles(x, u, bias, has_bias, relu, z, pt, pl, saved, masked,
                    work[numba.get_thread_id()], q * CHUNK_TILES,
                    min(tiles, (q + 1) * CHUNK_TILES))


def winograd_conv_into(x: np.ndarray, u: np.ndarray, bias: np.ndarray | None, relu: bool,
                       z: np.ndarray, pads: tuple[int, int], work: np.ndarray,
                       saved: np.ndarray | None = None) -> None:
    """``z = conv3x3(x) (+ bias, ReLU)`` through the transformed kernels ``u`` (no checks:
    the layer's hot path).

    Args:
        x: ``(N, H, W, C)``.
        u: ``(16, C, K)`` from :func:`transform_weights_into`.
        bias: ``(K,)`` or ``None``.
        relu: apply ReLU to the output.
        z: ``(N, OH, OW, K)``, written.
        pads: ``(pt, pl)``, the zero rows above and columns left of ``x`` (bottom and
            right padding show only in ``OH``, ``OW``). Any ints, negative included.
        work: :func:`winograd_workspace` scratch.
        saved: ``(N, OH, OW, K)`` or ``None``; with it, ``z`` is zeroed where
            ``saved <= 0`` (an input gradient with a ReLU below).
    """
    has_bias = bias is not None
    if bias is None:
        bias = z.reshape(-1)[:1]
    masked = saved is not None
    if saved is None:
        saved = z
    pt, pl = pads
    if z.size * x.shape[3] * 9 >= PARALLEL_MIN and numba.get_num_threads() > 1:
        _conv_parallel(x, u, bias, has_bias, relu, z, pt, pl, saved, masked, work)
    else:
        tiles = _tile_count(*z.shape[:3])
        _conv_tiles(x, u, bias, has_bias, relu, z, pt, pl, saved, masked, work[0], 0, tiles)


# ---------------------------------------------------------------------------------------
# Weight gradient
# ---------------------------------------------------------------------------------------


@kernel(inline="always", **_FLAGS)
def _accumulate_rows(rows, kc, vs, oa, c, ms, ob, k, part, oc, lanes):
    """``part[rows, :] += vs-rows^T @ ms-rows`` for ``rows`` (12, 8 or 4) channels."""
    k0 = 0
    while k0 + 2 * lanes <= k:
        if rows == 12:
            _tile_12x2(kc, vs, oa, 1, c, ms, ob + k0, k, part, oc + k0, k, True)
        elif rows == 8:
            _tile_8x2(kc, vs, oa, 1, c, ms, ob + k0, k, part, oc + k0, k, True)
        else:
            _tile_4x2(kc, vs, oa, 1, c, ms, ob + k0, k, part, oc + k0, k, True)
        k0 += 2 * lanes
    if k0 < k:
        if rows == 12:
            _tile_12x1(kc, vs, oa, 1, c, ms, ob + k0, k, part, oc + k0, k, True)
        elif rows == 8:
            _tile_8x1(kc, vs, oa, 1, c, ms, ob + k0, k, part, oc + k0, k, True)
        else:
            _tile_4x1(kc, vs, oa, 1, c, ms, ob + k0, k, part, oc + k0, k, True)


@kernel(**_FLAGS)
def _weight_task(x, dz, pt, pl, slot, part, t0, t1):
    """``part[xi * C * K + c * K + k] = sum_t V[xi][t, c] dM[xi][t, k]`` over tiles
    ``t0 .. t1``, ``WEIGHT_BLOCK`` at a time (serial)."""
    c = x.shape[3]
    _, oh, ow, k = dz.shape
    tiles_h, tiles_w = (oh + 1) // 2, (ow + 1) // 2
    lanes = vlanes(x)
    block_c = WEIGHT_BLOCK * c
    block_k = WEIGHT_BLOCK * k
    ms_start = 16 * block_c
    part[:] = 0
    for b0 in range(t0, t1, WEIGHT_BLOCK):
        count = min(WEIGHT_BLOCK, t1 - b0)
        _input_tiles(x, pt, pl, tiles_h, tiles_w, b0, count, slot, block_c)
        for i in range(count):
            n, r0, q0 = _tile_position(b0 + i, tiles_h, tiles_w)
            for k0 in range(0, k, lanes):
                _output_gradient_tile(dz, n, r0, q0, k0, slot, ms_start + i * k + k0, block_k)
        for xi in range(16):
            oa = xi * block_c
            ob = ms_start + xi * block_k
            c0 = 0
            while c0 + 12 <= c:
                _accumulate_rows(12, count, slot, oa + c0, c, slot, ob, k, part,
                                 (xi * c + c0) * k, lanes)
                c0 += 12
            if c0 + 8 <= c:
                _accumulate_rows(8, count, slot, oa + c0, c, slot, ob, k, part,
                                 (xi * c + c0) * k, lanes)
                c0 += 8
            if c0 < c:
                _accumulate_rows(4, count, slot, oa + c0, c, slot, ob, k, part,
                                 (xi * c + c0) * k, lanes)


@kernel(inline="always", **_FLAGS)
def _task_tiles(s, tasks, tiles):
    """First tile of weight task ``s``: an even split in whole ``WEIGHT_BLOCK`` blocks."""
    if s >= tasks:
        return tiles
    blocks = -(-tiles // WEIGHT_BLOCK)
    return min(tiles, (s * blocks // tasks) * WEIGHT_BLOCK)


@kernel(**_FLAGS)
def _sum_partials_rows(parts, du, e0, e1):
    """``du[:, e] = sum_s parts[s, e]`` in task order, float64, for ``e0 <= e < e1``."""
    for e in range(e0, e1):
        acc = 0.0
        for s in range(parts.shape[0]):
            acc += parts[s, e]
        du[e] = acc


@parallel_kernel(**_FLAGS)
def _weight_parallel(x, dz, pt, pl, work, parts, du):
    tiles = _tile_count(dz.shape[0], dz.shape[1], dz.shape[2])
    tasks = parts.shape[0]
    for s in numba.prange(tasks):
        _weight_task(x, dz, pt, pl, work[numba.get_thread_id()], parts[s],
                     _task_tiles(s, tasks, tiles), _task_tiles(s + 1, tasks, tiles))
    size = parts.shape[1]
    rows = 16 * x.shape[3]
    flat = du.reshape(size)
    for r in numba.prange(rows):
        _sum_partials_rows(parts, flat, r * (size // rows), (r + 1) * (size // rows))


@kernel(**_FLAGS)
def _weight_serial(x, dz, pt, pl, work, parts, du):
    tiles = _tile_count(dz.shape[0], dz.shape[1], dz.shape[2])
    tasks = parts.shape[0]
    for s in range(tasks):
        _weight_task(x, dz, pt, pl, work[0], parts[s], _task_tiles(s, tasks, tiles),
                     _task_tiles(s + 1, tasks, tiles))
    _sum_partials_rows(parts, du.reshape(parts.shape[1]), 0, parts.shape[1])


def winograd_weight_gradient_into(x: np.ndarray, dz: np.ndarray, pads: tuple[int, int],
                                  dw: np.ndarray, work: np.ndarray, parts: np.ndarray,
                                  du: np.ndarray) -> None:
    """``dw`` ``(3, 3, C, K)`` = the weight gradient of the convolution of ``x``
    ``(N, H, W, C)`` whose output gradient is ``dz`` ``(N, OH, OW, K)`` (no checks).

    ``pads`` as in :func:`winograd_conv_into`; ``work`` from :func:`winograd_workspace`,
    ``parts`` ``x.dtype`` from :func:`weight_partials_shape`, ``du`` float64
    ``(16, C * K)``, all scratch.
    """
    pt, pl = pads
    c, k = x.shape[3], dz.shape[3]
    if dz.size * c * 9 >= PARALLEL_MIN and numba.get_num_threads() > 1:
        _weight_parallel(x, dz, pt, pl, work, parts, du)
    else:
        _weight_serial(x, dz, pt, pl, work, parts, du)
    _weights_from_transformed(du, dw, c, k)
