"""BatchNorm and LayerNorm: PyTorch parity, running statistics, determinism, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import numbanet as nbn
from numbanet import io as nio
from numbanet.kernels import norm as K
from numbanet.testing import check_layer, gradcheck

RTOL = {"float64": 1e-10, "float32": 1e-4}


def close(ours, theirs, dtype, what, scale=0.0):
    """Equal to ``RTOL[dtype]``, relative to each element and to the array's scale (or
    ``scale``, the size of the terms that cancel in it, when that is larger)."""
    theirs = np.asarray(theirs, dtype=np.float64)
    scale = max(float(np.abs(theirs).max()), scale, 1e-30)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL[dtype], atol=RTOL[dtype] * scale,
                               err_msg=what)


def one_layer(layer, in_shape, dtype):
    return nbn.Sequential([layer], seed=0, dtype=dtype, input_shape=in_shape)


def randomize(model, rng):
    """Weights away from their initial ones and gamma, beta, then the model's values."""
    for p in model.parameters():
        p.value[...] = rng.normal(size=p.value.shape) + (1.0 if p.name.endswith("weight") else 0)


# -- BatchNorm against torch --------------------------------------------------------


def torch_batch_norm(torch, x, layer, training, dtype, running=None):
    """torch's BatchNorm{1d,2d} with the layer's hyperparameters, parameters and buffers
    (or ``running = (mean, var)``), run on our channels-last ``x``; returns (module, leaf
    input tensor, output in our layout)."""
    c = layer.num_features
    bn = (torch.nn.BatchNorm2d if x.ndim == 4 else torch.nn.BatchNorm1d)(
        c, eps=layer.eps, momentum=layer.momentum, affine=layer.affine).to(getattr(torch, dtype))
    mean, var = running or (layer.buffer("running_mean"), layer.buffer("running_var"))
    with torch.no_grad():
        if layer.affine:
            bn.weight.copy_(torch.tensor(layer.parameter("weight").value))
            bn.bias.copy_(torch.tensor(layer.parameter("bias").value))
        bn.running_mean.copy_(torch.tensor(mean))
        bn.running_var.copy_(torch.tensor(var))
    bn.train(training)
    tx = torch.tensor(x, requires_grad=True)
    if x.ndim == 2:
        return bn, tx, bn(tx)
    # Channels-last here, channels-first in torch: move the last axis to 1 and back.
    ty = bn(tx.permute(0, x.ndim - 1, *range(1, x.ndim - 1)))
    return bn, tx, ty.permute(0, *range(2, x.ndim), 1)


BN_SHAPES = [
    (4, 3),            # (N, F)
    (7, 5),            # odd sizes
    (2, 1),            # two rows, one feature
    (3, 6, 4),         # (N, L, C): BatchNorm1d on (N, C, L)
    (1, 3, 2, 5),      # batch 1 of images: legal, 6 values per channel
    (3, 5, 7, 4),      # odd, non-square images
    (2, 33, 17, 3),    # enough rows for several reduction chunks
    (3, 5, 7, 48),     # whole SIMD vectors per row (register column sums)
    (2, 40, 41, 16),   # whole vectors, several chunks, a partial run of rows
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_training_matches_torch(shape, affine, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(sum(shape))
    model = one_layer(nbn.BatchNorm(shape[-1], affine=affine, momentum=0.3), shape[1:], dtype)
    randomize(model, rng)
    layer = model.layers[0]
    x = (rng.normal(size=shape) * 2 + 3).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    y = model.forward(x, training=True)
    dx = model.backward(dy)

    c = shape[-1]
    bn, tx, ty = torch_batch_norm(torch, x, layer, True, dtype,
                                  running=(np.zeros(c, dtype), np.ones(c, dtype)))
    ty.backward(torch.tensor(dy))
    close(y, ty.detach().numpy(), dtype, "output")
    # dx = a * (dy - mean(dy) - xhat * mean(dy * xhat)): with two rows the terms cancel
    # (only eps keeps dx from zero), so compare to the terms' size.
    invstd = 1 / np.sqrt(x.reshape(-1, c).var(axis=0).min() + layer.eps)
    gamma = np.abs(layer.parameter("weight").value).max() if affine else 1.0
    close(dx, tx.grad.numpy(), dtype, "input gradient", scale=np.abs(dy).max() * gamma * invstd)
    if affine:
        close(layer.parameter("weight").grad, bn.weight.grad.numpy(), dtype, "weight gradient")
        close(layer.parameter("bias").grad, bn.bias.grad.numpy(), dtype, "bias gradient")
    close(layer.buffer("running_mean"), bn.running_mean.numpy(), dtype, "running_mean")
    close(layer.buffer("running_var"), bn.running_var.numpy(), dtype, "running_var")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(5, 3), (1, 4), (2, 3, 3, 2), (1, 1, 1, 6)], ids=str)
