"""Adam (with optional AMSGrad and L2 weight decay), as ``torch.optim.Adam``.

Update rule at step ``t`` with ``g = gs * grad``::

    g  = g + weight_decay * p
    m  = β1 m + (1 - β1) g
    v  = β2 v + (1 - β2) g²
    v̂  = max(v̂, v) if amsgrad else v
    p  = p - lr / (1 - β1^t) * m / (sqrt(v̂) / sqrt(1 - β2^t) + eps)

Hyperparameters: ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=0``,
``amsgrad=False``. Slots: ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``.
Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015;
Reddi et al., "On the Convergence of Adam and Beyond", ICLR 2018 (AMSGrad).
"""

from __future__ import annotations

import math

from numbanet._jit import EXACT_MATH, kernel
from numbanet.hookspecs import hookimpl
from numbanet.specs import OptimizerSpec

ADAM_BOUNDS = {"lr": "[0, inf)", "betas": "[0, 1)", "eps": "[0, inf)",
               "weight_decay": "[0, inf)"}


@kernel(fastmath=set(EXACT_MATH))  # rounds as written: see numbanet.jit
def adam_kernel(i, p, g, gs, slots, hp, sc):
    """``hp = (lr, β1, β2, eps, weight_decay, amsgrad)``,
    ``sc = (lr/bc1, 1/sqrt(bc2), 1-β1, 1-β2)``. Touches index ``i`` only."""
    b1, b2, eps, wd = hp[1], hp[2], hp[3], hp[4]
    m, v, vmax = slots[0], slots[1], slots[2]
    x = p[i]
    d = g[i] * gs + wd * x
    mi = b1 * m[i] + sc[2] * d
    vi = b2 * v[i] + sc[3] * d * d
    m[i] = mi
    v[i] = vi
    # AMSGrad by selects, not a branch: a store under a branch keeps LLVM from
    # vectorizing the loop (17 -> 1.2 ns per float64 element). Without AMSGrad, vmax[i]
    # is stored back unchanged.
    amsgrad = hp[5] != 0.0
    old = vmax[i]
    vhat = max(old, vi)
    vmax[i] = vhat if amsgrad else old
    vi = vhat if amsgrad else vi
    p[i] = x - sc[0] * mi / (math.sqrt(vi) * sc[1] + eps)


def adam_prepare(step: int, hp: tuple[float, ...]) -> tuple[float, ...]:
    """``(lr / (1 - β1^t), 1 / sqrt(1 - β2^t), 1 - β1, 1 - β2, 1 - lr weight_decay)``."""
    lr, b1, b2, wd = hp[0], hp[1], hp[2], hp[4]
    return (lr / (1.0 - b1**step), 1.0 / math.sqrt(1.0 - b2**step), 1.0 - b1, 1.0 - b2,
            1.0 - lr * wd)


ADAM = OptimizerSpec(
    name="adam",
    kernel=adam_kernel,
    hyperparams={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                 "amsgrad": False},
    slots=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    prepare=adam_prepare,
    description="Adam / AMSGrad with L2 weight decay (torch.optim.Adam)",
    bounds=ADAM_BOUNDS,
)


@hookimpl
def numbanet_register_optimizers() -> list[OptimizerSpec]:
    return [ADAM]
