"""NAdam (Adam with Nesterov momentum), as ``torch.optim.NAdam``.

With ``g = gs * grad``, ``μ_t = β1 (1 - ½ 0.96^(t ψ))`` (ψ = ``momentum_decay``) and
``Π_t = μ_1 ⋯ μ_t``::

    g  = g + weight_decay * p          (or p = p (1 - lr weight_decay) if decoupled)
    m  = β1 m + (1 - β1) g
    v  = β2 v + (1 - β2) g²
    den = sqrt(v / (1 - β2^t)) + eps
    p  = p - lr (1 - μ_t) / (1 - Π_t) * g / den
           - lr μ_{t+1} / (1 - Π_t μ_{t+1}) * m / den

Hyperparameters: ``lr=2e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=0``,
``momentum_decay=4e-3``, ``decoupled_weight_decay=False``. Slots: ``exp_avg``,
``exp_avg_sq``. Reference: Dozat, "Incorporating Nesterov Momentum into Adam", 2016.
"""

from __future__ import annotations

import math

from numbanet._jit import EXACT_MATH, kernel
from numbanet.hookspecs import hookimpl
from numbanet.specs import OptimizerSpec


@kernel(fastmath=set(EXACT_MATH))  # rounds as written: see numbanet.jit
def nadam_kernel(i, p, g, gs, slots, hp, sc):
    """``hp = (lr, β1, β2, eps, weight_decay, momentum_decay, decoupled)``,
    ``sc = (c_grad, c_mom, 1/(1-β2^t), 1-β1, 1-β2, 1-lr·weight_decay)``.
    Touches index ``i`` only."""
    b1, b2, eps, wd = hp[1], hp[2], hp[3], hp[4]
    m, v = slots[0], slots[1]
    x = p[i]
    d = g[i] * gs
    if hp[6] != 0.0:
        x = x * sc[5]
    else:
        d = d + wd * x
    mi = b1 * m[i] + sc[3] * d
    vi = b2 * v[i] + sc[4] * d * d
    m[i] = mi
    v[i] = vi
    den = math.sqrt(vi * sc[2]) + eps
    # One division: with exact math LLVM no longer shares 1/den between two (the
    # in-cache update of 7510 float64 elements took 13 -> 17 us with two).
    p[i] = x - (sc[0] * d + sc[1] * mi) / den


# The running product Π_t depends on every earlier step; keep it per (β1, ψ) so prepare
# stays a function of (step, hp) and matches PyTorch's sequential product bit for bit.
_products: dict[tuple[float, float], list[float]] = {}


def _mu(b1: float, psi: float, t: int) -> float:
    return b1 * (1.0 - 0.5 * 0.96 ** (t * psi))


def _prepare(step: int, hp: tuple[float, ...]) -> tuple[float, ...]:
    lr, b1, b2, psi = hp[0], hp[1], hp[2], hp[5]
    prods = _products.setdefault((b1, psi), [1.0])
    while len(prods) <= step:
        prods.append(prods[-1] * _mu(b1, psi, len(prods)))
    mu_t, mu_next = _mu(b1, psi, step), _mu(b1, psi, step + 1)
    prod = prods[step]
    return (
        lr * (1.0 - mu_t) / (1.0 - prod),
        lr * mu_next / (1.0 - prod * mu_next),
        1.0 / (1.0 - b2**step),
        1.0 - b1,
        1.0 - b2,
        1.0 - lr * hp[4],
    )


NADAM = OptimizerSpec(
    name="nadam",
    kernel=nadam_kernel,
    hyperparams={"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                 "momentum_decay": 4e-3, "decoupled_weight_decay": False},
    slots=("exp_avg", "exp_avg_sq"),
    prepare=_prepare,
    description="Adam with Nesterov momentum (torch.optim.NAdam)",
    bounds={"lr": "[0, inf)", "betas": "[0, 1)", "eps": "[0, inf)",
            "weight_decay": "[0, inf)", "momentum_decay": "[0, inf)"},
)


@hookimpl
def numbanet_register_optimizers() -> list[OptimizerSpec]:
    return [NADAM]