def test_batch_norm_inference_matches_torch_with_gradients(shape, dtype):
    """Running statistics normalise; gradients then skip the batch-statistics terms
    (batch 1 is legal here)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    model = one_layer(nbn.BatchNorm(shape[-1]), shape[1:], dtype)
    randomize(model, rng)
    layer = model.layers[0]
    layer.buffer("running_mean")[...] = rng.normal(size=shape[-1])
    layer.buffer("running_var")[...] = rng.uniform(0.5, 2.0, size=shape[-1])
    before = model.get_weights()
    x = rng.normal(size=shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    y = model.forward(x, training=False)
    dx = model.backward(dy)
    bn, tx, ty = torch_batch_norm(torch, x, layer, False, dtype)
    ty.backward(torch.tensor(dy))
    close(y, ty.detach().numpy(), dtype, "output")
    close(dx, tx.grad.numpy(), dtype, "input gradient")
    close(layer.parameter("weight").grad, bn.weight.grad.numpy(), dtype, "weight gradient")
    close(layer.parameter("bias").grad, bn.bias.grad.numpy(), dtype, "bias gradient")
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # inference leaves the buffers alone


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batch_norm_running_statistics_match_torch_after_five_sgd_steps(dtype):
    """Dense -> BatchNorm -> ReLU -> Dense trained five SGD steps in both libraries: the
    same running statistics, parameters and inference outputs."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    model = nbn.Sequential([nbn.Dense(6, 5), nbn.BatchNorm(5, momentum=0.2),
                            nbn.Activation("relu"), nbn.Dense(5, 3)], seed=3, dtype=dtype)
    tdtype = getattr(torch, dtype)
    lin1, lin2 = torch.nn.Linear(6, 5).to(tdtype), torch.nn.Linear(5, 3).to(tdtype)
    bn = torch.nn.BatchNorm1d(5, momentum=0.2).to(tdtype)
    with torch.no_grad():
        for lin, layer in ((lin1, model.layers[0]), (lin2, model.layers[3])):
            lin.weight.copy_(torch.tensor(layer.weight.value.T))
            lin.bias.copy_(torch.tensor(layer.bias.value))
    reference = torch.nn.Sequential(lin1, bn, torch.nn.ReLU(), lin2)
    lr = 0.1
    for _ in range(5):
        x = (rng.normal(size=(9, 6)) + 1).astype(dtype)
        t = rng.normal(size=(9, 3)).astype(dtype)
        out = model.forward(x, training=True)
        model.backward(out - t)  # d/d(out) of 0.5 * sum((out - t)**2)
        for p in model.parameters():
            p.value[...] -= lr * p.grad
        reference.train()
        reference.zero_grad()
        loss = 0.5 * ((reference(torch.tensor(x)) - torch.tensor(t)) ** 2).sum()
        loss.backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= lr * p.grad
    layer = model.layers[1]
    close(layer.buffer("running_mean"), bn.running_mean.numpy(), dtype, "running_mean")
    close(layer.buffer("running_var"), bn.running_var.numpy(), dtype, "running_var")
    close(layer.parameter("weight").value, bn.weight.detach().numpy(), dtype, "gamma")
    close(layer.parameter("bias").value, bn.bias.detach().numpy(), dtype, "beta")
    x = rng.normal(size=(4, 6)).astype(dtype)
    reference.eval()
    close(model.predict(x), reference(torch.tensor(x)).detach().numpy(), dtype,
          "inference output")


