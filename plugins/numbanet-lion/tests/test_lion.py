"""numbanet-lion: found through its entry point, matches a NumPy reference, conforms."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

# These tests are about the installed plugin: without it there is nothing to test.
pytest.importorskip(
    "numbanet_lion", reason="the plugin is not installed: pip install -e plugins/numbanet-lion"
)

import numbanet.plugins as nbp
from numbanet.testing import check_optimizer


def _numpy_lion(p, grads, lr, betas, weight_decay):
    m = np.zeros_like(p)
    for g in grads:
        c = betas[0] * m + (1 - betas[0]) * g
        p = p * (1 - lr * weight_decay) - lr * np.sign(c)
        m = betas[1] * m + (1 - betas[1]) * g
    return p


def test_lion_is_registered_through_its_entry_point():
    eps = importlib.metadata.entry_points(group="numbanet")
    assert any(ep.value == "numbanet_lion" for ep in eps), "pip install -e plugins/numbanet-lion"
    nbp.reload_plugins()
    opt = nbp.get_optimizer("lion")
    assert opt.qualified_id == "numbanet-lion:lion"
    report = {r["name"]: r for r in nbp.plugin_report()}
    assert report["numbanet-lion"]["status"] == "loaded"
    assert report["numbanet-lion"]["optimizers"] == ["lion"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", [{}, {"lr": 1e-2, "betas": (0.8, 0.95), "weight_decay": 0.1}])
def test_lion_matches_numpy_reference_10_steps(kw, dtype):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(10)]
    p = p0.astype(dtype)
    opt = nbp.get_optimizer("lion", **kw)
    for g in grads:
        opt.step(p, g.astype(dtype))
    full = {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0, **kw}
    ref = _numpy_lion(p0, grads, **full)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(p, ref, rtol=tol, atol=tol)


def test_lion_passes_numbanet_conformance():
    check_optimizer("lion", lr=0.01)


def test_lion_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="optimizer 'lion': betas must have 2 elements"):
        nbp.get_optimizer("lion", betas=(0.9,))
    with pytest.raises(TypeError, match="optimizer 'lion': lr must be a number"):
        nbp.get_optimizer("lion", lr="fast")
