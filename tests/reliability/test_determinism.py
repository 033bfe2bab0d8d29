"""Determinism: every kernel and a full training run give bit-identical results under
1 and N threads, and across runs and processes.

Shapes are chosen just above each kernel's parallel threshold (64K elements for cheap
activations, row-wise and GEMM sizes well above theirs), so the ``prange`` path really
runs with N threads and is compared with the single-thread result.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import numbanet as nbn
from numbanet import kernels
from numbanet.kernels import activations as act
from numbanet.threads import max_threads

pytestmark = pytest.mark.skipif(max_threads() < 2, reason="needs at least 2 threads")

RNG = np.random.default_rng(123)
BIG = RNG.standard_normal((272, 260))  # 70,720 elements: above every elementwise threshold


def _under_1_and_n_threads(run):
    """``run()`` returns arrays/floats; call it with 1 then N threads, return both."""
    results = []
    previous = nbn.get_num_threads()
    try:
        for n in (1, max_threads()):
            nbn.set_num_threads(n)
            out = run()
            results.append([np.array(o, copy=True) for o in
                            (out if isinstance(out, tuple) else (out,))])
    finally:
        nbn.set_num_threads(previous)
    return results


def _assert_bitwise_equal(results):
    one, many = results
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.tobytes() == b.tobytes()  # also -0.0 vs 0.0 and NaN payloads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(act.ACTIVATIONS))
def test_activation_forward_and_backward_do_not_depend_on_threads(name, dtype):
    x = BIG.astype(dtype)
    dy = np.cos(BIG).astype(dtype)
    a = act.get_activation(name)

    def run():
        y, dx = np.empty_like(x), np.empty_like(x)
        a.forward(x, y)
        a.backward(x, y, dy, dx)
        return y, dx

    _assert_bitwise_equal(_under_1_and_n_threads(run))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("ta", "tb"), [(False, False), (True, False), (False, True),
                                        (True, True)])
def test_matmul_does_not_depend_on_threads(ta, tb, dtype):
    m, k, n = 203, 157, 181
    a = RNG.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = RNG.standard_normal((n, k) if tb else (k, n)).astype(dtype)

    def run():
        out = np.empty((m, n), dtype)
        kernels.matmul(a, b, out, transpose_a=ta, transpose_b=tb)
        return out

    _assert_bitwise_equal(_under_1_and_n_threads(run))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_forward_and_reductions_do_not_depend_on_threads(dtype):
    x = BIG.astype(dtype)
    w = RNG.standard_normal((260, 130)).astype(dtype)
    bias = RNG.standard_normal(130).astype(dtype)
    keep = RNG.random(x.shape).astype(dtype)

    def run():
        z, y = np.empty((272, 130), dtype), np.empty((272, 130), dtype)
        kernels.dense_forward(x, w, bias, z, y, act.ACTIVATION_IDS["relu"], 0.0)
        cols = np.empty(260, dtype)
        kernels.column_sum(x, cols)
        lse = np.empty(272, dtype)
        kernels.logsumexp_rows(x, lse)
        dropped = np.empty_like(x)
        kernels.dropout_forward(x, keep, 0.7, dropped)
        return (z, y, cols, lse, dropped, kernels.total_sum(x), kernels.sum_of_squares(x),
                kernels.all_finite(x))

    _assert_bitwise_equal(_under_1_and_n_threads(run))


@pytest.mark.parametrize("name", sorted(nbn.list_losses()))
def test_every_loss_value_and_gradient_do_not_depend_on_threads(name):
    loss = nbn.get_loss(name)
    n, c = 12_000, 3
    outputs = RNG.standard_normal((n, c))
    if name in ("cross_entropy", "nll", "hinge", "focal"):
        raw = RNG.integers(0, c, n)
    elif name == "binary_cross_entropy":
        raw = RNG.integers(0, 2, (n, c)).astype(np.float64)
    elif name == "kl_div":
        outputs = np.log(np.full((n, c), 1.0 / c))
        raw = RNG.dirichlet(np.ones(c), n)
    else:
        raw = RNG.standard_normal((n, c))
    try:
        targets = loss.prepare_targets(raw, c, np.dtype(np.float64))
    except (TypeError, ValueError):
        targets = loss.prepare_targets(RNG.integers(0, c, n), c, np.dtype(np.float64))

    def run():
        grad = np.empty_like(outputs)
        value = loss.forward_backward(outputs, targets, grad)
        return np.float64(value), grad

    _assert_bitwise_equal(_under_1_and_n_threads(run))


# 100_003: odd, above the update driver's parallel threshold; 7_517: between its
# EXACT_PARALLEL_MIN and SERIAL_THRESHOLD, where the built-in kernels (exact math) run in
# parallel with more than one thread and serially with one.
@pytest.mark.parametrize("size", [100_003, 7_517])
@pytest.mark.parametrize("name", sorted(nbn.list_optimizers()))
def test_every_optimizer_step_does_not_depend_on_threads(name, size):
    p0 = RNG.standard_normal(size).astype(np.float32)
    grads = [RNG.standard_normal(size).astype(np.float32) for _ in range(3)]

    def run():
        opt, p = nbn.get_optimizer(name), p0.copy()
        for g in grads:
            opt.step(p, g)
        return p

    _assert_bitwise_equal(_under_1_and_n_threads(run))


TRAIN = textwrap.dedent('''
    import hashlib
    import numpy as np
    import numbanet as nbn

    def train():
        X, y = nbn.datasets.load_digits()
        X = X[:720]
        y = y[:720]
        model = nbn.Sequential([nbn.Dense(64, 96, activation="relu"), nbn.Dropout(0.2),
                                nbn.Dense(96, 10)], seed=3, dtype="float32")
        model.compile(loss="cross_entropy", optimizer=nbn.get_optimizer("adam", lr=3e-3))
        history = model.fit(X, y, epochs=3, batch_size=96, validation_split=0.2, verbose=0,
                            clip_norm=5.0)
        digest = hashlib.sha256(model.flat_parameters.tobytes()).hexdigest()
        return digest, history["loss"] + history["val_loss"]
''')


def _train_here():
    namespace: dict = {}
    exec(TRAIN, namespace)  # the same source as the subprocess runs
    return namespace["train"]()


def test_training_run_is_identical_across_threads_runs_and_processes():
    d1, h1 = _train_with_threads(1)
    d2, h2 = _train_with_threads(max_threads())
    d3, h3 = _train_with_threads(max_threads())
    assert h1 == h2 == h3
    assert d1 == d2 == d3
    script = TRAIN + "\ndigest, hist = train()\nprint(digest)\nprint(repr(hist))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=300).stdout.split("\n")
    assert out[0] == d1
    assert out[1] == repr(h1)


def _train_with_threads(n):
    previous = nbn.get_num_threads()
    nbn.set_num_threads(n)
    try:
        return _train_here()
    finally:
        nbn.set_num_threads(previous)
