"""A ReLU Activation layer offers its derivative to the layer above (issue 13)."""

import numpy as np
import pytest

import numbanet as nbn


def _grads(layers, x, d_out, fuse):
    model = nbn.Sequential(layers(), input_shape=x.shape[1:], seed=0, dtype="float64")
    if not fuse:
        for layer in model.layers:
            if isinstance(layer, nbn.Activation):
                layer.fused_derivative = lambda: None  # the layer's own backward pass
    model.forward(x)
    dx = model.backward(d_out)
    return dx, [p.grad.copy() for p in model.parameters()]


@pytest.mark.parametrize("layers", [
    lambda: [nbn.Conv2D(3, 4, 3, padding=1, bias=False), nbn.BatchNorm(4),
             nbn.Activation("relu"), nbn.Conv2D(4, 5, 3, padding=1)],
    lambda: [nbn.Conv2D(3, 20, 3, padding=1), nbn.Activation("relu"),
             nbn.Conv2D(20, 20, 3, stride=2, padding=1)],
    lambda: [nbn.Flatten(), nbn.Dense(48, 7), nbn.Activation("relu"), nbn.Dense(7, 5)],
    lambda: [nbn.Conv2D(3, 4, 3, padding=1), nbn.Activation("relu"),
             nbn.GlobalAvgPool2D()],
])
def test_relu_activation_fused_into_the_layer_above_matches_its_own_backward(layers):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 4, 3))
    out = nbn.Sequential(layers(), input_shape=(4, 4, 3), seed=0).forward(x)
    d_out = rng.standard_normal(out.shape)
    dx_f, g_f = _grads(layers, x, d_out, True)
    dx_u, g_u = _grads(layers, x, d_out, False)
    np.testing.assert_allclose(dx_f, dx_u, rtol=1e-12, atol=1e-14)
    for a, b in zip(g_f, g_u, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_other_activations_do_not_offer_a_derivative():
    layer = nbn.Activation("tanh")
    nbn.Sequential([layer], input_shape=(3,)).forward(np.ones((2, 3)))
    assert layer.fused_derivative() is None
