"""The layer contract every building block of a :class:`~numbanet.nn.Sequential` follows.

A layer maps a batch ``(batch, *in_shape)`` to ``(batch, *out_shape)``. Per-sample shapes
(the batch axis excluded) are what :meth:`Module.output_shape` takes and returns.

What a layer implements (plugin layers too; everything but ``forward``, ``backward`` and
``get_config`` has a default):

===============================  ===========================================================
``parameter_shapes()``           ``[(local_name, shape), ...]``: trainable arrays
``parameter_roles()``            ``{local_name: role}``: ``"weight"`` (default, decays),
                                 ``"bias"`` or ``"norm"`` (no weight decay by default)
``buffer_shapes()``              ``[(local_name, shape), ...]``: saved, not trained
``initialize(rng)``              write initial parameter (and buffer) values
``input_shape``                  the per-sample input shape the layer fixes, or ``None``
``output_shape(in_shape)``       per-sample output shape; ``ValueError`` if it cannot take it
``forward(x, training)``         ``(batch, *in_shape)`` -> ``(batch, *out_shape)``
``backward(dy, need_input_grad)``  fill this layer's gradients, return ``dx`` or ``None``
``get_config()``                 constructor arguments plus ``"type"`` (:attr:`layer_type`)
===============================  ===========================================================

Optional protocol members the model uses without knowing the layer's class:

* ``input_kind`` (``"real"`` or ``"index"``) and ``check_input(x, name)``: what a first
  layer takes; ``"index"`` layers (Embedding) receive C-contiguous ``int64`` arrays, and
  ``check_input`` may reject values (an index out of range) before any kernel runs.
* ``set_rng(rng)``: receive the model's random generator (Dropout's masks).
* ``output_activation``: the activation the layer applies last (``"softmax"``, ...) or
  ``None``; ``compile`` warns when the loss applies the same one again.
* ``fused_derivative()`` / ``accepts_fused_derivative`` / ``backward_fused(...)``: the
  layer above applies this layer's activation derivative in the epilogue of its input
  gradient GEMM (Dense over Dense with ReLU).

Parameters are reached by local name with :meth:`Module.parameter` and buffers with
:meth:`Module.buffer`; both are views into the model's flat buffers, handed over by
:meth:`Module.attach`.

Rules every layer keeps (``numbanet.testing.check_layer`` checks them):

* ``forward`` returns a C-contiguous array of the model's dtype shaped
  ``(batch, *output_shape(in_shape))``; ``backward`` returns one shaped like the input.
* Never write into ``x`` or ``dy``: they belong to the layer below or above.
* ``backward`` overwrites the gradients; it never adds to them.
* Buffers change only in a training ``forward`` (running statistics), never in
  ``backward`` or an inference pass.
* A steady-state step allocates nothing: buffers come from :attr:`Module.workspace`.
* Results are bit-identical for any thread count (fixed-order reductions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from numbanet._aligned import aligned_empty
from numbanet.nn.parameter import ROLES, Parameter

# Distinct batch sizes whose buffers a layer keeps: an epoch of fit touches up to five
# (training batch and its remainder, evaluation batch and its remainder, validation).
# The least recently used one is dropped beyond this.
_MAX_CACHED_BATCH_SIZES = 6

Shape = tuple[int, ...]

#: Bytes per memory page: where a buffer starts within one decides which L1 cache sets its
#: rows of 4 KiB (and multiples) fall in (see :meth:`Workspace.get_placed`).
PAGE_BYTES = 4096
#: The page offsets :meth:`Workspace.get_placed` chooses among: a quarter page apart, so
#: two arrays to keep away from rule out at most two of them.
PLACEMENTS = (0, 1024, 2048, 3072)


def page_offset(array: np.ndarray) -> int:
    """Where ``array``'s first element lies within its page, in bytes (costs ~1 us)."""
    return array.ctypes.data % PAGE_BYTES


