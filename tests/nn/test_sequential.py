"""Sequential and its layers: gradients by finite differences, buffers, init, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import numbanet as nbn
from numbanet.kernels.activations import ACTIVATIONS
from numbanet.nn import Activation, Dense, Dropout, Sequential

# Every activation (from the one activation table): each derivative is continuous almost
# everywhere, so central differences probe it away from kinks.
GRADCHECK_ACTIVATIONS = list(ACTIVATIONS)


def _numeric_grad(f, array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar function ``f()`` w.r.t. every entry of ``array``."""
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        plus = f()
        flat[i] = saved - eps
        minus = f()
        flat[i] = saved
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


@pytest.mark.parametrize("activation", GRADCHECK_ACTIVATIONS)
def test_sequential_gradients_match_finite_differences(activation):
    rng = np.random.default_rng(1)
    model = Sequential(
        [Dense(5, 7, activation=activation), Dense(7, 6, activation="tanh"), Dense(6, 3)],
        seed=3, dtype="float64",
    )
    X = rng.normal(size=(4, 5))
    weights = rng.normal(size=(4, 3))  # loss = sum(weights * outputs): d_out = weights

    def loss() -> float:
        return float(np.sum(weights * model.forward(X, training=False)))

    model.forward(X)
    dx = model.backward(weights)
    analytic = {p.name: p.grad.copy() for p in model.parameters()}
    for p in model.parameters():
        numeric = _numeric_grad(loss, p.value)
        np.testing.assert_allclose(analytic[p.name], numeric, rtol=1e-5, atol=1e-7,
                                   err_msg=p.name)
    np.testing.assert_allclose(dx, _numeric_grad(loss, X), rtol=1e-5, atol=1e-7)


def test_gradients_through_activation_and_dropout_layers():
    rng = np.random.default_rng(2)
    model = Sequential(
        [Dense(4, 6), Activation("sigmoid"), Dropout(0.5), Dense(6, 2), Activation("softmax")],
        seed=0, dtype="float64",
    )
    X = rng.normal(size=(3, 4))
    weights = rng.normal(size=(3, 2))
    # In inference mode dropout is the identity, so finite differences see a smooth function.
    model.forward(X, training=False)
    model.backward(weights)
    analytic = [p.grad.copy() for p in model.parameters()]

    def loss() -> float:
        return float(np.sum(weights * model.forward(X, training=False)))

    for p, grad in zip(model.parameters(), analytic, strict=True):
        np.testing.assert_allclose(grad, _numeric_grad(loss, p.value), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_in_place_outputs_backpropagate_through_dropout_unfused(activation):
    # These Dense layers keep one array (z overwritten by y); with a Dropout above, the
    # layer's own backward reads it (no fused derivative from the layer above). Widths
    # of 40 give full-width SIMD epilogue tiles.
    rng = np.random.default_rng(5)
    model = Sequential(
        [Dense(6, 40, activation=activation), Dropout(0.5), Dense(40, 40, activation="relu"),
         Dense(40, 3)],
        seed=2, dtype="float64",
    )
    X = rng.normal(size=(14, 6))
    weights = rng.normal(size=(14, 3))
    model.forward(X, training=False)  # inference: dropout is the identity
    model.backward(weights)
    analytic = [p.grad.copy() for p in model.parameters()]

    def loss() -> float:
        return float(np.sum(weights * model.forward(X, training=False)))

    for p, grad in zip(model.parameters(), analytic, strict=True):
        np.testing.assert_allclose(grad, _numeric_grad(loss, p.value), rtol=1e-5, atol=1e-7,
                                   err_msg=p.name)


def test_parameters_are_named_views_into_flat_buffers():
    model = Sequential([Dense(3, 4, activation="relu"), Dropout(0.1), Dense(4, 2)], seed=0)
    names = [p.name for p in model.parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for p, (name, start, stop, shape) in zip(model.parameters(), model.parameter_layout(),
                                             strict=True):
        assert p.name == name and p.value.shape == shape
        assert np.shares_memory(p.value, model.flat_parameters)
        assert np.shares_memory(p.grad, model.flat_gradients)
        assert p.value.flags.c_contiguous
        model.flat_parameters[start:stop] = 7.0
        assert np.all(p.value == 7.0)
    assert model.layers[0].weight.value.shape == (3, 4)
    assert model.layers[0].bias.value.shape == (4,)
    assert model.num_parameters == 3 * 4 + 4 + 4 * 2 + 2


def test_same_seed_gives_identical_weights_and_other_seeds_differ():
    def build(seed):
        return Sequential([Dense(20, 30, activation="relu"), Dense(30, 5)], seed=seed)

    a, b, c = build(7), build(7), build(8)
    assert np.array_equal(a.flat_parameters, b.flat_parameters)
    assert not np.array_equal(a.flat_parameters, c.flat_parameters)


def test_initialisation_scale_follows_activation():
    fan_in, fan_out = 400, 300
    relu = Sequential([Dense(fan_in, fan_out, activation="relu")], seed=0).layers[0]
    tanh = Sequential([Dense(fan_in, fan_out, activation="tanh")], seed=0).layers[0]
    he_limit = np.sqrt(6 / fan_in)
    glorot_limit = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(relu.weight.value).max() <= he_limit
    assert np.abs(relu.weight.value).max() > 0.95 * he_limit
    assert np.abs(tanh.weight.value).max() <= glorot_limit
    # Uniform on [-L, L] has variance L^2 / 3.
    np.testing.assert_allclose(relu.weight.value.var(), he_limit**2 / 3, rtol=0.05)
    assert np.all(relu.bias.value == 0)


def test_float32_forward_matches_float64_numpy_reference():
    rng = np.random.default_rng(0)
    model = Sequential([Dense(13, 17, activation="relu"), Dense(17, 5, activation="sigmoid")],
                       seed=1)
    X = rng.normal(size=(11, 13)).astype(np.float32)
    W1, b1, W2, b2 = (p.value.astype(np.float64) for p in model.parameters())
    hidden = np.maximum(X @ W1 + b1, 0)
    expected = 1 / (1 + np.exp(-(hidden @ W2 + b2)))
    out = model.forward(X, training=False)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_predict_in_batches_equals_one_pass():
    rng = np.random.default_rng(0)
    model = Sequential([Dense(6, 8, activation="tanh"), Dense(8, 3)], seed=0, dtype="float64")
    X = rng.normal(size=(103, 6))
    np.testing.assert_allclose(model.predict(X, batch_size=10), model.forward(X, training=False))


def test_dropout_drops_at_the_rate_and_scales_survivors():
    model = Sequential([Dense(1, 1000), Dropout(0.3)], seed=0, dtype="float64")
    model.layers[0].weight.value[...] = 1.0
    X = np.ones((50, 1))
    out = model.forward(X, training=True)
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(out[kept], 1 / 0.7)
    np.testing.assert_array_equal(model.forward(X, training=False), np.ones((50, 1000)))
    # Backward lets gradients through exactly where the forward kept the value.
    model.forward(X, training=True)
    kept = model.layers[1]._u < 0.7
    dx_layer = model.layers[1].backward(np.ones((50, 1000)))
    np.testing.assert_allclose(dx_layer, np.where(kept, 1 / 0.7, 0.0))


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: Sequential([]), ValueError, "must not be empty"),
        (lambda: Sequential(Dense(2, 3)), TypeError, "list of layers"),
        (lambda: Sequential([Dropout(0.1), Dense(2, 3)], input_shape=(3,)), ValueError,
         r"layers\[1\].*expects samples of shape \(2,\) but receives \(3,\)"),
        (lambda: Sequential([Dense(2, 3), Dense(4, 1)]), ValueError,
         r"expects samples of shape \(4,\)"),
        (lambda: Sequential([Dense(2, 3)], input_shape=(0,)), TypeError, "input_shape"),
        (lambda: Sequential([Dense(2, 3)], dtype="float16"), TypeError, "float32"),
        (lambda: Sequential([Dense(2, 3)], seed="x"), TypeError, "seed"),
        (lambda: Sequential([Dense(2, 3), "relu"]), TypeError, r"layers\[1\]"),
        (lambda: Dense(0, 3), ValueError, "in_features"),
        (lambda: Dense(2.5, 3), TypeError, "in_features"),
        (lambda: Dense(2, 3, activation="swishy"), ValueError, "swishy"),
        (lambda: Dropout(1.0), ValueError, "rate"),
    ],
)
def test_bad_construction_raises_clear_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()


