"""One optimizer update over a 1 M-element float32 flat buffer, for every optimizer
``numbanet.list_optimizers()`` returns: built-ins and installed plugins alike.

Each sample times ``INNER_OPTIMIZER`` calls of ``opt.step``.
"""

from __future__ import annotations

import numpy as np

from numbanet.plugins import get_optimizer, list_optimizers

from .common import INNER_OPTIMIZER, OPTIMIZER_SIZE, THREADS, random_array, set_threads


def make_optimizer(name: str):
    """The optimizer with its defaults, or with ``lr=1e-3`` if it has no default lr."""
    try:
        return get_optimizer(name)
    except (TypeError, ValueError):
        return get_optimizer(name, lr=1e-3)


class OptimizerStepSuite:
    """``opt.step(params, grads)``: one parallel pass over the flat buffers."""

    params = (list_optimizers(), THREADS)
    param_names = ["optimizer", "threads"]

    def setup(self, optimizer: str, threads: int) -> None:
        set_threads(threads)
        self.opt = make_optimizer(optimizer)
        self.params_ = random_array((OPTIMIZER_SIZE,), "float32", seed=1)
        self.grads = random_array((OPTIMIZER_SIZE,), "float32", seed=2) * np.float32(1e-3)
        # The first step allocates the state slots and compiles the driver.
        self.opt.step(self.params_, self.grads)

    def time_step(self, optimizer: str, threads: int) -> None:
        step, p, g = self.opt.step, self.params_, self.grads
        for _ in range(INNER_OPTIMIZER):
            step(p, g)