def farthest_placement(offsets: Sequence[int]) -> int:
    """The page offset of :data:`PLACEMENTS` farthest, around the page, from the nearest
    of ``offsets`` (the first such; 0 for no offsets)."""
    best, best_gap = PLACEMENTS[0], -1
    for candidate in PLACEMENTS:
        gap = min((min((candidate - o) % PAGE_BYTES, (o - candidate) % PAGE_BYTES)
                   for o in offsets), default=PAGE_BYTES)
        if gap > best_gap:
            best, best_gap = candidate, gap
    return best


class Workspace:
    """Buffers a layer reuses across steps, one set per batch size.

    A training step must not allocate in steady state, so each layer asks its workspace
    for arrays by name and shape (batch axis first); they are created on first use for
    that batch size and handed back on every later step.
    """

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self._by_rows: dict[int, dict[str, np.ndarray]] = {}
        self._scratch: np.ndarray | None = None
        # get_placed: name -> (its byte buffer, the page offset chosen, the view there)
        self._placed: dict[str, tuple[np.ndarray, int, np.ndarray]] = {}

    def get(self, name: str, *shape: int | Sequence[int], dtype: Any = None,
            rows: int | None = None) -> np.ndarray:
        """The buffer called ``name`` with ``shape`` (batch first); contents are left from
        its last use.

        ``get("z", rows, width)`` and ``get("z", (rows, h, w, c))`` both work. ``dtype``
        defaults to the model's (integer buffers such as pooling's argmax pass their own).
        ``rows`` names the batch size the buffer belongs to when its first axis is not
        the batch (per-chunk partial sums), so it lives and dies with that batch size.
        """
        # Called several times per layer and step: no normalisation beyond unpacking.
        dims = (tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list))
                else shape)
        if rows is None:
            rows = dims[0]
        buffers = self._by_rows.pop(rows, None)
        if buffers is None:
            if len(self._by_rows) >= _MAX_CACHED_BATCH_SIZES:
                # Drop the least recently used batch size (dicts keep insertion order and
                # every use re-inserts its entry at the end).
                self._by_rows.pop(next(iter(self._by_rows)))
            buffers = {}
        self._by_rows[rows] = buffers
        array = buffers.get(name)
        if array is None or array.shape != dims or (dtype is not None
                                                     and array.dtype != dtype):
            array = buffers[name] = aligned_empty(dims, self.dtype if dtype is None else dtype)
        return array

    def get_placed(self, name: str, shape: Sequence[int],
                   away_from: Sequence[int]) -> np.ndarray:
        """:meth:`get` for an output that a row-wise kernel writes in step with its inputs:
        the buffer starts at the page offset (:func:`farthest_placement`) farthest from
        the inputs' offsets ``away_from`` (bytes, from :func:`page_offset`).

        Why: rows of 1024 float32 are a page long, so column ``j`` of every row of
        every array that starts at the same page offset falls in the same L1 set (8
        ways), and a kernel walking four rows of ``x``, ``dy`` and ``dx`` at once (layer
        norm's) then evicts its own lines. Freshly ``mmap``-ed arrays (128 KiB and more:
        NumPy's, PyTorch's, this workspace's) all start 16 bytes into a page; reused heap
        memory starts anywhere. Placing ``dx`` apart: layer norm's
        (256, 1024) float32 forward + backward, one thread, with ``x`` and ``dy`` at
        the same offset, 187-228 -> 149-164 us (medians of four rounds).

        The buffer is a view into a byte buffer a page longer (kept per batch size as
        :meth:`get` keeps its own); its contents are left from its last use only while
        the chosen offset stays the same. Buffers under a page are :meth:`get`'s.
        """
        dims = tuple(shape)
        nbytes = int(np.prod(dims)) * np.dtype(self.dtype).itemsize
        if nbytes < PAGE_BYTES or dims[0] == 0:
            return self.get(name, dims)
        raw = self.get(name, dims[0], -(-(nbytes + PAGE_BYTES) // dims[0]), dtype=np.uint8)
        offset = farthest_placement(away_from)
        held = self._placed.get(name)
        if held is not None and held[0] is raw and held[1] == offset:
            return held[2]
        start = (offset - raw.ctypes.data) % PAGE_BYTES
        view = raw.reshape(-1)[start:start + nbytes].view(self.dtype).reshape(dims)
        self._placed[name] = (raw, offset, view)
        return view

    def scratch(self, size: int) -> np.ndarray:
        """A 1-D buffer of at least ``size`` elements (GEMM packing space), grown on demand
        and shared by every batch size."""
        buffer = self._scratch
        if buffer is None or buffer.shape[0] < size:
            buffer = self._scratch = aligned_empty(max(size, 1), self.dtype)
        return buffer

    def clear(self) -> None:
        self._by_rows.clear()
        self._placed.clear()
        self._scratch = None


class FusedDerivative(NamedTuple):
    """What a layer offers the layer above for fusing its activation derivative.

    Attributes:
        act_id: the activation id (:mod:`numbanet.kernels.activations`) whose derivative
            the GEMM epilogue applies.
        saved: the array the derivative reads (the layer's pre-activation or output from
            the last forward), shaped like the layer's output.
    """

    act_id: int
    saved: np.ndarray


class Module:
    """Base class of layers (see the module docstring for the whole contract).

    The owning :class:`~numbanet.nn.Sequential` allocates one flat buffer for the
    parameters of all layers (one for the gradients, one for the buffers) and hands each
    layer views into it through :meth:`attach`. ``forward`` keeps what ``backward`` needs;
    ``backward`` overwrites the gradients of the layer's parameters (it does not add to
    them) and returns the gradient with respect to the layer's input.

    Arrays returned by ``forward``/``backward`` are the layer's own workspace buffers:
    valid until the next call with the same batch size.

    Attributes:
        layer_type: the name under which the layer registry knows the class and which
            ``get_config()["type"]`` returns; the class name unless a subclass sets it.
        input_shape: the per-sample input shape the layer fixes (``Dense(64, 10)``:
            ``(64,)``), or ``None`` when it takes what it is given.
        input_kind: ``"real"`` (default): the model hands a first layer real numbers in
            its dtype; ``"index"``: integer indices as ``int64`` (non-integer input is
            refused with a clear error).
        accepts_fused_derivative: the layer's :meth:`backward_fused` can apply the
            activation derivative of the layer below in its input-gradient epilogue.
        input_rectified: set by the model (:func:`fuse_output_relus`) on a ReLU layer
            whose input the layer below already rectified as it wrote it; its forward
            then passes the input through.
    """

    layer_type: ClassVar[str] = "Module"
    input_shape: Shape | None = None
    input_kind: ClassVar[str] = "real"
    accepts_fused_derivative: ClassVar[bool] = False
    input_rectified: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "layer_type" not in cls.__dict__:
            cls.layer_type = cls.__name__

    def __init__(self) -> None:
        self._params: dict[str, Parameter] = {}
        self._buffers: dict[str, np.ndarray] = {}
        self._workspace: Workspace | None = None

    # -- structure -----------------------------------------------------------------
    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        """Local names and shapes of this layer's trainable parameters, in a fixed order."""
        return []

    def parameter_roles(self) -> dict[str, str]:
        """Role of each parameter by local name: ``"weight"``, ``"bias"`` or ``"norm"``.

        The gradient pipeline decays only ``"weight"`` parameters by default
        (:class:`numbanet.optim.DecoupledWeightDecay`). Names left out are ``"weight"``.
        """
        return {}

    def buffer_shapes(self) -> list[tuple[str, Shape]]:
        """Local names and shapes of non-trainable state (running statistics, ...).

        Buffers are saved and loaded with the model and restored on resume, but have no
        gradient and the optimizer never touches them. They hold the model's dtype.
        """
        return []

    def attach(
        self,
        params: dict[str, Parameter],
        dtype: np.dtype,
        buffers: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Receive views into the model's buffers (keyed by local name) and the dtype."""
        self._params = params
        self._buffers = dict(buffers or {})
        self._workspace = Workspace(dtype)

    def initialize(self, rng: np.random.Generator) -> None:
        """Write initial values into the attached parameters and buffers."""

    def output_shape(self, in_shape: Shape) -> Shape:
        """Per-sample output shape for a per-sample input of ``in_shape``.

        Raises:
            ValueError: the layer cannot take that input (the message names both shapes).
        """
        return tuple(in_shape)

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments, with :attr:`layer_type` under ``"type"``."""
        raise NotImplementedError

    # -- parameters and buffers by local name ----------------------------------------
    def parameter(self, name: str) -> Parameter:
        """The :class:`Parameter` called ``name`` (local name, e.g. ``"weight"``)."""
        try:
            return self._params[name]
        except KeyError:
            if not self._params and any(n == name for n, _ in self.parameter_shapes()):
                raise RuntimeError(
                    f"{type(self).__name__} is not part of a model yet; put it in a Sequential"
                ) from None
            raise KeyError(
                f"{type(self).__name__} has no parameter {name!r}; it has "
                f"{[n for n, _ in self.parameter_shapes()]}"
            ) from None

    def buffer(self, name: str) -> np.ndarray:
        """The non-trainable buffer called ``name`` (a view into the model's buffers)."""
        try:
            return self._buffers[name]
        except KeyError:
            if not self._buffers and any(n == name for n, _ in self.buffer_shapes()):
                raise RuntimeError(
                    f"{type(self).__name__} is not part of a model yet; put it in a Sequential"
                ) from None
            raise KeyError(
                f"{type(self).__name__} has no buffer {name!r}; it has "
                f"{[n for n, _ in self.buffer_shapes()]}"
            ) from None

    # -- protocol hooks the model calls without knowing the class ------------------------
    def check_input(self, x: np.ndarray, name: str) -> None:
        """Reject input values this layer cannot take, when it is the model's first layer.

        Called once per call of ``fit``/``predict``/``train_step`` on the converted input
        (shape and dtype already checked), before any kernel runs. Raise ``ValueError``
        naming ``name``, the offending value and the fix. The default accepts everything.
        """

    def set_rng(self, rng: np.random.Generator) -> None:
        """Receive the model's random generator (called once when the model is built).

        Layers that draw random numbers in training (Dropout) keep it; saving the
        generator's state is then enough to resume bit for bit.
        """

    @property
    def output_activation(self) -> str | None:
        """The activation this layer applies last, or ``None`` (identity or not an
        activation); ``Sequential.compile`` reads it from the last layer."""
        return None

    @property
    def is_relu(self) -> bool:
        """Whether the layer is a ReLU and nothing else (``Activation("relu")``), which
        the layer below may apply for it (:func:`fuse_output_relus`)."""
        return False

    def set_output_relu(self, on: bool) -> bool:
        """Ask the layer to apply a ReLU (``0 if v < 0 else v``) to each value ``v`` it
        outputs from now on, for a ReLU layer right above it (``on``), or to stop; return
        whether it does. The default cannot: it returns ``False``. A layer that does must
        not read its own output in backward (the ReLU layer above keeps applying the
        derivative, from that output)."""
        return False

    def fused_derivative(self) -> FusedDerivative | None:
        """The activation derivative the layer above may apply for this layer, or ``None``.

        Called during backward, after this layer's forward; a layer returning a value
        must accept ``grad_is_dz=True`` in :meth:`backward_fused` (its incoming gradient
        is then already d(loss)/d(pre-activation)).
        """
        return None

    def backward_fused(
        self,
        grad: np.ndarray,
        grad_is_dz: bool,
        need_input_grad: bool,
        below: FusedDerivative | None,
    ) -> np.ndarray | None:
        """Backward with derivative fusion; the model calls this, layers override it only
        when they take part (see :meth:`fused_derivative` and
        :attr:`accepts_fused_derivative`). By default it is :meth:`backward`."""
        if grad_is_dz or below is not None:
            raise RuntimeError(f"{type(self).__name__} does not take part in derivative fusion")
        return self.backward(grad, need_input_grad=need_input_grad)

    # -- computation ---------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        """``(batch, *in_shape)`` -> ``(batch, *out_shape)``; keeps what backward needs."""
        raise NotImplementedError

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Overwrite this layer's gradients from ``dy`` (shaped like the last output) and
        return d(loss)/d(input) (or ``None`` when ``need_input_grad`` is false)."""
        raise NotImplementedError

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            raise RuntimeError(
                f"{type(self).__name__} is not part of a model yet; put it in a Sequential"
            )
        return self._workspace


def check_roles(layer: Module) -> dict[str, str]:
    """``layer.parameter_roles()`` completed with ``"weight"`` and checked."""
    names = [n for n, _ in layer.parameter_shapes()]
    roles = dict(layer.parameter_roles())
    for name, role in roles.items():
        if name not in names:
            raise ValueError(f"{type(layer).__name__}.parameter_roles() names {name!r}, which "
                             f"is not among its parameters {names}")
        if role not in ROLES:
            raise ValueError(f"{type(layer).__name__}.parameter_roles(): role {role!r} of "
                             f"{name!r} is not one of {ROLES}")
    return {name: roles.get(name, "weight") for name in names}


# -- backward through a chain of layers (Sequential and Residual share it) ---------------


def offers_fusion(layer: Module | None) -> bool:
    """Whether ``layer`` overrides :meth:`Module.fused_derivative`."""
    return layer is not None and type(layer).fused_derivative is not Module.fused_derivative


def fuse_output_relus(layers: Sequence[Module]) -> None:
    """Forward fusion along a chain of layers: each ReLU layer (:attr:`Module.is_relu`)
    right above a layer that can apply it as it writes its output
    (:meth:`Module.set_output_relu`: BatchNorm, Residual) leaves it to that layer and
    passes its input through (:attr:`Module.input_rectified`). That saves the ReLU's
    pass over the tensor (the ResNet of ``numbanet bench`` has 15: about 2 % of its
    step). The values are the same bits; the backward is unchanged, since the ReLU layer
    reads its derivative from the rectified output either way."""
    for i, below in enumerate(layers):
        above = layers[i + 1] if i + 1 < len(layers) else None
        wants = above is not None and above.is_relu
        applied = below.set_output_relu(wants)
        if above is not None:
            above.input_rectified = wants and applied
    if layers:
        layers[0].input_rectified = False


def fusion_partners(layers: Sequence[Module]) -> list[Module | None]:
    """For each layer, the layer below it when the two fuse an activation derivative into
    the upper layer's input-gradient GEMM (see :meth:`Module.fused_derivative`), else
    ``None``. The first layer has no partner."""
    return [below if layer.accepts_fused_derivative and offers_fusion(below) else None
            for below, layer in zip([None, *layers[:-1]], layers, strict=True)]


def backward_chain(layers: Sequence[Module], partners: Sequence[Module | None],
                   grad: np.ndarray, need_input_grad: bool) -> np.ndarray | None:
    """Backpropagate ``grad`` (d(loss)/d(output of the last layer)) through ``layers``,
    last to first, with the derivative fusion ``partners`` allows; returns d(loss)/d(input
    of the first layer), or ``None`` when ``need_input_grad`` is false."""
    out: np.ndarray | None = grad
    grad_is_dz = False  # out already went through the layer's activation derivative
    for i in range(len(layers) - 1, -1, -1):
        below = partners[i]
        offer = below.fused_derivative() if below is not None else None
        out = layers[i].backward_fused(out, grad_is_dz, need_input_grad or i > 0, offer)
        grad_is_dz = offer is not None
    return out
