"""Numerical faults: overflow, huge logits, zero variance, NaN gradients.

Where the maths has a finite answer the kernels must return it (compared with a
numerically stable NumPy reference in float64); where it does not (NaN gradients, a
diverging run), the NaN must propagate visibly and training must stop.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import numbanet as nbn
from numbanet.kernels import activations as act

EXTREMES = np.array([-1e30, -3e4, -745.0, -100.0, -89.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 89.0,
                     100.0, 710.0, 3e4, 1e30])


def _stable_reference(name, x):
    """float64 NumPy formulas that cannot overflow."""
    with np.errstate(over="ignore", under="ignore"):
        if name == "sigmoid":
            e = np.exp(-np.abs(x))
            return np.where(x >= 0, 1 / (1 + e), e / (1 + e))
        if name == "tanh":
            return np.tanh(x)
        if name == "softplus":
            return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
        if name == "silu":
            return x * _stable_reference("sigmoid", x)
        if name == "elu":
            return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
        if name == "relu":
            return np.maximum(x, 0)
    raise AssertionError(name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softplus", "silu", "elu", "relu"])
def test_activations_stay_finite_at_extreme_inputs(name, dtype):
    x = EXTREMES.astype(dtype)  # float32 turns 1e30 into 1e30 and 710 stays finite
    x = x[np.isfinite(x)]
    y = np.empty_like(x)
    act.get_activation(name).forward(x.reshape(1, -1), y.reshape(1, -1))
    assert np.isfinite(y).all(), dict(zip(x.tolist(), y.tolist(), strict=True))
    ref = _stable_reference(name, x.astype(np.float64))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)
    dy = np.ones_like(x)
    dx = np.empty_like(x)
    act.get_activation(name).backward(x.reshape(1, -1), y.reshape(1, -1), dy.reshape(1, -1),
                                      dx.reshape(1, -1))
    assert np.isfinite(dx).all(), dict(zip(x.tolist(), dx.tolist(), strict=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 1e4, 1e30])
def test_softmax_of_huge_logits_is_finite_and_normalised(dtype, scale):
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((5, 7)) * scale).astype(dtype)
    z[0] = np.finfo(dtype).max / 2  # a row of equal huge logits
    z[1, 3] = -np.finfo(dtype).max / 2
    out = np.empty_like(z)
    act.softmax(z, out)
    assert np.isfinite(out).all()
    z64 = z.astype(np.float64)
    shifted = z64 - z64.max(axis=1, keepdims=True)
    ref = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=tol)
    logp = np.empty_like(z)
    act.log_softmax(z, logp)
    assert not np.isnan(logp).any() and (logp <= 0).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss_name", ["cross_entropy", "binary_cross_entropy"])
def test_losses_of_huge_logits_are_finite(loss_name, dtype):
    loss = nbn.get_loss(loss_name)
    n_out = 3 if loss_name == "cross_entropy" else 1
    outputs = np.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 1e4], [80.0, -80.0, 0.0],
                        [0.0, 0.0, 0.0]], dtype=dtype)[:, :n_out].copy()
    labels = np.array([1, 0, 0, 2]) if n_out == 3 else np.array([0.0, 1.0, 0.0, 1.0])
    targets = loss.prepare_targets(labels if n_out == 3 else labels[:, None], n_out,
                                   np.dtype(dtype))
    grad = np.empty_like(outputs)
    value = loss.forward_backward(outputs, targets, grad)
    assert np.isfinite(value) and np.isfinite(grad).all()
    # Row 0 of cross-entropy: the true class is 2e4 below the top logit: loss 2e4 / 4.
    if n_out == 3:
        z = outputs.astype(np.float64)
        lse = z.max(1) + np.log(np.exp(z - z.max(1, keepdims=True)).sum(1))
        ref = (lse - z[np.arange(4), labels]).mean()
        np.testing.assert_allclose(value, ref, rtol=1e-6)


@pytest.mark.parametrize("name", ["adam", "adamw", "nadam", "radam", "adamax", "rmsprop",
                                  "adagrad", "adadelta", "sgd", "lion"])
@pytest.mark.parametrize("grad_value", [0.0, 1e-30, 1e30])
def test_optimizers_with_zero_or_extreme_gradients_stay_finite(name, grad_value):
    """Zero gradients make the second moment exactly zero: eps must keep 0/0 away."""
    if name not in nbn.list_optimizers():
        pytest.skip(f"optimizer {name!r} is not installed (pip install -e plugins/numbanet-{name})")
    for dtype in (np.float32, np.float64):
        if dtype == np.float32 and grad_value == 1e30:
            continue  # 1e30**2 overflows float32 in any implementation, torch included
        opt = nbn.get_optimizer(name)
        p = np.linspace(-1, 1, 32).astype(dtype)
        g = np.full(32, grad_value, dtype)
        for _ in range(3):
            opt.step(p, g)
        assert np.isfinite(p).all(), (name, dtype, grad_value)
        if grad_value == 0.0 and name not in ("adamw",):
            np.testing.assert_array_equal(p, np.linspace(-1, 1, 32).astype(dtype))


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop"])
def test_nan_gradient_propagates_visibly(name):
    """NaN in, NaN out (the contract: propagate as NumPy does); it must not be hidden."""
    opt = nbn.get_optimizer(name)
    p, g = np.zeros(16), np.zeros(16)
    g[3] = np.nan
    opt.step(p, g)
    assert np.isnan(p[3]) and np.isfinite(np.delete(p, 3)).all()


def _diverging_model(model_factory, data_factory):
    model = model_factory(optimizer="sgd", lr=1e6, loss="mse")
    X, _ = data_factory(n=32)
    y = np.ones((32, 3)) * 1e3
    return model, X * 1e3, y


def test_terminate_on_nan_stops_a_diverging_run(model_factory, data_factory):
    model, X, y = _diverging_model(model_factory, data_factory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        history = model.fit(X, y, epochs=50, batch_size=8, verbose=0, on_nan="continue",
                            callbacks=[nbn.TerminateOnNaN()])
    assert len(history["loss"]) < 50
    assert "TerminateOnNaN" in history.stop_reason
    assert not np.isfinite(history["loss"][-1])


def test_default_fit_stops_on_nan_and_raise_mode_raises(model_factory, data_factory):
    model, X, y = _diverging_model(model_factory, data_factory)
    with pytest.warns(RuntimeWarning, match="NaN|inf"):
        history = model.fit(X, y, epochs=50, batch_size=8, verbose=0)
    assert len(history["loss"]) < 50
    model, X, y = _diverging_model(model_factory, data_factory)
    with pytest.raises(FloatingPointError, match="epoch"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model.fit(X, y, epochs=50, batch_size=8, verbose=0, on_nan="raise")
