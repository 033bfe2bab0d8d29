"""BatchNorm and LayerNorm: normalisation over the batch or over the last axis."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from numbanet._validation import Boolean, Integer, Real, check_arg
from numbanet.kernels.norm import (
    batch_norm_backward,
    batch_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
    ln_coefs_shape,
    norm_partials_shape,
)
from numbanet.nn.module import Module, Shape, page_offset
from numbanet.threads import get_num_threads

__all__ = ["BatchNorm", "LayerNorm"]

_FEATURES = Integer(min=1)
_EPS = Real(min=0)
_MOMENTUM = Real(min=0, max=1)
_FLAG = Boolean()


def _partials(layer: Module, batch: int, rows: int,
              cols: int) -> tuple[np.ndarray, np.ndarray]:
    """The reduction kernels' per-row-chunk sums for a batch of ``batch`` samples
    (``rows`` rows of ``cols``), kept under the batch size: float64 ``partials`` and the
    ``acc`` run sums in the model's dtype."""
    shape = norm_partials_shape(rows, cols)
    return (layer.workspace.get("partials", shape, dtype=np.float64, rows=batch),
            layer.workspace.get("acc", shape, rows=batch))


def _ln_coefs(layer: Module, batch: int, rows: int, cols: int) -> np.ndarray:
    """LayerNorm backward's per-chunk scratch for a run's row coefficients
    (:func:`~numbanet.kernels.norm.ln_coefs_shape`), kept under the batch size."""
    return layer.workspace.get("coefs", ln_coefs_shape(rows, cols), rows=batch)


class _Step(NamedTuple):
    """A batch shape's workspace buffers, looked up once per shape and kept by the layer:
    a steady-state step then makes no workspace call. (Those lookups and reshapes were
    ~5 of a step's ~10 us of Python, 4-7% of a 256 x 1024 step on two threads.)"""

    shape: tuple[int, ...]
    out: np.ndarray  # y (forward) or dx (backward), shaped like the input
    out2: np.ndarray  # the same memory as (rows, C)
    partials: np.ndarray  # float64 per-chunk sums (see _partials)
    acc: np.ndarray  # per-chunk run sums in the model's dtype
    mean: np.ndarray | None  # LayerNorm forward: per-row statistics, (rows,) float64
    rstd: np.ndarray | None
    coefs: np.ndarray | None  # LayerNorm backward: a run's row coefficients per chunk
    inputs: tuple[np.ndarray, ...]  # the arrays `out` was placed away from (see _step)


def _step(layer: Module, cached: _Step | None, shape: tuple[int, ...], out: str,
          inputs: tuple[np.ndarray, ...], row_stats: bool = False,
          coefs: bool = False) -> _Step:
    """``cached`` if it is for ``shape`` and the same ``inputs``, else the buffers for
    them: ``out`` (``"y"`` or ``"dx"``) placed in its page away from the ``inputs`` the
    kernel reads in step with it (``x``; ``x`` and ``dy``:
    :meth:`~numbanet.nn.module.Workspace.get_placed`), the chunk sums and, with
    ``row_stats``, LayerNorm's per-row statistics; with ``coefs``, its backward's
    coefficient scratch (:func:`_ln_coefs`).

    In a model the inputs are other layers' workspace buffers, the same arrays every
    step, so the placement is chosen once; the identity test costs nanoseconds, the
    address lookup a microsecond. Holding them keeps at most one batch shape's set (and
    the inputs of the last call) alive per direction beyond what the workspace keeps.
    """
    if (cached is not None and cached.shape == shape and len(cached.inputs) == len(inputs)
            and all(a is b for a, b in zip(cached.inputs, inputs, strict=True))):
        return cached
    cols = shape[-1]
    rows = int(np.prod(shape[:-1]))
    y = layer.workspace.get_placed(out, shape, [page_offset(a) for a in inputs])
    partials, acc = _partials(layer, shape[0], rows, cols)
    mean = rstd = None
    if row_stats:
        # Shaped like the input without its last axis (batch first, so the workspace keys
        # them by batch size like every other buffer).
        mean = layer.workspace.get("mean", shape[:-1], dtype=np.float64).reshape(rows)
        rstd = layer.workspace.get("rstd", shape[:-1], dtype=np.float64).reshape(rows)
    return _Step(shape, y, y.reshape(rows, cols), partials, acc, mean, rstd,
                 _ln_coefs(layer, shape[0], rows, cols) if coefs else None, inputs)


