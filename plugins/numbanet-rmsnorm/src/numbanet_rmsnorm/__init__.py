"""RMSNorm for numbanet: root-mean-square normalisation over the last axis, as a plugin.

For each row ``x`` of ``n`` features (the last axis; every leading axis is a row)::

    r = 1 / sqrt(mean(x**2) + eps)
    y = x * r * weight

with a learned per-feature ``weight`` (ones at first) and no mean subtraction, as in
``torch.nn.RMSNorm``. The backward pass, with ``g = dy * weight``::

    dx        = r * g - x * r**3 / n * sum(g * x)
    d(weight) = sum over rows of dy * x * r

Reference: Zhang and Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.

Example:
    >>> import numbanet as nbn
    >>> from numbanet_rmsnorm import RMSNorm
    >>> model = nbn.Sequential([nbn.Dense(64, 32), RMSNorm(32), nbn.Dense(32, 10)], seed=0)
    >>> model.layers[1].parameter("weight").role
    'norm'
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from numbanet import Module, hookimpl
from numbanet.jit import kernel, parallel_kernel
from numbanet.kernels.reductions import ROW_CHUNK, column_sum_into

__all__ = ["PARALLEL_MIN", "RMSNorm", "numbanet_register_layers", "rms_norm_backward",
           "rms_norm_forward"]
__version__ = "0.1.0"

#: Below this many elements the serial twins run: a parallel launch costs microseconds,
#: about what a 64 x 256 float32 forward takes on one core.
PARALLEL_MIN = 1 << 15


# -- kernels --------------------------------------------------------------------------
# One row per call; the twins below differ only in the loop over rows. A row's sums run
# over its own elements in a fixed order, so results never depend on the thread count.
# Sums accumulate in float64 (float32 data too); everything elementwise stays in the
# data's dtype (no float64 literals in those loops).


@kernel
def _forward_row(x, w, affine, eps, y, rinv, r):
    xr = x[r]
    yr = y[r]
    n = xr.shape[0]
    s = 0.0
    for j in range(n):
        v = np.float64(xr[j])
        s += v * v
    rinv[r] = 1.0 / math.sqrt(s / n + eps)
    c = rinv[r]  # in the data's dtype
    if affine:
        for j in range(n):
            yr[j] = xr[j] * c * w[j]
    else:
        for j in range(n):
            yr[j] = xr[j] * c


@kernel
def _backward_row(x, w, affine, rinv, dy, need_dx, dx, terms, r):
    xr = x[r]
    dyr = dy[r]
    n = xr.shape[0]
    c = rinv[r]
    if affine:
        tr = terms[r]
        for j in range(n):
            tr[j] = dyr[j] * xr[j] * c  # this row's share of d(weight)
    if not need_dx:
        return
    dot = 0.0
    if affine:
        for j in range(n):
            dot += np.float64(dyr[j]) * np.float64(w[j]) * np.float64(xr[j])
    else:
        for j in range(n):
            dot += np.float64(dyr[j]) * np.float64(xr[j])
    c64 = np.float64(c)
    k = xr.dtype.type(dot * c64 * c64 * c64 / n)
    dxr = dx[r]
    if affine:
        for j in range(n):
            dxr[j] = dyr[j] * w[j] * c - xr[j] * k
    else:
        for j in range(n):
            dxr[j] = dyr[j] * c - xr[j] * k


@parallel_kernel
def _forward_parallel(x, w, affine, eps, y, rinv):
    """Parallel over rows: row ``r`` writes ``y[r]`` and ``rinv[r]`` only (race-free)."""
    for r in numba.prange(x.shape[0]):
        _forward_row(x, w, affine, eps, y, rinv, r)


@kernel
def _forward_serial(x, w, affine, eps, y, rinv):
    for r in range(x.shape[0]):
        _forward_row(x, w, affine, eps, y, rinv, r)


@parallel_kernel
def _backward_parallel(x, w, affine, rinv, dy, need_dx, dx, terms):
    """Parallel over rows: row ``r`` writes ``dx[r]`` and ``terms[r]`` only (race-free)."""
    for r in numba.prange(x.shape[0]):
        _backward_row(x, w, affine, rinv, dy, need_dx, dx, terms, r)


@kernel
def _backward_serial(x, w, affine, rinv, dy, need_dx, dx, terms):
    for r in range(x.shape[0]):
        _backward_row(x, w, affine, rinv, dy, need_dx, dx, terms, r)


def rms_norm_forward(x: np.ndarray, w: np.ndarray | None, eps: float, y: np.ndarray,
                     rinv: np.ndarray) -> None:
    """``y = x / sqrt(mean(x**2, axis=1) + eps) * w`` for rows of a 2-D ``x``; unchecked.

    Args:
        x: ``(rows, n)`` C-contiguous float32 or float64.
        w: ``(n,)`` of ``x``'s dtype, or ``None`` for no weight.
        eps: added to the mean square (float64).
        y: ``(rows, n)`` like ``x``; receives the output.
        rinv: ``(rows,)`` of ``x``'s dtype; receives ``1 / sqrt(mean(x**2) + eps)`` per
            row, which :func:`rms_norm_backward` reads.

    Parallel over rows at :data:`PARALLEL_MIN` elements and above, serial below; the two
    give the same result for any thread count (each row is reduced on its own).
    """
    run = _forward_parallel if x.size >= PARALLEL_MIN else _forward_serial
    run(x, rinv if w is None else w, w is not None, eps, y, rinv)


def rms_norm_backward(x: np.ndarray, w: np.ndarray | None, rinv: np.ndarray,
                      dy: np.ndarray, dx: np.ndarray | None, terms: np.ndarray) -> None:
    """The input gradient and the per-row weight-gradient terms of :func:`rms_norm_forward`.

    Args:
        x, w, rinv: as given to and written by :func:`rms_norm_forward`.
        dy: ``(rows, n)``, d(loss)/dy.
        dx: ``(rows, n)``, receives d(loss)/dx; ``None`` skips it.
        terms: ``(rows, n)``, receives ``dy * x * rinv`` (its column sums are d(loss)/dw;
            untouched when ``w`` is ``None``).
    """
    run = _backward_parallel if x.size >= PARALLEL_MIN else _backward_serial
    # Unused arrays are stand-ins of the right type: one compiled specialization serves
    # every flag combination.
    run(x, rinv if w is None else w, w is not None, rinv, dy, dx is not None,
        x if dx is None else dx, terms)


# -- the layer ------------------------------------------------------------------------


class RMSNorm(Module):
    """Root-mean-square normalisation over the last axis, as ``torch.nn.RMSNorm``.

    Args:
        normalized_shape: the size ``n`` of the last axis (an int; PyTorch also takes a
            tuple of trailing axes, this layer normalises over the last one only).
        eps: added to the mean square; ``None`` (PyTorch's default) means
            ``numpy.finfo(dtype).eps`` of the model's dtype.
        elementwise_affine: learn a per-feature ``weight`` (ones at first). Its role is
            ``"norm"``: no weight decay by default.

    Takes samples of any shape whose last axis has ``normalized_shape`` elements; the
    output has the input's shape. Registered through the ``numbanet_register_layers``
    hook, so saved models that use it load wherever this package is installed.
    """

    def __init__(self, normalized_shape: int, eps: float | None = None,
                 elementwise_affine: bool = True) -> None:
        super().__init__()
        if isinstance(normalized_shape, bool) or not isinstance(normalized_shape,
                                                                (int, np.integer)):
            raise TypeError(f"RMSNorm: normalized_shape must be an int, got "
                            f"{type(normalized_shape).__name__} {normalized_shape!r}")
        if normalized_shape < 1:
            raise ValueError(f"RMSNorm: normalized_shape must be >= 1, got {normalized_shape}")
        if eps is not None:
            if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)):
                raise TypeError(f"RMSNorm: eps must be a float or None, got "
                                f"{type(eps).__name__}")
            if not (math.isfinite(eps) and eps >= 0):
                raise ValueError(f"RMSNorm: eps must be finite and >= 0, got {eps}")
        if not isinstance(elementwise_affine, (bool, np.bool_)):
            raise TypeError("RMSNorm: elementwise_affine must be a bool, got "
                            f"{type(elementwise_affine).__name__}")
        self.normalized_shape = int(normalized_shape)
        self.eps = None if eps is None else float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self._x: np.ndarray | None = None
        self._rinv: np.ndarray | None = None

    def parameter_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("weight", (self.normalized_shape,))] if self.elementwise_affine else []

    def parameter_roles(self) -> dict[str, str]:
        return {"weight": "norm"} if self.elementwise_affine else {}

    def initialize(self, rng: np.random.Generator) -> None:
        if self.elementwise_affine:
            self.parameter("weight").value[...] = 1

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(in_shape) == 0 or in_shape[-1] != self.normalized_shape:
            raise ValueError(f"{self!r} normalises a last axis of {self.normalized_shape} "
                             f"features but receives samples of shape {tuple(in_shape)}")
        return tuple(in_shape)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.layer_type, "normalized_shape": self.normalized_shape,
                "eps": self.eps, "elementwise_affine": self.elementwise_affine}

    def _weight(self) -> np.ndarray | None:
        return self.parameter("weight").value if self.elementwise_affine else None

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        n = self.normalized_shape
        rows = x.size // n
        y = self.workspace.get("y", x.shape)
        rinv = self.workspace.get("rinv", rows)
        eps = np.finfo(x.dtype).eps if self.eps is None else self.eps
        x2 = x.reshape(rows, n)
        rms_norm_forward(x2, self._weight(), float(eps), y.reshape(rows, n), rinv)
        self._x, self._rinv = x2, rinv
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        if self._x is None or self._rinv is None:
            raise RuntimeError("RMSNorm.backward called before forward")
        x2, rinv = self._x, self._rinv
        rows, n = x2.shape
        dx = self.workspace.get("dx", dy.shape) if need_input_grad else None
        w = self._weight()
        terms = self.workspace.get("dweight_terms", rows, n) if w is not None else x2
        rms_norm_backward(x2, w, rinv, dy.reshape(rows, n),
                          None if dx is None else dx.reshape(rows, n), terms)
        if w is not None:
            # d(weight) = column sums of the terms, in fixed row chunks (the same result
            # under any thread count). Workspaces are keyed by their first axis, which
            # here is the number of row chunks rather than the batch.
            partials = self.workspace.get("dweight_partials", max(1, -(-rows // ROW_CHUNK)),
                                          n, dtype=np.float64)
            column_sum_into(terms, self.parameter("weight").grad, partials)
        return dx

    def __repr__(self) -> str:
        extra = "" if self.eps is None else f", eps={self.eps!r}"
        extra += "" if self.elementwise_affine else ", elementwise_affine=False"
        return f"RMSNorm({self.normalized_shape}{extra})"


@hookimpl
def numbanet_register_layers() -> list[type[Module]]:
    return [RMSNorm]
