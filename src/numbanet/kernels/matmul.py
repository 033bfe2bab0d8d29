"""Blocked, packed, parallel GEMM written in Numba, with a fused bias + activation epilogue.

``matmul(a, b, out, transpose_a, transpose_b)`` computes ``out = op(a) @ op(b)`` and
``dense_forward(x, w, bias, z, y, act_id, param)`` computes ``z = x @ w + bias`` and
``y = act(z)``, both without BLAS. The structure follows the GotoBLAS/BLIS recipe:

1. **Pack** ``op(a)`` into panels of ``MR`` rows and ``op(b)`` into panels of ``NR``
   columns, one ``KC`` block of ``k`` at a time, laid out so the micro-kernel reads
   both with unit stride (``[k][MR]`` and ``[k][NR]``). Panels at the matrix edge are
   padded, so the micro-kernel always computes a full tile. Transposes are absorbed
   here: the four ``op`` combinations differ only in how a panel is gathered, and
   everything after packing is shared.
2. **Compute** the output in macro tiles of ``MR * mb`` rows by ``NR * nb`` columns (the
   parallel tasks). A task packs what it needs itself, BLIS style, into its thread's
   private slot of the workspace: for each ``KC`` block it packs its ``mb`` A panels
   (kept in L2), then for each of its B panels packs that panel (kept in L1) and runs
   the micro-kernel over the A panels with it.
3. The **micro-kernel** holds an ``MR x NR`` tile of the output in ``MR * 2`` vector
   registers and performs one broadcast-FMA per register per step of ``k`` (see
   :mod:`numbanet.kernels._simd`). With AVX-512 that is 12 x 32 float32 or 12 x 16
   float64 on 24 zmm registers; on other CPUs 6 x 16 float32 or 6 x 8 float64 on 12
   256-bit registers. A last column panel with at most one vector of valid columns (the
   4 past 96 of a 100-wide float64 output) runs a tile one vector wide instead
   (:mod:`numbanet.kernels._tiles`, the same sums for those columns).
4. After the last ``KC`` block of a tile, the **epilogue** adds the bias and applies
   ReLU (or the identity) to the tile's row segments while they are still in L1, or
   (backward) multiplies them by ReLU's derivative (see :func:`gemm_into`). Other
   elementwise activations (tanh, GELU, ...) take one vectorised pass of their own
   right after the product, through :mod:`numbanet.kernels.activations`: compiling the
   whole activation table into the GEMM's kernels cost about 2.8 s of a cold start
   (17.4 -> 14.6 s for the first step of a ReLU MLP, which never used it), while the
   separate pass re-reads an output that is still in cache.

A narrow output (a classifier's 10 columns) would waste most of each register tile's
``NR`` columns, so its plan tiles the transpose ``out.T = op(b).T @ op(a).T`` instead
and transposes the small result back (``GemmPlan.swap``). An output of at most
``NARROW_N`` columns (a regressor's or a binary classifier's single output) skips the
packed path altogether: each element is a dot product of contiguous rows
(``GemmPlan.narrow``, :func:`_narrow_gemm`). A serial product of at most ``SMALL_K``
steps of ``k`` (a tabular model's first layer, a classifier head's input gradient), where
packing and the epilogue's second pass over each tile cost as much as the FMAs, reads
``op(a)`` in place and applies the epilogue from the registers (``GemmPlan.small_k``,
:func:`_small_k_gemm`), with the same bits as the packed path.

Parallel contract: one ``prange`` loop per call (one fork/join), over the macro tiles.
Each iteration writes a disjoint rectangle of ``out`` (and ``y``) and the slot of the
thread running it (``numba.get_thread_id()``: a thread runs one iteration at a time),
and only reads ``a``, ``b`` and ``bias``, so it is race-free. Packing a panel in every
task that needs it costs some redundant copying (A panels once per column block of
tasks, B panels once per row block), measured cheaper on 2 cores than a separate
packing region, its second fork/join and tasks reading panels from the other core's
cache (1.1-1.6x faster at the training shapes). The summation order for an output
element depends only on the shapes, never on the thread count: results are bitwise
identical for any number of threads.

Below ``SERIAL_WORK`` multiply-adds (``m * n * k``) the serial twin runs instead, so tiny
products do not wake the thread pool.

NaN and infinity propagate as in ``numpy.matmul`` (an output element only ever sums
products of its own row of ``op(a)`` and column of ``op(b)``; padding rows and columns
feed only padding results, which are discarded). Results agree with numpy to
rounding; the summation order differs (FMA, blocked), as between BLAS libraries.

Development note: the cached kernels of this module embed code from
:mod:`numbanet.kernels._simd`, while Numba's own
disk cache watches only this file (numba issue #1833); :mod:`numbanet._kernel_cache`
stamps each cached kernel with a hash of the modules it imports, so editing those
modules recompiles these kernels by itself.
"""

from __future__ import annotations

import functools
import threading
from typing import NamedTuple

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from numbanet._jit import kernel, parallel_kernel
from numbanet._validation import Integer, check_arg, check_float_array
from numbanet.kernels._simd import (
    LANES_FLOAT32,
    WIDE_VECTORS,
    lanes_for,
    prefetch,
    sload,
    sstore,
    transpose_copy,
    vadd,
    vbroadcast,
    vcopy_masked,
    vfma,
    vkeep_where_positive,
    vlanes,
    vload,
    vload_part,
    vrelu,
    vstore,
    vstore_part,
    vzero,
)
from numbanet.kernels._tiles import (
    _tile_2x1,
    _tile_2x2,
    _tile_4x1,
    _tile_4x2,
    _tile_6x1,
    _tile_6x2,
    _tile_8x1,
    _tile_8x2,
    _tile_12x1,
    _tile_12x2,
)
from numbanet.kernels.activations import (
    ACTIVATION_IDS,
    IDENTITY,
    RELU,
    elementwise_forward_unchecked,
)

__all__ = [
    "CACHED_WORKSPACE_LIMIT",
    "GemmPlan",
    "KC",
    "MR",
    "SERIAL_WORK",
    "dense_forward",
    "gemm_into",
    "gemm_plan",
    "kc_for",
    "matmul",
]

#: Rows of the micro-kernel's register tile (12 with AVX-512, else 6).
MR = 12 if WIDE_VECTORS else 6
_MR_TWO_THIRDS = 2 * MR // 3
_MR_THIRD = MR // 3
#: Vectors per row of the register tile: NR = NV * lanes (32 float32, 16 float64).
NV = 2
#: Steps of ``k`` per packed block, float32 (float64 uses ``KC // 2``, the same bytes):
#: a B micro-panel (KC x NR, 32 KiB) and an A micro-panel (MR x KC) fit in a 48 KiB L1
#: together, so the B panel survives the sweep over A panels.
KC = 256


def kc_for(dtype: object) -> int:
    """The k-block length for ``dtype`` or an array of it (256 float32, 128 float64)."""
    return KC * 4 // np.dtype(dtype.dtype if isinstance(dtype, np.ndarray) else dtype).itemsize


@overload(kc_for)
def _kc_for_overload(dtype):
    # Called in kernels with an array: kc_for(work).
    if isinstance(dtype, types.Array):
        kc = KC * 4 // (dtype.dtype.bitwidth // 8)
        return lambda dtype: kc
    return None
