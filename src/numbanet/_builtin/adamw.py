"""AdamW: Adam with decoupled weight decay, as ``torch.optim.AdamW``.

Update rule at step ``t`` with ``g = gs * grad``::

    p  = p (1 - lr weight_decay)
    m  = β1 m + (1 - β1) g
    v  = β2 v + (1 - β2) g²
    v̂  = max(v̂, v) if amsgrad else v
    p  = p - lr / (1 - β1^t) * m / (sqrt(v̂) / sqrt(1 - β2^t) + eps)

Hyperparameters: ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``,
``weight_decay=1e-2``, ``amsgrad=False``. Slots as Adam.
Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
"""

from __future__ import annotations

import math

from numbanet._builtin.adam import ADAM_BOUNDS, adam_prepare
from numbanet._jit import EXACT_MATH, kernel
from numbanet.hookspecs import hookimpl
from numbanet.specs import OptimizerSpec


@kernel(fastmath=set(EXACT_MATH))  # rounds as written: see numbanet.jit
def adamw_kernel(i, p, g, gs, slots, hp, sc):
    """``hp = (lr, β1, β2, eps, weight_decay, amsgrad)``,
    ``sc = (lr/bc1, 1/sqrt(bc2), 1-β1, 1-β2, 1-lr·weight_decay)``. Touches index ``i`` only."""
    b1, b2, eps = hp[1], hp[2], hp[3]
    m, v, vmax = slots[0], slots[1], slots[2]
    x = p[i] * sc[4]
    d = g[i] * gs
    mi = b1 * m[i] + sc[2] * d
    vi = b2 * v[i] + sc[3] * d * d
    m[i] = mi
    v[i] = vi
    # AMSGrad by selects, not a branch, so the loop vectorizes (see adam.py).
    amsgrad = hp[5] != 0.0
    old = vmax[i]
    vhat = max(old, vi)
    vmax[i] = vhat if amsgrad else old
    vi = vhat if amsgrad else vi
    p[i] = x - sc[0] * mi / (math.sqrt(vi) * sc[1] + eps)


ADAMW = OptimizerSpec(
    name="adamw",
    kernel=adamw_kernel,
    hyperparams={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2,
                 "amsgrad": False},
    slots=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    prepare=adam_prepare,
    description="Adam with decoupled weight decay (torch.optim.AdamW)",
    bounds=ADAM_BOUNDS,
)


@hookimpl
def numbanet_register_optimizers() -> list[OptimizerSpec]:
    return [ADAMW]