def _last_axis_error(layer: Module, features: int, in_shape: Shape) -> ValueError | None:
    in_shape = tuple(in_shape)
    if len(in_shape) >= 1 and in_shape[-1] == features:
        return None
    fix = ("; images are channels-last: (height, width, channels)"
           if len(in_shape) == 3 and in_shape[0] == features else "")
    return ValueError(f"{layer!r} normalises a last axis of {features} features but receives "
                      f"samples of shape {in_shape}{fix}")


class BatchNorm(Module):
    """Batch normalisation over every axis but the last (Ioffe and Szegedy, 2015).

    Each feature of the last axis is normalised with its mean and variance over all other
    axes, so one layer serves ``(N, F)`` (``torch.nn.BatchNorm1d``) and channels-last
    images ``(N, H, W, C)`` (``torch.nn.BatchNorm2d``)::

        y = (x - mean) / sqrt(var + eps) * weight + bias

    PyTorch's semantics: in training the batch's mean and biased variance normalise,
    and the running statistics move towards the batch's
    (``running = (1 - momentum) * running + momentum * batch``, with the *unbiased*
    variance); with ``training=False`` the running statistics normalise. Only training
    forward passes change the running statistics.

    Args:
        num_features: size ``C`` of the last axis.
        eps: added to the variance.
        momentum: weight of the batch in the running statistics, in ``[0, 1]``
            (PyTorch's cumulative average, ``momentum=None``, is not offered).
        affine: learn ``weight`` (gamma, ones at first) and ``bias`` (beta, zeros), both
            of role ``"norm"`` (no weight decay by default).

    Buffers ``running_mean`` (zeros at first) and ``running_var`` (ones) are saved and
    loaded with the model and restored on resume, never trained.

    Training needs more than one value per feature (a batch of one ``(1, F)`` row raises
    ``ValueError``, as PyTorch does).

    Data-parallel training: each process normalises with the statistics of its own
    shard of the batch and updates its own running statistics (PyTorch's ``BatchNorm``
    without ``SyncBatchNorm``); the gradient all-reduce keeps the parameters equal, but
    the running buffers drift apart unless they are averaged or broadcast. Whether
    numbanet synchronises batch statistics across processes is left to the issue that
    adds distributed training.

    Kernels (:mod:`numbanet.kernels.norm`): the forward reads ``x`` twice (fixed-order
    column sums, then the normalisation) and writes ``y`` once; the backward
    reads ``x`` and ``dy`` twice and writes ``dx`` once. Results are bit-identical for
    any thread count. In a model, an ``Activation("relu")`` right after the layer is
    applied as ``y`` is written (:meth:`set_output_relu`), saving that layer's pass.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True) -> None:
        super().__init__()
        where = "BatchNorm"
        self.num_features = check_arg("num_features", num_features, _FEATURES, where=where)
        self.eps = check_arg("eps", eps, _EPS, where=where)
        self.momentum = check_arg("momentum", momentum, _MOMENTUM, where=where)
        self.affine = check_arg("affine", affine, _FLAG, where=where)
        self._x: np.ndarray | None = None
        self._x_in: np.ndarray | None = None  # the forward's x as given (x reshaped is _x)
        self._batch_stats = False
        self._stats: np.ndarray | None = None
        self._coef: np.ndarray | None = None
        self._relu_output = False  # set_output_relu: a ReLU layer above is applied here

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        c = self.num_features
        return [("weight", (c,)), ("bias", (c,))] if self.affine else []

    def parameter_roles(self) -> dict[str, str]:
        return {"weight": "norm", "bias": "norm"} if self.affine else {}

    def buffer_shapes(self) -> list[tuple[str, Shape]]:
        c = self.num_features
        return [("running_mean", (c,)), ("running_var", (c,))]

    def attach(self, params: Any, dtype: np.dtype, buffers: Any = None) -> None:
        super().attach(params, dtype, buffers)
        # Per-feature statistics and coefficients: float64 (mean, invstd, two sums) and
        # the model's dtype (mean, three elementwise coefficients).
        self._stats = np.zeros((4, self.num_features), dtype=np.float64)
        self._coef = np.zeros((4, self.num_features), dtype=dtype)
        self._x = self._x_in = None
        self._fwd: _Step | None = None  # buffers of the last forward's and backward's shape
        self._bwd: _Step | None = None
        self._threads: int | None = None  # Numba's thread count at the last forward

    def initialize(self, rng: np.random.Generator) -> None:
        if self.affine:
            self._params["weight"].value[...] = 1
            self._params["bias"].value[...] = 0
        self.buffer("running_mean")[...] = 0
        self.buffer("running_var")[...] = 1

    def output_shape(self, in_shape: Shape) -> Shape:
        error = _last_axis_error(self, self.num_features, in_shape)
        if error is not None:
            raise error
        return tuple(in_shape)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.layer_type, "num_features": self.num_features, "eps": self.eps,
                "momentum": self.momentum, "affine": self.affine}

    def set_output_relu(self, on: bool) -> bool:
        # The kernels clamp as they write y; backward reads x and the coefficients only.
        self._relu_output = bool(on)
        return self._relu_output

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        c = self.num_features
        if x.ndim < 2 or x.shape[-1] != c:
            raise ValueError(f"{self!r} expects (batch, ..., {c}) inputs, got shape {x.shape}")
        rows = x.size // c
        if training and rows < 2:
            raise ValueError(
                f"{self!r}: expected more than 1 value per feature in training, got input "
                f"of shape {x.shape}; train with batches of at least 2 samples (pass "
                f"fit(..., drop_last=True) when a last batch of 1 is left), or call forward "
                f"with training=False")
        assert self._stats is not None and self._coef is not None
        step = self._fwd = _step(self, self._fwd, x.shape, "y", (x,))
        x2 = x.reshape(rows, c)
        weight = self._params["weight"].value if self.affine else None
        bias = self._params["bias"].value if self.affine else None
        # Asked once per step (~0.6 us), for the backward too: the kernels run serially
        # on one thread.
        self._threads = get_num_threads()
        batch_norm_forward(x2, training, self.eps, self.momentum, weight, bias,
                           self._buffers["running_mean"], self._buffers["running_var"],
                           self._stats, self._coef, step.partials, step.acc, step.out2,
                           self._threads, relu=self._relu_output)
        self._x, self._x_in, self._batch_stats = x2, x, training
        return step.out

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        x2 = self._x
        if x2 is None:
            raise RuntimeError("BatchNorm.backward called before forward")
        assert self._stats is not None and self._coef is not None
        rows, c = x2.shape
        if need_input_grad:
            step = self._bwd = _step(self, self._bwd, dy.shape, "dx", (self._x_in, dy))
            partials, acc, dx, dx2 = step.partials, step.acc, step.out, step.out2
        else:  # the first layer's backward: no dx buffer
            (partials, acc), dx, dx2 = _partials(self, dy.shape[0], rows, c), None, None
        if self.affine:
            weight = self._params["weight"]
            bias = self._params["bias"]
            w, dw, db = weight.value, weight.grad, bias.grad
        else:
            w = dw = db = None
        batch_norm_backward(x2, dy.reshape(rows, c), w, self._batch_stats, self._stats,
                            self._coef, partials, acc, dw, db, dx2, self._threads)
        return dx

    def __repr__(self) -> str:
        extra = "" if self.eps == 1e-5 else f", eps={self.eps!r}"
        extra += "" if self.momentum == 0.1 else f", momentum={self.momentum!r}"
        extra += "" if self.affine else ", affine=False"
        return f"BatchNorm({self.num_features}{extra})"


class LayerNorm(Module):
    """Layer normalisation over the last axis (Ba, Kiros and Hinton, 2016).

    Each sample's last axis (``normalized_shape`` values) is normalised with its own mean
    and biased variance, as ``torch.nn.LayerNorm(normalized_shape)``::

        y = (x - mean) / sqrt(var + eps) * weight + bias

    Training and inference compute the same thing; there is no running state.

    Args:
        normalized_shape: size of the last axis, an int (PyTorch also takes a tuple of
            trailing axes; a one-element tuple is accepted here, longer ones are not).
        eps: added to the variance.
        elementwise_affine: learn ``weight`` (ones at first) and ``bias`` (zeros), both
            of role ``"norm"`` (no weight decay by default).

    Kernels (:mod:`numbanet.kernels.norm`): one read of ``x`` and one write of ``y``
    forward (each row is normalised while it sits in L1 after its statistics), one read
    of ``x`` and ``dy`` and one write of ``dx`` backward, with the parameter gradients
    summed along in fixed row chunks (bit-identical for any thread count).
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5,
                 elementwise_affine: bool = True) -> None:
        super().__init__()
        where = "LayerNorm"
        if isinstance(normalized_shape, (tuple, list)):
            if len(normalized_shape) != 1:
                raise ValueError(
                    f"{where}: normalized_shape must be an int (the size of the last axis), "
                    f"got {normalized_shape!r}; this layer normalises over the last axis "
                    "only: reshape so that the normalised values form the last axis")
            normalized_shape = normalized_shape[0]
        self.normalized_shape = check_arg("normalized_shape", normalized_shape, _FEATURES,
                                          where=where)
        self.eps = check_arg("eps", eps, _EPS, where=where)
        self.elementwise_affine = check_arg("elementwise_affine", elementwise_affine, _FLAG,
                                            where=where)
        self._x: np.ndarray | None = None
        self._x_in: np.ndarray | None = None  # the forward's x as given (x reshaped is _x)
        self._mean: np.ndarray | None = None
        self._rstd: np.ndarray | None = None

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        n = self.normalized_shape
        return [("weight", (n,)), ("bias", (n,))] if self.elementwise_affine else []

    def parameter_roles(self) -> dict[str, str]:
        return {"weight": "norm", "bias": "norm"} if self.elementwise_affine else {}

    def attach(self, params: Any, dtype: np.dtype, buffers: Any = None) -> None:
        super().attach(params, dtype, buffers)
        self._x = self._x_in = None
        self._fwd: _Step | None = None  # buffers of the last forward's and backward's shape
        self._bwd: _Step | None = None
        self._threads: int | None = None  # Numba's thread count at the last forward

    def initialize(self, rng: np.random.Generator) -> None:
        if self.elementwise_affine:
            self._params["weight"].value[...] = 1
            self._params["bias"].value[...] = 0

    def output_shape(self, in_shape: Shape) -> Shape:
        error = _last_axis_error(self, self.normalized_shape, in_shape)
        if error is not None:
            raise error
        return tuple(in_shape)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.layer_type, "normalized_shape": self.normalized_shape,
                "eps": self.eps, "elementwise_affine": self.elementwise_affine}

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        n = self.normalized_shape
        if x.ndim < 2 or x.shape[-1] != n:
            raise ValueError(f"{self!r} expects (batch, ..., {n}) inputs, got shape {x.shape}")
        rows = x.size // n
        step = self._fwd = _step(self, self._fwd, x.shape, "y", (x,), row_stats=True)
        affine = self.elementwise_affine
        x2 = x.reshape(rows, n)
        self._threads = get_num_threads()  # once per step, as in BatchNorm.forward
        layer_norm_forward(x2, self.eps, self._params["weight"].value if affine else None,
                           self._params["bias"].value if affine else None,
                           step.out2, step.mean, step.rstd, self._threads)
        self._x, self._x_in, self._mean, self._rstd = x2, x, step.mean, step.rstd
        return step.out

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        x2 = self._x
        if x2 is None or self._mean is None or self._rstd is None:
            raise RuntimeError("LayerNorm.backward called before forward")
        rows, n = x2.shape
        if need_input_grad:
            step = self._bwd = _step(self, self._bwd, dy.shape, "dx", (self._x_in, dy),
                                     coefs=True)
            partials, acc, dx, dx2 = step.partials, step.acc, step.out, step.out2
            coefs = step.coefs
        else:  # the first layer's backward: no dx buffer
            (partials, acc), dx, dx2 = _partials(self, dy.shape[0], rows, n), None, None
            coefs = _ln_coefs(self, dy.shape[0], rows, n)
        if self.elementwise_affine:
            weight = self._params["weight"]
            w, dw, db = weight.value, weight.grad, self._params["bias"].grad
        else:
            w = dw = db = None
        layer_norm_backward(x2, dy.reshape(rows, n), w, self._mean, self._rstd, partials,
                            acc, coefs, dw, db, dx2, self._threads)
        return dx

    def __repr__(self) -> str:
        extra = "" if self.eps == 1e-5 else f", eps={self.eps!r}"
        extra += "" if self.elementwise_affine else ", elementwise_affine=False"
        return f"LayerNorm({self.normalized_shape}{extra})"
