"""numbanet-rmsnorm: found through its entry point, matches PyTorch, conforms, trains, loads."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json

import numpy as np
import pytest

# These tests are about the installed plugin: without it there is nothing to test.
pytest.importorskip(
    "numbanet_rmsnorm",
    reason="the plugin is not installed: pip install -e plugins/numbanet-rmsnorm",
)

from numbanet_rmsnorm import (
    PARALLEL_MIN,
    RMSNorm,
    _backward_parallel,
    _backward_serial,
    _forward_parallel,
    _forward_serial,
)

import numbanet as nbn
import numbanet.plugins as nbp
from numbanet.testing import check_layer


def test_rmsnorm_is_registered_through_its_entry_point():
    eps = importlib.metadata.entry_points(group="numbanet")
    assert any(ep.value == "numbanet_rmsnorm" for ep in eps), (
        "pip install -e plugins/numbanet-rmsnorm")
    nbp.reload_plugins()
    assert nbp.resolve_layer("RMSNorm") == ("numbanet-rmsnorm:RMSNorm", RMSNorm)
    assert "numbanet-rmsnorm:RMSNorm" in nbp.list_layers(qualified=True)


def test_rmsnorm_shows_in_numbanet_plugins_json():
    from numbanet.cli import main

    nbp.reload_plugins()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        status = main(["plugins", "--json", "--strict"])
    assert status == 0
    record = next(p for p in json.loads(out.getvalue())["plugins"]
                  if p["name"] == "numbanet-rmsnorm")
    assert record["status"] == "loaded"
    assert record["layers"] == ["numbanet-rmsnorm:RMSNorm"]
    assert record["error"] is None


def _torch_reference(x, w, dy, eps):
    torch = pytest.importorskip("torch")
    tdtype = torch.float64 if x.dtype == np.float64 else torch.float32
    ref = torch.nn.RMSNorm(x.shape[-1], eps=eps, elementwise_affine=w is not None,
                           dtype=tdtype)
    if w is not None:
        with torch.no_grad():
            ref.weight.copy_(torch.from_numpy(w))
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = ref(tx)
    ty.backward(torch.from_numpy(dy))
    dw = None if w is None else ref.weight.grad.numpy()
    return ty.detach().numpy(), tx.grad.numpy(), dw


@pytest.mark.parametrize(("dtype", "rtol", "atol"),
                         [(np.float64, 1e-10, 1e-12), (np.float32, 1e-5, 1e-5)])
@pytest.mark.parametrize("eps", [1e-5, None])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(6, 16), (4, 3, 33), (256, 160)])
def test_rmsnorm_matches_torch(shape, affine, eps, dtype, rtol, atol):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    layer = RMSNorm(shape[-1], eps=eps, elementwise_affine=affine)
    model = nbn.Sequential([layer], input_shape=shape[1:], dtype=dtype, seed=0)
    w = None
    if affine:
        w = rng.uniform(0.5, 1.5, shape[-1]).astype(dtype)
        layer.parameter("weight").value[...] = w
    y = model.forward(x)
    dx = model.backward(dy)
    ref_y, ref_dx, ref_dw = _torch_reference(x, w, dy, eps)
    np.testing.assert_allclose(y, ref_y, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, ref_dx, rtol=rtol, atol=atol)
    if affine:
        np.testing.assert_allclose(layer.parameter("weight").grad, ref_dw, rtol=rtol,
                                   atol=atol * shape[0])


def test_rmsnorm_passes_check_layer():
    check_layer(lambda: RMSNorm(16), (16,), batch=16)


def test_rmsnorm_passes_check_layer_on_parallel_paths():
    # 1024 x 64 elements: above PARALLEL_MIN, so the thread check compares parallel runs.
    assert 1024 * 64 >= PARALLEL_MIN
    check_layer(lambda: RMSNorm(64, eps=1e-5), (64,), batch=1024)


def test_rmsnorm_without_weight_on_3d_samples_passes_check_layer():
    check_layer(RMSNorm(8, elementwise_affine=False), (5, 8), batch=32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [7, 64, 257])
def test_serial_and_parallel_twins_agree(dtype, n):
    # Equal to the last bit except (float64, widths not a multiple of the vector width)
    # where LLVM may vectorize a row sum differently in the two compilation contexts.
    rng = np.random.default_rng(n)
    x = rng.standard_normal((300, n)).astype(dtype)
    w = rng.standard_normal(n).astype(dtype)
    dy = rng.standard_normal((300, n)).astype(dtype)
    outs = []
    for forward, backward in ((_forward_serial, _backward_serial),
                              (_forward_parallel, _backward_parallel)):
        y, dx, terms = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        rinv = np.empty(300, dtype)
        forward(x, w, True, 1e-6, y, rinv)
        backward(x, w, True, rinv, dy, True, dx, terms)
        outs.append((y, rinv, dx, terms))
    tiny = 4 * np.finfo(dtype).eps
    for a, b in zip(*outs, strict=True):
        np.testing.assert_allclose(a, b, rtol=tiny, atol=tiny * np.abs(a).max())


def test_rmsnorm_weight_is_a_norm_parameter_initialised_to_ones():
    model = nbn.Sequential([nbn.Dense(8, 4), RMSNorm(4)], seed=0)
    (weight,) = [p for p in model.parameters() if p.name == "1.weight"]
    assert weight.role == "norm"
    np.testing.assert_array_equal(weight.value, np.ones(4, np.float32))


def _digits_model(seed=0):
    return nbn.Sequential([nbn.Dense(64, 32, activation="relu"), RMSNorm(32),
                           nbn.Dense(32, 10)], seed=seed)


def test_model_with_rmsnorm_trains_saves_and_loads(tmp_path):
    X, y = nbn.datasets.load_digits()
    model = _digits_model().compile(loss="cross_entropy",
                                    optimizer=nbn.get_optimizer("adam", lr=3e-3),
                                    metrics=["accuracy"])
    history = model.fit(X, y, epochs=5, batch_size=64, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.evaluate(X, y)["accuracy"] > 0.9

    path = tmp_path / "rmsnorm.npz"
    model.save(path)
    loaded = nbn.load(path)
    assert isinstance(loaded.layers[1], RMSNorm)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    # Training continues bit for bit after the round trip.
    a = model.train_step(X[:64], y[:64])
    b = loaded.train_step(X[:64], y[:64])
    assert a == b
    np.testing.assert_array_equal(loaded.flat_parameters, model.flat_parameters)


def test_rmsnorm_rejects_bad_arguments_and_shapes():
    with pytest.raises(TypeError, match="normalized_shape must be an int"):
        RMSNorm(4.0)
    with pytest.raises(ValueError, match="normalized_shape must be >= 1"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        RMSNorm(4, eps=-1.0)
    with pytest.raises(TypeError, match="elementwise_affine must be a bool"):
        RMSNorm(4, elementwise_affine="yes")
    with pytest.raises(ValueError, match=r"RMSNorm\(4\) normalises a last axis of 4 "
                                         r"features but receives samples of shape \(5,\)"):
        nbn.Sequential([RMSNorm(4)], input_shape=(5,))