#: Below this many multiply-adds (m * n * k), run the serial twin. 2**21: products of 1-2
#: million multiply-adds gained at most 1.35x from a second thread back to back, and lost
#: inside a training step, where the pool sleeps between products (scikit-learn's digits
#: MLP, 200x64 @ 64x100 and its gradients, 1.28M each: a 200-epoch fit took 0.18 s on
#: 2 threads, 0.12 s on one). The standard benchmark MLPs' products are all outside
#: the 1-2 million range.
SERIAL_WORK = 1 << 21
# Largest macro tile, in panels (MB * MR rows by NB * NR columns): with KC = 256 the A
# block a task packs (32 * 12 * 256 floats, 384 KiB) stays in a 2 MiB L2 while it is
# swept with each B panel (in L1). Measured with 2 threads, float32: 512x1024x1024 ran
# 0.92-0.96x numpy with at most 16 A panels per task and 0.99-1.03x with 32.
_MAX_MB = 32
_MAX_NB = 16
# Planner cost model, in units of one full micro-tile over all of k: per task, and per
# A panel a task packs (and per B panel: _B_TO_A_COST * NR / MR times that, by bytes
# per step of k). Every task packs the panels it uses, so a panel shared by several
# tasks is packed by each of them. An A panel costs more per byte (a transpose unless
# transpose_a; B is a plain copy unless transpose_b): with equal per-byte costs the
# planner split N for 256x784x256 and 256x128x256, measured 0.1x slower than
# splitting M.
_TASK_COST = 0.5
_A_PANEL_COST = 0.8
_B_TO_A_COST = 0.5
# Tasks per thread, at least (when the shape allows). One: on 2 idle cores, two big
# tasks beat four smaller ones (dW2 256x256x128 float32: 0.89-0.98x -> 1.01-1.08x
# numpy), as each task repacks the panels it shares with others. The price: with one
# core taken by another process, a single task per thread cannot be shed.
_MIN_TASKS_PER_THREAD = 1
# No epilogue (plain matmul) is encoded as act_id = -1.
_NO_ACTIVATION = -1


# ---------------------------------------------------------------------------------------
# Micro-kernels: register tiles rendered by numbanet.kernels._gen_tiles
# ---------------------------------------------------------------------------------------

# The register tile for the target: 12 x 2 vectors (24 of the 32 zmm registers) with
# AVX-512, 6 x 2 vectors (12 of the 16 ymm registers) otherwise. The shorter kernels
# serve the last A panel when it has at most 2/3 or 1/3 of MR valid rows.
# A last column panel with at most one vector of valid columns takes the same row
# counts one vector wide: half the FMAs of a padded full tile, and the same sums for its
# valid columns (each output element is the same FMA chain over k). A 100-column float64
# output: 7 panels of 16 cost 31.8 us at 100 x 64 x 100, as much as 112 columns
# (34.4 us); 96 columns took 27.7.
# Every tile reads the packed panels through constant strides (A rows 1 apart, steps MR
# apart; B rows NR apart), passed at its one call site in _macro_tile, where it is
# inlined: the loop compiles as if the strides were written into it.
if WIDE_VECTORS:
    _kernel_full, _kernel_two_thirds, _kernel_third = _tile_12x2, _tile_8x2, _tile_4x2
    _edge_full, _edge_two_thirds, _edge_third = _tile_12x1, _tile_8x1, _tile_4x1
else:
    _kernel_full, _kernel_two_thirds, _kernel_third = _tile_6x2, _tile_4x2, _tile_2x2
    _edge_full, _edge_two_thirds, _edge_third = _tile_6x1, _tile_4x1, _tile_2x1


# ---------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------


@kernel
def _pack_a_block(a, transpose_a, ip, m, k, k0, kcb, wa, dst):
    """Pack rows ``ip*MR .. ip*MR+MR`` of ``op(a)``, steps ``k0 .. k0+kcb`` of ``k``, into
    the ``[kcb][MR]`` panel at ``wa.flat[dst:]``.

    Rows past ``m`` are padding: zero, or copies of the last valid row; they only ever
    meet output rows that are discarded. Serial. Flat offsets go through the ``_simd``
    intrinsics, which skip the per-access wraparound check that keeps computed indices
    scalar (Numba checks every computed signed index for negative wraparound).
    """
    lanes = vlanes(wa)
    i0 = ip * MR
    mr = min(MR, m - i0)
    if mr < MR:
        # Zero the padding rows: stale workspace bytes could be subnormal, and
        # FMAs on subnormals take microcode assists (10x slower tiny products).
        for i in range(MR * kcb):
            sstore(wa, dst + i, 0)
    if transpose_a and mr == MR and lanes >= MR:
        # a is (k, m), a full panel within one vector: one masked copy of MR values per
        # step of k, with a mask fixed at compile time (packing 8.0 -> 9.5 Gelem/s for a
        # 256 x 784 source; dW GEMMs 0-5% faster).
        src = k0 * m + i0
        d = dst
        for _ in range(kcb):
            vcopy_masked(a, src, wa, d, MR)
            src += m
            d += MR
    elif transpose_a:
        # a is (k, m): each step of k is a contiguous run of mr values.
        for kk in range(kcb):
            src = (k0 + kk) * m + i0
            d = dst + kk * MR
            for g in range(0, mr, lanes):
                vcopy_masked(a, src + g, wa, d + g, min(lanes, mr - g))
    else:
        # a is (m, k): transpose lanes x lanes blocks in registers.
        kv = kcb - kcb % lanes
        if mr == MR and lanes >= MR:
            # A full panel is one transpose block: its row count and store width are
            # compile-time constants (1-5% faster GEMMs than the general loop below).
            for kk in range(0, kv, lanes):
                transpose_copy(a, i0 * k + k0 + kk, k, MR, wa, dst + kk * MR, MR, MR)
        else:
            for kk in range(0, kv, lanes):
                for g in range(0, mr, lanes):
                    transpose_copy(a, (i0 + g) * k + k0 + kk, k, min(lanes, mr - g),
                                   wa, dst + kk * MR + g, MR, min(lanes, MR - g))
        for r in range(mr):
            src = (i0 + r) * k + k0
            for kk in range(kv, kcb):
                sstore(wa, dst + kk * MR + r, sload(a, src + kk))


@kernel
def _pack_b_block(b, transpose_b, jp, n, k, k0, kcb, wb, dst):
    """Pack columns ``jp*NR .. jp*NR+NR`` of ``op(b)``, steps ``k0 .. k0+kcb`` of ``k``,
    into the ``[kcb][NR]`` panel at ``wb.flat[dst:]``.

    Columns past ``n`` are padding (zero, or copies of the last valid column; they only
    meet discarded output columns). Serial.
    """
    lanes = vlanes(wb)
    nr = NV * lanes
    j0 = jp * nr
    nn = min(nr, n - j0)
    if nn < nr:
        # Zero the padding columns (see _pack_a_block).
        for i in range(nr * kcb):
            sstore(wb, dst + i, 0)
    if transpose_b:
        # b is (n, k): transpose lanes x lanes blocks in registers.
        kv = kcb - kcb % lanes
        for kk in range(0, kv, lanes):
            for g in range(0, nn, lanes):
                transpose_copy(b, (j0 + g) * k + k0 + kk, k, min(lanes, nn - g),
                               wb, dst + kk * nr + g, nr, lanes)
        for j in range(nn):
            src = (j0 + j) * k + k0
            for kk in range(kv, kcb):
                sstore(wb, dst + kk * nr + j, sload(b, src + kk))
    elif nn == nr:
        # b is (k, n) and the panel is full: whole-vector copies.
        for kk in range(kcb):
            src = (k0 + kk) * n + j0
            d = dst + kk * nr
            for v in range(NV):
                vstore(wb, d + v * lanes, vload(b, src + v * lanes))
    else:
        for kk in range(kcb):
            src = (k0 + kk) * n + j0
            d = dst + kk * nr
            for g in range(0, nn, lanes):
                vcopy_masked(b, src + g, wb, d + g, min(lanes, nn - g))


