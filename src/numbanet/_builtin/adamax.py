"""Adamax (Adam with the infinity norm), as ``torch.optim.Adamax``.

Update rule at step ``t`` with ``g = gs * grad``::

    g  = g + weight_decay * p
    m  = β1 m + (1 - β1) g
    u  = max(β2 u, |g| + eps)
    p  = p - lr / (1 - β1^t) * m / u

Hyperparameters: ``lr=2e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=0``.
Slots: ``exp_avg``, ``exp_inf``. Reference: Kingma & Ba, ICLR 2015, section 7.
"""

from __future__ import annotations

from numbanet._builtin.adam import ADAM_BOUNDS
from numbanet._jit import EXACT_MATH, kernel
from numbanet.hookspecs import hookimpl
from numbanet.specs import OptimizerSpec


@kernel(fastmath=set(EXACT_MATH))  # rounds as written: see numbanet.jit
def adamax_kernel(i, p, g, gs, slots, hp, sc):
    """``hp = (lr, β1, β2, eps, weight_decay)``, ``sc = (lr/bc1, 1-β1)``.
    Touches index ``i`` only."""
    b1, b2, eps, wd = hp[1], hp[2], hp[3], hp[4]
    m, u = slots[0], slots[1]
    x = p[i]
    d = g[i] * gs + wd * x
    mi = b1 * m[i] + sc[1] * d
    m[i] = mi
    ui = max(b2 * u[i], abs(d) + eps)
    u[i] = ui
    p[i] = x - sc[0] * mi / ui


def _prepare(step: int, hp: tuple[float, ...]) -> tuple[float, ...]:
    return (hp[0] / (1.0 - hp[1] ** step), 1.0 - hp[1])


ADAMAX = OptimizerSpec(
    name="adamax",
    kernel=adamax_kernel,
    hyperparams={"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    slots=("exp_avg", "exp_inf"),
    prepare=_prepare,
    description="Adamax, Adam with the infinity norm (torch.optim.Adamax)",
    bounds=ADAM_BOUNDS,
)


@hookimpl
def numbanet_register_optimizers() -> list[OptimizerSpec]:
    return [ADAMAX]
