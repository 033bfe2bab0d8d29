"""Batch and layer normalisation: fused passes, statistics in fixed-order sums.

Both normalise a 2-D C-contiguous ``x`` of shape ``(rows, C)`` (the layers reshape
``(N, F)`` and ``(N, H, W, C)`` inputs to this without copying) to
``xhat = (x - mean) * invstd`` with ``invstd = 1 / sqrt(var + eps)`` (the biased
variance), and output ``y = xhat * weight + bias``.

* **Batch norm** takes ``mean`` and ``var`` per column, over all rows (training), or
  from the running statistics (inference). Backward, with ``a = weight * invstd``::

      dbias   = sum_r dy                dweight = invstd * sum_r dy * (x - mean)
      dx      = a * dy - a * invstd**2 * (x - mean) * sum_r dy * (x - mean) / rows
                       - a * sum_r dy / rows              (training: batch statistics)
      dx      = a * dy                                     (inference statistics)

  so ``dx = a * dy + b * (x - mean) + c`` with three coefficients per column.
* **Layer norm** takes ``mean`` and ``var`` per row, over its ``C`` columns (in one
  pass shifted by the row's first value). Backward,
  with ``g = dy * weight`` and ``r = invstd`` of the row::

      dx = r * g - r * sum(g) / C - (x - mean) * r**3 * sum(g * (x - mean)) / C

  and ``dweight``, ``dbias`` are column sums over the rows of ``dy * xhat`` and ``dy``.

Passes over memory, counted in arrays of ``x``'s size:

===============================  =============================================
batch norm forward, training     read x (sums) + read x, write y: 2 reads, 1 write
batch norm forward, inference    read x, write y
batch norm backward              read x, dy (sums) + read x, dy, write dx
layer norm forward               read x, write y (the row is re-read from L1)
layer norm backward              read x, dy, write dx (likewise; the parameter sums
                                 ride along)
===============================  =============================================

Layer norm's rows of at most :data:`LN_NARROW_VECTORS` SIMD vectors (a CNN's 16-64
channels) are held in registers whole instead: loaded once, normalised (or
differentiated) from the registers, with the weights and the parameter run sums in
registers too (:func:`_ln_forward_narrow`, :func:`_ln_backward_narrow`).

Determinism: every column sum (batch statistics, parameter gradients) runs over fixed
chunks of rows, :func:`chunk_rows` rows each, chosen from the array's shape alone: in
runs of :data:`RUN_ROWS` rows in the data's dtype, each added into a float64 partial.
Chunk ``c`` writes only ``partials[c]`` and ``acc[c]`` (the run sums). The partials
are then added per column in a pairwise tree fixed by the chunk count
(:func:`_fold_inside`): ``partials[lo] += partials[lo + w]`` for widths ``w = 1, 2,
4, ...``, leaving the total in ``partials[0]``. Elementwise passes write disjoint
rows. So results depend on the data and the shape, never on the thread count, and the
serial twins (below :data:`PARALLEL_MIN` elements) walk the same chunks and the same
tree.

Parallel twins split the chunks into one contiguous range per thread (:func:`_part`),
and each thread folds the tree's nodes that lie within its own range, in its own
cache; the calling thread then folds the rest (with two threads, one node). So one
chunk's worth of partials (``2 * C`` float64) crosses from the other core, not half
of them. On the 2-vCPU test machine a cache line written by one core at times costs
the other several times more to read (an empty parallel region then takes 2.7-3.1 us
instead of 1.5), and layer norm's (256, 1024) float32 step on two threads took 106-108
us with the partials added in chunk order on the calling thread, 80-82 us with the
tree (65 and 64 us when lines crossed fast); docs/performance.md has the measurements.

Batch statistics subtract the first row before squaring (shifted sums):
``var = E[(x - k)^2] - E[x - k]^2`` loses no precision to a large mean;
layer norm shifts each row by its first value likewise.

Per-row loops index 2-D arrays directly (``x[r, j]``, ``j`` from zero, so they still
vectorize) instead of taking a view per row: a view costs NRT reference counting worth
about a hundred elements of work, which made narrow rows (C = 64) 3x slower.

Elementwise work stays in the data's dtype (coefficients are computed per column or row
in float64 and rounded once). Layer norm's per-row sums (forward statistics, backward's
two dot products) also run in the data's dtype, as in PyTorch: in float64 the
conversions and half-width vectors made those loops compute-bound (forward 1.3x,
backward 1.25x slower on 256 x 1024).

Unchecked entries (the layers in :mod:`numbanet.nn.norm` validate shapes once):
:func:`batch_norm_forward`, :func:`batch_norm_backward`, :func:`layer_norm_forward`,
:func:`layer_norm_backward`. Wrong shapes or dtypes are undefined behaviour.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from numbanet._aligned import aligned_empty
from numbanet._jit import ELEMENTWISE_FASTMATH, kernel, parallel_kernel
from numbanet.kernels._simd import (
    vadd,
    vbroadcast,
    vfma,
    vlanes,
    vload,
    vload_part,
    vmul,
    vrelu,
    vsplat,
    vstore,
    vstore_part,
    vsub,
    vsum,
    vzero,
)

__all__ = [
    "CHUNK_ELEMENTS",
    "COL_BLOCK",
    "LN_BLOCK_MIN_ROW_BYTES",
    "LN_BLOCK_VECTORS",
    "LN_NARROW_VECTORS",
    "MIN_CHUNK_ROWS",
    "PARALLEL_MIN",
    "RUN_ROWS",
    "batch_norm_backward",
    "batch_norm_forward",
    "chunk_rows",
    "layer_norm_backward",
    "layer_norm_forward",
    "ln_coefs",
    "ln_coefs_shape",
    "norm_partials",
    "norm_partials_shape",
]

#: Target elements per row chunk of a reduction (rows per chunk = this // C, at least
#: :data:`MIN_CHUNK_ROWS`): large enough that combining the partials (``2 * C`` float64
#: per chunk) stays a small fraction of the work, small enough to split over threads.
CHUNK_ELEMENTS = 32768
#: Fewest rows per chunk, so wide rows (C beyond CHUNK_ELEMENTS / 16) still keep the
#: partials at most 1/8 of the data's size.
MIN_CHUNK_ROWS = 16
#: Columns per task in batch norm's column sums. Rows up to this wide are one task per
#: row chunk, indexed directly; wider ones are split into strips, one view per row and
#: strip. Scheduling only: each column's sum runs over the same rows in the same order
#: whatever the strip.
COL_BLOCK = 2048
#: Rows a column sum takes in the data's dtype (float32 for float32 data) before adding
#: them into its float64 partial. Per element, a float64 accumulator costs two
#: conversions and halves the vector width (the loop vectorizes at the widest type's
#: width): 1.3-1.7x slower sums. A run of 32 rows in float32 adds at most ~32 roundings,
#: each relative to the run's own magnitude, before float64 takes over.
RUN_ROWS = 32
#: Rows of at most this many whole SIMD vectors (128 float32 channels with AVX-512) take
#: register accumulators in batch norm's column sums: (64, 32, 32, 16) float32 forward
#: 0.69 -> 0.22 ms, backward 0.73 -> 0.31 ms. Wider rows keep the row-major loop, whose
#: long vectorized rows stream well: down a run of rows 4 KiB apart the register sums
#: measured slower ((256, 1024) backward 0.094 -> 0.126 ms with four vectors at a time).
NARROW_VECTORS = 8
#: Layer-norm rows of at most this many SIMD vectors (64 float32 or 32 float64 columns
#: with AVX-512, half that with AVX2) are held in registers whole: each row is loaded
#: once, and the parameter sums stay in registers for a run of rows. (16384, 64)
#: float32, one thread: forward 0.33 -> 0.22 ms, backward 0.43 -> 0.28-0.31 ms.
LN_NARROW_VECTORS = 4
#: Vectors per column block of layer norm's ``dx`` sweep with AVX-512
#: (:func:`_ln_dx_columns`): the block's weight and two run sums take 24 of the 32
#: vector registers, the row's four coefficients four more.
LN_BLOCK_VECTORS = 8
#: Rows at least this long (bytes) take that sweep. The four-row loop it replaces keeps
#: four rows of ``x`` and ``dy`` in L1 (32 KiB on Zen 4) only while a row is shorter
#: than a page; the column blocks read a run's rows back from L2 whatever their
#: length, so they pay from there on. Backward, one thread, new / old time, medians of
#: 25 interleaved rounds: float32 rows of 2048 0.885x, 1024 0.92x, 768 0.96x, 512
#: 1.025x, 256 1.02x; float64 rows of 1024 0.89x, 512 0.91x.
LN_BLOCK_MIN_ROW_BYTES = 4096
#: Below this many elements the serial twins run (a parallel launch costs microseconds,
#: milliseconds when the cores are busy).
PARALLEL_MIN = 1 << 16


# Writeable stand-ins for absent outputs (no input gradient, no affine parameters): one
# compiled specialization serves every flag combination, and a read-only input is never
# passed where the kernel's typing sees a store.
_STAND_INS = {np.dtype(t): (np.empty(0, dtype=t), np.empty((0, 0), dtype=t))
              for t in (np.float32, np.float64)}


def _parts(x: np.ndarray, threads: int | None) -> int:
    """How many parts a wrapper splits the work into: the thread count (``threads``: the
    caller's count, or ``None`` to ask Numba, ~0.6 us) at :data:`PARALLEL_MIN` elements
    and above, when that is more than one, for the parallel twin; else 1, for the serial
    twin. On one thread a parallel region still costs ~2 us to launch: 4-5% of a
    256 x 1024 step. Either twin gives the same result bit for bit."""
    if x.size < PARALLEL_MIN:
        return 1
    return max(1, numba.get_num_threads() if threads is None else threads)


def chunk_rows(rows: int, cols: int) -> int:
    """Rows per reduction chunk for a ``(rows, cols)`` array; a function of the shape only."""
    return max(1, min(rows, max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(cols, 1))))


def norm_partials_shape(rows: int, cols: int) -> tuple[int, int, int]:
    """Shape of the float64 ``partials`` workspace for a ``(rows, cols)`` input:
    ``(ceil(rows / chunk_rows(rows, cols)), 2, cols)``."""
    return (max(1, -(-rows // chunk_rows(rows, cols))), 2, cols)


def norm_partials(rows: int, cols: int, dtype: np.dtype | type = np.float64) -> np.ndarray:
    """An uninitialised workspace of shape :func:`norm_partials_shape` for a
    ``(rows, cols)`` input: float64 ``partials`` by default; with the data's dtype, the
    ``acc`` run sums (see :data:`RUN_ROWS`). 64-byte aligned (:mod:`numbanet._aligned`:
    layer norm's (256, 1024) float32 backward, one thread, 78 -> 72 us)."""
    return aligned_empty(norm_partials_shape(rows, cols), dtype)


def ln_coefs_shape(rows: int, cols: int) -> tuple[int, int, int]:
    """Shape of layer norm's ``coefs`` workspace for a ``(rows, cols)`` input:
    ``(ceil(rows / chunk_rows(rows, cols)), RUN_ROWS, 4)``, the ``(m, r, b, c)`` of
    each row of a run (:func:`_ln_dx_columns`), one run at a time per chunk."""
    return (norm_partials_shape(rows, cols)[0], RUN_ROWS, 4)


def ln_coefs(rows: int, cols: int, dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised ``coefs`` workspace (:func:`ln_coefs_shape`) in the data's dtype."""
    return aligned_empty(ln_coefs_shape(rows, cols), dtype)


#: Flags of the per-column coefficient helpers: no ``reassoc``/``arcp``, so LLVM cannot
#: regroup their products (``-a * inv * inv * s / n``) differently where the serial and
#: the parallel twin inline them (numbanet._jit.ELEMENTWISE_FASTMATH). Their loops
#: vectorize without them.
_COEF_FLAGS = {"fastmath": set(ELEMENTWISE_FASTMATH)}
#: Batch norm's column sums and elementwise passes: no ``reassoc`` either. Their vector
#: accumulators add rows in order, and with ``reassoc`` LLVM may regroup an unrolled
#: run differently in the serial and the parallel twin (it did so to the Winograd
#: transforms). The row-major loops vectorize across columns without it.
_SUM_FLAGS = {"fastmath": set(ELEMENTWISE_FASTMATH)}


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------


@kernel
def _part(ntasks, nparts, p):
    """Tasks ``[lo, hi)`` of part ``p`` of ``nparts``: contiguous, sizes differing by at
    most one. A parallel twin runs one part per thread (``prange(nparts)``)."""
    return p * ntasks // nparts, (p + 1) * ntasks // nparts


@kernel
def _whole_chunks(t0, t1, nblocks):
    """The chunks ``[c0, c1)`` all of whose ``nblocks`` column-block tasks (task
    ``c * nblocks + b``) lie in tasks ``[t0, t1)``; ``c0 >= c1`` when there are none."""
    return (t0 + nblocks - 1) // nblocks, t1 // nblocks


@kernel
def _fold(partials, lo, mid):
    """``partials[lo] += partials[mid]``, both rows: one node of the pairwise tree."""
    a0, a1 = partials[lo, 0], partials[lo, 1]
    b0, b1 = partials[mid, 0], partials[mid, 1]
    for j in range(a0.shape[0]):
        a0[j] += b0[j]
        a1[j] += b1[j]


@kernel
def _fold_inside(partials, nchunks, c0, c1):
    """Every node of the pairwise tree over ``nchunks`` chunks that lies within chunks
    ``[c0, c1)``, lower levels first. A node of width ``2 * w`` starts at a multiple of
    ``2 * w`` and adds ``partials[lo + w]`` (its right half's total) into ``partials[lo]``
    (its left half's); all of ``[0, nchunks)`` leaves the total in ``partials[0]``."""
    w = 1
    while w < nchunks:
        lo = (c0 + 2 * w - 1) // (2 * w) * (2 * w)
        while lo + w < min(lo + 2 * w, nchunks) and min(lo + 2 * w, nchunks) <= c1:
            _fold(partials, lo, lo + w)
            lo += 2 * w
        w *= 2


@kernel
def _fold_across(partials, nchunks, nblocks, nparts):
    """The tree's nodes that no part folded (:func:`_fold_inside` over each part's
    :func:`_whole_chunks`), lower levels first: afterwards ``partials[0]`` holds the
    total. Runs on the calling thread after the parts' ``prange``."""
    ntasks = nchunks * nblocks
    w = 1
    while w < nchunks:
        for lo in range(0, nchunks - w, 2 * w):
            hi = min(lo + 2 * w, nchunks)
            folded = False
            for p in range(nparts):
                t0, t1 = _part(ntasks, nparts, p)
                c0, c1 = _whole_chunks(t0, t1, nblocks)
                if c0 <= lo and hi <= c1:
                    folded = True
                    break
            if not folded:
                _fold(partials, lo, lo + w)
        w *= 2


@kernel(**_SUM_FLAGS)
def _scale_shift_rows(x, lo, hi, m, s, b, relu, y):
    """``y[r] = (x[r] - m) * s + b`` for rows ``lo:hi``; ``m, s, b`` per column. With
    ``relu``, ``y[r] = relu((x[r] - m) * s + b)`` (``0 if v < 0 else v``, the ReLU
    layer's own rule, so NaN passes through): a ReLU layer right after the batch norm,
    applied here instead of in a pass of its own (``BatchNorm.set_output_relu``)."""
    cols = x.shape[1]
    lanes = vlanes(x)
    if cols % lanes == 0:
        # Whole vectors (16, 32, 64 channels of a CNN): explicit SIMD. A loop over a
        # short row (LLVM's vector body plus its remainder per row) ran at 20 GB/s.
        # Two rows per column vector: the coefficients are loaded once for both.
        for r in range(lo, hi, 2):
            pair = r + 1 < hi
            for j in range(0, cols, lanes):
                e = r * cols + j
                mv, sv, bv = vload(m, j), vload(s, j), vload(b, j)
                v0 = vfma(vsub(vload(x, e), mv), sv, bv)
                vstore(y, e, vrelu(v0) if relu else v0)
                if pair:
                    v1 = vfma(vsub(vload(x, e + cols), mv), sv, bv)
                    vstore(y, e + cols, vrelu(v1) if relu else v1)
        return
    zero = x.dtype.type(0)
    for r in range(lo, hi):
        for j in range(cols):
            v = (x[r, j] - m[j]) * s[j] + b[j]
            y[r, j] = zero if relu and v < zero else v


# ---------------------------------------------------------------------------------------
# Batch norm
# ---------------------------------------------------------------------------------------


@kernel
def _flush_runs(a0, a1, s0, s1):
    """``s0 += a0``, ``s1 += a1`` (a run's sums, data dtype, into float64 partials);
    ``a0``, ``a1`` are zeroed for the next run."""
    zero = a0.dtype.type(0)
    for j in range(a0.shape[0]):
        s0[j] += np.float64(a0[j])
        s1[j] += np.float64(a1[j])
        a0[j] = zero
        a1[j] = zero


@kernel
def _start_runs(a0, a1, s0, s1):
    """Zero a task's run sums ``a0``, ``a1`` and its float64 partials ``s0``, ``s1``."""
    zero = a0.dtype.type(0)
    for j in range(a0.shape[0]):
        a0[j] = zero
        a1[j] = zero
        s0[j] = 0.0
        s1[j] = 0.0


@kernel(inline="always", **_SUM_FLAGS)
def _store_4(a, j, lanes, v0, v1, v2, v3):
    """Four vectors into ``a[j : j + 4 * lanes]``."""
    vstore(a, j, v0)
    vstore(a, j + lanes, v1)
    vstore(a, j + 2 * lanes, v2)
    vstore(a, j + 3 * lanes, v3)


@kernel(inline="always", **_SUM_FLAGS)
def _x_sums_1(x, w, start, end, j, k, a0, a1):
    """``a0[j:j+lanes] = sum (x - k)``, ``a1 = sum (x - k)**2`` over rows
    ``start:end`` of the ``w``-wide flat rows of ``x``, in registers."""
    kv = vload(k, j)
    v0 = vzero(x)
    v1 = vzero(x)
    for r in range(start, end):
        d = vsub(vload(x, r * w + j), kv)
        v0 = vadd(v0, d)
        v1 = vfma(d, d, v1)
    vstore(a0, j, v0)
    vstore(a1, j, v1)


@kernel(inline="always", **_SUM_FLAGS)
def _x_sums_4(x, w, start, end, j, lanes, k, a0, a1):
    """:func:`_x_sums_1` for four column vectors at once: eight independent chains
    ((64, 8, 8, 64) float32 forward 0.057 -> 0.046 ms)."""
    k0, k1, k2, k3 = vload(k, j), vload(k, j + lanes), vload(k, j + 2 * lanes), \
        vload(k, j + 3 * lanes)
    s0 = s1 = s2 = s3 = q0 = q1 = q2 = q3 = vzero(x)
    for r in range(start, end):
        e = r * w + j
        d0 = vsub(vload(x, e), k0)
        d1 = vsub(vload(x, e + lanes), k1)
        d2 = vsub(vload(x, e + 2 * lanes), k2)
        d3 = vsub(vload(x, e + 3 * lanes), k3)
        s0, s1, s2, s3 = vadd(s0, d0), vadd(s1, d1), vadd(s2, d2), vadd(s3, d3)
        q0, q1 = vfma(d0, d0, q0), vfma(d1, d1, q1)
        q2, q3 = vfma(d2, d2, q2), vfma(d3, d3, q3)
    _store_4(a0, j, lanes, s0, s1, s2, s3)
    _store_4(a1, j, lanes, q0, q1, q2, q3)


@kernel(inline="always", **_SUM_FLAGS)
def _dy_sums_1(x, dy, w, start, end, j, m, a0, a1):
    """``a0[j:j+lanes] = sum dy``, ``a1 = sum dy * (x - m)`` over rows ``start:end``,
    in registers."""
    mv = vload(m, j)
    v0 = vzero(x)
    v1 = vzero(x)
    for r in range(start, end):
        g = vload(dy, r * w + j)
        v0 = vadd(v0, g)
        v1 = vfma(g, vsub(vload(x, r * w + j), mv), v1)
    vstore(a0, j, v0)
    vstore(a1, j, v1)


@kernel(inline="always", **_SUM_FLAGS)
def _dy_sums_4(x, dy, w, start, end, j, lanes, m, a0, a1):
    """:func:`_dy_sums_1` for four column vectors at once (see :func:`_x_sums_4`)."""
    m0, m1, m2, m3 = vload(m, j), vload(m, j + lanes), vload(m, j + 2 * lanes), \
        vload(m, j + 3 * lanes)
    s0 = s1 = s2 = s3 = q0 = q1 = q2 = q3 = vzero(x)
    for r in range(start, end):
        e = r * w + j
        g0, g1 = vload(dy, e), vload(dy, e + lanes)
        g2, g3 = vload(dy, e + 2 * lanes), vload(dy, e + 3 * lanes)
        s0, s1, s2, s3 = vadd(s0, g0), vadd(s1, g1), vadd(s2, g2), vadd(s3, g3)
        q0 = vfma(g0, vsub(vload(x, e), m0), q0)
        q1 = vfma(g1, vsub(vload(x, e + lanes), m1), q1)
        q2 = vfma(g2, vsub(vload(x, e + 2 * lanes), m2), q2)
        q3 = vfma(g3, vsub(vload(x, e + 3 * lanes), m3), q3)
    _store_4(a0, j, lanes, s0, s1, s2, s3)
    _store_4(a1, j, lanes, q0, q1, q2, q3)


@kernel(inline="always", **_SUM_FLAGS)
def _x_sums_wide(x, w, start, end, lanes, k, a0, a1):
    """``a0 += sum (x - k)``, ``a1 += sum (x - k)**2`` over rows ``start:end`` of wide
    rows of whole vectors, four rows per pass over ``a0``, ``a1`` (a quarter of their
    loads and stores); each column still adds its rows in order."""
    r = start
    while r < end:
        rows = min(4, end - r)
        for j in range(0, w, lanes):
            kv = vload(k, j)
            v0 = vload(a0, j)
            v1 = vload(a1, j)
            for q in range(rows):
                d = vsub(vload(x, (r + q) * w + j), kv)
                v0 = vadd(v0, d)
                v1 = vfma(d, d, v1)
            vstore(a0, j, v0)
            vstore(a1, j, v1)
        r += rows


@kernel(inline="always", **_SUM_FLAGS)
def _dy_sums_wide(x, dy, w, start, end, lanes, m, a0, a1):
    """``a0 += sum dy``, ``a1 += sum dy * (x - m)`` likewise (see :func:`_x_sums_wide`)."""
    r = start
    while r < end:
        rows = min(4, end - r)
        for j in range(0, w, lanes):
            mv = vload(m, j)
            v0 = vload(a0, j)
            v1 = vload(a1, j)
            for q in range(rows):
                e = (r + q) * w + j
                g = vload(dy, e)
                v0 = vadd(v0, g)
                v1 = vfma(g, vsub(vload(x, e), mv), v1)
            vstore(a0, j, v0)
            vstore(a1, j, v1)
        r += rows


@kernel(**_SUM_FLAGS)
def _bn_x_sums(x, lo, hi, clo, chi, k, a0, a1, s0, s1):
    """``s0 = sum (x - k)``, ``s1 = sum (x - k)**2`` over rows ``lo:hi``, columns
    ``clo:chi`` (``k``, per column, in the data's dtype: the first row, exactly).

    Runs of :data:`RUN_ROWS` rows are summed in the data's dtype into ``a0``, ``a1``
    (one row at a time: a loop of that dtype alone vectorizes at full width, while a
    float64 accumulator halves it and adds two conversions per element), and each run
    is added into the float64 ``s0``, ``s1``. The order is fixed by ``lo`` and ``hi``.
    """
    w = chi - clo
    _start_runs(a0, a1, s0, s1)
    lanes = vlanes(x)
    whole = w == x.shape[1] and w % lanes == 0
    vectors = whole and w <= NARROW_VECTORS * lanes
    for start in range(lo, hi, RUN_ROWS):
        end = min(start + RUN_ROWS, hi)
        if whole and not vectors:
            _x_sums_wide(x, w, start, end, lanes, k, a0, a1)
        elif vectors:
            # Whole rows of whole vectors: each run's sums stay in registers, four
            # column vectors at a time (eight independent chains), rows in order (the
            # same order as below).
            j = 0
            while j + 4 * lanes <= w:
                _x_sums_4(x, w, start, end, j, lanes, k, a0, a1)
                j += 4 * lanes
            while j < w:
                _x_sums_1(x, w, start, end, j, k, a0, a1)
                j += lanes
        elif w == x.shape[1]:
            # Whole rows: index x directly. A view per row (x[r]) costs NRT reference
            # counting worth ~100 elements of work, which dominates narrow rows.
            for r in range(start, end):
                for j in range(w):
                    d = x[r, j] - k[j]
                    a0[j] += d
                    a1[j] += d * d
        else:
            # A strip of COL_BLOCK columns of wide rows: views per row are cheap here.
            for r in range(start, end):
                row = x[r, clo:chi]
                for j in range(w):
                    d = row[j] - k[j]
                    a0[j] += d
                    a1[j] += d * d
        _flush_runs(a0, a1, s0, s1)


@kernel(**_SUM_FLAGS)
def _bn_dy_sums(x, dy, lo, hi, clo, chi, m, a0, a1, s0, s1):
    """``s0 = sum dy``, ``s1 = sum dy * (x - m)`` over rows ``lo:hi`` of columns
    ``clo:chi`` (``m`` in the data's dtype), in runs as in :func:`_bn_x_sums`."""
    w = chi - clo
    _start_runs(a0, a1, s0, s1)
    lanes = vlanes(x)
    whole = w == x.shape[1] and w % lanes == 0
    vectors = whole and w <= NARROW_VECTORS * lanes
    for start in range(lo, hi, RUN_ROWS):
        end = min(start + RUN_ROWS, hi)
        if whole and not vectors:
            _dy_sums_wide(x, dy, w, start, end, lanes, m, a0, a1)
        elif vectors:  # run sums in registers, as in _bn_x_sums
            j = 0
            while j + 4 * lanes <= w:
                _dy_sums_4(x, dy, w, start, end, j, lanes, m, a0, a1)
                j += 4 * lanes
            while j < w:
                _dy_sums_1(x, dy, w, start, end, j, m, a0, a1)
                j += lanes
        elif w == x.shape[1]:
            for r in range(start, end):
                for j in range(w):
                    g = dy[r, j]
                    a0[j] += g
                    a1[j] += g * (x[r, j] - m[j])
        else:
            for r in range(start, end):
                xr = x[r, clo:chi]
                dr = dy[r, clo:chi]
                for j in range(w):
                    g = dr[j]
                    a0[j] += g
                    a1[j] += g * (xr[j] - m[j])
        _flush_runs(a0, a1, s0, s1)


@kernel(**_COEF_FLAGS)
def _bn_train_coefs(stats, clo, chi, n, eps, momentum, weight, bias, affine,
                    run_mean, run_var, coef):
    """Per column of ``clo:chi``: batch mean and invstd from the shifted sums, running
    statistics updated (``momentum``, unbiased variance), forward coefficients.

    ``stats`` rows in: 0 the shift ``k``, 2 and 3 the two sums; out: 0 the mean, 1 invstd.
    ``coef`` rows out: 0 the mean, 1 ``weight * invstd``, 2 ``bias`` (data dtype).

    Loops over views from zero, each storing to at most two arrays, so that each
    vectorizes (LLVM's limit of 8 run-time alias checks; ``sqrt`` and the division
    vectorize too): one scalar loop storing to all seven ran ~4 us for C = 1024, a
    serial section of every training step.
    """
    w = chi - clo
    k_mean, inv, s0, s1 = stats[0, clo:chi], stats[1, clo:chi], stats[2, clo:chi], stats[3, clo:chi]
    rn = 1.0 / n
    for j in range(w):
        d = s0[j] * rn
        var = max(s1[j] * rn - d * d, 0.0)
        k_mean[j] = k_mean[j] + d
        inv[j] = 1.0 / math.sqrt(var + eps)
    # PyTorch's update: momentum * batch + (1 - momentum) * running, the variance unbiased.
    rm, rv = run_mean[clo:chi], run_var[clo:chi]
    unbias = n / (n - 1.0)
    keep = 1.0 - momentum
    for j in range(w):
        d = s0[j] * rn
        var = max(s1[j] * rn - d * d, 0.0)
        rm[j] = momentum * k_mean[j] + keep * np.float64(rm[j])
        rv[j] = momentum * (var * unbias) + keep * np.float64(rv[j])
    c0, c1, c2 = coef[0, clo:chi], coef[1, clo:chi], coef[2, clo:chi]
    if affine:
        wt, bs = weight[clo:chi], bias[clo:chi]
        for j in range(w):
            c0[j] = k_mean[j]
            c1[j] = np.float64(wt[j]) * inv[j]
        for j in range(w):
            c2[j] = bs[j]
    else:
        zero = coef.dtype.type(0)
        for j in range(w):
            c0[j] = k_mean[j]
            c1[j] = inv[j]
        for j in range(w):
            c2[j] = zero


@kernel(**_COEF_FLAGS)
def _bn_eval_coefs(eps, weight, bias, affine, run_mean, run_var, stats, coef):
    """Forward coefficients from the running statistics (rows as in :func:`_bn_train_coefs`)."""
    zero = coef.dtype.type(0)
    for j in range(coef.shape[1]):
        mean = np.float64(run_mean[j])
        inv = 1.0 / math.sqrt(np.float64(run_var[j]) + eps)
        stats[0, j] = mean
        stats[1, j] = inv
        coef[0, j] = mean
        if affine:
            coef[1, j] = np.float64(weight[j]) * inv
            coef[2, j] = bias[j]
        else:
            coef[1, j] = inv
            coef[2, j] = zero


@kernel(**_COEF_FLAGS)
def _bn_backward_coefs(stats, clo, chi, n, weight, affine, batch_stats, sums, dweight,
                       dbias, coef):
    """Per column: parameter gradients and the ``dx = a*dy + b*(x - m) + c`` coefficients
    (``coef`` rows 1, 2, 3). ``sums``: whether ``stats`` rows 2, 3 hold ``sum dy`` and
    ``sum dy * (x - m)`` (else only ``a`` is needed: inference statistics, no affine).
    Loops store to at most two arrays each, to vectorize (see :func:`_bn_train_coefs`)."""
    w = chi - clo
    zero = coef.dtype.type(0)
    inv, sdy, sdyx = stats[1, clo:chi], stats[2, clo:chi], stats[3, clo:chi]
    c1, c2, c3 = coef[1, clo:chi], coef[2, clo:chi], coef[3, clo:chi]
    wt = weight[clo:chi]  # empty (a stand-in) without affine parameters
    if affine:
        for j in range(w):
            c1[j] = np.float64(wt[j]) * inv[j]
    else:
        for j in range(w):
            c1[j] = inv[j]
    if sums and batch_stats:
        rn = 1.0 / n
        if affine:
            for j in range(w):
                a = np.float64(wt[j]) * inv[j]
                c2[j] = -a * inv[j] * inv[j] * sdyx[j] * rn
                c3[j] = -a * sdy[j] * rn
        else:
            for j in range(w):
                a = inv[j]
                c2[j] = -a * inv[j] * inv[j] * sdyx[j] * rn
                c3[j] = -a * sdy[j] * rn
    else:
        for j in range(w):
            c2[j] = zero
            c3[j] = zero
    if sums and affine:
        dw, db = dweight[clo:chi], dbias[clo:chi]
        for j in range(w):
            dw[j] = sdyx[j] * inv[j]
            db[j] = sdy[j]


@kernel(**_SUM_FLAGS)
def _bn_dx_rows(x, dy, lo, hi, m, a, b, c, dx):
    """``dx[r] = a * dy[r] + b * (x[r] - m) + c`` for rows ``lo:hi``."""
    cols = x.shape[1]
    lanes = vlanes(x)
    if cols % lanes == 0:  # whole vectors, two rows at a time, as in _scale_shift_rows
        for r in range(lo, hi, 2):
            pair = r + 1 < hi
            for j in range(0, cols, lanes):
                e = r * cols + j
                mv, av, bv, cv = vload(m, j), vload(a, j), vload(b, j), vload(c, j)
                vstore(dx, e, vfma(av, vload(dy, e), vfma(bv, vsub(vload(x, e), mv), cv)))
                if pair:
                    f = e + cols
                    vstore(dx, f, vfma(av, vload(dy, f), vfma(bv, vsub(vload(x, f), mv), cv)))
        return
    for r in range(lo, hi):
        for j in range(cols):
            dx[r, j] = a[j] * dy[r, j] + b[j] * (x[r, j] - m[j]) + c[j]


@kernel
def _bn_sums_part(x, dy, grads, p, nparts, chunk, ref, partials, acc):
    """Part ``p`` (:func:`_part`) of batch norm's column sums: its (row chunk, column
    block) tasks, then the tree's nodes within its chunks. The sums of ``x - ref`` and
    their squares (:func:`_bn_x_sums`; ``ref`` the shift ``k``), or with ``grads`` of
    ``dy`` and ``dy * (x - ref)`` (:func:`_bn_dy_sums`; ``ref`` the mean)."""
    n, cols = x.shape
    nchunks = (n + chunk - 1) // chunk
    nblocks = (cols + COL_BLOCK - 1) // COL_BLOCK
    t0, t1 = _part(nchunks * nblocks, nparts, p)
    for t in range(t0, t1):
        c = t // nblocks
        b = t - c * nblocks
        lo = c * chunk
        hi = min(lo + chunk, n)
        clo = b * COL_BLOCK
        chi = min(clo + COL_BLOCK, cols)
        a0, a1 = acc[c, 0, clo:chi], acc[c, 1, clo:chi]
        s0, s1 = partials[c, 0, clo:chi], partials[c, 1, clo:chi]
        if grads:
            _bn_dy_sums(x, dy, lo, hi, clo, chi, ref[clo:chi], a0, a1, s0, s1)
        else:
            _bn_x_sums(x, lo, hi, clo, chi, ref[clo:chi], a0, a1, s0, s1)
    c0, c1 = _whole_chunks(t0, t1, nblocks)
    _fold_inside(partials, nchunks, c0, c1)


@kernel
def _bn_sums_total(partials, nchunks, nblocks, nparts, stats):
    """The parts' trees finished (:func:`_fold_across`); the totals into ``stats`` rows
    2 and 3."""
    _fold_across(partials, nchunks, nblocks, nparts)
    t0, t1, p0, p1 = stats[2], stats[3], partials[0, 0], partials[0, 1]
    for j in range(t0.shape[0]):
        t0[j] = p0[j]
        t1[j] = p1[j]


@kernel
def _bn_shift(x, stats, coef):
    """The shift ``k`` = the first row: exact in the data's dtype (``coef[0]``, read by
    the sums) and in float64 (``stats[0]``, read by :func:`_bn_train_coefs`)."""
    k = coef[0]
    x0 = x[0]
    for j in range(x.shape[1]):
        k[j] = x0[j]
        stats[0, j] = np.float64(x0[j])


@parallel_kernel
def _bn_forward_parallel(x, training, eps, momentum, weight, bias, affine, run_mean,
                         run_var, stats, coef, partials, acc, chunk, nparts, relu, y):
    """Batch norm forward; two ``prange`` loops, each race-free:

    1. (training) over ``nparts`` parts (:func:`_part`) of the (row chunk, column
       block) tasks: task ``(c, b)`` writes only ``partials[c, :, block b]`` and
       ``acc[c, :, block b]``, and a part folds only the chunks it did whole. Then, on
       the calling thread, the rest of the tree, the statistics, the running buffers
       and the coefficients (a parallel region is a barrier, and on a busy machine a
       barrier waits for a descheduled worker);
    2. over row chunks: chunk ``c`` writes only its rows of ``y``.
    """
    n, cols = x.shape
    nchunks = (n + chunk - 1) // chunk
    if training:
        _bn_shift(x, stats, coef)
        nblocks = (cols + COL_BLOCK - 1) // COL_BLOCK
        parts = min(nparts, nchunks * nblocks)
        for p in numba.prange(parts):
            _bn_sums_part(x, x, False, p, parts, chunk, coef[0], partials, acc)
        _bn_sums_total(partials, nchunks, nblocks, parts, stats)
        _bn_train_coefs(stats, 0, cols, np.float64(n), eps, momentum, weight, bias, affine,
                        run_mean, run_var, coef)
    else:
        _bn_eval_coefs(eps, weight, bias, affine, run_mean, run_var, stats, coef)
    for c in numba.prange(nchunks):
        lo = c * chunk
        _scale_shift_rows(x, lo, min(lo + chunk, n), coef[0], coef[1], coef[2], relu,
                          y)


@kernel
def _bn_forward_serial(x, training, eps, momentum, weight, bias, affine, run_mean,
                       run_var, stats, coef, partials, acc, chunk, nparts, relu, y):
    """Serial twin of :func:`_bn_forward_parallel`: one part, the same chunks and tree
    (the same result bit for bit); ``nparts`` is ignored."""
    n, cols = x.shape
    nchunks = (n + chunk - 1) // chunk
    if training:
        _bn_shift(x, stats, coef)
        nblocks = (cols + COL_BLOCK - 1) // COL_BLOCK
        _bn_sums_part(x, x, False, 0, 1, chunk, coef[0], partials, acc)
        _bn_sums_total(partials, nchunks, nblocks, 1, stats)
        _bn_train_coefs(stats, 0, cols, np.float64(n), eps, momentum, weight, bias, affine,
                        run_mean, run_var, coef)
    else:
        _bn_eval_coefs(eps, weight, bias, affine, run_mean, run_var, stats, coef)
    _scale_shift_rows(x, 0, n, coef[0], coef[1], coef[2], relu, y)


@parallel_kernel
def _bn_backward_parallel(x, dy, weight, affine, batch_stats, need_dx, stats, coef,
                          partials, acc, chunk, nparts, dweight, dbias, dx):
    """Batch norm backward; ``prange`` loops as in :func:`_bn_forward_parallel`: column
    sums of ``dy`` and ``dy * (x - mean)`` per part, the rest of the tree and the
    per-column coefficients on the calling thread, then ``dx`` per row chunk."""
    n, cols = x.shape
    nchunks = (n + chunk - 1) // chunk
    sums = affine or batch_stats
    if sums:
        nblocks = (cols + COL_BLOCK - 1) // COL_BLOCK
        parts = min(nparts, nchunks * nblocks)
        for p in numba.prange(parts):
            _bn_sums_part(x, dy, True, p, parts, chunk, coef[0], partials, acc)
        _bn_sums_total(partials, nchunks, nblocks, parts, stats)
    _bn_backward_coefs(stats, 0, cols, np.float64(n), weight, affine, batch_stats, sums,
                       dweight, dbias, coef)
    if need_dx:
        for c in numba.prange(nchunks):
            lo = c * chunk
            _bn_dx_rows(x, dy, lo, min(lo + chunk, n), coef[0], coef[1], coef[2], coef[3],
                        dx)


@kernel
def _bn_backward_serial(x, dy, weight, affine, batch_stats, need_dx, stats, coef,
                        partials, acc, chunk, nparts, dweight, dbias, dx):
    """Serial twin of :func:`_bn_backward_parallel`; ``nparts`` is ignored."""
    n, cols = x.shape
    nchunks = (n + chunk - 1) // chunk
    sums = affine or batch_stats
    if sums:
        nblocks = (cols + COL_BLOCK - 1) // COL_BLOCK
        _bn_sums_part(x, dy, True, 0, 1, chunk, coef[0], partials, acc)
        _bn_sums_total(partials, nchunks, nblocks, 1, stats)
    _bn_backward_coefs(stats, 0, cols, np.float64(n), weight, affine, batch_stats, sums,
                       dweight, dbias, coef)
    if need_dx:
        _bn_dx_rows(x, dy, 0, n, coef[0], coef[1], coef[2], coef[3], dx)


def batch_norm_forward(x: np.ndarray, training: bool, eps: float, momentum: float,
                       weight: np.ndarray | None, bias: np.ndarray | None,
                       running_mean: np.ndarray, running_var: np.ndarray,
                       stats: np.ndarray, coef: np.ndarray, partials: np.ndarray,
                       acc: np.ndarray, y: np.ndarray, threads: int | None = None,
                       relu: bool = False) -> None:
    """Batch norm over the rows of ``x`` (one feature per column); unchecked.

    Args:
        x: ``(rows, C)`` C-contiguous float32/float64; ``rows >= 2`` when ``training``.
        training: normalise with the batch statistics and update the running ones
            (``running = momentum * batch + (1 - momentum) * running``, the variance
            unbiased, as PyTorch); else normalise with the running statistics.
        eps, momentum: as in :class:`numbanet.BatchNorm`.
        weight, bias: ``(C,)`` in ``x``'s dtype, or both ``None`` (no affine).
        running_mean, running_var: ``(C,)`` in ``x``'s dtype; updated in training only.
        stats: ``(4, C)`` float64 workspace; afterwards row 0 holds the mean and row 1
            ``invstd`` used, which :func:`batch_norm_backward` reads.
        coef: ``(4, C)`` in ``x``'s dtype; afterwards row 0 holds the mean (rounded to the
            dtype), which :func:`batch_norm_backward` reads.
        partials: from ``norm_partials(rows, C)``; overwritten.
        acc: from ``norm_partials(rows, C, x.dtype)``; overwritten.
        y: ``(rows, C)`` like ``x``; receives the output.
        threads: the number of threads Numba runs (``numba.get_num_threads()``), if the
            caller knows it (as for every wrapper here; see :func:`_parts`).
        relu: write ``relu(y)`` instead (``0 if v < 0 else v``, as the ReLU layer),
            what a ReLU layer after the batch norm would compute, without its pass.

    Parallel at :data:`PARALLEL_MIN` elements and above on more than one thread; the
    result is the same bit for bit on either path and for any thread count.
    """
    affine = weight is not None
    one = _STAND_INS[x.dtype][0]
    parts = _parts(x, threads)
    run = _bn_forward_parallel if parts > 1 else _bn_forward_serial
    run(x, training, eps, momentum, one if weight is None else weight,
        one if bias is None else bias, affine, running_mean, running_var, stats, coef,
        partials, acc, chunk_rows(x.shape[0], x.shape[1]), parts, relu, y)


def batch_norm_backward(x: np.ndarray, dy: np.ndarray, weight: np.ndarray | None,
                        batch_stats: bool, stats: np.ndarray, coef: np.ndarray,
                        partials: np.ndarray, acc: np.ndarray, dweight: np.ndarray | None,
                        dbias: np.ndarray | None, dx: np.ndarray | None,
                        threads: int | None = None) -> None:
    """Gradients of :func:`batch_norm_forward`; unchecked.

    Args:
        x: the forward's input; ``stats``, ``coef``: as the forward left them (rows 0-1
            of ``stats`` and row 0 of ``coef`` are read, the rest is overwritten).
        dy: ``(rows, C)``, d(loss)/dy.
        weight: ``(C,)``, or ``None`` (no affine; then ``dweight``, ``dbias`` are ``None``).
        batch_stats: the forward used batch statistics (training), so the gradient
            flows through the mean and variance too.
        partials: from ``norm_partials(rows, C)``; acc: from
            ``norm_partials(rows, C, x.dtype)``; both overwritten.
        dweight, dbias: ``(C,)``; receive the parameter gradients (overwritten).
        dx: ``(rows, C)`` receives d(loss)/dx, or ``None`` to skip it.
        threads: as in :func:`batch_norm_forward`.
    """
    affine = weight is not None
    one, two = _STAND_INS[x.dtype]
    parts = _parts(x, threads)
    run = _bn_backward_parallel if parts > 1 else _bn_backward_serial
    run(x, dy, one if weight is None else weight, affine, batch_stats, dx is not None,
        stats, coef, partials, acc, chunk_rows(x.shape[0], x.shape[1]), parts,
        one if dweight is None else dweight, one if dbias is None else dbias,
        two if dx is None else dx)


# ---------------------------------------------------------------------------------------
# Layer norm
# ---------------------------------------------------------------------------------------


@kernel(inline="always", **_SUM_FLAGS)
def _ln_x_sums(x, r, cols):
    """``(sum d, sum d*d)`` with ``d = x[r, j] - x[r, 0]`` over the row's ``cols``
    elements, in the data's dtype and in an order fixed by ``cols`` alone:
    whole vectors into four vector accumulators in turn (four add chains, not one: wide
    rows are latency-bound on a single chain), the last partial vector into the second,
    then those added pairwise and their lanes by :func:`~numbanet.kernels._simd.vsum`."""
    lanes = vlanes(x)
    whole = cols - cols % lanes
    base = r * cols
    kv = vbroadcast(x, base)
    s0, s1, s2, s3 = vzero(x), vzero(x), vzero(x), vzero(x)
    q0, q1, q2, q3 = vzero(x), vzero(x), vzero(x), vzero(x)
    j = 0
    while j + 4 * lanes <= whole:
        d0 = vsub(vload(x, base + j), kv)
        d1 = vsub(vload(x, base + j + lanes), kv)
        d2 = vsub(vload(x, base + j + 2 * lanes), kv)
        d3 = vsub(vload(x, base + j + 3 * lanes), kv)
        s0, q0 = vadd(s0, d0), vfma(d0, d0, q0)
        s1, q1 = vadd(s1, d1), vfma(d1, d1, q1)
        s2, q2 = vadd(s2, d2), vfma(d2, d2, q2)
        s3, q3 = vadd(s3, d3), vfma(d3, d3, q3)
        j += 4 * lanes
    while j < whole:
        d0 = vsub(vload(x, base + j), kv)
        s0, q0 = vadd(s0, d0), vfma(d0, d0, q0)
        j += lanes
    # The last partial vector, with no branch: with no columns left it loads nothing and
    # adds zeros. (Under an ``if``, the accumulators it joins stopped living in registers:
    # the backward ran 2.4x slower.) Its empty lanes load k, so they add 0.
    d1 = vsub(vload_part(x, base + whole, cols - whole, kv), kv)
    s1, q1 = vadd(s1, d1), vfma(d1, d1, q1)
    return vsum(vadd(vadd(s0, s1), vadd(s2, s3))), vsum(vadd(vadd(q0, q1), vadd(q2, q3)))


@kernel(inline="always", **_COEF_FLAGS)
def _ln_row_stats(s, q, first, cols, eps):
    """A row's float64 ``(mean, invstd)`` from ``s = sum (x - first)`` and
    ``q = sum (x - first)**2`` over its ``cols`` values."""
    d = np.float64(s) / cols
    var = np.float64(q) / cols - d * d
    if var < 0.0:
        var = 0.0
    return np.float64(first) + d, 1.0 / math.sqrt(var + eps)


@kernel(inline="always")
def _four_rows_at_once(x):
    """Whether layer norm's elementwise loops take four rows at a time: only where a
    vector fills a 64-byte cache line (AVX-512). With AVX2's half-line vectors, when
    the arrays sit at the same offset in their 4 KiB pages (rows of 1024 float32), the
    four rows' lines share one 8-way L1 set and each line is fetched twice (backward
    under the Haswell target: 1.17x slower there, 0.9x in the median)."""
    return vlanes(x) * x.itemsize >= 64


@kernel(inline="always", **_SUM_FLAGS)
def _ln_row_mean_rstd(x, r, cols, eps, mean, rstd):
    """Row ``r``'s statistics into ``mean[r]``, ``rstd[r]``; returns them rounded to the
    data's dtype."""
    s, q = _ln_x_sums(x, r, cols)
    mu, inv = _ln_row_stats(s, q, x[r, 0], cols, eps)
    mean[r] = mu
    rstd[r] = inv
    return x.dtype.type(mu), x.dtype.type(inv)


@kernel(inline="always", **_SUM_FLAGS)
def _ln_y_quad(x, r, cols, m, rd, weight, bias, y):
    """``y = (x - m) * r * weight + bias`` for rows ``r:r+4`` (``m``, ``rd``: their
    4-tuples), each column vector's weight and bias loaded once for the four rows; a
    step's loads before its stores (see :func:`_ln_dx_quad`)."""
    lanes = vlanes(x)
    whole = cols - cols % lanes
    b0, b1, b2, b3 = r * cols, (r + 1) * cols, (r + 2) * cols, (r + 3) * cols
    m0, m1, m2, m3 = vsplat(m[0], x), vsplat(m[1], x), vsplat(m[2], x), vsplat(m[3], x)
    r0, r1, r2, r3 = vsplat(rd[0], x), vsplat(rd[1], x), vsplat(rd[2], x), vsplat(rd[3], x)
    for j in range(0, whole, lanes):
        wv, bv = vload(weight, j), vload(bias, j)
        x0, x1 = vload(x, b0 + j), vload(x, b1 + j)
        x2, x3 = vload(x, b2 + j), vload(x, b3 + j)
        vstore(y, b0 + j, vfma(vmul(vsub(x0, m0), r0), wv, bv))
        vstore(y, b1 + j, vfma(vmul(vsub(x1, m1), r1), wv, bv))
        vstore(y, b2 + j, vfma(vmul(vsub(x2, m2), r2), wv, bv))
        vstore(y, b3 + j, vfma(vmul(vsub(x3, m3), r3), wv, bv))
    for k in range(4):
        for j in range(whole, cols):
            y[r + k, j] = (x[r + k, j] - m[k]) * rd[k] * weight[j] + bias[j]


@kernel(**_SUM_FLAGS)
def _ln_forward_rows(x, lo, hi, eps, weight, bias, affine, y, mean, rstd):
    """Normalise rows ``lo:hi`` into ``y``; each row's mean and invstd (float64) into
    ``mean``, ``rstd``.

    One pass for the statistics (:func:`_ln_x_sums`), shifted by the row's first value
    (``var = E[(x - k)^2] - E[x - k]^2`` keeps its precision far from zero) and summed
    in the data's dtype, as PyTorch does (float64 sums made this pass 1.3x slower:
    conversions and half-width vectors), then one for the output, which reads the row
    from L1. The sums are explicit vectors in a fixed order, and the flags leave out
    ``reassoc``: with a plain ``s += d`` loop LLVM chose the order, and chose it
    differently for the serial and the parallel twin when they were compiled in
    different processes (5098 of 65536 outputs differed for 1024 x 64 float32, so a
    model trained on one thread and then on two gave other bits). Rows are indexed
    directly (``x[r, j]``): a view per row would cost NRT reference counting worth ~100
    elements of work. With AVX-512 and affine parameters the output loop takes four
    rows at a time (:func:`_ln_y_quad`: the weight and bias loaded once for the four;
    same bits; 256 x 1024 forward 0.96x the time in float32, 0.88x in float64 and for
    1024 x 200, medians over random array offsets). Rows of at most
    :data:`LN_NARROW_VECTORS` vectors take :func:`_ln_forward_narrow` instead (chosen
    by the width alone).
    """
    cols = x.shape[1]
    if cols <= LN_NARROW_VECTORS * vlanes(x):
        _ln_forward_narrow(x, lo, hi, eps, weight, bias, affine, y, mean, rstd)
        return
    first = lo
    while affine and _four_rows_at_once(x) and first + 4 <= hi:
        m0, r0 = _ln_row_mean_rstd(x, first, cols, eps, mean, rstd)
        m1, r1 = _ln_row_mean_rstd(x, first + 1, cols, eps, mean, rstd)
        m2, r2 = _ln_row_mean_rstd(x, first + 2, cols, eps, mean, rstd)
        m3, r3 = _ln_row_mean_rstd(x, first + 3, cols, eps, mean, rstd)
        _ln_y_quad(x, first, cols, (m0, m1, m2, m3), (r0, r1, r2, r3), weight, bias, y)
        first += 4
    for r in range(first, hi):
        m, rr = _ln_row_mean_rstd(x, r, cols, eps, mean, rstd)
        if affine:
            for j in range(cols):
                y[r, j] = (x[r, j] - m) * rr * weight[j] + bias[j]
        else:
            for j in range(cols):
                y[r, j] = (x[r, j] - m) * rr


@kernel(inline="always", **_SUM_FLAGS)
def _slot_count(cols, i, lanes):
    """How many of a narrow row's ``cols`` elements fall in its vector slot ``i``."""
    return min(max(cols - i * lanes, 0), lanes)


@kernel(inline="always", **_SUM_FLAGS)
def _load_slot(arr, base, cols, i, fill):
    """Vector slot ``i`` of the narrow row at ``arr.flat[base:]`` (``cols`` elements);
    lanes past the row take ``fill``'s and read nothing."""
    lanes = vlanes(arr)
    n = _slot_count(cols, i, lanes)
    if n == lanes:
        return vload(arr, base + i * lanes)
    if n == 0:
        return fill
    return vload_part(arr, base + i * lanes, n, fill)


@kernel(inline="always", **_SUM_FLAGS)
def _store_slot(arr, base, cols, i, v):
    """``v`` into slot ``i`` of the narrow row at ``arr.flat[base:]``: a plain store when
    the slot is whole (masked stores are slow on AMD's AVX2 cores), a masked one when
    partial, nothing when empty."""
    lanes = vlanes(arr)
    n = _slot_count(cols, i, lanes)
    if n == lanes:
        vstore(arr, base + i * lanes, v)
    elif n > 0:
        vstore_part(arr, base + i * lanes, n, v)


@kernel(inline="always", **_SUM_FLAGS)
def _load_slots(arr, base, cols, fill):
    """The four slots of the narrow row at ``arr.flat[base:]`` (:func:`_load_slot`)."""
    return (_load_slot(arr, base, cols, 0, fill), _load_slot(arr, base, cols, 1, fill),
            _load_slot(arr, base, cols, 2, fill), _load_slot(arr, base, cols, 3, fill))


@kernel(inline="always", **_SUM_FLAGS)
def _store_slots(arr, base, cols, v0, v1, v2, v3):
    """Four slots into the narrow row at ``arr.flat[base:]`` (:func:`_store_slot`)."""
    _store_slot(arr, base, cols, 0, v0)
    _store_slot(arr, base, cols, 1, v1)
    _store_slot(arr, base, cols, 2, v2)
    _store_slot(arr, base, cols, 3, v3)


@kernel(inline="always", **_SUM_FLAGS)
def _param_slots(param, cols, affine, absent):
    """A narrow row's four slots of the ``(C,)`` parameter ``param`` (zeros past the
    row), or four ``absent`` vectors without affine parameters."""
    if not affine:
        return absent, absent, absent, absent
    return _load_slots(param, 0, cols, vzero(param))


@kernel(**_SUM_FLAGS)
def _ln_forward_narrow(x, lo, hi, eps, weight, bias, affine, y, mean, rstd):
    """:func:`_ln_forward_rows` for rows of at most :data:`LN_NARROW_VECTORS` vectors:
    each row is loaded once into four vector slots (the last ones partial or empty:
    masked loads, the empty lanes adding zero), its sums taken from them in a fixed
    order (``((s0 + s1) + (s2 + s3))``, then :func:`~numbanet.kernels._simd.vsum`) and
    its output computed from them; the weight and bias stay in registers. (The general
    path loads each row twice and runs a loop remainder per row: 1.5x slower on
    (16384, 64) float32.)"""
    cols = x.shape[1]
    dt = x.dtype.type
    # Without affine parameters w = 1 and b = 0, which change no bit of the output.
    w0, w1, w2, w3 = _param_slots(weight, cols, affine, vsplat(dt(1), x))
    b0, b1, b2, b3 = _param_slots(bias, cols, affine, vzero(x))
    for r in range(lo, hi):
        base = r * cols
        kv = vbroadcast(x, base)
        x0, x1, x2, x3 = _load_slots(x, base, cols, kv)
        d0, d1, d2, d3 = vsub(x0, kv), vsub(x1, kv), vsub(x2, kv), vsub(x3, kv)
        s = vsum(vadd(vadd(d0, d1), vadd(d2, d3)))
        q = vsum(vadd(vadd(vmul(d0, d0), vmul(d1, d1)), vadd(vmul(d2, d2), vmul(d3, d3))))
        mu, inv = _ln_row_stats(s, q, x[r, 0], cols, eps)
        mean[r] = mu
        rstd[r] = inv
        mv, rv = vsplat(dt(mu), x), vsplat(dt(inv), x)
        # y = (x - m) * r * w + b
        _store_slots(y, base, cols, vfma(vmul(vsub(x0, mv), rv), w0, b0),
                     vfma(vmul(vsub(x1, mv), rv), w1, b1),
                     vfma(vmul(vsub(x2, mv), rv), w2, b2),
                     vfma(vmul(vsub(x3, mv), rv), w3, b3))


@parallel_kernel
def _ln_forward_parallel(x, eps, weight, bias, affine, y, mean, rstd, chunk):
    """``prange`` over row chunks; chunk ``c`` writes only its rows of ``y``, ``mean``
    and ``rstd`` (every row is reduced on its own)."""
    n = x.shape[0]
    for c in numba.prange((n + chunk - 1) // chunk):
        lo = c * chunk
        _ln_forward_rows(x, lo, min(lo + chunk, n), eps, weight, bias, affine, y, mean, rstd)


@kernel
def _ln_forward_serial(x, eps, weight, bias, affine, y, mean, rstd, chunk):
    _ln_forward_rows(x, 0, x.shape[0], eps, weight, bias, affine, y, mean, rstd)


@kernel(**_COEF_FLAGS)
def _ln_dx_coefs(rows_sum, rows_dot, rs, cols, dtype):
    """``(b, c)`` of ``dx = r*g + b*(x - m) + c`` from a row's ``sum g`` and
    ``sum g * (x - m)`` (``r = rs``), in float64, rounded once to ``dtype``."""
    b = dtype(-rs * rs * rs * np.float64(rows_dot) / cols)
    c = dtype(-rs * np.float64(rows_sum) / cols)
    return b, c


@kernel(inline="always", **_SUM_FLAGS)
def _ln_dy_step(x, dy, weight, affine, base, j, mv, s, t):
    """One vector of :func:`_ln_dy_sums` at column ``j``: ``(s + g, t + g * (x - m))``."""
    e = vload(dy, base + j)
    g = vmul(e, vload(weight, j)) if affine else e
    return vadd(s, g), vfma(g, vsub(vload(x, base + j), mv), t)


@kernel(inline="always", **_SUM_FLAGS)
def _ln_dy_sums(x, dy, weight, affine, r, cols, m):
    """``(sum g, sum g * (x - m))`` over row ``r`` with ``g = dy * weight`` (``g = dy``
    without affine parameters), in the data's dtype and an order fixed by ``cols``, as
    :func:`_ln_x_sums`. Loads only: the row's stores are :func:`_ln_dx_row`'s."""
    lanes = vlanes(x)
    whole = cols - cols % lanes
    base = r * cols
    mv = vsplat(m, x)
    s0, s1, s2, s3 = vzero(x), vzero(x), vzero(x), vzero(x)
    t0, t1, t2, t3 = vzero(x), vzero(x), vzero(x), vzero(x)
    j = 0
    while j + 4 * lanes <= whole:
        s0, t0 = _ln_dy_step(x, dy, weight, affine, base, j, mv, s0, t0)
        s1, t1 = _ln_dy_step(x, dy, weight, affine, base, j + lanes, mv, s1, t1)
        s2, t2 = _ln_dy_step(x, dy, weight, affine, base, j + 2 * lanes, mv, s2, t2)
        s3, t3 = _ln_dy_step(x, dy, weight, affine, base, j + 3 * lanes, mv, s3, t3)
        j += 4 * lanes
    while j < whole:
        s0, t0 = _ln_dy_step(x, dy, weight, affine, base, j, mv, s0, t0)
        j += lanes
    # The last partial vector, with no branch (see _ln_x_sums); its empty lanes take
    # dy = 0 and x = m.
    n = cols - whole
    e = vload_part(dy, base + whole, n, vzero(x))
    g = vmul(e, vload_part(weight, whole, n, vzero(x))) if affine else e
    s1 = vadd(s1, g)
    t1 = vfma(g, vsub(vload_part(x, base + whole, n, mv), mv), t1)
    return vsum(vadd(vadd(s0, s1), vadd(s2, s3))), vsum(vadd(vadd(t0, t1), vadd(t2, t3)))


@kernel(inline="always", **_SUM_FLAGS)
def _ln_row_coefs(x, dy, weight, r, cols, mean, rstd):
    """Row ``r``'s ``(m, r, b, c)`` of ``dx = r * g + b * (x - m) + c`` (affine), in
    the data's dtype."""
    dt = x.dtype.type
    m = dt(mean[r])
    rs = rstd[r]
    s1, s2 = _ln_dy_sums(x, dy, weight, True, r, cols, m)
    b, c = _ln_dx_coefs(s1, s2, rs, cols, dt)
    return m, dt(rs), b, c


@kernel(inline="always", **_SUM_FLAGS)
def _ln_dx_row(x, dy, weight, affine, r, cols, m, rd, b, c, dx, a0, a1):
    """Row ``r`` of ``dx = rd * g + b * (x - m) + c`` (``g = dy * weight``, or ``dy``),
    and with affine parameters the run sums ``a0 += dy * xhat``, ``a1 += dy``. Explicit
    vectors: left to LLVM, a loop storing to three arrays needs more run-time alias
    checks than it allows, and ran scalar."""
    lanes = vlanes(x)
    base = r * cols
    mv, rv, bv, cv = vsplat(m, x), vsplat(rd, x), vsplat(b, x), vsplat(c, x)
    whole = cols - cols % lanes
    for j in range(0, whole, lanes):
        e = vload(dy, base + j)
        xm = vsub(vload(x, base + j), mv)
        g = vmul(e, vload(weight, j)) if affine else e
        vstore(dx, base + j, vadd(vfma(bv, xm, vmul(rv, g)), cv))
        if affine:
            vstore(a0, j, vfma(e, vmul(xm, rv), vload(a0, j)))
            vstore(a1, j, vadd(vload(a1, j), e))
    _ln_dx_tail(x, dy, weight, affine, r, cols, whole, m, rd, b, c, dx, a0, a1)


@kernel(inline="always", **_SUM_FLAGS)
def _ln_dx_quad(x, dy, weight, r, cols, m, rd, b, c, dx, a0, a1):
    """:func:`_ln_dx_row` (with affine parameters) for rows ``r:r+4`` at once;
    ``m, rd, b, c`` are 4-tuples of those rows' coefficients. Each column vector's run
    sums are loaded once, take the four rows in order (the same operations in the same
    order as four calls of :func:`_ln_dx_row`, so the same bits) and are stored once:
    per element, 2.75 loads and 1.5 stores instead of 5 and 3 (256 x 1024 backward,
    one thread: 0.77x the time in the median over random array offsets).

    All of a step's loads come before its stores. Rows of 1024 float32 are 4 KiB apart,
    so row ``r + 1``'s ``dy`` can sit at the same address modulo 4 KiB as row ``r``'s
    ``dx``: loaded after that store, it waits for it (4K aliasing)."""
    lanes = vlanes(x)
    whole = cols - cols % lanes
    b0, b1, b2, b3 = r * cols, (r + 1) * cols, (r + 2) * cols, (r + 3) * cols
    m0, m1, m2, m3 = vsplat(m[0], x), vsplat(m[1], x), vsplat(m[2], x), vsplat(m[3], x)
    r0, r1, r2, r3 = vsplat(rd[0], x), vsplat(rd[1], x), vsplat(rd[2], x), vsplat(rd[3], x)
    bb0, bb1, bb2, bb3 = vsplat(b[0], x), vsplat(b[1], x), vsplat(b[2], x), vsplat(b[3], x)
    c0, c1, c2, c3 = vsplat(c[0], x), vsplat(c[1], x), vsplat(c[2], x), vsplat(c[3], x)
    for j in range(0, whole, lanes):
        wv = vload(weight, j)
        p, q = vload(a0, j), vload(a1, j)
        e0, e1 = vload(dy, b0 + j), vload(dy, b1 + j)
        e2, e3 = vload(dy, b2 + j), vload(dy, b3 + j)
        x0, x1 = vload(x, b0 + j), vload(x, b1 + j)
        x2, x3 = vload(x, b2 + j), vload(x, b3 + j)
        d0, p, q = _ln_dx_slot(e0, vsub(x0, m0), vmul(e0, wv), r0, bb0, c0, p, q)
        d1, p, q = _ln_dx_slot(e1, vsub(x1, m1), vmul(e1, wv), r1, bb1, c1, p, q)
        d2, p, q = _ln_dx_slot(e2, vsub(x2, m2), vmul(e2, wv), r2, bb2, c2, p, q)
        d3, p, q = _ln_dx_slot(e3, vsub(x3, m3), vmul(e3, wv), r3, bb3, c3, p, q)
        vstore(dx, b0 + j, d0)
        vstore(dx, b1 + j, d1)
        vstore(dx, b2 + j, d2)
        vstore(dx, b3 + j, d3)
        vstore(a0, j, p)
        vstore(a1, j, q)
    for k in range(4):
        _ln_dx_tail(x, dy, weight, True, r + k, cols, whole, m[k], rd[k], b[k], c[k], dx,
                    a0, a1)


@kernel(inline="always", **_SUM_FLAGS)
def _ln_dx_step(x, dy, base, j, wv, mv, rv, bv, cv, p, q, dx):
    """One vector of :func:`_ln_dx_columns` (row offset ``base``, column ``j``): stores
    its ``dx`` and returns the run sums ``(p, q)`` it added to."""
    e = vload(dy, base + j)
    d, p, q = _ln_dx_slot(e, vsub(vload(x, base + j), mv), vmul(e, wv), rv, bv, cv, p, q)
    vstore(dx, base + j, d)
    return p, q


@kernel(**_SUM_FLAGS)
def _ln_dx_columns(x, dy, weight, lo, hi, j, coefs, dx, a0, a1):
    """:func:`_ln_dx_row` (with affine parameters) for rows ``lo:hi`` of the
    :data:`LN_BLOCK_VECTORS` vectors of columns from ``j``, row after row; row ``r``'s
    ``(m, r, b, c)`` are ``coefs[r - lo]``.

    The block's weight and run sums stay in 24 vector registers for all the rows, so
    each element costs two vector loads and one store (``x``, ``dy``; ``dx``), against
    2.75 and 1.5 in :func:`_ln_dx_quad`, whose run sums go through memory every four
    rows. Zen 4 loads one 512-bit vector a cycle and runs one FMA and one add, and that
    loop waited on its loads (in L1: 3.7 cycles per vector for the three loads of the
    row sums, 7.9 per row and vector for the four-row loop). Same operations in the
    same order per element and per run sum as :func:`_ln_dx_row`, so the same bits."""
    cols = x.shape[1]
    n = vlanes(x)
    w0, w1, w2, w3 = vload(weight, j), vload(weight, j + n), vload(weight, j + 2 * n), \
        vload(weight, j + 3 * n)
    w4, w5, w6, w7 = vload(weight, j + 4 * n), vload(weight, j + 5 * n), \
        vload(weight, j + 6 * n), vload(weight, j + 7 * n)
    p0, p1, p2, p3 = vload(a0, j), vload(a0, j + n), vload(a0, j + 2 * n), vload(a0, j + 3 * n)
    p4, p5, p6, p7 = vload(a0, j + 4 * n), vload(a0, j + 5 * n), vload(a0, j + 6 * n), \
        vload(a0, j + 7 * n)
    q0, q1, q2, q3 = vload(a1, j), vload(a1, j + n), vload(a1, j + 2 * n), vload(a1, j + 3 * n)
    q4, q5, q6, q7 = vload(a1, j + 4 * n), vload(a1, j + 5 * n), vload(a1, j + 6 * n), \
        vload(a1, j + 7 * n)
    for r in range(lo, hi):
        base = r * cols
        k = r - lo
        mv, rv = vsplat(coefs[k, 0], x), vsplat(coefs[k, 1], x)
        bv, cv = vsplat(coefs[k, 2], x), vsplat(coefs[k, 3], x)
        p0, q0 = _ln_dx_step(x, dy, base, j, w0, mv, rv, bv, cv, p0, q0, dx)
        p1, q1 = _ln_dx_step(x, dy, base, j + n, w1, mv, rv, bv, cv, p1, q1, dx)
        p2, q2 = _ln_dx_step(x, dy, base, j + 2 * n, w2, mv, rv, bv, cv, p2, q2, dx)
        p3, q3 = _ln_dx_step(x, dy, base, j + 3 * n, w3, mv, rv, bv, cv, p3, q3, dx)
        p4, q4 = _ln_dx_step(x, dy, base, j + 4 * n, w4, mv, rv, bv, cv, p4, q4, dx)
        p5, q5 = _ln_dx_step(x, dy, base, j + 5 * n, w5, mv, rv, bv, cv, p5, q5, dx)
        p6, q6 = _ln_dx_step(x, dy, base, j + 6 * n, w6, mv, rv, bv, cv, p6, q6, dx)
        p7, q7 = _ln_dx_step(x, dy, base, j + 7 * n, w7, mv, rv, bv, cv, p7, q7, dx)
    _store_4(a0, j, n, p0, p1, p2, p3)
    _store_4(a0, j + 4 * n, n, p4, p5, p6, p7)
    _store_4(a1, j, n, q0, q1, q2, q3)
    _store_4(a1, j + 4 * n, n, q4, q5, q6, q7)


@kernel(inline="always", **_SUM_FLAGS)
def _ln_dx_tail(x, dy, weight, affine, r, cols, lo, m, rd, b, c, dx, a0, a1):
    """Columns ``lo:cols`` of :func:`_ln_dx_row` for row ``r``, one at a time."""
    for j in range(lo, cols):
        e = dy[r, j]
        xm = x[r, j] - m
        g = e * weight[j] if affine else e
        dx[r, j] = b * xm + rd * g + c
        if affine:
            a0[j] += e * (xm * rd)
            a1[j] += e


@kernel(inline="always", **_SUM_FLAGS)
def _ln_dx_slot(e, xm, g, rv, bv, cv, p, q):
    """One vector of :func:`_ln_backward_narrow` and :func:`_ln_dx_quad`:
    ``(dx, p + e * xm * r, q + e)`` with
    ``dx = r * g + b * (x - m) + c`` (the arithmetic of :func:`_ln_dx_row`)."""
    return vadd(vfma(bv, xm, vmul(rv, g)), cv), vfma(e, vmul(xm, rv), p), vadd(q, e)


@kernel(**_SUM_FLAGS)
def _ln_backward_narrow(x, dy, lo, hi, weight, affine, mean, rstd, need_dx, dx, a0, a1,
                        pw, pb):
    """:func:`_ln_backward_rows` for rows of at most :data:`LN_NARROW_VECTORS` vectors.

    Each row's ``x`` and ``dy`` are loaded once into four vector slots (masked loads;
    empty lanes hold ``dy = 0``, ``x = m``), which give both of its sums (in the order
    of :func:`_ln_forward_narrow`) and then its ``dx``. The parameter run sums
    (``p = sum dy * xhat``, ``q = sum dy``, in the data's dtype over :data:`RUN_ROWS`
    rows, as in the general path) stay in registers; at the end of a run they go
    through ``a0``, ``a1`` into the float64 partials ``pw``, ``pb``. The weight stays in
    registers too. On (16384, 64) float32 the general path's two sweeps per row, with
    the run sums in memory, took 1.4-1.5x as long.
    """
    cols = x.shape[1]
    dt = x.dtype.type
    zero = vzero(x)
    # Without affine parameters g = dy * 1 = dy, bit for bit.
    w0, w1, w2, w3 = _param_slots(weight, cols, affine, vsplat(dt(1), x))
    if affine:
        _start_runs(a0, a1, pw, pb)
    for start in range(lo, hi, RUN_ROWS):
        p0, p1, p2, p3 = zero, zero, zero, zero
        q0, q1, q2, q3 = zero, zero, zero, zero
        for r in range(start, min(start + RUN_ROWS, hi)):
            base = r * cols
            m = dt(mean[r])
            mv = vsplat(m, x)
            e0, e1, e2, e3 = _load_slots(dy, base, cols, zero)
            x0, x1, x2, x3 = _load_slots(x, base, cols, mv)
            xm0, xm1, xm2, xm3 = vsub(x0, mv), vsub(x1, mv), vsub(x2, mv), vsub(x3, mv)
            g0, g1, g2, g3 = vmul(e0, w0), vmul(e1, w1), vmul(e2, w2), vmul(e3, w3)
            s1 = vsum(vadd(vadd(g0, g1), vadd(g2, g3)))
            s2 = vsum(vadd(vadd(vmul(g0, xm0), vmul(g1, xm1)),
                           vadd(vmul(g2, xm2), vmul(g3, xm3))))
            rs = rstd[r]
            b, c = _ln_dx_coefs(s1, s2, rs, cols, dt)
            rv, bv, cv = vsplat(dt(rs), x), vsplat(b, x), vsplat(c, x)
            d0, p0, q0 = _ln_dx_slot(e0, xm0, g0, rv, bv, cv, p0, q0)
            d1, p1, q1 = _ln_dx_slot(e1, xm1, g1, rv, bv, cv, p1, q1)
            d2, p2, q2 = _ln_dx_slot(e2, xm2, g2, rv, bv, cv, p2, q2)
            d3, p3, q3 = _ln_dx_slot(e3, xm3, g3, rv, bv, cv, p3, q3)
            if need_dx:
                _store_slots(dx, base, cols, d0, d1, d2, d3)
        if affine:
            _store_slots(a0, 0, cols, p0, p1, p2, p3)
            _store_slots(a1, 0, cols, q0, q1, q2, q3)
            _flush_runs(a0, a1, pw, pb)


@kernel(**_SUM_FLAGS)
def _ln_backward_rows(x, dy, lo, hi, weight, affine, mean, rstd, need_dx, dx, a0, a1,
                      pw, pb, coefs):
    """Rows ``lo:hi``: ``dx`` per row, and (affine) this chunk's float64 partial column
    sums ``pw = sum dy * xhat``, ``pb = sum dy``.

    Per row, two loops over the row (the second reads it from L1): ``s1 = sum g`` and
    ``s2 = sum g * (x - m)`` (``g = dy * weight``) in the data's dtype, as PyTorch does
    (these feed only that row's ``dx``; float64 conversions would make this loop
    compute-bound), as explicit vectors in a fixed order (:func:`_ln_dy_sums`; why, in
    :func:`_ln_forward_rows`), then ``dx`` (:func:`_ln_dx_row`). With affine parameters
    their sums ride along in that second loop, in runs of :data:`RUN_ROWS` rows in the
    data's dtype (``a0 += dy * xhat``, ``a1 += dy``) added into ``pw``, ``pb``, as in
    :func:`_bn_x_sums`. This one sweep replaced a second one over the chunk for the
    parameter sums (float64 accumulators, four rows at a time): 1.4-1.6x faster on
    256 x 1024. With AVX-512, that second loop takes four rows at once
    (:func:`_ln_dx_quad`), so the run sums are loaded and stored once per four rows;
    and where rows are at least :data:`LN_BLOCK_MIN_ROW_BYTES` long and a whole number
    of column blocks (:data:`LN_BLOCK_VECTORS` vectors), a run's rows first get their
    coefficients (into ``coefs``), then ``dx`` goes column block by column block down
    the run (:func:`_ln_dx_columns`), the block's weight and run sums in registers:
    (256, 1024) float32 backward, 0.92x the time on one thread, 0.94x on two (same
    bits: each element and each run sum sees the same operations in the same order).
    Widths with a remainder keep the four-row loop: on (1024, 200), blocks and then
    the rest the old way took 1.1x the time.

    The order depends on ``lo`` and ``hi`` only. Rows are indexed directly, as in
    :func:`_ln_forward_rows`. Rows of at most :data:`LN_NARROW_VECTORS` vectors take
    :func:`_ln_backward_narrow` instead (chosen by the width alone).
    """
    cols = x.shape[1]
    if cols <= LN_NARROW_VECTORS * vlanes(x):
        _ln_backward_narrow(x, dy, lo, hi, weight, affine, mean, rstd, need_dx, dx, a0,
                            a1, pw, pb)
        return
    dt = x.dtype.type
    quads = _four_rows_at_once(x)
    block = LN_BLOCK_VECTORS * vlanes(x)
    if affine:
        _start_runs(a0, a1, pw, pb)
    if (need_dx and affine and quads and cols % block == 0
            and cols * x.itemsize >= LN_BLOCK_MIN_ROW_BYTES):
        # A run's coefficients first (each row's sums), then its dx in column blocks.
        for start in range(lo, hi, RUN_ROWS):
            end = min(start + RUN_ROWS, hi)
            for r in range(start, end):
                m, rd, b, c = _ln_row_coefs(x, dy, weight, r, cols, mean, rstd)
                k = r - start
                coefs[k, 0], coefs[k, 1], coefs[k, 2], coefs[k, 3] = m, rd, b, c
            for j in range(0, cols, block):
                _ln_dx_columns(x, dy, weight, start, end, j, coefs, dx, a0, a1)
            _flush_runs(a0, a1, pw, pb)
    elif need_dx and affine:
        for start in range(lo, hi, RUN_ROWS):
            end = min(start + RUN_ROWS, hi)
            r = start
            while quads and r + 4 <= end:
                m0, r0, b0, c0 = _ln_row_coefs(x, dy, weight, r, cols, mean, rstd)
                m1, r1, b1, c1 = _ln_row_coefs(x, dy, weight, r + 1, cols, mean, rstd)
                m2, r2, b2, c2 = _ln_row_coefs(x, dy, weight, r + 2, cols, mean, rstd)
                m3, r3, b3, c3 = _ln_row_coefs(x, dy, weight, r + 3, cols, mean, rstd)
                _ln_dx_quad(x, dy, weight, r, cols, (m0, m1, m2, m3), (r0, r1, r2, r3),
                            (b0, b1, b2, b3), (c0, c1, c2, c3), dx, a0, a1)
                r += 4
            while r < end:
                m, rd, b, c = _ln_row_coefs(x, dy, weight, r, cols, mean, rstd)
                _ln_dx_row(x, dy, weight, True, r, cols, m, rd, b, c, dx, a0, a1)
                r += 1
            _flush_runs(a0, a1, pw, pb)
    elif need_dx:
        for r in range(lo, hi):
            m = dt(mean[r])
            rs = rstd[r]
            s1, s2 = _ln_dy_sums(x, dy, weight, False, r, cols, m)
            b, c = _ln_dx_coefs(s1, s2, rs, cols, dt)
            _ln_dx_row(x, dy, weight, False, r, cols, m, dt(rs), b, c, dx, a0, a1)
    elif affine:
        for start in range(lo, hi, RUN_ROWS):
            for r in range(start, min(start + RUN_ROWS, hi)):
                m = dt(mean[r])
                rd = dt(rstd[r])
                for j in range(cols):
                    e = dy[r, j]
                    a0[j] += e * ((x[r, j] - m) * rd)
                    a1[j] += e
            _flush_runs(a0, a1, pw, pb)


@kernel
def _ln_param_grads(partials, dweight, dbias):
    """``dweight``, ``dbias`` from the tree's totals in ``partials[0]``."""
    p0, p1 = partials[0, 0], partials[0, 1]
    for j in range(dweight.shape[0]):
        dweight[j] = p0[j]
        dbias[j] = p1[j]


@kernel
def _ln_backward_part(x, dy, p, nparts, weight, affine, mean, rstd, need_dx, dx,
                      partials, acc, coefs, chunk):
    """Part ``p`` (:func:`_part`) of layer norm backward: its row chunks, then (affine)
    the tree's nodes within them."""
    n = x.shape[0]
    nchunks = (n + chunk - 1) // chunk
    c0, c1 = _part(nchunks, nparts, p)
    for c in range(c0, c1):
        lo = c * chunk
        _ln_backward_rows(x, dy, lo, min(lo + chunk, n), weight, affine, mean, rstd,
                          need_dx, dx, acc[c, 0], acc[c, 1], partials[c, 0],
                          partials[c, 1], coefs[c])
    if affine:
        _fold_inside(partials, nchunks, c0, c1)


@parallel_kernel
def _ln_backward_parallel(x, dy, weight, affine, mean, rstd, need_dx, dx, partials,
                          acc, coefs, chunk, nparts, dweight, dbias):
    """``prange`` over ``nparts`` parts of the row chunks (chunk ``c`` writes its rows
    of ``dx`` and ``partials[c]`` only; a part folds only its own chunks), then the rest
    of the tree and the parameter gradients on the calling thread."""
    nchunks = (x.shape[0] + chunk - 1) // chunk
    parts = min(nparts, nchunks)
    for p in numba.prange(parts):
        _ln_backward_part(x, dy, p, parts, weight, affine, mean, rstd, need_dx, dx,
                          partials, acc, coefs, chunk)
    if affine:
        _fold_across(partials, nchunks, 1, parts)
        _ln_param_grads(partials, dweight, dbias)


@kernel
def _ln_backward_serial(x, dy, weight, affine, mean, rstd, need_dx, dx, partials,
                        acc, coefs, chunk, nparts, dweight, dbias):
    """Serial twin of :func:`_ln_backward_parallel` (one part: the same chunks, tree
    and result); ``nparts`` is ignored."""
    _ln_backward_part(x, dy, 0, 1, weight, affine, mean, rstd, need_dx, dx, partials,
                      acc, coefs, chunk)
    if affine:
        _ln_param_grads(partials, dweight, dbias)


def layer_norm_forward(x: np.ndarray, eps: float, weight: np.ndarray | None,
                       bias: np.ndarray | None, y: np.ndarray, mean: np.ndarray,
                       rstd: np.ndarray, threads: int | None = None) -> None:
    """Layer norm of each row of ``x``; unchecked.

    Args:
        x: ``(rows, C)`` C-contiguous float32/float64.
        eps: added to the variance.
        weight, bias: ``(C,)`` in ``x``'s dtype, or both ``None``.
        y: ``(rows, C)`` like ``x``; receives the output.
        mean, rstd: ``(rows,)`` float64; receive each row's mean and ``invstd``, which
            :func:`layer_norm_backward` reads.
        threads: as in :func:`batch_norm_forward`.

    Rows are independent: the same result on the parallel (at :data:`PARALLEL_MIN`
    elements and above, more than one thread) and serial paths, for any thread count.
    """
    affine = weight is not None
    one = _STAND_INS[x.dtype][0]
    run = _ln_forward_parallel if _parts(x, threads) > 1 else _ln_forward_serial
    run(x, eps, one if weight is None else weight, one if bias is None else bias, affine,
        y, mean, rstd, chunk_rows(x.shape[0], x.shape[1]))


def layer_norm_backward(x: np.ndarray, dy: np.ndarray, weight: np.ndarray | None,
                        mean: np.ndarray, rstd: np.ndarray, partials: np.ndarray,
                        acc: np.ndarray, coefs: np.ndarray,
                        dweight: np.ndarray | None, dbias: np.ndarray | None,
                        dx: np.ndarray | None, threads: int | None = None) -> None:
    """Gradients of :func:`layer_norm_forward`; unchecked.

    Args:
        x, weight, mean, rstd: as given to and left by the forward.
        dy: ``(rows, C)``, d(loss)/dy.
        partials: from ``norm_partials(rows, C)``; acc: from
            ``norm_partials(rows, C, x.dtype)``; both overwritten (used only with a
            weight).
        coefs: from ``ln_coefs(rows, C, x.dtype)``; overwritten (each run's row
            coefficients, with a weight and ``dx``).
        dweight, dbias: ``(C,)``; receive the parameter gradients, or ``None`` (no affine).
        dx: ``(rows, C)`` receives d(loss)/dx, or ``None`` to skip it.
        threads: as in :func:`batch_norm_forward`.
    """
    affine = weight is not None
    one, two = _STAND_INS[x.dtype]
    parts = _parts(x, threads)
    run = _ln_backward_parallel if parts > 1 else _ln_backward_serial
    run(x, dy, one if weight is None else weight, affine, mean, rstd, dx is not None,
        two if dx is None else dx, partials, acc, coefs,
        chunk_rows(x.shape[0], x.shape[1]), parts,
        one if dweight is None else dweight, one if dbias is None else dbias)
