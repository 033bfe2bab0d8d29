"""numbanet-focal: found through its entry point, matches references, conforms."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

# These tests are about the installed plugin: without it there is nothing to test.
pytest.importorskip(
    "numbanet_focal", reason="the plugin is not installed: pip install -e plugins/numbanet-focal"
)

import numbanet.plugins as nbp
from numbanet.testing import check_loss

RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 4)) * 2
Y = RNG.integers(0, 4, 8)
W = np.array([0.25, 1.0, 2.0, 0.5])


def _numpy_focal(x, y, gamma, weight=None, reduction="mean"):
    z = x - x.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    lp = logp[np.arange(len(y)), y]
    w = np.ones(x.shape[1]) if weight is None else weight
    rows = -w[y] * (1 - np.exp(lp)) ** gamma * lp
    return rows.mean() if reduction == "mean" else rows.sum()


def test_focal_is_registered_through_its_entry_point():
    eps = importlib.metadata.entry_points(group="numbanet")
    assert any(ep.value == "numbanet_focal" for ep in eps), "pip install -e plugins/numbanet-focal"
    nbp.reload_plugins()
    assert nbp.get_loss("focal").qualified_id == "numbanet-focal:focal"
    assert "focal" in nbp.list_losses()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kw", [{"gamma": 0.0}, {"gamma": 2.0}, {"gamma": 0.5, "weight": W}])
def test_focal_value_matches_numpy(kw, reduction):
    loss = nbp.get_loss("focal", reduction=reduction, **kw)
    grad = np.empty_like(X)
    value = loss.forward_backward(X, loss.prepare_targets(Y, 4, "float64"), grad)
    assert np.isclose(value, _numpy_focal(X, Y, reduction=reduction, **kw), rtol=1e-12)


def test_focal_with_gamma_0_is_cross_entropy():
    g1, g2 = np.empty_like(X), np.empty_like(X)
    v1 = nbp.get_loss("focal", gamma=0.0).forward_backward(X, Y, g1)
    v2 = nbp.get_loss("cross_entropy").forward_backward(X, Y, g2)
    assert np.isclose(v1, v2, rtol=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-14)


def test_focal_gradient_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    loss = nbp.get_loss("focal", gamma=1.5, weight=W)
    grad = np.empty_like(X)
    loss.forward_backward(X, Y, grad)
    tx = torch.tensor(X, requires_grad=True)
    logp = torch.log_softmax(tx, dim=1)[torch.arange(8), torch.tensor(Y)]
    ref = (-torch.tensor(W)[torch.tensor(Y)] * (1 - logp.exp()) ** 1.5 * logp).mean()
    ref.backward()
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kw", [{}, {"gamma": 0.7, "weight": W}])
def test_focal_passes_numbanet_conformance(kw):
    check_loss("focal", **kw)


def test_focal_gradient_is_finite_when_a_row_is_certain():
    x = np.array([[50.0, -50.0, 0.0]])
    grad = np.empty_like(x)
    value = nbp.get_loss("focal", gamma=0.5).forward_backward(x, np.array([0]), grad)
    assert np.isfinite(value) and np.isfinite(grad).all()


def test_focal_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"loss 'focal': gamma must be in \[0, inf\)"):
        nbp.get_loss("focal", gamma=-1.0)
    with pytest.raises(ValueError, match="y must hold class labels"):
        nbp.get_loss("focal").prepare_targets(np.array([0, 9]), 4, "float32")
