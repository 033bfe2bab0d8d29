"""Flatten: samples of any shape to rows, so a Dense layer can follow a convolution."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from numbanet.nn.module import Module, Shape

__all__ = ["Flatten"]


class Flatten(Module):
    """``(N, *shape)`` -> ``(N, prod(shape))`` in C order (for images: height, width,
    channels, the channels varying fastest).

    Forward and backward are reshapes of C-contiguous arrays: views, no copy and no
    kernel. The output is a view of the layer below's buffer (valid as long as that is).
    """

    def __init__(self) -> None:
        super().__init__()
        self._in_shape: tuple[int, ...] | None = None

    def output_shape(self, in_shape: Shape) -> Shape:
        return (math.prod(in_shape),)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.layer_type}

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self._in_shape = x.shape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        if self._in_shape is None:
            raise RuntimeError("Flatten.backward called before forward")
        if not need_input_grad:
            return None
        return dy.reshape(self._in_shape)

    def __repr__(self) -> str:
        return "Flatten()"
