"""Pooling layers on channels-last images: MaxPool2D, AvgPool2D, GlobalAvgPool2D."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from numbanet.kernels.activations import RELU
from numbanet.kernels.pooling import (
    PoolGeometry,
    avg_pool2d_backward_into,
    avg_pool2d_into,
    global_avg_pool2d_backward_into,
    global_avg_pool2d_into,
    max_pool2d_2x2_into,
    max_pool2d_backward_into,
    max_pool2d_into,
    tap_offsets,
)
from numbanet.nn.conv import image_shape_error, pair
from numbanet.nn.module import FusedDerivative, Module, Shape

__all__ = ["AvgPool2D", "GlobalAvgPool2D", "MaxPool2D"]


def _saved(layer: Module, grad_is_dz: bool, below: FusedDerivative | None) -> np.ndarray | None:
    """The array whose ReLU derivative a pooling layer applies to its input gradient."""
    if grad_is_dz:
        raise RuntimeError(f"{type(layer).__name__} offers no activation derivative")
    if below is None:
        return None
    if below.act_id != RELU:
        raise RuntimeError(f"{type(layer).__name__} fuses only ReLU's derivative, got act_id "
                           f"{below.act_id}")
    return below.saved


class _Pool2D(Module):
    """Shared by MaxPool2D and AvgPool2D: arguments, shapes, config and geometry."""

    # Pooling backward can zero its input gradient where the ReLU below was inactive.
    accepts_fused_derivative = True

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None,
                 padding: int | Sequence[int]):
        super().__init__()
        where = type(self).__name__
        self.kernel_size = pair("kernel_size", kernel_size, 1, where)
        self.stride = self.kernel_size if stride is None else pair("stride", stride, 1, where)
        self.padding = pair("padding", padding, 0, where)
        kh, kw = self.kernel_size
        if self.padding[0] > kh // 2 or self.padding[1] > kw // 2:
            raise ValueError(
                f"{where}: padding {self.padding} must be at most half the kernel size "
                f"{self.kernel_size} (as in PyTorch), so that every window holds an input "
                f"pixel; use padding <= {(kh // 2, kw // 2)}")
        self._geometry: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._x: np.ndarray | None = None

    def output_shape(self, in_shape: Shape) -> Shape:
        error = image_shape_error(self, in_shape, None)
        if error is not None:
            raise error
        h, w, c = in_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(
                f"{self!r}: the window ({kh} x {kw}) is larger than the padded input "
                f"({h + 2 * ph} x {w + 2 * pw}) of samples of shape {tuple(in_shape)}; use a "
                f"smaller kernel_size or pool fewer times before this layer")
        return ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1, c)

    def _geometry_for(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The window for inputs of ``shape``, as a plain tuple (Numba leaks memory on
        every call that passes a NamedTuple)."""
        g = self._geometry.get(shape)
        if g is None:
            oh, ow, _ = self.output_shape(shape[1:])
            g = tuple(PoolGeometry(*self.kernel_size, *self.stride, *self.padding, oh, ow))
            if len(self._geometry) >= 8:
                self._geometry.clear()
            self._geometry[shape] = g
        return g

    def get_config(self) -> dict[str, Any]:
        return {"type": self.layer_type, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding)}

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        return self.backward_fused(dy, False, need_input_grad, None)

    def __repr__(self) -> str:
        parts = [f"{v[0] if v[0] == v[1] else v}" for v in (self.kernel_size,)]
        if self.stride != self.kernel_size:
            s = self.stride
            parts.append(f"stride={s[0] if s[0] == s[1] else s}")
        if self.padding != (0, 0):
            p = self.padding
            parts.append(f"padding={p[0] if p[0] == p[1] else p}")
        return f"{type(self).__name__}({', '.join(parts)})"