@pytest.mark.parametrize(
    ("X", "error", "message"),
    [
        (np.ones(4), ValueError, "2-D"),
        (np.ones((3, 5)), ValueError, "5 features per sample but the model expects 4"),
        (np.ones((0, 4)), ValueError, "empty"),
        (np.array([["a"] * 4]), TypeError, "real numbers"),
        (np.ones((2, 4), dtype=complex), TypeError, "real numbers"),
        (np.full((2, 4), np.nan), ValueError, "NaN"),
        (np.array([[1.0, np.inf, 0, 0]]), ValueError, "infinity"),
    ],
)
def test_bad_input_to_forward_raises_clear_errors(X, error, message):
    model = Sequential([Dense(4, 2)], seed=0)
    with pytest.raises(error, match=message):
        model.forward(X)


def test_forward_accepts_other_numeric_dtypes_and_layouts():
    model = Sequential([Dense(4, 2)], seed=0, dtype="float64")
    X = np.arange(24).reshape(6, 4)[::2]  # int64, not contiguous
    expected = X.astype(np.float64) @ model.layers[0].weight.value
    np.testing.assert_allclose(model.forward(X, training=False), expected)


def test_backward_rejects_wrong_gradient_shape():
    model = Sequential([Dense(4, 2)], seed=0)
    model.forward(np.ones((3, 4)))
    with pytest.raises(ValueError, match="d_out must have the shape"):
        model.backward(np.ones((3, 3)))


def test_train_step_requires_compile():
    model = Sequential([Dense(4, 2)], seed=0)
    with pytest.raises(RuntimeError, match="compile"):
        model.train_step(np.ones((3, 4)), np.zeros(3, dtype=np.int64))


def test_public_names_are_exported():
    for name in ("Sequential", "Dense", "Activation", "Dropout", "Parameter"):
        assert hasattr(nbn, name), name
