"""Adagrad, as ``torch.optim.Adagrad``.

Update rule at step ``t`` with ``g = gs * grad``::

    g   = g + weight_decay * p
    clr = lr / (1 + (t - 1) lr_decay)
    s   = s + g²                  (s starts at initial_accumulator_value)
    p   = p - clr * g / (sqrt(s) + eps)

Hyperparameters: ``lr=1e-2``, ``lr_decay=0``, ``weight_decay=0``,
``initial_accumulator_value=0``, ``eps=1e-10``. Slots: ``sum``.
Reference: Duchi, Hazan & Singer, "Adaptive Subgradient Methods", JMLR 2011.
"""

from __future__ import annotations

import math

from numbanet._jit import EXACT_MATH, kernel
from numbanet.hookspecs import hookimpl
from numbanet.specs import OptimizerSpec


@kernel(fastmath=set(EXACT_MATH))  # rounds as written: see numbanet.jit
def adagrad_kernel(i, p, g, gs, slots, hp, sc):
    """``hp = (lr, lr_decay, weight_decay, initial_accumulator_value, eps)``,
    ``sc = (clr, first_step)``. Touches index ``i`` only."""
    wd, init, eps = hp[2], hp[3], hp[4]
    s = slots[0]
    x = p[i]
    d = g[i] * gs + wd * x
    # Slots start at zero; the first step adds the initial accumulator value.
    si = (s[i] + init if sc[1] != 0.0 else s[i]) + d * d
    s[i] = si
    p[i] = x - sc[0] * d / (math.sqrt(si) + eps)


def _prepare(step: int, hp: tuple[float, ...]) -> tuple[float, ...]:
    return (hp[0] / (1.0 + (step - 1) * hp[1]), 1.0 if step == 1 else 0.0)


ADAGRAD = OptimizerSpec(
    name="adagrad",
    kernel=adagrad_kernel,
    hyperparams={"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0,
                 "initial_accumulator_value": 0.0, "eps": 1e-10},
    slots=("sum",),
    prepare=_prepare,
    description="Adagrad (torch.optim.Adagrad)",
    bounds={"lr": "[0, inf)", "lr_decay": "[0, inf)", "weight_decay": "[0, inf)",
            "initial_accumulator_value": "[0, inf)", "eps": "[0, inf)"},
)


@hookimpl
def numbanet_register_optimizers() -> list[OptimizerSpec]:
    return [ADAGRAD]
