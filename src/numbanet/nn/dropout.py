"""Dropout: inverted dropout with the model's random generator."""

from __future__ import annotations

from typing import Any

import numpy as np

from numbanet._validation import Real, check_arg
from numbanet.kernels.dropout import dropout_backward, dropout_forward
from numbanet.nn.module import Module


class Dropout(Module):
    """Inverted dropout: in training, zero each input with probability ``rate`` and scale
    the survivors by ``1 / (1 - rate)``; at inference, pass the input through unchanged.

    Args:
        rate: drop probability, ``0 <= rate < 1``.

    Works on inputs of any shape. The random numbers come from the model's generator
    (seeded by ``Sequential(seed=...)``, handed over through :meth:`set_rng`), so a
    seeded run is reproducible.
    """

    def __init__(self, rate: float):
        super().__init__()
        self.rate = check_arg("rate", rate, Real(min=0, max=1, closed="left"), where="Dropout")
        self.rng: np.random.Generator | None = None  # set by the owning model
        self._u: np.ndarray | None = None

    def set_rng(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def get_config(self) -> dict[str, Any]:
        return {"type": self.layer_type, "rate": self.rate}

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        if not training or self.rate == 0.0:
            self._u = None
            return x
        if self.rng is None:
            raise RuntimeError("Dropout has no random generator; put it in a Sequential")
        u = self.workspace.get("u", x.shape)
        self.rng.random(dtype=u.dtype, out=u)
        y = self.workspace.get("y", x.shape)
        dropout_forward(x, u, 1.0 - self.rate, y)
        self._u = u
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        if not need_input_grad:
            return None
        if self._u is None:
            return dy
        dx = self.workspace.get("dx", dy.shape)
        dropout_backward(dy, self._u, 1.0 - self.rate, dx)
        return dx

    def __repr__(self) -> str:
        return f"Dropout({self.rate})"