def test_batch_norm_buffers_change_only_in_training_forward():
    rng = np.random.default_rng(3)
    model = one_layer(nbn.BatchNorm(4), (4,), "float64")
    buffers = model.buffers()
    assert sorted(buffers) == ["0.running_mean", "0.running_var"]
    np.testing.assert_array_equal(buffers["0.running_mean"], 0)
    np.testing.assert_array_equal(buffers["0.running_var"], 1)
    assert {p.name: p.role for p in model.parameters()} == {"0.weight": "norm",
                                                            "0.bias": "norm"}
    x = rng.normal(size=(6, 4))
    model.forward(x, training=False)
    model.predict(x)
    np.testing.assert_array_equal(buffers["0.running_mean"], 0)
    model.forward(x, training=True)
    np.testing.assert_allclose(buffers["0.running_mean"], 0.1 * x.mean(axis=0))
    np.testing.assert_allclose(buffers["0.running_var"], 0.9 + 0.1 * x.var(axis=0, ddof=1))
    saved = {k: v.copy() for k, v in buffers.items()}
    model.backward(rng.normal(size=(6, 4)))
    for k, v in buffers.items():
        np.testing.assert_array_equal(v, saved[k])


def test_batch_norm_with_one_value_per_feature_in_training_raises_like_torch():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.nn.BatchNorm1d(3)(torch.ones(1, 3))
    model = one_layer(nbn.BatchNorm(3), (3,), "float32")
    with pytest.raises(ValueError, match=r"more than 1 value per feature in training.*"
                                         r"\(1, 3\).*at least 2 samples"):
        model.forward(np.ones((1, 3)), training=True)
    np.testing.assert_array_equal(model.buffers()["0.running_mean"], 0)  # untouched
    assert model.forward(np.ones((1, 3)), training=False).shape == (1, 3)
    images = one_layer(nbn.BatchNorm(3), (1, 1, 3), "float32")
    with pytest.raises(ValueError, match="more than 1 value per feature"):
        images.forward(np.ones((1, 1, 1, 3)), training=True)
    assert images.forward(np.ones((2, 1, 1, 3)), training=True).shape == (2, 1, 1, 3)


# -- LayerNorm against torch --------------------------------------------------------

# Rows of at most four SIMD vectors are held in registers (K.LN_NARROW_VECTORS): 64
# float32 columns with AVX-512 are four whole vectors, 50 end in a partial one, 27
# float64 columns in three whole and a partial one (with AVX2, fewer of these are
# narrow); 1025 and 1024 columns take the general path. With AVX-512, rows of at least
# 4 KiB that are whole column blocks (K.LN_BLOCK_VECTORS vectors: 128 float32, 64
# float64 columns) take the column-block dx sweep: (256, 1024) in eight chunks of one
# run of rows (K.RUN_ROWS) each, (9, 1024) in one short run, and in float64 (70, 512)
# in a chunk of two runs and a short one.
LN_SHAPES = [(4, 6), (1, 5), (3, 1), (3, 5, 7, 4), (5, 64), (6, 50), (3, 4, 27), (2, 17),
             (2, 3, 1025), (7, 100), (9, 70), (256, 1024), (9, 1024), (70, 512)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", LN_SHAPES, ids=str)
def test_layer_norm_matches_torch(shape, affine, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(sum(shape))
    n = shape[-1]
    model = one_layer(nbn.LayerNorm(n, eps=1e-4, elementwise_affine=affine), shape[1:], dtype)
    randomize(model, rng)
    layer = model.layers[0]
    x = (rng.normal(size=shape) * 2 + 3).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    y = model.forward(x, training=True)
    dx = model.backward(dy)
    assert np.array_equal(model.forward(x, training=False), y)

    ln = torch.nn.LayerNorm(n, eps=1e-4, elementwise_affine=affine).to(getattr(torch, dtype))
    if affine:
        with torch.no_grad():
            ln.weight.copy_(torch.tensor(layer.parameter("weight").value))
            ln.bias.copy_(torch.tensor(layer.parameter("bias").value))
    tx = torch.tensor(x, requires_grad=True)
    ty = ln(tx)
    ty.backward(torch.tensor(dy))
    close(y, ty.detach().numpy(), dtype, "output")
    # dx's terms cancel (exactly, in theory, for one feature): compare to their size.
    gamma = np.abs(layer.parameter("weight").value).max() if affine else 1.0
    terms = np.abs(dy).max() * gamma / np.sqrt(x.var(axis=-1).min() + 1e-4)
    close(dx, tx.grad.numpy(), dtype, "input gradient", scale=terms)
    if affine and n == 1:  # xhat is 0: so is the gradient (torch's holds rounding noise)
        np.testing.assert_array_equal(layer.parameter("weight").grad, 0)
    elif affine:
        close(layer.parameter("weight").grad, ln.weight.grad.numpy(), dtype, "weight gradient")
    if affine:
        close(layer.parameter("bias").grad, ln.bias.grad.numpy(), dtype, "bias gradient")


def test_layer_norm_takes_a_one_element_tuple_and_refuses_more_axes():
    assert nbn.LayerNorm((8,)).normalized_shape == 8
    assert nbn.LayerNorm([8]).get_config()["normalized_shape"] == 8
    with pytest.raises(ValueError, match=r"normalized_shape must be an int.*\(4, 8\).*last "
                                         r"axis only"):
        nbn.LayerNorm((4, 8))


# -- shared properties --------------------------------------------------------------


def _large_runs(make, shape, dtype, threads):
    nbn.set_num_threads(threads)
    try:
        rng = np.random.default_rng(4)
        model = one_layer(make(), shape[1:], dtype)
        randomize(model, rng)
        x = (rng.normal(size=shape) + 2).astype(dtype)
        out = [model.forward(x, training=True), model.backward(rng.normal(size=shape))]
        out += [p.grad.copy() for p in model.parameters()]
        out += [b.copy() for b in model.buffers().values()]
        out.append(model.forward(x, training=False))
        return out
    finally:
        nbn.set_num_threads(nbn.threads.max_threads())


@pytest.mark.skipif(nbn.threads.max_threads() < 2, reason="needs 2 threads")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(256, 1024), (64, 16, 16, 64), (8, 33, 31, 9)], ids=str)
@pytest.mark.parametrize("make", [lambda c: nbn.BatchNorm(c), lambda c: nbn.LayerNorm(c)],
                         ids=["BatchNorm", "LayerNorm"])
