"""The layer protocol every building block of a :class:`~numbanet.nn.Sequential` follows."""

from __future__ import annotations

from typing import Any

import numpy as np

from numbanet.nn.parameter import Parameter

# Distinct batch sizes whose buffers a layer keeps: an epoch of fit touches up to five
# (training batch and its remainder, evaluation batch and its remainder, validation).
# The least recently used one is dropped beyond this.
_MAX_CACHED_BATCH_SIZES = 6


class Workspace:
    """Buffers a layer reuses across steps, one set per batch size.

    A training step must not allocate in steady state, so each layer asks its workspace
    for ``(rows, width)`` arrays by name; they are created on first use for that batch
    size and handed back on every later step.
    """

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self._by_rows: dict[int, dict[str, np.ndarray]] = {}
        self._scratch: np.ndarray | None = None

    def get(self, name: str, rows: int, width: int) -> np.ndarray:
        """The ``(rows, width)`` buffer called ``name`` (contents are left from last use)."""
        buffers = self._by_rows.pop(rows, None)
        if buffers is None:
            if len(self._by_rows) >= _MAX_CACHED_BATCH_SIZES:
                # Drop the least recently used batch size (dicts keep insertion order and
                # every use re-inserts its entry at the end).
                self._by_rows.pop(next(iter(self._by_rows)))
            buffers = {}
        self._by_rows[rows] = buffers
        array = buffers.get(name)
        if array is None or array.shape[1] != width:
            array = buffers[name] = np.empty((rows, width), dtype=self.dtype)
        return array

    def scratch(self, size: int) -> np.ndarray:
        """A 1-D buffer of at least ``size`` elements (GEMM packing space), grown on demand
        and shared by every batch size."""
        buffer = self._scratch
        if buffer is None or buffer.shape[0] < size:
            buffer = self._scratch = np.empty(max(size, 1), dtype=self.dtype)
        return buffer

    def clear(self) -> None:
        self._by_rows.clear()
        self._scratch = None


class Module:
    """Base class of layers.

    A layer declares its parameters with :meth:`parameter_shapes`; the owning
    :class:`~numbanet.nn.Sequential` allocates one flat buffer for all layers and hands each
    layer views into it through :meth:`attach`. ``forward`` keeps what ``backward`` needs;
    ``backward`` overwrites the gradients of the layer's parameters (it does not add to
    them) and returns the gradient with respect to the layer's input.

    Arrays returned by ``forward``/``backward`` are the layer's own workspace buffers:
    valid until the next call with the same batch size.
    """

    in_features: int | None = None
    out_features: int | None = None

    def __init__(self) -> None:
        self._params: dict[str, Parameter] = {}
        self._workspace: Workspace | None = None

    # -- structure -----------------------------------------------------------------
    def parameter_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Local names and shapes of this layer's parameters, in a fixed order."""
        return []

    def attach(self, params: dict[str, Parameter], dtype: np.dtype) -> None:
        """Receive views into the model's buffers (keyed by local name) and the dtype."""
        self._params = params
        self._workspace = Workspace(dtype)

    def initialize(self, rng: np.random.Generator) -> None:
        """Write initial values into the attached parameters."""

    def output_features(self, in_features: int) -> int:
        """Width of the output for an input of width ``in_features``."""
        return in_features

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments, with the class name under ``"type"``."""
        raise NotImplementedError

    # -- computation ---------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        raise NotImplementedError

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            raise RuntimeError(
                f"{type(self).__name__} is not part of a model yet; put it in a Sequential"
            )
        return self._workspace
