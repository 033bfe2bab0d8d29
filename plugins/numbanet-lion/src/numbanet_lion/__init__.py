"""Lion (EvoLved Sign Momentum) for numbanet.

Update rule at each step, with ``g = gs * grad``::

    c = β1 m + (1 - β1) g
    p = p (1 - lr weight_decay) - lr sign(c)
    m = β2 m + (1 - β2) g

Hyperparameters: ``lr=1e-4``, ``betas=(0.9, 0.99)``, ``weight_decay=0``. One slot,
``exp_avg``. Lion's steps have unit size per element, so it wants a learning rate 3-10x
smaller than AdamW's and a weight decay 3-10x larger.

Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023.

Example:
    >>> import numbanet as nbn
    >>> opt = nbn.get_optimizer("lion", lr=3e-4, weight_decay=0.1)
"""

from __future__ import annotations

from numbanet import hookspecs
from numbanet.jit import EXACT_MATH, kernel
from numbanet.specs import OptimizerSpec

__version__ = "0.1.0"


@kernel(fastmath=set(EXACT_MATH))  # rounds as written: see numbanet.jit
def lion_kernel(i, p, g, gs, slots, hp, sc):
    """``hp = (lr, β1, β2, weight_decay)``, ``sc = (1 - lr·wd, 1 - β1, 1 - β2)``.

    The host runs this for every ``i`` inside its ``prange``; it reads and writes index
    ``i`` only, which is what makes the parallel loop race-free. ``hp``/``sc``/``gs`` arrive
    in the parameters' dtype, and no float literal enters the arithmetic, so float32
    parameters are updated in float32.
    """
    lr, b1, b2 = hp[0], hp[1], hp[2]
    m = slots[0]
    d = g[i] * gs
    mi = m[i]
    c = b1 * mi + sc[1] * d
    x = p[i] * sc[0]
    if c > 0:
        x = x - lr
    elif c < 0:
        x = x + lr
    p[i] = x
    m[i] = b2 * mi + sc[2] * d


def _prepare(step: int, hp: tuple[float, ...]) -> tuple[float, ...]:
    lr, b1, b2, wd = hp
    return (1.0 - lr * wd, 1.0 - b1, 1.0 - b2)


LION = OptimizerSpec(
    name="lion",
    kernel=lion_kernel,
    hyperparams={"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0},
    slots=("exp_avg",),
    prepare=_prepare,
    description="Lion, sign of interpolated momentum (Chen et al. 2023)",
    bounds={"lr": "[0, inf)", "betas": "[0, 1]", "weight_decay": "[0, inf)"},
)


@hookspecs.hookimpl
def numbanet_register_optimizers() -> list[OptimizerSpec]:
    return [LION]