def test_one_and_two_threads_are_bit_identical(make, shape, dtype):
    assert shape[0] * np.prod(shape[1:]) >= K.PARALLEL_MIN  # the parallel kernels run
    one = _large_runs(lambda: make(shape[-1]), shape, dtype, 1)
    two = _large_runs(lambda: make(shape[-1]), shape, dtype, 2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(300, 77), (64, 1024), (5, 3), (5000, 16), (777, 64),
                                   (2500, 27), (300, 1024), (150, 512), (70, 4100)],
                         ids=str)
def test_serial_and_parallel_twins_are_bit_identical(shape, dtype):
    """The serial twins against the parallel ones split into 2, 3 and 7 parts (the
    thread counts a user may run; the parts need not match Numba's threads, so one
    process checks them all). (70, 4100) has two column blocks per row chunk, so parts
    also end inside a chunk."""
    rng = np.random.default_rng(5)
    rows, cols = shape
    x = (rng.normal(size=shape) * 3 + 1).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    w, b = rng.normal(size=cols).astype(dtype), rng.normal(size=cols).astype(dtype)
    chunk = K.chunk_rows(rows, cols)
    results = []
    serial = (K._bn_forward_serial, K._bn_backward_serial, K._ln_forward_serial,
              K._ln_backward_serial)
    parallel = (K._bn_forward_parallel, K._bn_backward_parallel, K._ln_forward_parallel,
                K._ln_backward_parallel)
    for (bn_f, bn_b, ln_f, ln_b), parts in [(serial, 1), (parallel, 2), (parallel, 3),
                                            (parallel, 7)]:
        rm, rv = np.zeros(cols, dtype), np.ones(cols, dtype)
        stats, coef = np.zeros((4, cols)), np.zeros((4, cols), dtype)
        partials, acc = K.norm_partials(rows, cols), K.norm_partials(rows, cols, dtype)
        y, dx, dw, db = (np.empty_like(x), np.empty_like(x), np.empty(cols, dtype),
                         np.empty(cols, dtype))
        bn_f(x, True, 1e-5, 0.1, w, b, True, rm, rv, stats, coef, partials, acc, chunk,
             parts, False, y)
        bn_b(x, dy, w, True, True, True, stats, coef, partials, acc, chunk, parts, dw, db,
             dx)
        # The forward with a ReLU layer's pass folded in (eval mode: the running
        # statistics stay as they are) rectifies exactly that output.
        y_eval, y_relu = np.empty_like(x), np.empty_like(x)
        for relu, out in ((False, y_eval), (True, y_relu)):
            bn_f(x, False, 1e-5, 0.1, w, b, True, rm, rv, stats, coef, partials, acc,
                 chunk, parts, relu, out)
        np.testing.assert_array_equal(y_relu, np.where(y_eval < 0, 0, y_eval))
        mean, rstd = np.empty(rows), np.empty(rows)
        y2, dx2, dw2, db2 = (np.empty_like(x), np.empty_like(x), np.empty(cols, dtype),
                             np.empty(cols, dtype))
        ln_f(x, 1e-5, w, b, True, y2, mean, rstd, chunk)
        ln_b(x, dy, w, True, mean, rstd, True, dx2, partials, acc,
             K.ln_coefs(rows, cols, dtype), chunk, parts, dw2, db2)
        results.append([y, dx, dw, db, rm, rv, y2, dx2, dw2, db2, y_relu])
    for other in results[1:]:
        for a, b_ in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("nblocks", [1, 2, 3])
