"""The fused training step of an all-Dense model (numbanet.nn.dense_stack).

Facts checked: the stack's gradients equal a NumPy backpropagation, with one row shard
and with several; with one shard a step through the stack equals a step through the
layers' own methods bit for bit (every architecture feature the stack handles:
activations with and without parameters, in-place and separate outputs, fused ReLU
derivatives, narrow and swapped products, remainder batches, both dtypes), and with
several it equals them to rounding, its forward pass still bit for bit; the stack steps
aside where it should; thread counts change nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

import numbanet as nbn
from numbanet.nn import Dense, Dropout, Sequential
from numbanet.nn.dense_stack import MIN_SHARD_ROWS, MIN_SHARD_WORK, shard_count
from numbanet.specs import PluginError
from numbanet.threads import max_threads


def _mlp(widths, activations, dtype="float64", fused=True, seed=0):
    layers = [Dense(a, b, activation=act)
              for a, b, act in zip(widths[:-1], widths[1:], activations, strict=True)]
    model = Sequential(layers, seed=seed, dtype=dtype).compile(loss="cross_entropy",
                                                              optimizer="adam")
    if not fused:
        model._dense_stack = None  # the layers' own forward and backward methods
    return model


def _batch(rows, widths, dtype, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, widths[0])).astype(dtype),
            rng.integers(0, widths[-1], rows))


def _numpy_gradients(model, X, y):
    """Mean softmax cross-entropy gradients of a ReLU/tanh MLP, by NumPy alone."""
    acts = {"relu": (lambda z: np.maximum(z, 0), lambda z, a: (z > 0).astype(z.dtype)),
            "tanh": (np.tanh, lambda z, a: 1 - a * a),
            "identity": (lambda z: z, lambda z, a: np.ones_like(z))}
    h, saved = X.astype(np.float64), []
    for layer in model.layers:
        z = h @ layer.weight.value + layer.bias.value
        a = acts[layer.activation][0](z)
        saved.append((h, z, a))
        h = a
    p = np.exp(h - h.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    grad = p / len(y)
    grads = []
    for layer, (h_in, z, a) in zip(model.layers[::-1], saved[::-1], strict=True):
        dz = grad * acts[layer.activation][1](z, a)
        grads.append((h_in.T @ dz, dz.sum(axis=0)))
        grad = dz @ layer.weight.value.T
    return grads[::-1]


def test_shard_count_needs_rows_and_work_for_every_shard():
    work = MIN_SHARD_WORK  # multiply-adds per row: every row is enough work for a shard
    assert [shard_count(r, work) for r in (1, 2 * MIN_SHARD_ROWS - 1, 2 * MIN_SHARD_ROWS,
                                           4 * MIN_SHARD_ROWS, 10**6)] == [1, 1, 2, 4, 8]
    rows = 8 * MIN_SHARD_ROWS
    assert shard_count(rows, 2 * MIN_SHARD_WORK // rows - 1) == 1
    assert shard_count(rows, 2 * MIN_SHARD_WORK // rows) == 2


@pytest.mark.parametrize("rows, shards", [(37, 1), (4 * MIN_SHARD_ROWS + 3, 4)])
def test_stack_gradients_match_numpy_backpropagation(rows, shards):
    model = _mlp((13, 64, 32, 5), ("relu", "tanh", None))
    assert model._dense_stack.step_for(rows).table.shape[0] == shards
    X, y = _batch(rows, (13, 64, 32, 5), "float64")
    expected = _numpy_gradients(model, X, y)
    params_before = model.flat_parameters.copy()
    model.train_step(X, y)
    model.flat_parameters[...] = params_before  # gradients are of the weights before
    for layer, (dw, db) in zip(model.layers, expected, strict=True):
        np.testing.assert_allclose(layer.weight.grad, dw, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.bias.grad, db, rtol=1e-10, atol=1e-12)


CASES = [
    # widths, activations, batch rows: the plans and epilogues each exercises
    ((64, 32, 10), ("relu", None), 32),  # ReLU fused into the dx epilogue; swapped dW
    ((20, 100, 4), ("relu", None), 100),  # narrow (n <= 4) forward and dW products
    ((20, 100, 1), ("relu", None), 17),  # one output column
    ((30, 17, 9, 3), ("tanh", "gelu", "sigmoid"), 37),  # separate activation passes
    ((12, 16, 8), ("leaky_relu", "elu"), 5),  # activations with a parameter
    ((12, 16, 8), (None, "relu"), 1),  # identity hidden layer, ReLU on the output
    ((12, 3), (None,), 40),  # one layer: a linear model, no input gradient at all
    ((12, 1), ("sigmoid",), 300),  # one layer, one output column (narrow products)
    ((50, 40, 30, 20, 6), ("relu", "silu", "relu", "softplus"), 64),
    # several row shards (2, 4 and 8)
    ((20, 100, 4), ("relu", None), 200),
    ((30, 64, 48, 3), ("tanh", "gelu", "sigmoid"), 4 * MIN_SHARD_ROWS + 5),
    ((16, 96, 40), ("relu", None), 8 * MIN_SHARD_ROWS + 1),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("widths, activations, rows", CASES)
def test_stack_step_equals_layer_by_layer_step(widths, activations, rows, dtype):
    fused, layered = _mlp(widths, activations, dtype), _mlp(widths, activations, dtype,
                                                            fused=False)
    step = fused._dense_stack.step_for(rows)
    assert step is not None
    X, y = _batch(rows, widths, dtype)
    expected_outputs = layered.predict(X)
    losses = [(fused.train_step(X, y), layered.train_step(X, y))]
    # The forward pass does not depend on the sharding: bit for bit.
    np.testing.assert_array_equal(fused._dense_stack.output(step), expected_outputs)
    X2, y2 = _batch(max(1, rows // 3), widths, dtype, seed=2)  # a remainder batch
    losses += [(fused.train_step(Xb, yb), layered.train_step(Xb, yb))
               for Xb, yb in [(X2, y2), (X, y)]]
    if fused._dense_stack.step_for(rows).table.shape[0] == 1:
        assert all(a == b for a, b in losses)
        assert np.array_equal(fused.flat_gradients, layered.flat_gradients)
        assert np.array_equal(fused.flat_parameters, layered.flat_parameters)
    else:  # the shards' gradients are added in another order: equal to rounding
        rtol = 1e-4 if dtype == "float32" else 1e-10
        np.testing.assert_allclose(*zip(*losses, strict=True), rtol=rtol)
        scale = np.abs(layered.flat_gradients).max()
        np.testing.assert_allclose(fused.flat_gradients, layered.flat_gradients,
                                   rtol=0, atol=rtol * scale)


@pytest.mark.filterwarnings("ignore:the last layer")  # softmax before the loss's softmax
@pytest.mark.parametrize("layers", [
    [Dense(8, 6, activation="relu"), Dropout(0.5), Dense(6, 3)],
    [Dense(8, 6, activation="relu"), Dense(6, 3, activation="softmax")],
], ids=["dropout", "row-wise activation"])
def test_stack_is_not_used_for_other_layers(layers):
    model = Sequential(layers, seed=0).compile(loss="cross_entropy", optimizer="adam")
    assert model._dense_stack is None
    X, y = _batch(10, (8, 3), "float32")
    assert np.isfinite(model.train_step(X, y))


def test_stack_is_not_used_for_a_dense_subclass():
    class LoggingDense(Dense):
        pass

    model = Sequential([LoggingDense(8, 4, activation="relu"), Dense(4, 2)], seed=0)
    assert model.compile(loss="cross_entropy", optimizer="sgd")._dense_stack is None


@pytest.mark.skipif(max_threads() < 2, reason="needs two threads")
@pytest.mark.parametrize("widths, rows, stack_at_2_threads", [
    ((256, 512, 10), 64, False),  # 64 x 256 x 512 multiply-adds: a parallel product
    ((256, 512, 3), 64, False),  # the same with a narrow output
    ((64, 100, 10), 4 * MIN_SHARD_ROWS, True),  # four shards, run in parallel
])
def test_stack_results_do_not_depend_on_the_thread_count(widths, rows, stack_at_2_threads):
    X, y = _batch(rows, widths, "float32")
    results = []
    try:
        for threads in (1, max_threads()):
            nbn.set_num_threads(threads)
            model = _mlp(widths, ("relu", None), "float32")
            used = model._dense_stack.step_for(rows) is not None
            assert used == (threads == 1 or stack_at_2_threads)
            losses = [model.train_step(X, y) for _ in range(3)]
            results.append((losses, model.flat_parameters.copy()))
    finally:
        nbn.set_num_threads(max_threads())
    assert results[0][0] == results[1][0]
    assert np.array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("rows", [37, 4 * MIN_SHARD_ROWS + 5], ids=["1 shard", "4 shards"])
@pytest.mark.parametrize("loss, targets", [
    ("cross_entropy", "labels"),
    ("cross_entropy", "probabilities"),  # the spec's dense-target kernel
    ("mse", "values"),
], ids=["labels", "probabilities", "mse"])
def test_fused_loss_rows_equal_the_loss_hosts_pass(rows, loss, targets):
    """The loss rows run inside the stack's pass, sample-weighted or not: the same loss
    values and gradients as the loss host's own driver after the layers' methods."""
    widths = (20, 100, 4)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((rows, widths[0]))
    if targets == "labels":
        y = rng.integers(0, widths[-1], rows)
    else:
        y = rng.random((rows, widths[-1]))
        if targets == "probabilities":
            y /= y.sum(axis=1, keepdims=True)
    weight = rng.random(rows) * 2
    models = []
    for fused in (True, False):
        model = _mlp(widths, ("relu", None), fused=fused)
        model.compile(loss=loss, optimizer="adam")
        if not fused:
            model._dense_stack = None
        models.append(model)
    assert models[0]._dense_stack.step_for(rows) is not None
    for model in models:
        model.fit(X, y, epochs=2, batch_size=rows, sample_weight=weight, shuffle=False,
                  verbose=0)
        model.fit(X, y, epochs=1, batch_size=rows, shuffle=False, verbose=0)
    fused, layered = models
    if fused._dense_stack.step_for(rows).table.shape[0] == 1:
        assert np.array_equal(fused.flat_parameters, layered.flat_parameters)
    else:
        np.testing.assert_allclose(fused.flat_parameters, layered.flat_parameters,
                                   rtol=1e-9, atol=1e-12)


PLUGIN_LOSSES = '''
@kernel
def half_square_kernel(r, x, t, aux, hp, gs, grad):
    s = 0.0
    for j in range(x.shape[1]):
        d = x[r, j] - t[r, j]
        s += 0.5 * d * d
        grad[r, j] = gs * d
    return s


@kernel
def raising_kernel(r, x, t, aux, hp, gs, grad):
    if r == 200:
        raise ValueError("row 200 is cursed")
    for j in range(x.shape[1]):
        grad[r, j] = gs
    return 0.0


@kernel
def typo_kernel(r, x, t, aux, hp, gs, grad):
    return x[r, 0] * "oops"


@hookimpl
def numbanet_register_losses():
    return [LossSpec("halfsquare", half_square_kernel, target="dense"),
            LossSpec("raising", raising_kernel, target="dense"),
            LossSpec("typo", typo_kernel, target="dense")]
'''


def _plugin_loss_model(loss):
    model = _mlp((16, 96, 3), ("relu", None), fused=True)
    return model.compile(loss=loss, optimizer=nbn.get_optimizer("sgd", lr=0.1))


@pytest.mark.parametrize("threads", sorted({1, max_threads()}))
def test_a_plugin_loss_runs_inside_the_stack(make_dist, threads):
    make_dist("numbanet-halfsquare", PLUGIN_LOSSES)
    rows = 8 * MIN_SHARD_ROWS + 1
    rng = np.random.default_rng(0)
    X, T = rng.standard_normal((rows, 16)), rng.standard_normal((rows, 3))
    model = _plugin_loss_model("halfsquare")
    assert model._dense_stack.step_for(rows).table.shape[0] > 1
    out = model.predict(X)
    try:
        nbn.set_num_threads(threads)
        loss = model.train_step(X, T)
    finally:
        nbn.set_num_threads(max_threads())
    assert loss == pytest.approx(0.5 * np.sum((out - T) ** 2) / rows, rel=1e-12)


@pytest.mark.skipif(max_threads() < 2, reason="needs two threads")
def test_a_plugin_loss_that_raises_in_a_parallel_pass_names_the_plugin(make_dist):
    make_dist("numbanet-halfsquare", PLUGIN_LOSSES)
    rows = 8 * MIN_SHARD_ROWS
    X, T = np.ones((rows, 16)), np.zeros((rows, 3))
    model = _plugin_loss_model("raising")
    with pytest.raises(PluginError, match="numbanet-halfsquare:raising.*row 200"):
        model.train_step(X, T)
    with pytest.raises(TypeError, match="numbanet-halfsquare:typo.*does not compile"):
        _plugin_loss_model("typo").train_step(X, T)
    # The loss host's own parallel driver (the layers' path, a batch large enough for
    # it) raises the kernel's exception too, not Numba's SystemError.
    model._dense_stack = None
    rows = 6000
    with pytest.raises(PluginError, match="numbanet-halfsquare:raising.*row 200"):
        model.train_step(np.ones((rows, 16)), np.zeros((rows, 3)))


def test_a_loss_wrapper_without_the_fused_entry_keeps_its_own_forward_backward():
    """A wrapper that forwards attributes to a loss (``__getattr__``) but overrides
    ``forward_backward_unchecked`` is not bypassed by the stack's fused loss rows."""

    class Doubling:
        def __init__(self, loss):
            self._loss = loss

        def __getattr__(self, name):
            return getattr(self._loss, name)

        def forward_backward_unchecked(self, outputs, targets, grad):
            value = self._loss.forward_backward_unchecked(outputs, targets, grad)
            grad *= 2
            return 2 * value

    widths = (12, 16, 3)
    X, y = _batch(40, widths, "float64")
    plain, wrapped = _mlp(widths, ("relu", None)), _mlp(widths, ("relu", None))
    wrapped.loss = Doubling(wrapped.loss)
    assert wrapped.train_step(X, y) == 2 * plain.train_step(X, y)
    np.testing.assert_allclose(wrapped.flat_gradients, 2 * plain.flat_gradients, rtol=1e-12)
