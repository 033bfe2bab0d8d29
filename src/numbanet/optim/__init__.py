"""Optimizers: the host object that runs an :class:`~numbanet.OptimizerSpec`.

Get one with :func:`numbanet.get_optimizer`; the update rules live in
:mod:`numbanet._builtin` (one module per optimizer) and in plugins.
"""

from numbanet.optim.optimizer import Optimizer

__all__ = ["Optimizer"]