@pytest.mark.parametrize("nchunks", [1, 2, 3, 5, 8, 13, 16, 31])
def test_partials_tree_is_the_same_for_any_split(nchunks, nblocks):
    """The pairwise tree over chunk partials: each part folds the nodes within its whole
    chunks, the caller the rest. Integer-valued partials add exactly, so the total must
    equal NumPy's sum; random ones must give the serial fold's bits for every split."""
    rng = np.random.default_rng(nchunks * 10 + nblocks)
    exact = rng.integers(-1000, 1000, size=(nchunks, 2, 5)).astype(np.float64)
    noisy = rng.normal(size=(nchunks, 2, 5)) * 10.0 ** rng.integers(-8, 8, size=(nchunks, 1, 1))
    for data in (exact, noisy):
        whole = data.copy()
        K._fold_inside(whole, nchunks, 0, nchunks)
        if data is exact:
            np.testing.assert_array_equal(whole[0], exact.sum(axis=0))
        for nparts in range(1, nchunks * nblocks + 1):
            split = data.copy()
            for p in range(nparts):
                t0, t1 = K._part(nchunks * nblocks, nparts, p)
                c0, c1 = K._whole_chunks(t0, t1, nblocks)
                K._fold_inside(split, nchunks, c0, c1)
            K._fold_across(split, nchunks, nblocks, nparts)
            np.testing.assert_array_equal(split[0], whole[0])


@pytest.mark.parametrize("make", [lambda: nbn.BatchNorm(6, momentum=1.0),
                                  lambda: nbn.LayerNorm(6)], ids=["BatchNorm", "LayerNorm"])
def test_alternating_batch_shapes_match_fresh_layers(make):
    """The layers keep the last shape's buffers: a change of shape, and back, must use
    the buffers of the new shape (compared with a fresh model per call)."""
    rng = np.random.default_rng(7)
    model = one_layer(make(), (6,), "float64")
    for rows in (32, 5, 32, 5, 5):
        x, dy = rng.normal(size=(rows, 6)), rng.normal(size=(rows, 6))
        fresh = one_layer(make(), (6,), "float64")
        y = model.forward(x, training=True).copy()
        dx = model.backward(dy).copy()
        np.testing.assert_array_equal(y, fresh.forward(x, training=True))
        np.testing.assert_array_equal(dx, fresh.backward(dy))
        for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
            np.testing.assert_array_equal(p.grad, q.grad)


def test_batch_statistics_keep_their_precision_far_from_zero():
    """Shifted sums: a mean of 1e4 with unit spread loses nothing in float32 data."""
    rng = np.random.default_rng(6)
    x = (1e4 + rng.normal(size=(512, 8))).astype(np.float32)
    model = one_layer(nbn.BatchNorm(8, momentum=1.0), (8,), "float32")
    y = model.forward(x, training=True)
    ref = x.astype(np.float64)
    np.testing.assert_allclose(model.buffers()["0.running_var"], ref.var(axis=0, ddof=1),
                               rtol=1e-5)
    np.testing.assert_allclose(y, (ref - ref.mean(0)) / np.sqrt(ref.var(0) + 1e-5),
                               atol=2e-3)  # x itself holds 1e4 to float32's 1e-3