class MaxPool2D(_Pool2D):
    """Max pooling over ``kernel_size`` windows of channels-last images.

    Args:
        kernel_size: window rows and columns, an int or a pair.
        stride: an int or a pair; defaults to ``kernel_size``.
        padding: rows/columns of ``-inf`` on each side, at most half the kernel size.

    ``(N, H, W, C)`` -> ``(N, (H + 2*ph - kh) // sh + 1, (W + 2*pw - kw) // sw + 1, C)``.
    Ties go to the first maximum in the window (row-major); NaN propagates, as in
    ``torch.nn.functional.max_pool2d``. The positions of the maxima are kept in an
    ``int64`` workspace for the backward pass, which sends each output gradient to its
    maximum (and, fused, applies the ReLU derivative of the layer below).
    """

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0):
        super().__init__(kernel_size, stride, padding)
        self._tap_offsets: dict[tuple[int, int], np.ndarray] = {}
        # 2x2 windows, stride 2, no padding (LeNet's pools, most CNNs' downsampling):
        # a specialised forward kernel; the backward pass is the general one.
        self._two_by_two = (self.kernel_size == (2, 2) and self.stride == (2, 2)
                            and self.padding == (0, 0))

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        g = self._geometry_for(x.shape)
        shape = (x.shape[0], g[6], g[7], x.shape[3])
        y = self.workspace.get("y", shape)
        idx = self.workspace.get("argmax", shape, dtype=np.int64)
        if self._two_by_two:
            max_pool2d_2x2_into(x, y, idx)
            self._x, self._idx = x, idx
            return y
        key = (x.shape[2], x.shape[3])
        toff = self._tap_offsets.get(key)
        if toff is None:
            toff = self._tap_offsets[key] = tap_offsets(g, *key)
        max_pool2d_into(x, y, idx, g, toff)
        self._x, self._idx = x, idx
        return y

    def backward_fused(self, grad: np.ndarray, grad_is_dz: bool, need_input_grad: bool,
                       below: FusedDerivative | None) -> np.ndarray | None:
        saved = _saved(self, grad_is_dz, below)
        if self._x is None:
            raise RuntimeError("MaxPool2D.backward called before forward")
        if not need_input_grad:
            return None
        dx = self.workspace.get("dx", self._x.shape)
        max_pool2d_backward_into(grad, self._idx, dx, saved)
        return dx


class AvgPool2D(_Pool2D):
    """Average pooling over ``kernel_size`` windows of channels-last images.

    Args:
        kernel_size: window rows and columns, an int or a pair.
        stride: an int or a pair; defaults to ``kernel_size``.
        padding: rows/columns of zeros on each side, at most half the kernel size.

    Padded zeros count: every window divides by ``kh * kw`` (PyTorch's default
    ``count_include_pad=True``). Shapes as :class:`MaxPool2D`.
    """

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0):
        super().__init__(kernel_size, stride, padding)

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        g = self._geometry_for(x.shape)
        y = self.workspace.get("y", (x.shape[0], g[6], g[7], x.shape[3]))
        avg_pool2d_into(x, y, g)
        self._x = x
        return y

    def backward_fused(self, grad: np.ndarray, grad_is_dz: bool, need_input_grad: bool,
                       below: FusedDerivative | None) -> np.ndarray | None:
        saved = _saved(self, grad_is_dz, below)
        if self._x is None:
            raise RuntimeError("AvgPool2D.backward called before forward")
        if not need_input_grad:
            return None
        dx = self.workspace.get("dx", self._x.shape)
        avg_pool2d_backward_into(grad, dx, self._geometry_for(self._x.shape), saved)
        return dx


class GlobalAvgPool2D(Module):
    """The mean of each channel over all pixels: ``(N, H, W, C)`` -> ``(N, C)``.

    As ``torch.nn.functional.adaptive_avg_pool2d(x, 1)`` flattened. Backward spreads
    ``dy / (H * W)`` over the pixels (and, fused, applies the ReLU derivative below).
    """

    accepts_fused_derivative = True

    def __init__(self) -> None:
        super().__init__()
        self._x: np.ndarray | None = None

    def output_shape(self, in_shape: Shape) -> Shape:
        error = image_shape_error(self, in_shape, None)
        if error is not None:
            raise error
        return (in_shape[2],)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.layer_type}

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        y = self.workspace.get("y", (x.shape[0], x.shape[3]))
        global_avg_pool2d_into(x, y)
        self._x = x
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        return self.backward_fused(dy, False, need_input_grad, None)

    def backward_fused(self, grad: np.ndarray, grad_is_dz: bool, need_input_grad: bool,
                       below: FusedDerivative | None) -> np.ndarray | None:
        saved = _saved(self, grad_is_dz, below)
        if self._x is None:
            raise RuntimeError("GlobalAvgPool2D.backward called before forward")
        if not need_input_grad:
            return None
        dx = self.workspace.get("dx", self._x.shape)
        global_avg_pool2d_backward_into(grad, dx, saved)
        return dx

    def __repr__(self) -> str:
        return "GlobalAvgPool2D()"
