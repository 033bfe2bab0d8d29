"""Activation: an activation function applied on its own, to inputs of any shape."""

from __future__ import annotations

from typing import Any

import numpy as np

from numbanet.kernels.activations import RELU, get_activation
from numbanet.nn.dense import activation_name
from numbanet.nn.module import FusedDerivative, Module


def _rows(a: np.ndarray) -> np.ndarray:
    """A 2-D view ``(everything but the last axis, last axis)`` of a C-contiguous array."""
    return a if a.ndim == 2 else a.reshape(-1, a.shape[-1])


class Activation(Module):
    """An activation applied on its own: ``y = activation(x)``, same shape as ``x``.

    Args:
        name: an activation name (``numbanet.kernels.activations.ACTIVATIONS``).
            Elementwise ones act on every element of any shape; softmax and
            log_softmax act along the last axis.

    Fusion: a ReLU offers its derivative to the layer above (:meth:`fused_derivative`);
    a convolution, Dense or pooling layer above then zeroes its input gradient where
    this layer's output is not positive, and this layer's backward passes the gradient
    through untouched (ResNet's BN, ReLU, conv: no separate pass over the gradient).
    In a model, a ReLU right above a BatchNorm or a Residual is applied by that layer as
    it writes its output (:func:`numbanet.nn.module.fuse_output_relus`), and this
    layer's forward passes its input through: no separate pass forward either.
    """

    def __init__(self, name: str):
        super().__init__()
        self.name = activation_name(name)
        self._act = get_activation(self.name)
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None

    @property
    def output_activation(self) -> str | None:
        return None if self.name == "identity" else self.name

    def get_config(self) -> dict[str, Any]:
        return {"type": self.layer_type, "name": self.name}

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if not self._act.elementwise and len(in_shape) == 0:
            raise ValueError(f"{self!r} needs at least one feature axis, got samples of shape ()")
        return tuple(in_shape)

    @property
    def is_relu(self) -> bool:
        return self._act.id == RELU

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        if self.input_rectified:
            # The layer below applied this ReLU as it wrote x: x is this layer's output.
            self._x = self._y = x
            return x
        y = self.workspace.get("y", x.shape)
        self._act.forward_unchecked(_rows(x), _rows(y))
        self._x, self._y = x, y
        return y

    def fused_derivative(self) -> FusedDerivative | None:
        """ReLU's derivative for the layer above, read from this layer's output, or
        ``None`` (other activations take their own backward pass)."""
        if self._act.id != RELU or self._y is None:
            return None
        return FusedDerivative(RELU, self._y)

    def backward_fused(self, grad: np.ndarray, grad_is_dz: bool, need_input_grad: bool,
                       below: Any) -> np.ndarray | None:
        """With ``grad_is_dz`` the layer above already applied this layer's derivative:
        the gradient passes through as it is."""
        if grad_is_dz:
            if self._x is None:
                raise RuntimeError("Activation.backward called before forward")
            return grad if need_input_grad else None
        return super().backward_fused(grad, grad_is_dz, need_input_grad, below)

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        if self._x is None:
            raise RuntimeError("Activation.backward called before forward")
        if not need_input_grad:
            return None
        dx = self.workspace.get("dx", dy.shape)
        self._act.backward_unchecked(_rows(self._x), _rows(self._y), _rows(dy), _rows(dx))
        return dx

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"
