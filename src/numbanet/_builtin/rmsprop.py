"""RMSprop (optionally centered, with momentum), as ``torch.optim.RMSprop``.

Update rule with ``g = gs * grad``::

    g   = g + weight_decay * p
    v   = α v + (1 - α) g²
    if centered:  a = α a + (1 - α) g;  den = sqrt(v - a²) + eps
    else:         den = sqrt(v) + eps
    if momentum > 0:  b = momentum b + g / den;  p = p - lr b
    else:             p = p - lr g / den

Hyperparameters: ``lr=1e-2``, ``alpha=0.99``, ``eps=1e-8``, ``weight_decay=0``,
``momentum=0``, ``centered=False``. Slots: ``square_avg``, ``momentum_buffer``,
``grad_avg``. Reference: Hinton, Neural Networks for Machine Learning, lecture 6e;
Graves, "Generating Sequences With Recurrent Neural Networks", 2013 (centered).
"""

from __future__ import annotations

import math

from numbanet._jit import EXACT_MATH, kernel
from numbanet.hookspecs import hookimpl
from numbanet.specs import OptimizerSpec


@kernel(fastmath=set(EXACT_MATH))  # rounds as written: see numbanet.jit
def rmsprop_kernel(i, p, g, gs, slots, hp, sc):
    """``hp = (lr, alpha, eps, weight_decay, momentum, centered)``, ``sc = (1 - alpha,)``.
    Touches index ``i`` only."""
    lr, alpha, eps, wd, mu = hp[0], hp[1], hp[2], hp[3], hp[4]
    v, buf, a = slots[0], slots[1], slots[2]
    x = p[i]
    d = g[i] * gs + wd * x
    vi = alpha * v[i] + sc[0] * d * d
    v[i] = vi
    if hp[5] != 0.0:
        ai = alpha * a[i] + sc[0] * d
        a[i] = ai
        den = math.sqrt(vi - ai * ai) + eps
    else:
        den = math.sqrt(vi) + eps
    if mu > 0.0:
        bi = mu * buf[i] + d / den
        buf[i] = bi
        p[i] = x - lr * bi
    else:
        p[i] = x - lr * d / den


def _prepare(step: int, hp: tuple[float, ...]) -> tuple[float, ...]:
    return (1.0 - hp[1],)


RMSPROP = OptimizerSpec(
    name="rmsprop",
    kernel=rmsprop_kernel,
    hyperparams={"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0,
                 "momentum": 0.0, "centered": False},
    slots=("square_avg", "momentum_buffer", "grad_avg"),
    prepare=_prepare,
    description="RMSprop, optionally centered and with momentum (torch.optim.RMSprop)",
    bounds={"lr": "[0, inf)", "alpha": "[0, 1]", "eps": "[0, inf)",
            "weight_decay": "[0, inf)", "momentum": "[0, inf)"},
)


@hookimpl
def numbanet_register_optimizers() -> list[OptimizerSpec]:
    return [RMSPROP]
