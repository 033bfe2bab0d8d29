"""Activations forward and backward on a (256, 1024) float32 batch.

Each sample times ``INNER_ACTIVATION`` calls.
"""

from __future__ import annotations

import numpy as np

from numbanet.kernels.activations import ACTIVATIONS, get_activation

from .common import ACTIVATION_SHAPE, INNER_ACTIVATION, THREADS, random_array, set_threads


class ActivationSuite:
    """``name(x, out)`` and ``name_backward(x, y, dy, dx)`` for every activation."""

    params = (list(ACTIVATIONS), THREADS)
    param_names = ["activation", "threads"]

    def setup(self, activation: str, threads: int) -> None:
        set_threads(threads)
        act = get_activation(activation)
        self.forward, self.backward = act.forward, act.backward
        self.x = random_array(ACTIVATION_SHAPE, "float32", seed=1)
        self.y = np.empty_like(self.x)
        self.dy = random_array(ACTIVATION_SHAPE, "float32", seed=2)
        self.dx = np.empty_like(self.x)
        self.forward(self.x, self.y)
        self.backward(self.x, self.y, self.dy, self.dx)

    def time_forward(self, activation: str, threads: int) -> None:
        forward, x, y = self.forward, self.x, self.y
        for _ in range(INNER_ACTIVATION):
            forward(x, y)

    def time_backward(self, activation: str, threads: int) -> None:
        backward, x, y, dy, dx = self.backward, self.x, self.y, self.dy, self.dx
        for _ in range(INNER_ACTIVATION):
            backward(x, y, dy, dx)
