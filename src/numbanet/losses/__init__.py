"""Losses: the host object that runs a :class:`~numbanet.LossSpec`.

Get one with :func:`numbanet.get_loss`; the built-in row kernels live in
:mod:`numbanet.kernels.losses` and their specs in :mod:`numbanet._builtin.losses`.
"""

from numbanet.losses.loss import Loss, WeightedTargets

__all__ = ["Loss", "WeightedTargets"]