# ---------------------------------------------------------------------------------------
# Macro tile (one parallel task) and epilogue
# ---------------------------------------------------------------------------------------


@kernel(inline="always")
def _epilogue(out, y, z_saved, bias, has_bias, act_id, derivative, i0, mr, j0, nn):
    """Finish the tile ``out[i0:i0+mr, j0:j0+nn]`` right after its last ``k`` block.

    Forward (``derivative`` False): ``out += bias`` (if ``has_bias``) and, for
    ``act_id`` ReLU or identity, ``y = act(out)`` on the same tile (other ids: no
    activation here; :func:`gemm_into` applies them after the product).
    Backward (``derivative`` True, ReLU only): ``out = 0`` where the saved activation
    ``z_saved <= 0`` (read only): the GEMM that makes a layer's input gradient hands
    the layer below the gradient of its pre-activation, with no separate pass over
    memory.

    Full-width tiles take the SIMD path (one load, add, select and store per vector);
    edge tiles go row by row.
    """
    full_width = nn == NV * vlanes(out)
    if full_width and (act_id == RELU or act_id == IDENTITY or act_id < 0):
        _epilogue_vector_tile(out, y, z_saved, bias, has_bias, act_id, derivative, i0, mr, j0)
    else:
        _epilogue_rows(out, y, z_saved, bias, has_bias, act_id, derivative,
                       i0, mr, j0, nn)


@kernel(inline="always")
def _epilogue_vector_tile(out, y, z_saved, bias, has_bias, act_id, derivative, i0, mr, j0):
    """SIMD epilogue of a full-width (``NR`` columns) tile for ReLU, identity or none.

    Same contract as :func:`_epilogue`; two vectors per row (``NV == 2``).
    """
    n = out.shape[1]
    lanes = vlanes(out)
    if derivative:  # ReLU's (gemm_into accepts no other)
        for r in range(mr):
            o = (i0 + r) * n + j0
            vstore(out, o, vkeep_where_positive(vload(z_saved, o), vload(out, o)))
            o1 = o + lanes
            vstore(out, o1, vkeep_where_positive(vload(z_saved, o1), vload(out, o1)))
        return
    if has_bias:
        b0 = vload(bias, j0)
        b1 = vload(bias, j0 + lanes)
    else:
        b0 = vzero(out)
        b1 = vzero(out)
    relu = act_id == RELU
    for r in range(mr):
        o = (i0 + r) * n + j0
        v0 = vadd(vload(out, o), b0)
        v1 = vadd(vload(out, o + lanes), b1)
        vstore(out, o, v0)
        vstore(out, o + lanes, v1)
        if relu:
            vstore(y, o, vrelu(v0))
            vstore(y, o + lanes, vrelu(v1))
        elif act_id == IDENTITY:
            vstore(y, o, v0)
            vstore(y, o + lanes, v1)


@kernel
def _epilogue_rows(out, y, z_saved, bias, has_bias, act_id, derivative,
                   i0, mr, j0, nn):
    """Row-by-row epilogue for any tile width (see :func:`_epilogue`): edge tiles,
    the ``k == 0`` fill and the whole of a swapped (narrow) output."""
    if derivative:
        # ReLU's derivative: zero where the saved activation is <= 0 (PyTorch's
        # threshold_backward: 0 at the kink; NaN passes the gradient on).
        for r in range(mr):
            row = out[i0 + r, j0 : j0 + nn]
            saved = z_saved[i0 + r, j0 : j0 + nn]
            for j in range(nn):
                if saved[j] <= 0:
                    row[j] = 0
        return
    if has_bias:
        bseg = bias[j0 : j0 + nn]
        for r in range(mr):
            zrow = out[i0 + r, j0 : j0 + nn]
            for j in range(nn):
                zrow[j] += bseg[j]
    if act_id == RELU:
        zero = out.dtype.type(0)
        for r in range(mr):
            zrow = out[i0 + r, j0 : j0 + nn]
            yrow = y[i0 + r, j0 : j0 + nn]
            for j in range(nn):
                v = zrow[j]
                # `v < 0` is False for NaN: NaN passes, as in numpy.maximum and vrelu.
                yrow[j] = zero if v < zero else v
    elif act_id == IDENTITY:
        for r in range(mr):
            zrow = out[i0 + r, j0 : j0 + nn]
            yrow = y[i0 + r, j0 : j0 + nn]
            for j in range(nn):
                yrow[j] = zrow[j]


@kernel
def _prefetch_tile(c, oc, ldc, mr):
    """Ask for the cache lines of ``mr`` rows of ``NR`` elements of ``c`` from
    ``c.flat[oc]`` on (row stride ``ldc``), into L2.

    Issued before a micro-kernel call so the lines its final stores (or a derivative
    epilogue's loads) touch arrive during its ``KC`` steps instead of stalling them.
    """
    lanes = vlanes(c)
    for r in range(mr):
        o = oc + r * ldc
        prefetch(c, o, 2)
        prefetch(c, o + lanes, 2)
        prefetch(c, o + 2 * lanes - 1, 2)  # a row segment not aligned to a line spans 3


@kernel
def _slot_size(mb, k, work):
    """Elements of one thread's slot of ``work``: an A block, a B panel, a scratch tile."""
    nr = NV * vlanes(work)
    kce = min(kc_for(work), k)
    return mb * MR * kce + nr * kce + MR * nr


