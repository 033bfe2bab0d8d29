"""RAdam (rectified Adam), as ``torch.optim.RAdam``.

With ``g = gs * grad``, ``ρ∞ = 2 / (1 - β2) - 1`` and
``ρ_t = ρ∞ - 2 t β2^t / (1 - β2^t)``::

    g  = g + weight_decay * p          (or p = p (1 - lr weight_decay) if decoupled)
    m  = β1 m + (1 - β1) g
    v  = β2 v + (1 - β2) g²
    m̂  = m / (1 - β1^t)
    if ρ_t > 5:  r = sqrt((ρ_t-4)(ρ_t-2)ρ∞ / ((ρ∞-4)(ρ∞-2)ρ_t))
                 p = p - lr m̂ r sqrt(1 - β2^t) / (sqrt(v) + eps)
    else:        p = p - lr m̂

Hyperparameters: ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=0``,
``decoupled_weight_decay=False``. Slots: ``exp_avg``, ``exp_avg_sq``.
Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.
"""

from __future__ import annotations

import math

from numbanet._jit import EXACT_MATH, kernel
from numbanet.hookspecs import hookimpl
from numbanet.specs import OptimizerSpec


@kernel(fastmath=set(EXACT_MATH))  # rounds as written: see numbanet.jit
def radam_kernel(i, p, g, gs, slots, hp, sc):
    """``hp = (lr, β1, β2, eps, weight_decay, decoupled)``,
    ``sc = (lr/bc1, rectify, r sqrt(bc2), 1-β1, 1-β2, 1-lr·weight_decay)``.
    Touches index ``i`` only."""
    b1, b2, eps, wd = hp[1], hp[2], hp[3], hp[4]
    m, v = slots[0], slots[1]
    x = p[i]
    d = g[i] * gs
    if hp[5] != 0.0:
        x = x * sc[5]
    else:
        d = d + wd * x
    mi = b1 * m[i] + sc[3] * d
    vi = b2 * v[i] + sc[4] * d * d
    m[i] = mi
    v[i] = vi
    if sc[1] != 0.0:
        p[i] = x - sc[0] * mi * sc[2] / (math.sqrt(vi) + eps)
    else:
        p[i] = x - sc[0] * mi


def _prepare(step: int, hp: tuple[float, ...]) -> tuple[float, ...]:
    lr, b1, b2 = hp[0], hp[1], hp[2]
    bc1 = 1.0 - b1**step
    bc2 = 1.0 - b2**step
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho_t = rho_inf - 2.0 * step * b2**step / bc2
    if rho_t > 5.0:
        rect = math.sqrt(
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        )
        return (lr / bc1, 1.0, rect * math.sqrt(bc2), 1.0 - b1, 1.0 - b2, 1.0 - lr * hp[4])
    return (lr / bc1, 0.0, 0.0, 1.0 - b1, 1.0 - b2, 1.0 - lr * hp[4])


RADAM = OptimizerSpec(
    name="radam",
    kernel=radam_kernel,
    hyperparams={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                 "decoupled_weight_decay": False},
    slots=("exp_avg", "exp_avg_sq"),
    prepare=_prepare,
    description="rectified Adam (torch.optim.RAdam)",
    bounds={"lr": "[0, inf)", "betas": "[0, 1)", "eps": "[0, inf)",
            "weight_decay": "[0, inf)"},
)


@hookimpl
def numbanet_register_optimizers() -> list[OptimizerSpec]:
    return [RADAM]
