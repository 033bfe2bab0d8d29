"""Adadelta, as ``torch.optim.Adadelta``.

Update rule with ``g = gs * grad``::

    g  = g + weight_decay * p
    v  = ρ v + (1 - ρ) g²
    Δ  = sqrt(u + eps) / sqrt(v + eps) * g
    u  = ρ u + (1 - ρ) Δ²
    p  = p - lr Δ

Hyperparameters: ``lr=1.0``, ``rho=0.9``, ``eps=1e-6``, ``weight_decay=0``.
Slots: ``square_avg``, ``acc_delta``. Reference: Zeiler, "ADADELTA: An Adaptive
Learning Rate Method", 2012.
"""

from __future__ import annotations

import math

from numbanet._jit import EXACT_MATH, kernel
from numbanet.hookspecs import hookimpl
from numbanet.specs import OptimizerSpec


@kernel(fastmath=set(EXACT_MATH))  # rounds as written: see numbanet.jit
def adadelta_kernel(i, p, g, gs, slots, hp, sc):
    """``hp = (lr, rho, eps, weight_decay)``, ``sc = (1 - rho,)``. Touches index ``i`` only."""
    lr, rho, eps, wd = hp[0], hp[1], hp[2], hp[3]
    v, u = slots[0], slots[1]
    x = p[i]
    d = g[i] * gs + wd * x
    vi = rho * v[i] + sc[0] * d * d
    v[i] = vi
    delta = math.sqrt(u[i] + eps) / math.sqrt(vi + eps) * d
    u[i] = rho * u[i] + sc[0] * delta * delta
    p[i] = x - lr * delta


def _prepare(step: int, hp: tuple[float, ...]) -> tuple[float, ...]:
    return (1.0 - hp[1],)


ADADELTA = OptimizerSpec(
    name="adadelta",
    kernel=adadelta_kernel,
    hyperparams={"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0},
    slots=("square_avg", "acc_delta"),
    prepare=_prepare,
    description="Adadelta (torch.optim.Adadelta)",
    bounds={"lr": "[0, inf)", "rho": "[0, 1]", "eps": "[0, inf)", "weight_decay": "[0, inf)"},
)


@hookimpl
def numbanet_register_optimizers() -> list[OptimizerSpec]:
    return [ADADELTA]
