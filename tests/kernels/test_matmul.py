"""Tests for numbanet.kernels.matmul: the blocked GEMM and the fused dense forward.

References are independent: numpy.matmul in float64 on float64 copies of the inputs.
Only two drivers per dtype are compiled (parallel and serial); every shape below reuses
them, so adding shapes costs run time only, not compile time.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numbanet
from numbanet.kernels._simd import lanes_for
from numbanet.kernels.activations import ACTIVATION_IDS, elementwise_forward_unchecked
from numbanet.kernels.matmul import (
    KC,
    MR,
    GemmPlan,
    dense_forward,
    gemm_into,
    gemm_plan,
    matmul,
)

# The module, not the function: numbanet.kernels re-exports the function `matmul`
# under the module's own name, so attribute access would return the function.
mm = importlib.import_module("numbanet.kernels.matmul")

DTYPES = [np.float32, np.float64]
TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]
# (m, k, n): ones, primes, non-multiples of MR (12, or 6 without AVX-512) and NR,
# k = 1, every edge-kernel path (last A panel of up to 1/3, 2/3 or all of MR rows),
# k just past one and two KC (256; 128 for float64) blocks, ragged macro tiles.
SHAPES = [
    (1, 1, 1),
    (1, 7, 1),
    (7, 13, 97),
    (13, 1, 13),
    (12, 5, 32),
    (16, 9, 64),  # last A panel of MR/3 rows (AVX-512), full B panels: direct writes
    (20, 9, 64),  # ... of 2*MR/3 rows (AVX-512), or MR/3 rows (AVX2)
    (22, 9, 64),  # ... of 2*MR/3 rows (AVX2)
    (25, KC + 1, 33),
    (97, 2 * KC + 3, 29),
    (131, 40, 290),
    (150, 70, 10),  # narrow outputs: the plan tiles out.T (GemmPlan.swap)
    (61, KC + 3, 1),  # n <= NARROW_N: dot products without packing (GemmPlan.narrow)
    (37, 19, 3),
    (200, 100, 4),
    (9, 2 * KC + 1, 5),  # just past NARROW_N: packed again
]


def _operands(rng, m, k, n, ta, tb, dtype):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


def _reference(a, b, ta, tb):
    """``op(a) @ op(b)`` in float64, and ``|op(a)| @ |op(b)|`` for the error bound."""
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    op_a = a64.T if ta else a64
    op_b = b64.T if tb else b64
    return op_a @ op_b, np.abs(op_a) @ np.abs(op_b)


def _assert_close(out, a, b, ta, tb):
    ref, scale = _reference(a, b, ta, tb)
    k = a.shape[0] if ta else a.shape[1]
    eps = np.finfo(out.dtype).eps
    # Any summation order errs by at most k * eps * (|A| @ |B|) (Higham, Accuracy and
    # Stability, 3.5); the float64 reference may err as much in float64 tests: twice.
    bound = 2 * (k + 1) * eps * scale + np.finfo(out.dtype).tiny
    err = np.abs(out.astype(np.float64) - ref)
    assert (err <= bound).all(), f"max error {err.max():.3g}, bound {bound.max():.3g}"


def _run(a, b, ta, tb, *, parallel):
    """Call one driver explicitly through the unchecked hot path."""
    m = a.shape[1] if ta else a.shape[0]
    n = b.shape[0] if tb else b.shape[1]
    k = a.shape[0] if ta else a.shape[1]
    plan = gemm_plan(m, n, k, a.dtype)
    plan = plan._replace(parallel=parallel)
    work = np.full(plan.workspace, np.nan, a.dtype)  # stale workspace content must not leak
    out = np.full((m, n), np.nan, a.dtype)
    gemm_into(a, b, out, ta, tb, work, plan)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", TRANSPOSES)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_matmul_matches_numpy(m, k, n, ta, tb, dtype):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a, b = _operands(rng, m, k, n, ta, tb, dtype)
    out = np.full((m, n), np.nan, dtype)
    matmul(a, b, out, transpose_a=ta, transpose_b=tb)
    _assert_close(out, a, b, ta, tb)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", TRANSPOSES)
def test_serial_twin_and_parallel_kernel_agree_bitwise(ta, tb, dtype):
    rng = np.random.default_rng(3)
    for m, k, n in [(7, 13, 97), (97, 2 * KC + 3, 29), (131, 40, 290), (600, 200, 10)]:
        a, b = _operands(rng, m, k, n, ta, tb, dtype)
        serial = _run(a, b, ta, tb, parallel=False)
        parallel = _run(a, b, ta, tb, parallel=True)
        _assert_close(parallel, a, b, ta, tb)
        np.testing.assert_array_equal(serial, parallel)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", TRANSPOSES)
@pytest.mark.parametrize("parallel", [False, True])
def test_one_vector_edge_panel_equals_the_padded_full_tile_bitwise(ta, tb, parallel, dtype):
    # A last column panel with at most one vector of valid columns runs a one-vector
    # tile: its columns must be the same FMA chains as a full tile's, so the product
    # with B zero-padded to whole panels has the same bits in those columns. Rows cover
    # each edge row kernel (all, 2/3 and 1/3 of MR); k past one k-block accumulates.
    lanes = lanes_for(dtype)
    nr = 2 * lanes
    rng = np.random.default_rng(11)
    for last_rows, k, edge in [(MR, 9, 1), (MR // 3, KC + 5, lanes), (2 * MR // 3, 40, 3)]:
        n = 2 * nr + edge
        # The fewest whole panels above the last one for which the plan tiles out itself
        # (a short output is tiled transposed instead: GemmPlan.swap).
        m = next(m for m in range(MR + last_rows, 100 * MR, MR)
                 if not gemm_plan(m, n, k, dtype).swap)
        a, b = _operands(rng, m, k, n, ta, tb, dtype)
        pad = 3 * nr - n
        b_pad = np.pad(b, ((0, pad), (0, 0)) if tb else ((0, 0), (0, pad)))
        out = _run(a, b, ta, tb, parallel=parallel)
        full = _run(a, b_pad, ta, tb, parallel=parallel)
        _assert_close(out, a, b, ta, tb)
        np.testing.assert_array_equal(out, full[:, :n])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", TRANSPOSES)
def test_many_small_tasks_reuse_thread_slots(ta, tb, dtype):
    # Tasks pack their panels into the running thread's slot of the workspace: force
    # many more tasks than threads (1-2 panels each, edge panels, several k blocks) so
    # every slot is reused, with stale NaN workspace content, and compare both drivers.
    rng = np.random.default_rng(12)
    m, k, n = 5 * MR + 7, 2 * KC + 9, 3 * mm.NV * lanes_for(dtype) + 5
    a, b = _operands(rng, m, k, n, ta, tb, dtype)
    nr = mm.NV * lanes_for(dtype)
    kc = mm.kc_for(dtype)
    threads = numbanet.threads.max_threads()
    outs = []
    for parallel in (False, True):
        for mb, nb in ((1, 1), (2, 1), (1, 2)):
            slot = mb * MR * kc + nr * kc + MR * nr  # per thread, as in _slot_size
            small = GemmPlan(mb, nb, threads * slot, parallel)
            work = np.full(small.workspace, np.nan, dtype)
            out = np.full((m, n), np.nan, dtype)
            gemm_into(a, b, out, ta, tb, work, small)
            outs.append(out)
    _assert_close(outs[0], a, b, ta, tb)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


@pytest.mark.skipif(numbanet.threads.max_threads() < 2, reason="needs a 2-thread pool")
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_and_two_threads_agree_bitwise(dtype):
    rng = np.random.default_rng(4)
    m, k, n = 150, 300, 200  # above SERIAL_WORK: the parallel kernel runs
    assert m * n * k >= mm.SERIAL_WORK
    a, b = _operands(rng, m, k, n, False, True, dtype)
    before = numbanet.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            numbanet.set_num_threads(threads)
            out = np.empty((m, n), dtype)
            matmul(a, b, out, transpose_b=True)
            outs.append(out)
    finally:
        numbanet.set_num_threads(before)
    _assert_close(outs[0], a, b, False, True)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_product_takes_parallel_path_and_matches_numpy(dtype):
    rng = np.random.default_rng(5)
    m, k, n = 200, 300, 130
    assert gemm_plan(m, n, k, dtype).parallel
    a, b = _operands(rng, m, k, n, True, False, dtype)
    out = np.empty((m, n), dtype)
    matmul(a, b, out, transpose_a=True)
    _assert_close(out, a, b, True, False)


def test_small_product_takes_serial_twin():
    assert not gemm_plan(8, 8, 8, np.float32).parallel
    assert gemm_plan(256, 256, 256, np.float32).parallel


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 40),
    k=st.integers(1, 40),
    n=st.integers(1, 70),
    ta=st.booleans(),
    tb=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_matmul_matches_numpy_on_random_shapes(m, k, n, ta, tb, dtype, seed):
    a, b = _operands(np.random.default_rng(seed), m, k, n, ta, tb, dtype)
    out = np.empty((m, n), dtype)
    matmul(a, b, out, ta, tb)
    _assert_close(out, a, b, ta, tb)


@pytest.mark.parametrize("m,k,n", [(40, 30, 50), (150, 70, 10)])  # plain and swapped plans
def test_read_only_operands_are_accepted(m, k, n):
    # Weights loaded from a read-only file or shared memory: only out must be writeable.
    # A read-only and a writeable operand also meet in the driver's one tile loop.
    rng = np.random.default_rng(13)
    a, b = _operands(rng, m, k, n, False, False, np.float32)
    for freeze_a, freeze_b in ((True, False), (False, True), (True, True)):
        a2, b2 = a.copy(), b.copy()
        a2.flags.writeable = not freeze_a
        b2.flags.writeable = not freeze_b
        out = np.full((m, n), np.nan, np.float32)
        matmul(a2, b2, out)
        _assert_close(out, a, b, False, False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_sized_dimensions(dtype):
    out = np.full((3, 4), np.nan, dtype)
    matmul(np.empty((3, 0), dtype), np.empty((0, 4), dtype), out)
    np.testing.assert_array_equal(out, np.zeros((3, 4)))
    empty = np.empty((0, 4), dtype)
    matmul(np.empty((0, 5), dtype), np.ones((5, 4), dtype), empty)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_propagate_like_numpy(dtype):
    rng = np.random.default_rng(6)
    a = rng.standard_normal((13, 20)).astype(dtype)
    b = rng.standard_normal((20, 37)).astype(dtype)
    a[2, 5] = np.nan
    b[7, 30] = np.inf
    out = np.empty((13, 37), dtype)
    matmul(a, b, out)
    with np.errstate(invalid="ignore"):
        ref = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
def test_serial_driver_py_func_matches_numpy(ta, tb):
    # The driver's own blocking logic run as plain Python (its callees stay compiled:
    # the micro-kernels use SIMD intrinsics that have no Python implementation).
    rng = np.random.default_rng(11)
    m, k, n = 14, 9, 35
    a, b = _operands(rng, m, k, n, ta, tb, np.float64)
    plan = gemm_plan(m, n, k, np.float64)
    work = np.full(plan.workspace, np.nan)
    out = np.full((m, n), np.nan)
    empty = np.empty(0)
    mm._gemm_serial.py_func(a, b, out, ta, tb, work, plan.mb, plan.nb, plan.swap, empty,
                            False, out, out, -1, False)
    _assert_close(out, a, b, ta, tb)


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_layouts_match_numpy(dtype):
    # An A panel is [k][MR], a B panel [k][NR], one K block at a time. Padding rows and
    # columns are unspecified (they only feed discarded results), so compare the valid
    # entries only. Both transposed and plain sources must give the same layout.
    rng = np.random.default_rng(7)
    nr = mm.NV * lanes_for(dtype)
    kc = mm.kc_for(dtype)
    m, k, n = MR + 5, kc + 19, nr - 3  # two A panels (one short), one padded B panel
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    for transposed in (False, True):
        src_a = np.ascontiguousarray(a.T) if transposed else a
        src_b = np.ascontiguousarray(b.T) if transposed else b
        for k0 in range(0, k, kc):
            kcb = min(kc, k - k0)
            for ip in range(2):
                wa = np.full(MR * kcb, np.nan, dtype)
                mm._pack_a_block(src_a, transposed, ip, m, k, k0, kcb, wa, 0)
                rows = slice(ip * MR, min(m, (ip + 1) * MR))
                valid = rows.stop - rows.start
                np.testing.assert_array_equal(
                    wa.reshape(kcb, MR)[:, :valid], a[rows, k0 : k0 + kcb].T
                )
            wb = np.full(nr * kcb, np.nan, dtype)
            mm._pack_b_block(src_b, transposed, 0, n, k, k0, kcb, wb, 0)
            np.testing.assert_array_equal(wb.reshape(kcb, nr)[:, :n], b[k0 : k0 + kcb])


def test_epilogue_py_func_matches_compiled_and_numpy():
    rng = np.random.default_rng(10)
    z0 = rng.standard_normal((5, 9))
    bias = rng.standard_normal(9)
    relu = ACTIVATION_IDS["relu"]
    results = []
    for fn in (mm._epilogue, mm._epilogue.py_func):
        z = z0.copy()
        y = np.full_like(z, np.nan)
        fn(z, y, z, bias, True, relu, False, 1, 3, 2, 6)
        results.append((z, y))
    z_ref = z0.copy()
    z_ref[1:4, 2:8] += bias[2:8]
    for z, y in results:
        np.testing.assert_allclose(z, z_ref, rtol=1e-15)
        np.testing.assert_array_equal(y[1:4, 2:8], np.maximum(z_ref[1:4, 2:8], 0))
        assert np.isnan(y[0]).all() and np.isnan(y[:, :2]).all()


# ---------------------------------------------------------------------------------------
# dense_forward: z = x @ w + bias, y = act(z) in the epilogue
# ---------------------------------------------------------------------------------------


def _act_reference(name, z, param):
    if name == "identity":
        return z
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z < 0, param * z, z)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    raise AssertionError(name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["identity", "relu", "leaky_relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("m,k,n", [(5, 9, 7), (40, KC + 9, 70), (150, 100, 130), (150, 40, 10)])
def test_dense_forward_matches_numpy(m, k, n, act, dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((k, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    z = np.full((m, n), np.nan, dtype)
    y = np.full((m, n), np.nan, dtype)
    param = 0.1
    dense_forward(x, w, bias, z, y, ACTIVATION_IDS[act], param)
    z_ref = x.astype(np.float64) @ w.astype(np.float64) + bias
    tol = 1e-4 if dtype == np.float32 else 1e-11
    scale = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)) + np.abs(bias)
    assert (np.abs(z - z_ref) <= tol * scale).all()
    # The activation is checked on our own z, so its error is the activation's alone.
    np.testing.assert_allclose(y, _act_reference(act, z.astype(np.float64), param),
                               rtol=10 * np.finfo(dtype).eps, atol=10 * np.finfo(dtype).eps)


@pytest.mark.parametrize("act", ["tanh", "gelu", "elu", "leaky_relu"])
def test_unfused_activation_equals_the_activation_kernel_on_z(act):
    # Only ReLU and the identity run in the tile epilogue; the others run after the
    # product through the activation module's own kernel, so y must equal that kernel
    # applied to z bit for bit, whatever the thread count.
    from numbanet.kernels.activations import get_activation

    rng = np.random.default_rng(12)
    x = rng.standard_normal((150, 100)).astype(np.float32)
    w = rng.standard_normal((100, 130)).astype(np.float32)
    bias = rng.standard_normal(130).astype(np.float32)
    outputs = []
    before = numbanet.get_num_threads()
    try:
        for threads in sorted({1, min(2, numbanet.threads.max_threads())}):
            numbanet.set_num_threads(threads)
            z = np.empty((150, 130), np.float32)
            y = np.empty_like(z)
            dense_forward(x, w, bias, z, y, ACTIVATION_IDS[act], 0.3)
            outputs.append((z, y))
    finally:
        numbanet.set_num_threads(before)
    for z, y in outputs[1:]:
        np.testing.assert_array_equal(z, outputs[0][0])
        np.testing.assert_array_equal(y, outputs[0][1])
    z, y = outputs[0]
    expected = np.empty_like(z)
    spec = get_activation(act)
    kernel_param = 0.3 if act in ("elu", "leaky_relu") else spec.default_param
    elementwise_forward_unchecked(spec.id, kernel_param, z, expected)
    np.testing.assert_array_equal(y, expected)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 30),
    k=st.integers(1, 30),
    n=st.integers(1, 50),
    act=st.sampled_from(["identity", "relu", "leaky_relu", "tanh"]),
    in_place=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_dense_forward_matches_numpy_on_random_shapes(m, k, n, act, in_place, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k))
    w = rng.standard_normal((k, n))
    bias = rng.standard_normal(n)
    z = np.empty((m, n))
    y = z if in_place else np.empty((m, n))
    dense_forward(x, w, bias, z, y, ACTIVATION_IDS[act], 0.2)
    ref = _act_reference(act, x @ w + bias, 0.2)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_in_place_and_without_bias(dtype):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((30, 50)).astype(dtype)
    w = rng.standard_normal((50, 45)).astype(dtype)
    z = np.empty((30, 45), dtype)
    dense_forward(x, w, None, z, z, ACTIVATION_IDS["relu"])
    ref = np.maximum(x.astype(np.float64) @ w.astype(np.float64), 0)
    np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_with_empty_k_is_bias_then_activation(dtype):
    bias = np.array([-1.0, 2.0, 0.5], dtype)
    z = np.full((2, 3), np.nan, dtype)
    y = np.full((2, 3), np.nan, dtype)
    dense_forward(np.empty((2, 0), dtype), np.empty((0, 3), dtype), bias, z, y,
                  ACTIVATION_IDS["relu"])
    np.testing.assert_array_equal(z, np.tile(bias, (2, 1)))
    np.testing.assert_array_equal(y, np.maximum(z, 0))


# ---------------------------------------------------------------------------------------
# gemm_into(derivative=True): out = (op(a) @ op(b)) * relu'(z_saved), the fused backward
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
# dx = dz @ W.T shapes: full-width SIMD tiles (n >= 32) and ragged edges, one and two
# K blocks, serial and parallel plans, a swapped (narrow) one.
@pytest.mark.parametrize("m,k,n", [(5, 7, 9), (40, 70, KC + 9), (150, 130, 100), (150, 20, 10)])
def test_relu_derivative_epilogue_matches_numpy(m, k, n, threads, dtype):
    rng = np.random.default_rng(12)
    dz = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((n, k)).astype(dtype)
    z_saved = rng.standard_normal((m, n)).astype(dtype)
    z_saved[0, :5] = 0  # the kink: relu'(0) = 0, as in PyTorch
    out = np.full((m, n), np.nan, dtype)
    plan = gemm_plan(m, n, k, dtype)
    work = np.full(plan.workspace, np.nan, dtype)
    previous = numbanet.get_num_threads()
    numbanet.set_num_threads(threads)
    try:
        gemm_into(dz, w, out, False, True, work, plan, act_id=ACTIVATION_IDS["relu"],
                  derivative=True, z_saved=z_saved)
    finally:
        numbanet.set_num_threads(previous)
    ref, scale = _reference(dz, w, False, True)
    keep = z_saved > 0
    tol = 1e-4 if dtype == np.float32 else 1e-11
    assert (np.abs(out - ref * keep) <= tol * scale * keep).all()
    assert (out[~keep] == 0).all()


@pytest.mark.parametrize("act", ["identity", "tanh", "sigmoid", "leaky_relu"])
def test_derivative_epilogue_rejects_other_activations(act):
    out = np.empty((4, 3))
    plan = gemm_plan(4, 3, 2, np.float64)
    with pytest.raises(ValueError, match="ReLU only"):
        gemm_into(np.ones((4, 2)), np.ones((3, 2)), out, False, True,
                  np.empty(plan.workspace), plan, act_id=ACTIVATION_IDS[act],
                  derivative=True, z_saved=out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_epilogues_keep_nan_and_zero_conventions_on_simd_and_edge_tiles(dtype):
    # 2 * NR + 3 columns: two full-width tiles (SIMD path) and a ragged one (row path);
    # both must treat NaN and zero alike. Forward: relu(NaN) = NaN (numpy.maximum);
    # backward: relu'(0) = 0 and a NaN input passes the gradient (torch's
    # threshold_backward).
    nr = mm.NV * lanes_for(dtype)
    m, n, k = MR, 2 * nr + 3, 3
    relu = ACTIVATION_IDS["relu"]
    x = np.zeros((m, k), dtype)
    w = np.zeros((k, n), dtype)
    bias = np.zeros(n, dtype)
    bias[::3] = np.nan
    bias[1::3] = -1.0
    z = np.empty((m, n), dtype)
    y = np.empty((m, n), dtype)
    dense_forward(x, w, bias, z, y, relu)
    expected = np.where(np.isnan(bias), np.nan, 0.0)
    np.testing.assert_array_equal(y, np.tile(expected, (m, 1)).astype(dtype))
    np.testing.assert_array_equal(z, np.tile(bias, (m, 1)))

    z_saved = np.tile(bias, (m, 1))
    z_saved[:, 2::3] = 0.0
    z_saved[:, 2::6] = 2.0
    g = np.ones((m, k), dtype)
    wt = np.ones((n, k), dtype)  # g @ wt.T = k everywhere
    out = np.empty((m, n), dtype)
    plan = gemm_plan(m, n, k, dtype)
    work = np.empty(plan.workspace, dtype)
    gemm_into(g, wt, out, False, True, work, plan, y=z_saved, act_id=relu,
              derivative=True, z_saved=z_saved)
    keep = np.isnan(z_saved) | (z_saved > 0)
    np.testing.assert_array_equal(out, np.where(keep, float(k), 0.0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_derivative_epilogue_with_empty_k_gives_zeros(dtype):
    z_saved = np.array([[1.0, -1.0, np.nan]], dtype)
    out = np.full((1, 3), np.nan, dtype)
    plan = gemm_plan(1, 3, 0, dtype)
    gemm_into(np.empty((1, 0), dtype), np.empty((3, 0), dtype), out, False, True,
              np.empty(plan.workspace, dtype), plan, act_id=ACTIVATION_IDS["relu"],
              derivative=True, z_saved=z_saved)
    np.testing.assert_array_equal(out, [[0.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------
# Bad input: clear TypeError / ValueError naming the argument
# ---------------------------------------------------------------------------------------

F32 = np.float32


@pytest.mark.parametrize(
    "a,b,out,kwargs,error,match",
    [
        ([[1.0]], np.ones((1, 1), F32), np.ones((1, 1), F32), {}, TypeError,
         "a must be a numpy.ndarray"),
        (np.ones((2, 2), np.int64), np.ones((2, 2), F32), np.ones((2, 2), F32), {},
         TypeError, "a must have dtype float32 or float64"),
        (np.ones((2, 2), F32), np.ones((2, 2)), np.ones((2, 2), F32), {}, TypeError,
         "b must have dtype float32"),
        (np.ones((2, 2), F32), np.ones((2, 2), F32), np.ones((2, 2)), {}, TypeError,
         "out must have dtype float32"),
        (np.ones(4, F32), np.ones((4, 2), F32), np.ones((1, 2), F32), {}, ValueError,
         "a must be 2-D"),
        (np.ones((2, 3), F32), np.ones((2, 3), F32), np.ones((2, 3), F32), {}, ValueError,
         "inner dimensions differ: a is 2 x 3 but b is 2 x 3"),
        (np.ones((2, 3), F32), np.ones((2, 3), F32), np.ones((2, 3), F32),
         {"transpose_a": True}, ValueError, r"out must have shape \(3, 3\)"),
        (np.ones((3, 2), F32).T, np.ones((3, 2), F32), np.ones((2, 2), F32), {},
         ValueError, r"a must be C-contiguous; pass numpy.ascontiguousarray\(a\)"),
        (np.ones((2, 2), F32), np.ones((2, 2), F32), np.ones((2, 2), F32),
         {"transpose_a": 1}, TypeError, "transpose_a must be a bool"),
    ],
)
def test_matmul_rejects_bad_input(a, b, out, kwargs, error, match):
    with pytest.raises(error, match=match):
        matmul(a, b, out, **kwargs)


def test_matmul_rejects_read_only_and_overlapping_out():
    a = np.ones((4, 4), F32)
    out = np.ones((4, 4), F32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        matmul(a, a.copy(), out)
    with pytest.raises(ValueError, match="out must not overlap a"):
        matmul(a, np.ones((4, 4), F32), a)
    buf = np.ones((8, 4), F32)
    with pytest.raises(ValueError, match="out must not overlap b"):
        matmul(a, buf[:4], buf[2:6])


def test_dense_forward_rejects_bad_input():
    x = np.ones((3, 4), F32)
    w = np.ones((4, 5), F32)
    z = np.empty((3, 5), F32)
    y = np.empty((3, 5), F32)
    relu = ACTIVATION_IDS["relu"]
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        dense_forward(x, w, np.ones(4, F32), z, y, relu)
    with pytest.raises(TypeError, match="bias must have dtype float32"):
        dense_forward(x, w, np.ones(5), z, y, relu)
    with pytest.raises(ValueError, match=r"y must have shape \(3, 5\)"):
        dense_forward(x, w, None, z, np.empty((5, 3), F32), relu)
    with pytest.raises(ValueError, match="y must not overlap z"):
        dense_forward(x, w, None, z, z[:, :], relu)
    with pytest.raises(ValueError, match="act_id 99 is not an elementwise activation id"):
        dense_forward(x, w, None, z, y, 99)
    with pytest.raises(TypeError, match="act_id must be an int"):
        dense_forward(x, w, None, z, y, "relu")
    with pytest.raises(ValueError, match="inner dimensions differ: x is 3 x 4 but w is 5 x 5"):
        dense_forward(x, np.ones((5, 5), F32), None, z, y, relu)


# ---------------------------------------------------------------------------------------
# Narrow outputs (n <= NARROW_N): dot products without packing, with every epilogue
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", TRANSPOSES)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (200, 100, 1), (13, 1, 2), (37, KC + 5, 3),
                                   (5, 9, mm.NARROW_N)])
def test_narrow_outputs_take_dot_products_with_bias_relu_and_derivative(m, k, n, ta, tb,
                                                                         dtype):
    rng = np.random.default_rng(m + k + n)
    a, b = _operands(rng, m, k, n, ta, tb, dtype)
    plan = gemm_plan(m, n, k, dtype)
    assert plan.narrow and not plan.parallel
    work = np.full(plan.workspace, np.nan, dtype)  # stale content must not leak
    ref, scale = _reference(a, b, ta, tb)
    tol = (1e-5 if dtype == np.float32 else 1e-13) * (k + 1)
    bias = rng.standard_normal(n).astype(dtype)

    z = np.full((m, n), np.nan, dtype)
    y = np.full((m, n), np.nan, dtype)
    gemm_into(a, b, z, ta, tb, work, plan, bias=bias, y=y, act_id=ACTIVATION_IDS["relu"])
    assert np.all(np.abs(z - (ref + bias)) <= tol * (scale + np.abs(bias)))
    np.testing.assert_array_equal(y, np.maximum(z, 0))

    saved = rng.standard_normal((m, n)).astype(dtype)
    dx = np.full((m, n), np.nan, dtype)
    gemm_into(a, b, dx, ta, tb, work, plan, act_id=ACTIVATION_IDS["relu"],
              derivative=True, z_saved=saved)
    keep = saved > 0
    assert (dx[~keep] == 0).all()
    assert np.all(np.abs(dx - ref * keep) <= tol * scale * keep)

    tanh = np.full((m, n), np.nan, dtype)  # an activation outside the epilogue
    gemm_into(a, b, tanh, ta, tb, work, plan, bias=bias, act_id=ACTIVATION_IDS["tanh"])
    tol_tanh = 1e-5 if dtype == np.float32 else 1e-12
    assert np.all(np.abs(tanh - np.tanh(ref + bias)) <= tol_tanh * (1 + scale))


def test_one_column_past_narrow_n_is_packed_again():
    assert gemm_plan(200, mm.NARROW_N, 100, np.float64).narrow
    assert not gemm_plan(200, mm.NARROW_N + 1, 100, np.float64).narrow
    assert not gemm_plan(200, 1, 0, np.float64).narrow  # k == 0: the zero fill


# ---------------------------------------------------------------------------------------
# Few steps of k (k <= SMALL_K): no packing, the epilogue from the registers
# ---------------------------------------------------------------------------------------

# (m, k, n): row counts past whole blocks of four (1, 3, 5, 61, 99, 103), outputs of
# whole vector pairs only (32; 16 in float64), of a partial last vector only (5
# columns), and of both (100 = 6 pairs of float64 vectors and 4 columns; 3 pairs of
# float32 and 4), k = 1 and k = SMALL_K. Shapes whose plan is not swapped in either dtype.
SMALL_K_SHAPES = [(1, 1, 5), (3, 1, 97), (4, 7, 32), (5, mm.SMALL_K, 16), (61, 9, 50),
                  (99, 3, 70), (103, 10, 100), (104, 10, 100)]


def _packed_plan(k, dtype):
    """A serial packed plan, one panel per task: the path the small-k products took
    before, whose bits theirs must equal."""
    nr = mm.NV * lanes_for(dtype)
    kce = min(mm.kc_for(dtype), k)
    threads = numbanet.threads.max_threads()
    return GemmPlan(1, 1, threads * (MR * kce + nr * kce + MR * nr), False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", TRANSPOSES)
@pytest.mark.parametrize("m,k,n", SMALL_K_SHAPES)
def test_small_k_products_equal_the_packed_path_bitwise_with_every_epilogue(m, k, n, ta, tb,
                                                                            dtype):
    rng = np.random.default_rng(m + 7 * k + n)
    a, b = _operands(rng, m, k, n, ta, tb, dtype)
    plan = gemm_plan(m, n, k, dtype)
    assert plan.small_k and not plan.parallel
    packed = _packed_plan(k, dtype)
    ref, scale = _reference(a, b, ta, tb)
    tol = (1e-5 if dtype == np.float32 else 1e-13) * (k + 1)
    bias = rng.standard_normal(n).astype(dtype)
    saved = rng.standard_normal((m, n)).astype(dtype)
    relu, tanh = ACTIVATION_IDS["relu"], ACTIVATION_IDS["tanh"]
    epilogues = [{}, {"bias": bias}, {"bias": bias, "act_id": relu},
                 {"bias": bias, "act_id": ACTIVATION_IDS["identity"]},
                 {"act_id": relu, "derivative": True, "z_saved": saved},
                 {"bias": bias, "act_id": tanh}]
    for epilogue in epilogues:
        results = []
        for p in (plan, packed):
            work = np.full(p.workspace, np.nan, dtype)  # stale content must not leak
            out = np.full((m, n), np.nan, dtype)
            y = np.full((m, n), np.nan, dtype)
            act = epilogue.get("act_id", -1)
            gemm_into(a, b, out, ta, tb, work, p,
                      y=y if act >= 0 and not epilogue.get("derivative") else None,
                      **epilogue)
            results.append((out, y))
        for new, old in zip(results[0], results[1], strict=True):
            np.testing.assert_array_equal(new, old)
        out, y = results[0]
        expected = ref + (bias if "bias" in epilogue else 0)
        if epilogue.get("derivative"):
            expected = ref * (saved > 0)
            assert (out[saved <= 0] == 0).all()
        assert np.all(np.abs(out - expected) <= tol * (scale + np.abs(bias)))
        if epilogue.get("act_id") == tanh:  # its own pass, into y
            assert np.all(np.abs(y - np.tanh(expected)) <= 10 * tol * (1 + scale))
        if epilogue.get("act_id") == relu and not epilogue.get("derivative"):
            np.testing.assert_array_equal(y, np.maximum(out, 0))


def test_small_k_plans_only_for_serial_short_products_neither_narrow_nor_swapped():
    f64 = np.float64
    nr = mm.NV * lanes_for(f64)
    assert gemm_plan(200, 100, mm.SMALL_K, f64).small_k
    assert not gemm_plan(200, 100, mm.SMALL_K + 1, f64).small_k
    assert not gemm_plan(200, 100, 0, f64).small_k  # k == 0: the zero fill
    assert gemm_plan(200, mm.NARROW_N, 10, f64).narrow  # a few columns: dot products
    assert not gemm_plan(200, mm.NARROW_N, 10, f64).small_k
    assert gemm_plan(200, 10, 10, f64).swap  # a classifier's 10 outputs: tiled transposed
    assert not gemm_plan(200, 10, 10, f64).small_k
    # op(b) past SMALL_K_B_ELEMENTS (an im2col convolution's long output) stays packed.
    long_n = mm.SMALL_K_B_ELEMENTS // 8 + 1
    assert not gemm_plan(12, long_n, 8, f64).small_k
    # Parallel products keep the packed path; on a one-thread pool the same shape is
    # serial and takes the small-k kernel (same bits either way).
    assert not mm._plan(100_000, 100, 10, nr, 2).small_k
    assert mm._plan(100_000, 100, 10, nr, 1).small_k