@kernel
def _macro_tile(t, mb, nb, a, transpose_a, b, transpose_b, out, k, slot,
                bias, has_bias, y, z_saved, act_id, derivative):
    """Pack and compute macro tile ``t`` of ``out`` (one parallel task).

    Task ``t`` covers A panels ``(t // n_blocks) * mb ...`` and B panels
    ``(t % n_blocks) * nb ...``; it writes only that rectangle of ``out``/``y`` and
    ``slot``, the calling thread's private part of the workspace (``_slot_size``
    elements): per ``KC`` block it packs its A panels there (kept in L2), then packs
    each B panel (kept in L1) just before sweeping the A panels with it. Operands are
    packed by the thread that uses them, in the same parallel region (no second
    fork/join, no panels read from the other core's cache).
    """
    m, n = out.shape
    lanes = vlanes(slot)
    nr = NV * lanes
    n_pm = (m + MR - 1) // MR
    n_pn = (n + nr - 1) // nr
    n_blocks = (n_pn + nb - 1) // nb
    pi0 = (t // n_blocks) * mb
    pi1 = min(n_pm, pi0 + mb)
    pj0 = (t % n_blocks) * nb
    pj1 = min(n_pn, pj0 + nb)
    kc = kc_for(slot)
    kce = min(kc, k)
    ob = mb * MR * kce
    sc = slot[ob + nr * kce : ob + nr * kce + MR * nr]
    epilogue = has_bias or act_id >= 0
    out_flat = out.reshape(m * n)  # the micro-kernels address out and scratch alike
    for k0 in range(0, k, kc):
        kcb = min(kc, k - k0)
        acc = k0 > 0
        last = k0 + kcb >= k
        for ip in range(pi0, pi1):
            _pack_a_block(a, transpose_a, ip, m, k, k0, kcb, slot, (ip - pi0) * MR * kcb)
        for jp in range(pj0, pj1):
            j0 = jp * nr
            nn = min(nr, n - j0)
            _pack_b_block(b, transpose_b, jp, n, k, k0, kcb, slot, ob)
            for ip in range(pi0, pi1):
                i0 = ip * MR
                mr = min(MR, m - i0)
                oa = (ip - pi0) * MR * kcb
                # A tile whose rows match a kernel and whose columns fill NR goes
                # straight to out; any other edge tile is computed padded into scratch
                # and its valid part copied. Short last panels use a shorter kernel
                # (less padding work). One call site per kernel: each is inlined, so
                # more sites would mean more machine code to compile.
                direct = nn == nr and (mr == MR or mr == _MR_TWO_THIRDS or mr == _MR_THIRD)
                if direct:
                    c, oc, ldc, into = out_flat, i0 * n + j0, n, acc
                    if mr == MR:
                        _prefetch_tile(out_flat, oc, n, MR)
                        if last and derivative:
                            _prefetch_tile(z_saved, oc, n, MR)
                else:
                    c, oc, ldc, into = sc, 0, nr, False
                if nn <= lanes:
                    # One vector of valid columns: a one-vector tile (see _edge_full),
                    # reading the same packed panels (A rows 1 apart, steps MR apart).
                    if mr <= _MR_THIRD:
                        _edge_third(kcb, slot, oa, 1, MR, slot, ob, nr, c, oc, ldc, into)
                    elif mr <= _MR_TWO_THIRDS:
                        _edge_two_thirds(kcb, slot, oa, 1, MR, slot, ob, nr, c, oc, ldc,
                                         into)
                    else:
                        _edge_full(kcb, slot, oa, 1, MR, slot, ob, nr, c, oc, ldc, into)
                elif mr <= _MR_THIRD:
                    _kernel_third(kcb, slot, oa, 1, MR, slot, ob, nr, c, oc, ldc, into)
                elif mr <= _MR_TWO_THIRDS:
                    _kernel_two_thirds(kcb, slot, oa, 1, MR, slot, ob, nr, c, oc, ldc, into)
                else:
                    _kernel_full(kcb, slot, oa, 1, MR, slot, ob, nr, c, oc, ldc, into)
                if not direct:
                    for r in range(mr):
                        orow = out[i0 + r, j0 : j0 + nn]
                        srow = sc[r * nr : r * nr + nn]
                        if acc:
                            for j in range(nn):
                                orow[j] += srow[j]
                        else:
                            for j in range(nn):
                                orow[j] = srow[j]
                if last and epilogue:
                    _epilogue(out, y, z_saved, bias, has_bias, act_id, derivative,
                              i0, mr, j0, nn)


@kernel
def _zero_k_fill(out, y, z_saved, bias, has_bias, act_id, derivative):
    """The ``k == 0`` case: ``out = 0`` (plus the epilogue)."""
    m, n = out.shape
    for i in range(m):
        row = out[i]
        for j in range(n):
            row[j] = 0
    if has_bias or act_id >= 0:
        # np.int64(0), not 0: a literal argument makes Numba compile a second
        # specialization of _epilogue_rows (Literal[int](0)) beside _macro_tile's.
        _epilogue_rows(out, y, z_saved, bias, has_bias, act_id, derivative,
                       np.int64(0), m, np.int64(0), n)


#: Outputs with at most this many columns take :func:`_narrow_gemm` (a binary
#: classifier's or a regressor's single output, a 3-class head): the packed path pads them
#: to a full register tile and packs all of ``op(a)`` for a few dot products.
NARROW_N = 4


@kernel
def _narrow_gemm(a, b, out, transpose_a, transpose_b, work,
                 bias, has_bias, y, z_saved, act_id, derivative):
    """``out = op(a) @ op(b)`` for ``n <= NARROW_N`` output columns, then the epilogue.

    Shapes and arguments as :func:`_gemm_serial` (``k >= 1``); ``work`` holds at least
    ``NARROW_N * k + NARROW_N * m`` elements. ``op(b)`` is first copied to
    ``NARROW_N`` contiguous rows of ``k`` (rows past ``n`` zero, a few KB). Without
    ``transpose_a`` each row of ``a`` is read once for all its outputs: four dot
    products share its loads (``reassoc`` lets LLVM split each sum over lanes). With
    ``transpose_a`` (a gradient ``x.T @ dz``) the rows of ``a`` are streamed in groups
    of four, ``acc[j, :] += sum_q op(b)[p+q, j] * a[p+q, :]`` (SIMD over ``m``): one
    load and store of ``acc`` per four rows instead of per row; ``acc`` is then
    transposed into ``out``. A single column (a regressor's output) takes one-column
    loops instead of four. Serial: a narrow product is a few microseconds of work, less
    than a parallel region's fork and join. Each output's summation order depends only
    on the shape, so results are the same on every call.
    """
    m, n = out.shape
    k = a.shape[0] if transpose_a else a.shape[1]
    rows = 1 if n == 1 else NARROW_N
    bt = work[: rows * k].reshape((rows, k))
    for j in range(rows):
        for p in range(k):
            if j >= n:
                bt[j, p] = 0.0
            else:
                bt[j, p] = b[j, p] if transpose_b else b[p, j]
    if transpose_a:
        acc = work[rows * k : rows * k + rows * m].reshape((rows, m))
        _narrow_transposed(a, bt, acc, k, m)
        for i in range(m):
            for j in range(n):
                out[i, j] = acc[j, i]
    elif n == 1:
        b0 = bt[0]
        for i in range(m):
            ai = a[i]
            s = ai[0] * b0[0]
            for p in range(1, k):
                s += ai[p] * b0[p]
            out[i, 0] = s
    else:
        b0, b1, b2, b3 = bt[0], bt[1], bt[2], bt[3]
        for i in range(m):
            ai = a[i]
            v = ai[0]
            s0, s1, s2, s3 = v * b0[0], v * b1[0], v * b2[0], v * b3[0]
            for p in range(1, k):
                v = ai[p]
                s0 += v * b0[p]
                s1 += v * b1[p]
                s2 += v * b2[p]
                s3 += v * b3[p]
            oi = out[i]
            oi[0] = s0
            oi[1] = s1
            if n > 2:
                oi[2] = s2
            if n > 3:
                oi[3] = s3
    if has_bias or act_id >= 0:
        _epilogue_rows(out, y, z_saved, bias, has_bias, act_id, derivative,
                       np.int64(0), m, np.int64(0), n)  # int64: see _zero_k_fill


@kernel
def _narrow_transposed(a, bt, acc, k, m):
    """``acc[j, :] = sum_p bt[j, p] * a[p, :]`` for every row ``j`` of ``acc`` (one or
    ``NARROW_N``), rows of ``a`` taken four at a time (see :func:`_narrow_gemm`)."""
    for j in range(acc.shape[0]):
        row = acc[j]
        s = bt[j, 0]
        a0 = a[0]
        for i in range(m):
            row[i] = s * a0[i]
    p = 1
    while p + 4 <= k:
        a0, a1, a2, a3 = a[p], a[p + 1], a[p + 2], a[p + 3]
        for j in range(acc.shape[0]):
            row = acc[j]
            s0, s1, s2, s3 = bt[j, p], bt[j, p + 1], bt[j, p + 2], bt[j, p + 3]
            for i in range(m):
                row[i] += s0 * a0[i] + s1 * a1[i] + s2 * a2[i] + s3 * a3[i]
        p += 4
    while p < k:
        ap = a[p]
        for j in range(acc.shape[0]):
            row = acc[j]
            s = bt[j, p]
            for i in range(m):
                row[i] += s * ap[i]
        p += 1


#: Serial products with at most this many steps of ``k`` take :func:`_small_k_gemm`
#: (unless their plan is narrow or swapped): a tabular model's first layer (10-30
#: features), a classifier head's input gradient (``k`` = the classes). Over so few
#: steps, packing both operands and a separate epilogue pass cost as much as the FMAs:
#: 200 x 10 x 100 float64 ran at 34 % of the core's FMA peak packed.
SMALL_K = 32
#: ... and at most this many elements of ``op(b)``: a transposed ``b`` is copied once
#: per call (``k`` rows of ``n``), which pays off while it stays in L1/L2; the long
#: outputs of an im2col convolution keep the packed path.
SMALL_K_B_ELEMENTS = 1 << 16


@kernel
def _small_k_gemm(a, b, out, transpose_a, transpose_b, work, bias, has_bias, y, z_saved,
                  act_id, derivative):
    """``out = op(a) @ op(b)`` for ``1 <= k <= SMALL_K``, then the epilogue, without
    packing ``op(a)`` and with the epilogue applied from the registers.

    Shapes and arguments as :func:`_gemm_serial`; ``work`` holds ``k * n`` elements when
    ``transpose_b`` (``op(b)`` is copied there as ``k`` rows of ``n``; else ``b``'s own
    rows are read). Four rows at a time, two vectors of columns at a time: each step of
    ``k`` loads two vectors of a row of ``op(b)`` and broadcasts four elements of
    ``op(a)``, read in place through its strides, for eight FMAs; the columns past the
    last whole pair one vector at a time, the last one partial (masked loads and
    stores). Past the last row a block recomputes row ``m - 1`` and stores nothing for
    it, so the loops over ``k`` hold no branch and their accumulators stay in registers.
    Everything is in this one function: an inlined helper that takes arrays pays NRT
    reference counting per call, which made a first version, with a helper per output
    vector, 3x slower than the packed path.

    Each output element is the FMA chain over ``k`` in order from zero that the packed
    path's register tiles compute, and the epilogue does the same operations
    (:func:`_epilogue`): the results equal :func:`_gemm_serial`'s bit for bit (the tests
    compare them). Serial.
    """
    m, n = out.shape
    k = a.shape[0] if transpose_a else a.shape[1]
    lanes = vlanes(out)
    ra, sa = (1, m) if transpose_a else (k, 1)
    if transpose_b:
        bt = work[: k * n].reshape((k, n))
        for j in range(n):
            for p in range(k):
                bt[p, j] = b[j, p]
    else:
        bt = b
    zero = vzero(out)
    pairs = n - n % (2 * lanes)
    # y receives the activation only in the forward epilogue (with the derivative,
    # act_id names the activation whose derivative is applied).
    relu = act_id == RELU and not derivative
    identity = act_id == IDENTITY and not derivative
    for i0 in range(0, m, 4):
        rows = min(4, m - i0)
        x0, x1 = i0 * ra, min(i0 + 1, m - 1) * ra
        x2, x3 = min(i0 + 2, m - 1) * ra, min(i0 + 3, m - 1) * ra
        for j in range(0, pairs, 2 * lanes):
            c00, c01, c10, c11 = zero, zero, zero, zero
            c20, c21, c30, c31 = zero, zero, zero, zero
            for p in range(k):
                b0 = vload(bt, p * n + j)
                b1 = vload(bt, p * n + j + lanes)
                x = vbroadcast(a, x0 + p * sa)
                c00, c01 = vfma(x, b0, c00), vfma(x, b1, c01)
                x = vbroadcast(a, x1 + p * sa)
                c10, c11 = vfma(x, b0, c10), vfma(x, b1, c11)
                x = vbroadcast(a, x2 + p * sa)
                c20, c21 = vfma(x, b0, c20), vfma(x, b1, c21)
                x = vbroadcast(a, x3 + p * sa)
                c30, c31 = vfma(x, b0, c30), vfma(x, b1, c31)
            block = (c00, c01, c10, c11, c20, c21, c30, c31)
            for t in range(2 * rows):
                v = block[t]
                col = j + (t % 2) * lanes
                o = (i0 + t // 2) * n + col
                if derivative:
                    v = vkeep_where_positive(vload(z_saved, o), v)
                elif has_bias:
                    v = vadd(v, vload(bias, col))
                vstore(out, o, v)
                if relu:
                    vstore(y, o, vrelu(v))
                elif identity:
                    vstore(y, o, v)
        for j in range(pairs, n, lanes):
            count = min(lanes, n - j)
            c0, c1, c2, c3 = zero, zero, zero, zero
            for p in range(k):
                b0 = vload_part(bt, p * n + j, count, zero)
                c0 = vfma(vbroadcast(a, x0 + p * sa), b0, c0)
                c1 = vfma(vbroadcast(a, x1 + p * sa), b0, c1)
                c2 = vfma(vbroadcast(a, x2 + p * sa), b0, c2)
                c3 = vfma(vbroadcast(a, x3 + p * sa), b0, c3)
            column = (c0, c1, c2, c3)
            for r in range(rows):
                v = column[r]
                o = (i0 + r) * n + j
                if derivative:
                    v = vkeep_where_positive(vload_part(z_saved, o, count, zero), v)
                elif has_bias:
                    v = vadd(v, vload_part(bias, j, count, zero))
                vstore_part(out, o, count, v)
                if relu:
                    vstore_part(y, o, count, vrelu(v))
                elif identity:
                    vstore_part(y, o, count, v)


# ---------------------------------------------------------------------------------------
# Drivers: the parallel kernel and its serial twin (same body, range instead of prange)
# ---------------------------------------------------------------------------------------


@kernel
def _n_tasks(m, n, mb, nb, work):
    """Macro tiles of an (m, n) output with ``mb`` x ``nb`` panels each."""
    nr = NV * vlanes(work)
    return (((m + MR - 1) // MR + mb - 1) // mb) * (((n + nr - 1) // nr + nb - 1) // nb)


@kernel
def _transposed_output(work, m, n):
    """The (n, m) array at the tail of ``work`` that a swapped plan computes
    ``out.T`` into (after the per-thread slots; ``gemm_plan`` sizes ``work`` for it)."""
    size = work.shape[0]
    return work[size - m * n :].reshape((n, m))


@kernel
def _orientation(a, transpose_a, b, transpose_b, out, work, swap):
    """``(dst, left, left_t, right, right_t)``: the product the tile loop computes,
    ``dst = op(left) @ op(right)``. Normally ``out = op(a) @ op(b)``; with ``swap``,
    ``out.T = op(b).T @ op(a).T`` into the tail of ``work``. One tile loop serves both
    orientations (a second loop would double the compiled code)."""
    if swap:
        m, n = out.shape
        return _transposed_output(work, m, n), b, not transpose_b, a, not transpose_a
    return out, a, transpose_a, b, transpose_b


@kernel
def _finish_swapped(out_t, out, y, z_saved, bias, has_bias, act_id, derivative):
    """``out = out_t.T``, then the epilogue over the whole of ``out``. Serial: a
    swapped output is narrow (a few columns), so this is a small pass."""
    m, n = out.shape
    for i in range(m):
        row = out[i]
        for j in range(n):
            row[j] = out_t[j, i]
    if has_bias or act_id >= 0:
        _epilogue_rows(out, y, z_saved, bias, has_bias, act_id, derivative,
                       np.int64(0), m, np.int64(0), n)  # int64: see _zero_k_fill


@parallel_kernel
def _gemm_parallel(a, b, out, transpose_a, transpose_b, work, mb, nb, swap,
                   bias, has_bias, y, z_saved, act_id, derivative):
    """Parallel GEMM on validated arguments (see the module docstring for the contract).

    Shapes: ``out`` is (m, n); ``a`` is (m, k), or (k, m) if ``transpose_a``; ``b`` is
    (k, n), or (n, k) if ``transpose_b``. ``work`` is 1-D with at least
    ``gemm_plan(...).workspace`` elements; ``bias`` is (n,) (ignored unless
    ``has_bias``); ``y`` is (m, n) (ignored unless ``act_id >= 0``), may be ``out``.
    All of one dtype, C-contiguous. ``mb``, ``nb`` and ``swap`` come from the plan.

    One ``prange`` over macro tiles; each packs its own panels into the running
    thread's slot of ``work`` (disjoint rectangles of ``out`` and ``y``, private slots).
    With ``swap`` (a narrow output, see :func:`gemm_plan`) the tiles compute
    ``out.T = op(b).T @ op(a).T`` into the tail of ``work``, and a serial pass
    transposes it into ``out`` and applies the epilogue.
    """
    m, n = out.shape
    k = a.shape[0] if transpose_a else a.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:
        _zero_k_fill(out, y, z_saved, bias, has_bias, act_id, derivative)
        return
    dst, left, left_t, right, right_t = _orientation(a, transpose_a, b, transpose_b, out,
                                                     work, swap)
    # A swapped plan applies the epilogue after the transpose back, not on the tiles.
    tile_act = _NO_ACTIVATION if swap else act_id
    size = _slot_size(mb, k, work)
    for t in prange(_n_tasks(dst.shape[0], dst.shape[1], mb, nb, work)):
        tid = numba.get_thread_id()
        # int64(t): Numba types the prange index int64 while it types this function
        # and uint64 in the gufunc it builds from the loop, so without the cast
        # _macro_tile, the largest kernel here, compiled twice (cold start).
        _macro_tile(np.int64(t), mb, nb, left, left_t, right, right_t, dst, k,
                    work[tid * size : (tid + 1) * size], bias, has_bias and not swap, y,
                    z_saved, tile_act, derivative and not swap)
    if swap:
        _finish_swapped(dst, out, y, z_saved, bias, has_bias, act_id, derivative)


@kernel
def _gemm_serial(a, b, out, transpose_a, transpose_b, work, mb, nb, swap,
                 bias, has_bias, y, z_saved, act_id, derivative):
    """Serial twin of :func:`_gemm_parallel` (same arguments, same results bit for bit)."""
    m, n = out.shape
    k = a.shape[0] if transpose_a else a.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:
        _zero_k_fill(out, y, z_saved, bias, has_bias, act_id, derivative)
        return
    dst, left, left_t, right, right_t = _orientation(a, transpose_a, b, transpose_b, out,
                                                     work, swap)
    tile_act = _NO_ACTIVATION if swap else act_id
    size = _slot_size(mb, k, work)
    for t in range(_n_tasks(dst.shape[0], dst.shape[1], mb, nb, work)):
        _macro_tile(t, mb, nb, left, left_t, right, right_t, dst, k, work[:size], bias,
                    has_bias and not swap, y, z_saved, tile_act,
                    derivative and not swap)
    if swap:
        _finish_swapped(dst, out, y, z_saved, bias, has_bias, act_id, derivative)


# ---------------------------------------------------------------------------------------
# Planning, workspaces and the public wrappers
# ---------------------------------------------------------------------------------------


class GemmPlan(NamedTuple):
    """Blocking of one GEMM shape, from :func:`gemm_plan`.

    Attributes:
        mb: A panels (of ``MR`` rows) per macro tile.
        nb: B panels (of ``NR`` columns) per macro tile.
        workspace: elements the 1-D ``work`` array needs.
        parallel: whether :func:`gemm_into` runs the parallel kernel.
        swap: tile ``out.T = op(b).T @ op(a).T`` instead (a narrow output: see
            :func:`gemm_plan`); ``mb``/``nb`` then count panels of ``out.T``.
        narrow: at most :data:`NARROW_N` output columns and ``k >= 1``: dot products
            without packing (:func:`_narrow_gemm`, serial); ``mb``, ``nb`` and ``swap``
            are unused.
        small_k: a serial product of at most :data:`SMALL_K` steps of ``k``, neither
            narrow nor swapped: :func:`_small_k_gemm` (same bits as the packed path);
            ``mb``, ``nb`` and ``swap`` are unused.
    """

    mb: int
    nb: int
    workspace: int
    parallel: bool
    swap: bool = False
    narrow: bool = False
    small_k: bool = False


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def gemm_plan(m: int, n: int, k: int, dtype: object) -> GemmPlan:
    """Choose macro tiles and the workspace size for an (m x k) @ (k x n) product.

    The plan depends on the shape, the dtype and the size of the thread pool
    (``NUMBA_NUM_THREADS``), not on :func:`numbanet.set_num_threads`, so a workspace
    allocated once stays valid for the whole process. Plans are cached. A narrow output
    (at most a few columns) gets ``swap``: its transpose is tiled, which fills the
    register tile's rows instead of wasting most of its columns.

    Args:
        m, n, k: the product's dimensions (``op(a)`` is m x k, ``op(b)`` is k x n).
        dtype: float32 or float64.

    Returns:
        A :class:`GemmPlan`.
    """
    return _plan(int(m), int(n), int(k), NV * lanes_for(dtype),
                 int(numba.config.NUMBA_NUM_THREADS))


def _padded_area(m: int, n: int, nr: int) -> int:
    """Output elements the register tiles compute for an (m, n) output, padding included."""
    return _ceil_div(m, MR) * MR * _ceil_div(n, nr) * nr


@functools.lru_cache(maxsize=256)
def _plan(m: int, n: int, k: int, nr: int, threads: int) -> GemmPlan:
    if 0 < n <= NARROW_N and k > 0:
        # n=1, k=100, m=200 (a regressor's output layer): 24 us packed, ~1 us here.
        return GemmPlan(1, 1, NARROW_N * (k + m), False, False, True)
    parallel = m * n * k >= SERIAL_WORK and threads > 1
    # A narrow output (a classifier's 10 columns) fills 10 of the tile's NR = 32
    # columns; its transpose fills 10 of MR = 12 rows. Tile the transpose when that
    # wastes less: 256x128 @ 128x10 went from 17.5 to 9.4 us, 128x256 @ 256x10 (dW) from
    # 17.2 to 10.4 (float32). The transpose back is a serial pass over m * n elements, so
    # a parallel product swaps only for half the padded area; a serial one already for a
    # fifth (float64, NR = 16: 104x100 @ 100x10 10.7-11.3 -> 9.7 us, 200x100 @ 100x10
    # 18.5-19.7 -> 15.9-16.4, its dW 18.9-20.0 -> 17.1-17.2). Results are the same bits
    # either way: each output element sums the same products in the same order.
    normal, swapped = _padded_area(m, n, nr), _padded_area(n, m, nr)
    swap = m > 0 and n > 0 and (2 * swapped < normal if parallel else 5 * swapped < 4 * normal)
    if not parallel and not swap and 0 < k <= SMALL_K and k * n <= SMALL_K_B_ELEMENTS:
        # Serial and few steps of k: no packing, the epilogue in registers (see
        # _small_k_gemm), the same bits. One thread, 10th percentiles, packed -> this:
        # 104 x 10 x 100 float64 with ReLU's derivative (a digits head's input
        # gradient) 10.9 -> 6.2 us; 200 x 10 x 100 + bias + ReLU (a 10-feature first
        # layer) 26.3 -> 17.9 (float64), 12.4 -> 8.0 (float32); 200 x 30 x 100 35.9 ->
        # 28.2 (float64).
        return GemmPlan(1, 1, k * n, False, False, False, True)
    if swap:
        m, n = n, m
    n_pm = max(1, _ceil_div(m, MR))
    n_pn = max(1, _ceil_div(n, nr))
    workers = threads if parallel else 1
    # Work of each A panel in full-tile units: the short last panel runs a 4- or 8-row
    # kernel, at lower efficiency than the 12-row one.
    tail = m - (n_pm - 1) * MR
    tail_cost = 1.0 if tail > _MR_TWO_THIRDS else (0.75 if tail > _MR_THIRD else 0.45)
    # At least _MIN_TASKS_PER_THREAD tasks per thread when the shape allows (one-task
    # chunks are handed out dynamically).
    min_tasks = min(_MIN_TASKS_PER_THREAD * workers, n_pm * n_pn) if parallel else 1
    fewest = _ceil_div(n_pm, _MAX_MB) * _ceil_div(n_pn, _MAX_NB)
    max_tasks = max(min_tasks, fewest, 16 * workers)
    a_cost = _A_PANEL_COST
    b_cost = _A_PANEL_COST * _B_TO_A_COST * nr / MR
    best = None
    for mb in range(1, min(n_pm, _MAX_MB) + 1):
        if mb > 1 and _ceil_div(n_pm, mb) == _ceil_div(n_pm, mb - 1):
            continue
        for nb in range(1, min(n_pn, _MAX_NB) + 1):
            if nb > 1 and _ceil_div(n_pn, nb) == _ceil_div(n_pn, nb - 1):
                continue
            n_tasks = _ceil_div(n_pm, mb) * _ceil_div(n_pn, nb)
            if not min_tasks <= n_tasks <= max_tasks:
                continue
            # Simulate the dynamic schedule: tasks in order, each to the first free
            # thread. Per task, a fixed cost and a cost per panel it streams in.
            free = [0.0] * workers
            for bi in range(_ceil_div(n_pm, mb)):
                rows = min(mb, n_pm - bi * mb)
                wm = rows - 1 + (tail_cost if bi * mb + rows == n_pm else 1.0)
                for bj in range(_ceil_div(n_pn, nb)):
                    wn = min(nb, n_pn - bj * nb)
                    cost = wm * wn + a_cost * wm + b_cost * wn + _TASK_COST
                    i = free.index(min(free))
                    free[i] += cost
            key = (max(free), mb * nb)
            if best is None or key[0] < best[0][0] - 1e-9 or (
                abs(key[0] - best[0][0]) <= 1e-9 and key[1] > best[0][1]
            ):
                best = (key, mb, nb)
    _, mb, nb = best
    # One private slot per pool thread (see _slot_size), whether or not this shape runs
    # in parallel: a slot is indexed by the running thread's id.
    kce = min(KC * nr // (NV * LANES_FLOAT32), max(k, 1))
    workspace = max(threads, 1) * (mb * MR * kce + nr * kce + MR * nr)
    if swap:
        workspace += m * n  # out.T, at the tail (see _transposed_output)
    return GemmPlan(mb, nb, workspace, parallel, swap)


def gemm_into(
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
    transpose_a: bool,
    transpose_b: bool,
    work: np.ndarray,
    plan: GemmPlan,
    bias: np.ndarray | None = None,
    y: np.ndarray | None = None,
    act_id: int = _NO_ACTIVATION,
    param: float = 0.0,
    derivative: bool = False,
    z_saved: np.ndarray | None = None,
) -> None:
    """Unchecked hot path: ``out = op(a) @ op(b)``, then a fused epilogue.

    For layers that validated their arrays once and own a workspace: no checks (about
    3 us per call instead of about 10 us for :func:`matmul`) and no allocation. Wrong
    shapes, dtypes or a short ``work`` here read and write out of bounds. Call it from
    Python, never from inside a ``prange`` (parallel regions must not nest).

    Epilogues, applied to each output tile while it is in L1:

    * forward (default): ``out += bias`` if ``bias`` is given, and ``y = act(out)`` if
      ``act_id >= 0`` (a dense layer's ``z = x @ W + b``, ``y = act(z)``). ReLU and
      the identity run on the tile; other elementwise activations in one pass over
      ``out`` right after the product (same results, see the module docstring);
    * ``derivative=True`` (ReLU only, ``act_id = ACTIVATION_IDS["relu"]``): ``out = 0``
      where the saved activation ``z_saved <= 0``, that is ``out *= relu'``. With
      ``out = dz @ W.T`` this is the gradient of the pre-activation of the layer below,
      without a separate pass over memory. Other activations' derivatives take their
      own vectorised pass (faster than a row-by-row epilogue); ``bias`` must be
      ``None``.

    Args:
        a, b, out, transpose_a, transpose_b: as in :func:`matmul`, already validated.
        work: 1-D, dtype of ``out``, at least ``plan.workspace`` elements; its content
            on entry does not matter.
        plan: ``gemm_plan(m, n, k, out.dtype)`` for this shape.
        bias: (n,) added to every row of ``out``, or ``None``.
        y: forward: receives ``act(out)`` when ``act_id >= 0`` (may be ``out``);
            ignored with ``derivative``.
        act_id: an id from ``ACTIVATION_IDS``, or -1 for none.
        param: the activation's parameter (leaky_relu slope, elu alpha).
        derivative: multiply by ReLU's derivative instead of applying an activation.
        z_saved: derivative only: the saved ReLU input or output (either works: both
            are <= 0 at the same places), (m, n).

    Raises:
        ValueError: ``derivative=True`` with an activation other than ReLU.

    Example:
        >>> import numpy as np
        >>> from numbanet.kernels.activations import ACTIVATION_IDS
        >>> x = np.ones((4, 3)); w = np.ones((3, 2)); b = np.array([-5.0, 1.0])
        >>> z = np.empty((4, 2)); plan = gemm_plan(4, 2, 3, x.dtype)
        >>> work = np.empty(plan.workspace)  # once per layer and batch size
        >>> gemm_into(x, w, z, False, False, work, plan, bias=b, y=z,
        ...           act_id=ACTIVATION_IDS["relu"])
        >>> z[0].tolist()
        [0.0, 4.0]
    """
    if derivative and act_id != RELU:
        raise ValueError(
            f"gemm_into: derivative=True supports ReLU only (act_id {RELU}), got act_id "
            f"{act_id}; other activations take their own backward pass"
        )
    has_bias = bias is not None
    if bias is None:
        bias = _empty_like_dtype(out.dtype)
    if y is None:
        y = out
    if z_saved is None:
        z_saved = out
    # ReLU and identity run in the tile epilogue; any other activation in one pass of
    # its own right after the product (see the module docstring: compile time).
    fused = derivative or act_id < 0 or act_id == RELU or act_id == IDENTITY
    tile_act = act_id if fused else _NO_ACTIVATION
    if plan.narrow:
        _narrow_gemm(a, b, out, bool(transpose_a), bool(transpose_b), work, bias, has_bias,
                     y, z_saved, int(tile_act), bool(derivative))
    elif plan.small_k:
        _small_k_gemm(a, b, out, bool(transpose_a), bool(transpose_b), work, bias, has_bias,
                      y, z_saved, int(tile_act), bool(derivative))
    else:
        _packed_gemm(a, b, out, transpose_a, transpose_b, work, plan, bias, has_bias, y,
                     z_saved, tile_act, derivative)
    if not fused:
        elementwise_forward_unchecked(int(act_id), float(param), out, y)


def _packed_gemm(a, b, out, transpose_a, transpose_b, work, plan, bias, has_bias, y,
                 z_saved, tile_act, derivative) -> None:
    """The packed, register-tiled product of :func:`gemm_into`: serial or parallel."""
    args = (a, b, out, bool(transpose_a), bool(transpose_b), work, plan.mb, plan.nb,
            plan.swap, bias, has_bias, y, z_saved, int(tile_act), bool(derivative))
    if not plan.parallel or numba.get_num_threads() == 1:
        # Same results bit for bit; skips the thread pool's fork/join.
        _gemm_serial(*args)
    else:
        # Chunks of one iteration, handed out dynamically: when another process holds
        # a core, the free threads take over its share instead of waiting for it. Set
        # here, not inside the kernel, because the in-kernel call defeats Numba's disk
        # cache.
        previous = numba.set_parallel_chunksize(1)
        try:
            _gemm_parallel(*args)
        finally:
            numba.set_parallel_chunksize(previous)


_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32),
          np.dtype(np.float64): np.empty(0, np.float64)}


def _empty_like_dtype(dtype: np.dtype) -> np.ndarray:
    return _EMPTY[np.dtype(dtype)]


#: Largest workspace (in elements) the public wrappers keep between calls; bigger
#: products allocate theirs per call. The workspace holds packed copies of both
#: operands, so it is about as large as ``a`` and ``b`` together.
CACHED_WORKSPACE_LIMIT = 1 << 24


class _WorkspaceCache(threading.local):
    """One growing workspace per dtype and Python thread, reused by :func:`matmul`."""

    def __init__(self) -> None:
        self.buffers: dict[np.dtype, np.ndarray] = {}

    def get(self, dtype: np.dtype, size: int) -> np.ndarray:
        buf = self.buffers.get(dtype)
        if buf is not None and buf.size >= size:
            return buf
        buf = np.empty(max(size, 1), dtype)
        if size <= CACHED_WORKSPACE_LIMIT:
            self.buffers[dtype] = buf
        return buf


_workspaces = _WorkspaceCache()


def _check_operands(a, b, out, transpose_a, transpose_b, names=("a", "b", "out")):
    na, nb_, nout = names
    check_float_array(na, a, ndim=2)
    check_float_array(nb_, b, ndim=2, dtype=a.dtype)
    check_float_array(nout, out, ndim=2, dtype=a.dtype, writeable=True)
    m, k = (a.shape[1], a.shape[0]) if transpose_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if transpose_b else b.shape
    if k != kb:
        ta = f"{na}.T" if transpose_a else na
        tb = f"{nb_}.T" if transpose_b else nb_
        raise ValueError(
            f"inner dimensions differ: {ta} is {m} x {k} but {tb} is {kb} x {n}"
        )
    if out.shape != (m, n):
        raise ValueError(f"{nout} must have shape ({m}, {n}), got {out.shape}")
    for name, arr in ((na, a), (nb_, b)):
        if np.shares_memory(out, arr):
            raise ValueError(
                f"{nout} must not overlap {name}: the product is written while "
                f"{name} is still read; pass a separate output array"
            )
    return m, n, k


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def matmul(
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
    transpose_a: bool = False,
    transpose_b: bool = False,
) -> None:
    """``out = op(a) @ op(b)`` with a blocked, packed, parallel GEMM (no BLAS).

    ``op(x)`` is ``x.T`` when the matching ``transpose_*`` flag is set, else ``x``.

    Args:
        a: (m, k), or (k, m) with ``transpose_a``; float32 or float64, C-contiguous.
        b: (k, n), or (n, k) with ``transpose_b``; same dtype, C-contiguous.
        out: (m, n), same dtype, C-contiguous, writeable, not overlapping ``a``/``b``.
        transpose_a: use ``a.T`` (without copying it).
        transpose_b: use ``b.T`` (without copying it).

    Returns:
        None; ``out`` holds the product. NaN/inf propagate as in ``numpy.matmul``.

    Raises:
        TypeError: a non-array argument, a dtype other than float32/float64, mixed
            dtypes, or non-bool transpose flags.
        ValueError: not 2-D, mismatched shapes, not C-contiguous, ``out`` read-only or
            overlapping an input.

    Work of ``m * n * k`` below :data:`SERIAL_WORK` runs serially; above, on all threads
    (:func:`numbanet.set_num_threads`), with results identical for any thread count.
    The packing workspace is cached per dtype and Python thread.

    Example:
        >>> import numpy as np
        >>> from numbanet.kernels.matmul import matmul
        >>> a = np.ones((2, 3), np.float32); b = np.ones((3, 4), np.float32)
        >>> out = np.empty((2, 4), np.float32)
        >>> matmul(a, b, out); float(out[0, 0])
        3.0
    """
    transpose_a = _check_flag("transpose_a", transpose_a)
    transpose_b = _check_flag("transpose_b", transpose_b)
    m, n, k = _check_operands(a, b, out, transpose_a, transpose_b)
    plan = gemm_plan(m, n, k, out.dtype)
    work = _workspaces.get(out.dtype, plan.workspace)
    gemm_into(a, b, out, transpose_a, transpose_b, work, plan)


_ACT_ID = Integer(what="an int from ACTIVATION_IDS")


def dense_forward(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    z: np.ndarray,
    y: np.ndarray,
    act_id: int,
    param: float = 0.0,
) -> None:
    """Dense layer forward: ``z = x @ w + bias`` and ``y = act(z)``, fused in the GEMM.

    The bias (and ReLU) are applied in the GEMM epilogue, to each register tile right
    after its last ``k`` block, while it is still in L1; other activations in one pass
    right after the product (see :func:`gemm_into`).

    Args:
        x: (m, k) input, float32 or float64, C-contiguous.
        w: (k, n) weights, same dtype.
        bias: (n,) same dtype, or ``None`` for no bias.
        z: (m, n) receives the pre-activation ``x @ w + bias``.
        y: (m, n) receives ``act(z)``; may be ``z`` itself (then ``z`` is overwritten).
        act_id: an id from :data:`numbanet.kernels.activations.ACTIVATION_IDS`.
        param: leaky_relu's negative slope or elu's alpha; ignored by the others.

    Raises:
        TypeError / ValueError: as in :func:`matmul`, for ``bias`` and ``y`` likewise,
            and ``ValueError`` for an unknown ``act_id`` or ``y`` partially overlapping
            ``z``.
    """
    m, n, k = _check_operands(x, w, z, False, False, names=("x", "w", "z"))
    if bias is not None:
        check_float_array("bias", bias, ndim=1, dtype=x.dtype, shape=(n,))
        if np.shares_memory(z, bias):
            raise ValueError("z must not overlap bias; pass a separate output array")
    if y is not z:
        check_float_array("y", y, ndim=2, dtype=x.dtype, shape=(m, n), writeable=True)
        for name, arr in (("x", x), ("w", w), ("z", z)):
            if np.shares_memory(y, arr):
                raise ValueError(
                    f"y must not overlap {name} (y may be z itself, but not a part of it)"
                )
        if bias is not None and np.shares_memory(y, bias):
            raise ValueError("y must not overlap bias; pass a separate output array")
    act_id = check_arg("act_id", act_id, _ACT_ID)
    if act_id not in ACTIVATION_IDS.values():
        known = ", ".join(f"{name}={i}" for name, i in ACTIVATION_IDS.items())
        raise ValueError(f"act_id {act_id} is not an elementwise activation id; known: {known}")
    try:
        param = float(param)
    except (TypeError, ValueError):
        raise TypeError(f"param must be a float, got {type(param).__name__}") from None
    plan = gemm_plan(m, n, k, z.dtype)
    work = _workspaces.get(z.dtype, plan.workspace)
    gemm_into(x, w, z, False, False, work, plan, bias=bias, y=y, act_id=int(act_id),
              param=param)