# check_layer drives a copy of each layer through its contract. Its thread, dtype and
# save/load checks each run several training forwards on one model and compare outputs
# that read the running statistics afterwards; momentum=1.0 makes those statistics the
# last batch's, the same after any number of identical steps.
CHECK_CASES = [
    ("BatchNorm-features", lambda: nbn.BatchNorm(64, momentum=1.0), (64,), {"batch": 1024}),
    ("BatchNorm-images", lambda: nbn.BatchNorm(3, momentum=1.0), (5, 7, 3), {"batch": 8}),
    ("BatchNorm-no-affine", lambda: nbn.BatchNorm(5, momentum=1.0, affine=False), (5,),
     {"batch": 16}),
    ("BatchNorm-frozen-statistics", lambda: nbn.BatchNorm(6, momentum=0.0), (6,),
     {"batch": 16}),
    ("LayerNorm-parallel", lambda: nbn.LayerNorm(64), (64,), {"batch": 1024}),
    ("LayerNorm-images", lambda: nbn.LayerNorm(3, eps=1e-3), (4, 5, 3), {"batch": 8}),
    ("LayerNorm-no-affine", lambda: nbn.LayerNorm(7, elementwise_affine=False), (2, 7),
     {"batch": 8}),
]


@pytest.mark.parametrize(("factory", "shape", "options"), [c[1:] for c in CHECK_CASES],
                         ids=[c[0] for c in CHECK_CASES])
def test_check_layer(factory, shape, options):
    check_layer(factory, shape, **options)


def test_finite_differences_through_a_network_with_batch_norm_and_residual():
    rng = np.random.default_rng(7)
    model = nbn.Sequential([
        nbn.Dense(5, 6, activation="tanh"),
        nbn.BatchNorm(6),
        nbn.Residual([nbn.Dense(6, 6, activation="tanh"), nbn.BatchNorm(6),
                      nbn.LayerNorm(6), nbn.Dense(6, 6)]),
        nbn.LayerNorm(6),
        nbn.Dense(6, 3),
    ], seed=1, dtype="float64")
    randomize(model, rng)
    X = rng.normal(size=(7, 5))
    U = rng.normal(size=(7, 3))

    def loss(_=None):
        return float(np.sum(model.forward(X, training=True) * U))

    loss()
    dx = model.backward(U)
    grads = {p.name: p.grad.copy() for p in model.parameters()}
    gradcheck(lambda x: float(np.sum(model.forward(x, training=True) * U)), X, dx,
              rtol=1e-6, atol=1e-8, label="input gradient")
    for p in model.parameters():
        gradcheck(loss, p.value, grads[p.name], rtol=1e-6, atol=1e-8, label=p.name)


