"""Every registered loss: fused value + gradient on a (256, 10) float32 batch.

Each sample times ``INNER_LOSS`` calls of ``loss.forward_backward``.
"""

from __future__ import annotations

import numpy as np

from numbanet.plugins import get_loss, list_losses

from .common import INNER_LOSS, LOSS_SHAPE, THREADS, random_array, set_threads


def _targets(loss, rows: int, classes: int) -> np.ndarray:
    """Integer labels where the loss takes them, else float targets in (0, 1)."""
    rng = np.random.default_rng(4)
    try:
        return loss.prepare_targets(rng.integers(0, classes, size=rows), classes, "float32")
    except (TypeError, ValueError):
        dense = rng.uniform(0.05, 0.95, size=(rows, classes)).astype(np.float32)
        return loss.prepare_targets(dense, classes, "float32")


class LossSuite:
    """``loss.forward_backward(outputs, targets, grad)`` for ``list_losses()``."""

    params = (list_losses(), THREADS)
    param_names = ["loss", "threads"]

    def setup(self, loss: str, threads: int) -> None:
        set_threads(threads)
        rows, classes = LOSS_SHAPE
        self.loss = get_loss(loss)
        self.outputs = random_array(LOSS_SHAPE, "float32", seed=1)
        self.targets = _targets(self.loss, rows, classes)
        self.grad = np.empty_like(self.outputs)
        self.loss.forward_backward(self.outputs, self.targets, self.grad)

    def time_forward_backward(self, loss: str, threads: int) -> None:
        fb, outputs, targets, grad = (
            self.loss.forward_backward, self.outputs, self.targets, self.grad
        )
        for _ in range(INNER_LOSS):
            fb(outputs, targets, grad)
