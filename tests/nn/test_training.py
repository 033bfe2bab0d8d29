"""End-to-end training: PyTorch parity for layers and SGD, and learning a separable problem."""

from __future__ import annotations

import numpy as np
import pytest

import numbanet as nbn
from numbanet.kernels.activations import ACTIVATION_TABLE
from numbanet.nn import Dense, Sequential

# PyTorch's equivalent of every activation, from the one activation table.
TORCH_ACTIVATIONS = {spec.name: spec.torch_reference for spec in ACTIVATION_TABLE}


@pytest.mark.parametrize("activation", sorted(TORCH_ACTIVATIONS))
def test_dense_forward_and_backward_match_torch(activation):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    model = Sequential([Dense(9, 7, activation=activation)], seed=0, dtype="float64")
    X = rng.normal(size=(5, 9))
    d_out = rng.normal(size=(5, 7))
    out = model.forward(X)
    dx = model.backward(d_out)

    layer = model.layers[0]
    tx = torch.tensor(X, requires_grad=True)
    tw = torch.tensor(layer.weight.value.copy(), requires_grad=True)
    tb = torch.tensor(layer.bias.value.copy(), requires_grad=True)
    t_out = TORCH_ACTIVATIONS[activation](F, tx @ tw + tb)
    t_out.backward(torch.tensor(d_out))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, tw.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, tb.grad.numpy(), rtol=1e-9, atol=1e-12)


def _torch_mlp(torch, model):
    """A torch.nn.Sequential with the same weights as a Dense-only numbanet model."""
    modules = []
    acts = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "identity": None}
    for layer in model.layers:
        linear = torch.nn.Linear(layer.in_features, layer.out_features).double()
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(layer.weight.value.T))
            linear.bias.copy_(torch.tensor(layer.bias.value))
        modules.append(linear)
        if acts[layer.activation] is not None:
            modules.append(acts[layer.activation]())
    return torch.nn.Sequential(*modules)


@pytest.mark.parametrize(
    "sgd_kwargs", [{"lr": 0.1}, {"lr": 0.05, "momentum": 0.9}, {"lr": 0.05, "momentum": 0.9,
                                                              "nesterov": True}]
)
def test_ten_sgd_steps_match_torch(sgd_kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    model = Sequential([Dense(6, 16, activation="relu"), Dense(16, 8, activation="tanh"),
                        Dense(8, 4)], seed=5, dtype="float64")
    model.compile(loss="cross_entropy", optimizer=nbn.get_optimizer("sgd", **sgd_kwargs))
    reference = _torch_mlp(torch, model)
    opt = torch.optim.SGD(reference.parameters(), **sgd_kwargs)

    for _ in range(10):
        X = rng.normal(size=(12, 6))
        y = rng.integers(0, 4, size=12)
        loss = model.train_step(X, y)
        opt.zero_grad()
        t_loss = torch.nn.functional.cross_entropy(reference(torch.tensor(X)), torch.tensor(y))
        t_loss.backward()
        opt.step()
        assert loss == pytest.approx(t_loss.item(), rel=1e-10)

    for layer, linear in zip(model.layers, [m for m in reference if hasattr(m, "weight")],
                             strict=True):
        np.testing.assert_allclose(layer.weight.value, linear.weight.detach().numpy().T,
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(layer.bias.value, linear.bias.detach().numpy(),
                                   rtol=1e-9, atol=1e-12)


ELEMENTWISE = sorted(spec.name for spec in ACTIVATION_TABLE if spec.kind == "elementwise")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", ELEMENTWISE)
def test_deep_mlp_gradients_match_torch(activation, dtype):
    # Dense over Dense: each layer's dx GEMM applies the derivative of the activation
    # below in its epilogue (the fused backward). Widths of 40-70 give full-width SIMD
    # tiles and ragged edge tiles; the middle layer's input is another activation's
    # output, so both neighbours of the fused layer vary.
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    acts = [activation, "tanh" if activation != "tanh" else "relu", "identity"]
    widths = [37, 70, 45, 10]
    model = Sequential([Dense(i, o, activation=a) for i, o, a in
                        zip(widths[:-1], widths[1:], acts, strict=True)],
                       seed=1, dtype=dtype)
    X = rng.normal(size=(30, widths[0]))
    d_out = rng.normal(size=(30, widths[-1]))
    model.forward(X)
    dx = model.backward(d_out)

    tx = torch.tensor(X, requires_grad=True)
    h, params = tx, []
    for layer, act in zip(model.layers, acts, strict=True):
        tw = torch.tensor(layer.weight.value.astype(np.float64), requires_grad=True)
        tb = torch.tensor(layer.bias.value.astype(np.float64), requires_grad=True)
        params.append((layer, tw, tb))
        h = TORCH_ACTIVATIONS[act](F, h @ tw + tb)
    h.backward(torch.tensor(d_out))
    rtol, atol = (1e-9, 1e-12) if dtype == "float64" else (2e-4, 2e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=atol)
    for layer, tw, tb in params:
        np.testing.assert_allclose(layer.weight.grad, tw.grad.numpy(), rtol=rtol, atol=atol,
                                   err_msg=repr(layer))
        np.testing.assert_allclose(layer.bias.grad, tb.grad.numpy(), rtol=rtol, atol=atol,
                                   err_msg=repr(layer))


def _two_moons_like(rng, n):
    """Two interleaved half circles: separable, but not by a straight line."""
    t = rng.uniform(0, np.pi, size=n)
    labels = rng.integers(0, 2, size=n)
    x = np.where(labels == 0, np.cos(t), 1 - np.cos(t))
    y = np.where(labels == 0, np.sin(t), 0.5 - np.sin(t))
    X = np.stack([x, y], axis=1) + rng.normal(scale=0.05, size=(n, 2))
    return X.astype(np.float32), labels


def test_mlp_learns_a_nonlinear_separable_problem():
    rng = np.random.default_rng(0)
    X, y = _two_moons_like(rng, 600)
    model = Sequential([Dense(2, 32, activation="tanh"), Dense(32, 32, activation="tanh"),
                        Dense(32, 2)], seed=0)
    model.compile(loss="cross_entropy", optimizer=nbn.get_optimizer("sgd", lr=0.3, momentum=0.9))
    first = last = None
    for _epoch in range(60):
        order = rng.permutation(len(X))
        for start in range(0, len(X), 32):
            idx = order[start:start + 32]
            loss = model.train_step(X[idx], y[idx])
            if first is None:
                first = loss
        last = loss
    accuracy = np.mean(model.predict(X).argmax(axis=1) == y)
    assert accuracy >= 0.98, accuracy
    assert last < 0.2 * first


def test_mse_regression_fits_a_linear_map():
    rng = np.random.default_rng(1)
    true_w = rng.normal(size=(3, 2))
    X = rng.normal(size=(256, 3))
    Y = X @ true_w + 0.5
    model = Sequential([Dense(3, 2)], seed=0, dtype="float64")
    model.compile(loss="mse", optimizer=nbn.get_optimizer("sgd", lr=0.1))
    for _ in range(300):
        model.train_step(X, Y)
    np.testing.assert_allclose(model.layers[0].weight.value, true_w, atol=1e-3)
    np.testing.assert_allclose(model.layers[0].bias.value, [0.5, 0.5], atol=1e-3)
