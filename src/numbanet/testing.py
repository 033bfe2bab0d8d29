"""Conformance checks for optimizers, losses and layers, for numbanet and for plugin authors.

Every built-in passes these, and a plugin's own tests should call them::

    from numbanet.testing import check_layer, check_loss, check_optimizer

    def test_lion_conforms():
        check_optimizer("lion", lr=1e-2)

    def test_focal_conforms():
        check_loss("focal", gamma=2.0)

    def test_rmsnorm_conforms():  # a layer: a factory (or an instance) and a sample shape
        check_layer(lambda: RMSNorm(16), (16,))

Each check raises :class:`AssertionError` with a message saying which property failed.
They use small buffers, so once the kernels are compiled (compilation is cached on disk
after the first run) ``check_optimizer`` and ``check_loss`` take well under a second and
``check_layer`` (in :mod:`numbanet._layer_checks`) a few seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from numbanet._layer_checks import check_layer
from numbanet.losses import Loss
from numbanet.optim import Optimizer
from numbanet.plugins import get_loss, get_optimizer
from numbanet.specs import LossSpec, OptimizerSpec

__all__ = ["check_layer", "check_loss", "check_optimizer", "gradcheck"]


def _optimizer(spec_or_name: str | OptimizerSpec, hp: dict[str, Any]) -> Optimizer:
    return get_optimizer(spec_or_name, **hp)


def _quadratic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, Callable[..., Any]]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, n)
    c = rng.uniform(-1.0, 1.0, n)

    def value_and_grad(p: np.ndarray) -> tuple[float, np.ndarray]:
        d = p.astype(np.float64) - c
        return 0.5 * float(np.sum(a * d * d)), (a * d).astype(p.dtype)

    return a, c, value_and_grad


def check_optimizer(
    spec_or_name: str | OptimizerSpec,
    *,
    steps: int = 200,
    reduce_to: float = 0.5,
    **hyperparams: Any,
) -> None:
    """Check that an optimizer behaves like a numbanet optimizer should.

    Properties checked:

    1. it decreases a convex quadratic to ``reduce_to`` of its start in ``steps`` steps
       (pass an ``lr`` that suits it);
    2. float32 and float64 both work; state slots keep the parameters' shape and dtype;
    3. the compiled kernel agrees with its pure-Python ``py_func`` over a small buffer;
    4. the serial and the parallel driver give the same result;
    5. ``grad_scale=s`` equals scaling the gradients by ``s``;
    6. zero gradients on fresh state give finite parameters;
    7. ``state_dict``/``load_state_dict`` round-trips: a restored optimizer continues
       exactly like the original;
    8. changing ``lr`` between steps compiles nothing new.

    Args:
        spec_or_name: a registered name, a qualified id, or an unregistered spec.
        steps: steps for the convergence check.
        reduce_to: required ratio of final to initial loss on the quadratic.
        **hyperparams: passed to :func:`numbanet.get_optimizer`.
    """
    label = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.name
    n = 96

    # 1. convergence, float64.
    _, _, f = _quadratic(n, 0)
    p = np.zeros(n)
    opt = _optimizer(spec_or_name, hyperparams)
    f0, _ = f(p)
    for _ in range(steps):
        _, g = f(p)
        opt.step(p, g)
    f1, _ = f(p)
    assert np.isfinite(p).all(), f"{label}: parameters became non-finite on a quadratic"
    assert f1 <= reduce_to * f0, (
        f"{label}: quadratic loss went from {f0:.4g} to {f1:.4g} in {steps} steps "
        f"(needed <= {reduce_to} of the start); is lr={opt.lr} suitable?"
    )

    # 2. dtypes and state shapes.
    for dtype in (np.float32, np.float64):
        p = np.linspace(-1, 1, n).astype(dtype)
        opt = _optimizer(spec_or_name, hyperparams)
        for _ in range(3):
            opt.step(p, f(p)[1])
        assert p.dtype == dtype and np.isfinite(p).all(), f"{label}: {dtype.__name__} failed"
        for name, buf in opt.slots.items():
            assert buf.shape == p.shape and buf.dtype == p.dtype, (
                f"{label}: slot {name!r} has {buf.shape}/{buf.dtype}, params {p.shape}/{p.dtype}"
            )
        assert set(opt.slots) == set(opt.spec.slots), f"{label}: slots differ from the spec"

    # 3. compiled kernel vs py_func, 4. serial vs parallel driver.
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(n)
    g0 = rng.standard_normal(n)
    opt = _optimizer(spec_or_name, hyperparams)
    spec = opt.spec
    hp = _hp_tuple(opt)
    results = []
    for mode in ("serial", "parallel", "python"):
        p = p0.copy()
        slots = tuple(np.full(n, 0.1) for _ in spec.slots)
        for step in (1, 2, 3):
            sc = opt._prepare(step)
            if mode == "serial":
                opt.driver.run_serial(p, g0, 0.7, slots, hp, sc)
            elif mode == "parallel":
                opt.driver.run_parallel(p, g0, 0.7, slots, hp, sc)
            else:
                py = getattr(spec.kernel, "py_func", spec.kernel)
                for i in range(n):
                    py(i, p, g0, 0.7, slots, hp, sc)
        results.append(p)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-12, atol=1e-14,
                               err_msg=f"{label}: parallel and serial drivers differ")
    np.testing.assert_allclose(results[2], results[0], rtol=1e-9, atol=1e-12,
                               err_msg=f"{label}: compiled kernel differs from py_func")

    # 5. grad_scale.
    pa, pb = p0.copy(), p0.copy()
    oa, ob = _optimizer(spec_or_name, hyperparams), _optimizer(spec_or_name, hyperparams)
    for _ in range(3):
        oa.step(pa, g0, grad_scale=0.25)
        ob.step(pb, g0 * 0.25)
    np.testing.assert_allclose(pa, pb, rtol=1e-10, atol=1e-13,
                               err_msg=f"{label}: grad_scale is not the same as scaled grads")

    # 6. zero gradients.
    p = p0.copy()
    _optimizer(spec_or_name, hyperparams).step(p, np.zeros(n))
    assert np.isfinite(p).all(), f"{label}: zero gradients produced NaN/inf"

    # 7. state round trip, keyed by parameter name.
    layout = [("0.weight", 0, 64, (8, 8)), ("0.bias", 64, n, (n - 64,))]
    pa = p0.copy()
    oa = _optimizer(spec_or_name, hyperparams)
    for _ in range(3):
        oa.step(pa, f(pa)[1])
    state = oa.state_dict(layout)
    pb = pa.copy()
    ob = _optimizer(spec_or_name, hyperparams)
    ob.load_state_dict(state, layout)
    for _ in range(3):
        oa.step(pa, f(pa)[1])
        ob.step(pb, f(pb)[1])
    np.testing.assert_array_equal(pa, pb, err_msg=f"{label}: state round trip changed results")

    # 8. lr changes compile nothing.
    before = oa.driver.n_compiled()
    oa.lr = oa.lr * 0.5
    oa.step(pa, f(pa)[1])
    assert oa.driver.n_compiled() == before, f"{label}: changing lr recompiled the driver"


def _hp_tuple(obj: Optimizer | Loss) -> tuple[float, ...]:
    return obj._hp_tuple


def gradcheck(
    func: Callable[[np.ndarray], float], x: np.ndarray, grad: np.ndarray, *, h: float = 1e-6,
    rtol: float = 1e-5, atol: float = 1e-7, label: str = "gradient",
) -> None:
    """Assert ``grad`` matches central differences of scalar ``func`` at float64 ``x``."""
    num = np.zeros_like(x)
    flat = x.reshape(-1)
    nflat = num.reshape(-1)
    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + h
        up = func(x)
        flat[j] = old - h
        down = func(x)
        flat[j] = old
        nflat[j] = (up - down) / (2 * h)
    np.testing.assert_allclose(grad, num, rtol=rtol, atol=atol,
                               err_msg=f"{label} differs from central differences")


def _example_targets(loss: Loss, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, k = x.shape
    if loss.spec.target == "dense":
        t = rng.uniform(0.05, 1.0, (n, k))
        return t / t.sum(axis=1, keepdims=True)
    return rng.integers(0, k, n)


def check_loss(
    spec_or_name: str | LossSpec,
    *,
    n_outputs: int = 4,
    **hyperparams: Any,
) -> None:
    """Check that a loss behaves like a numbanet loss should.

    Properties checked, for ``reduction`` in mean and sum:

    1. the gradient matches central differences of the value (float64);
    2. ``reduction="none"`` rows add up to ``reduction="sum"``; mean is sum over a
       positive divisor;
    3. ``forward`` equals the value of ``forward_backward``;
    4. float32 agrees with float64;
    5. serial and parallel drivers agree;
    6. ``prepare_targets`` rejects labels out of range / targets of the wrong shape with a
       ``ValueError`` naming ``y``.

    Args:
        spec_or_name: a registered name, a qualified id, or an unregistered spec.
        n_outputs: outputs per row of the test batch.
        **hyperparams: passed to :func:`numbanet.get_loss` (not ``reduction``).
    """
    label = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.name
    rng = np.random.default_rng(0)
    n, k = 7, n_outputs
    x = rng.standard_normal((n, k))
    if k == 1 and get_loss(spec_or_name, **hyperparams).spec.target != "dense":
        raise ValueError("check_loss: label losses need n_outputs >= 2")
    values = {}
    for reduction in ("mean", "sum", "none"):
        loss = get_loss(spec_or_name, reduction=reduction, **hyperparams)
        y = _example_targets(loss, x, np.random.default_rng(1))
        t = loss.prepare_targets(y, k, np.float64)
        grad = np.empty_like(x)
        value = loss.forward_backward(x, t, grad)
        assert np.isfinite(value) and np.isfinite(grad).all(), f"{label}: non-finite loss"
        values[reduction] = value
        if reduction != "none":
            fwd = loss.forward(x, t)
            assert np.isclose(fwd, value, rtol=1e-12), f"{label}: forward != forward_backward"
            xc = x.copy()
            gradcheck(lambda z, loss=loss, t=t: float(loss.forward(z, t)), xc, grad,
                      label=f"{label} (reduction={reduction}) gradient")
        else:
            rows = loss.forward(x, t)
            assert rows.shape == (n,), f"{label}: reduction='none' must give one value per row"
            assert np.isclose(rows.sum(), value, rtol=1e-12), f"{label}: none rows != total"
        if reduction == "mean":
            # float32 agrees with float64.
            x32 = x.astype(np.float32)
            t32 = loss.prepare_targets(y, k, np.float32)
            g32 = np.empty_like(x32)
            v32 = loss.forward_backward(x32, t32, g32)
            assert np.isclose(v32, value, rtol=1e-4, atol=1e-5), f"{label}: float32 value off"
            np.testing.assert_allclose(g32, grad, rtol=1e-3, atol=1e-5,
                                       err_msg=f"{label}: float32 gradient off")
            # serial vs parallel driver.
            drv = loss._driver
            if t.ndim == 2 and loss._dense_driver is not None:
                drv = loss._dense_driver
            aux = loss._aux_for(k)
            ga, gb = np.empty_like(x), np.empty_like(x)
            ra, rb = np.empty(n), np.empty(n)
            drv.run_serial(x, t, aux, _hp_tuple(loss), 0.5, ga, ra)
            drv.run_parallel(x, t, aux, _hp_tuple(loss), 0.5, gb, rb)
            np.testing.assert_allclose(gb, ga, rtol=1e-12, atol=1e-15,
                                       err_msg=f"{label}: parallel and serial drivers differ")
            np.testing.assert_allclose(rb, ra, rtol=1e-12, atol=1e-15)
    assert np.isclose(values["none"], values["sum"], rtol=1e-12), f"{label}: none != sum"
    divisor = values["sum"] / values["mean"] if values["mean"] else 1.0
    assert divisor > 0, f"{label}: mean and sum have different signs"

    # 6. bad targets.
    loss = get_loss(spec_or_name, **hyperparams)
    bad: Any
    if loss.spec.target == "dense":
        bad = np.zeros((n, k + 1))
    else:
        bad = np.full(n, k)
    try:
        loss.prepare_targets(bad, k, np.float64)
    except ValueError as exc:
        assert "y" in str(exc), f"{label}: bad-target error does not name y: {exc}"
    else:
        raise AssertionError(f"{label}: prepare_targets accepted bad targets {bad!r}")
