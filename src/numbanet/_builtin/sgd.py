"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

Update rule (PyTorch's ``torch.optim.SGD``), with ``g = gs * grad``::

    g = g + weight_decay * p
    if momentum != 0:
        b = g                                   if t == 1
        b = momentum * b + (1 - dampening) * g  otherwise
        g = g + momentum * b  if nesterov  else  b
    p = p - lr * g

Hyperparameters: ``lr=1e-3``, ``momentum=0``, ``dampening=0``, ``weight_decay=0``,
``nesterov=False`` (needs ``momentum > 0`` and ``dampening == 0``).
Slots: ``momentum_buffer``. Reference: Sutskever et al., "On the importance of
initialization and momentum in deep learning", ICML 2013.
"""

from __future__ import annotations

from typing import Any

from numbanet._jit import EXACT_MATH, kernel
from numbanet.hookspecs import hookimpl
from numbanet.specs import OptimizerSpec


@kernel(fastmath=set(EXACT_MATH))  # rounds as written: see numbanet.jit
def sgd_kernel(i, p, g, gs, slots, hp, sc):
    """Per-element SGD. ``hp = (lr, momentum, dampening, weight_decay, nesterov)``,
    ``sc = (first_step, 1 - dampening)``. Touches index ``i`` only."""
    lr, mu, wd, nesterov = hp[0], hp[1], hp[3], hp[4]
    x = p[i]
    d = g[i] * gs + wd * x
    if mu != 0.0:
        buf = slots[0]
        b = d if sc[0] != 0.0 else mu * buf[i] + sc[1] * d
        buf[i] = b
        d = d + mu * b if nesterov != 0.0 else b
    p[i] = x - lr * d


def _prepare(step: int, hp: tuple[float, ...]) -> tuple[float, ...]:
    return (1.0 if step == 1 else 0.0, 1.0 - hp[2])


def _validate(hp: dict[str, Any]) -> None:
    if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
        raise ValueError("optimizer 'sgd': nesterov=True requires momentum > 0 and dampening == 0")


SGD = OptimizerSpec(
    name="sgd",
    kernel=sgd_kernel,
    hyperparams={"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
                 "nesterov": False},
    slots=("momentum_buffer",),
    prepare=_prepare,
    description="SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD)",
    bounds={"lr": "[0, inf)", "momentum": "[0, inf)", "dampening": "[0, 1]",
            "weight_decay": "[0, inf)"},
    validate=_validate,
)


@hookimpl
def numbanet_register_optimizers() -> list[OptimizerSpec]:
    return [SGD]