def test_save_load_resume_keeps_the_buffers(tmp_path):
    rng = np.random.default_rng(8)
    X = rng.normal(size=(96, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)

    def make():
        model = nbn.Sequential([nbn.Dense(6, 8), nbn.BatchNorm(8), nbn.Activation("relu"),
                                nbn.Residual([nbn.Dense(8, 8), nbn.BatchNorm(8)]),
                                nbn.Dense(8, 2)], seed=0)
        return model.compile(loss="cross_entropy", optimizer="adam")

    straight = make()
    straight.fit(X, y, epochs=4, batch_size=16, verbose=0)
    first = make()
    first.fit(X, y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "bn.npz"
    first.save(path)
    loaded = nio.load(path)
    assert sorted(loaded.buffers()) == ["1.running_mean", "1.running_var",
                                        "3.1.running_mean", "3.1.running_var"]
    for name, buffer in first.buffers().items():
        np.testing.assert_array_equal(loaded.buffers()[name], buffer)
        assert not np.array_equal(buffer, 0 if name.endswith("mean") else 1)
    np.testing.assert_array_equal(loaded.predict(X), first.predict(X))
    loaded.fit(X, y, epochs=2, batch_size=16, verbose=0)
    np.testing.assert_array_equal(loaded.flat_parameters, straight.flat_parameters)
    np.testing.assert_array_equal(loaded.flat_buffers, straight.flat_buffers)


# -- bad input ------------------------------------------------------------------------


def test_wrong_feature_count_is_refused_before_any_kernel():
    with pytest.raises(ValueError, match=r"BatchNorm\(4\) normalises a last axis of 4 "
                                         r"features but receives samples of shape \(5,\)"):
        nbn.Sequential([nbn.BatchNorm(4)], input_shape=(5,))
    with pytest.raises(ValueError, match=r"channels-last: \(height, width, channels\)"):
        nbn.Sequential([nbn.BatchNorm(3)], input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"LayerNorm\(4\) normalises a last axis of 4"):
        nbn.Sequential([nbn.Dense(3, 5), nbn.LayerNorm(4)])
    model = nbn.Sequential([nbn.LayerNorm(4)])
    with pytest.raises(ValueError, match=r"layers\[0\] \(LayerNorm\(4\)\).*\(6,\)"):
        model.forward(np.ones((2, 6)))


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda: nbn.BatchNorm(0), ValueError, "BatchNorm: num_features must be >= 1, got 0"),
    (lambda: nbn.BatchNorm(4.0), TypeError, "num_features must be an int"),
    (lambda: nbn.BatchNorm(4, eps=-1e-5), ValueError, "eps must be >= 0"),
    (lambda: nbn.BatchNorm(4, momentum=1.5), ValueError, r"momentum must be in \[0, 1\]"),
    (lambda: nbn.BatchNorm(4, momentum=None), TypeError, "momentum must be a real number"),
    (lambda: nbn.BatchNorm(4, affine=1), TypeError, "affine must be a bool"),
    (lambda: nbn.LayerNorm(0), ValueError, "normalized_shape must be >= 1"),
    (lambda: nbn.LayerNorm(4, eps=float("nan")), ValueError, "eps must be"),
    (lambda: nbn.LayerNorm(4, elementwise_affine="no"), TypeError,
     "elementwise_affine must be a bool"),
])
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_config_round_trip_and_repr():
    bn = nbn.BatchNorm(8, eps=1e-3, momentum=0.05, affine=False)
    assert bn.get_config() == {"type": "BatchNorm", "num_features": 8, "eps": 1e-3,
                               "momentum": 0.05, "affine": False}
    assert repr(bn) == "BatchNorm(8, eps=0.001, momentum=0.05, affine=False)"
    assert nbn.nn.layer_from_config(bn.get_config()).get_config() == bn.get_config()
    ln = nbn.LayerNorm(8)
    assert repr(ln) == "LayerNorm(8)"
    assert nbn.nn.layer_from_config(ln.get_config()).get_config() == ln.get_config()
    assert {"BatchNorm", "LayerNorm"} <= set(nbn.list_layers())


def _at_page_offset(values: np.ndarray, offset: int) -> np.ndarray:
    """A copy of ``values`` whose first element sits ``offset`` bytes into a page."""
    raw = np.empty(values.nbytes + 2 * 4096, np.uint8)
    start = (offset - raw.ctypes.data) % 4096
    out = raw[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


def _page_gap(a: np.ndarray, b: np.ndarray) -> int:
    d = (a.ctypes.data - b.ctypes.data) % 4096
    return min(d, 4096 - d)


@pytest.mark.parametrize("make", [lambda c: nbn.BatchNorm(c), lambda c: nbn.LayerNorm(c)],
                         ids=["BatchNorm", "LayerNorm"])
def test_outputs_are_placed_a_quarter_page_from_their_inputs_with_the_same_values(make):
    """y sits >= 512 bytes (within a page) from x, and dx from both x and dy, wherever
    the caller's arrays start; the values are those of inputs at any other offset."""
    rng = np.random.default_rng(11)
    shape = (64, 1024)  # rows of one page of float32
    x0 = rng.normal(size=shape).astype(np.float32)
    dy0 = rng.normal(size=shape).astype(np.float32)
    reference = None
    model = one_layer(make(1024), (1024,), "float32")
    for ox, ody in [(16, 16), (0, 1024), (1040, 2064), (3088, 3100), (2048, 2000)]:
        x, dy = _at_page_offset(x0, ox), _at_page_offset(dy0, ody)
        y = model.layers[0].forward(x, True)
        assert _page_gap(y, x) >= 512
        dx = model.layers[0].backward(dy)
        assert min(_page_gap(dx, x), _page_gap(dx, dy)) >= 512
        grads = [p.grad.copy() for p in model.parameters()]
        got = [y.copy(), dx.copy(), *grads]
        if reference is None:
            reference = got
        for a, b in zip(got, reference, strict=True):
            np.testing.assert_array_equal(a, b)
