"""The gradient pipeline: an ordered chain of transforms between backward and the update.

After backward has filled the model's flat gradient buffer and before the optimizer
updates the flat parameter buffer, a :class:`GradientPipeline` runs its transforms in
order (the shape of optax's ``chain(clip_by_global_norm(...), add_decayed_weights(...))``,
adapted to numbanet's in-place flat buffers)::

    backward -> [AllReduce] -> [your transforms] -> ClipByValue -> ClipByGlobalNorm
             -> DecoupledWeightDecay -> optimizer.step(params, grads, scale)

That is the order :func:`make_pipeline` (and ``fit(clip_value=..., clip_norm=...,
weight_decay=..., gradient_transforms=[...])``) builds; a pipeline you assemble yourself
runs in the order you list.

**The pending scale.** Each transform receives the flat gradient and parameter buffers
and a *pending scale* ``s``, and returns the new one: the gradient the optimizer will use
is ``s * grads``. Scaling the gradients (global-norm clipping, averaging over processes,
loss scaling) multiplies ``s`` instead of writing every element, and the optimizer applies
the final ``s`` as its ``grad_scale`` inside the update pass it makes anyway. A transform
that reads gradient values must therefore account for ``s`` (:class:`ClipByValue` clips
``grads`` to ``±clip_value / |s|``, :class:`ClipByGlobalNorm` measures ``|s| * ||grads||``);
one that needs the true values written out can apply ``s`` to the buffer and return 1.

**Cost.** Transforms precompute what they need (masks as lists of views, reduction
workspaces) once in :meth:`GradientTransform.setup`; a step then allocates nothing. The
pipeline adds a Python call per transform to a step; an empty pipeline is skipped.

Example:
    >>> import numpy as np, numbanet as nbn
    >>> from numbanet.optim import ClipByGlobalNorm, DecoupledWeightDecay, GradientPipeline
    >>> model = nbn.Sequential([nbn.Dense(4, 8, activation="relu"), nbn.Dense(8, 3)], seed=0)
    >>> _ = model.compile("cross_entropy", nbn.get_optimizer("sgd", lr=0.1))
    >>> pipeline = GradientPipeline(ClipByGlobalNorm(1.0), DecoupledWeightDecay(1e-4))
    >>> X, y = np.ones((5, 4)), np.array([0, 1, 2, 0, 1])
    >>> history = model.fit(X, y, epochs=2, verbose=0, gradient_pipeline=pipeline)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

from numbanet._validation import Real, check_arg
from numbanet.kernels.reductions import (
    CHUNK,
    PARALLEL_MIN,
    _chunked_sum_parallel,
    _chunked_sum_serial,
    sum_partials,
)
from numbanet.nn.parameter import ROLES, Parameter

__all__ = [
    "AllReduce",
    "ClipByGlobalNorm",
    "ClipByValue",
    "DecoupledWeightDecay",
    "GradientPipeline",
    "GradientTransform",
    "PipelineTarget",
    "ScaleGradients",
    "make_pipeline",
]


# ----------------------------------------------------------------------------- contract


class _OptimizerLike(Protocol):
    @property
    def lr(self) -> float: ...


class PipelineTarget(Protocol):
    """What a pipeline needs from a model (a :class:`~numbanet.Sequential` has it all).

    Attributes:
        flat_parameters: the 1-D C-contiguous buffer every parameter is a view into.
        flat_gradients: the gradient buffer, same shape and dtype.
        optimizer: the compiled optimizer; weight decay reads its ``lr`` every step.
    """

    @property
    def flat_parameters(self) -> np.ndarray: ...

    @property
    def flat_gradients(self) -> np.ndarray: ...

    @property
    def optimizer(self) -> Any: ...

    def parameters(self) -> list[Parameter]:
        """Every :class:`~numbanet.nn.Parameter` (``name``, ``value``, ``grad``, ``role``)."""
        ...


class GradientTransform:
    """One stage of a :class:`GradientPipeline`. Subclass it and override :meth:`update`
    (and :meth:`setup` when the stage needs per-model data).

    A transform edits the flat buffers in place and returns the pending gradient scale
    (see the module docstring). It must not allocate arrays in :meth:`update`: do that
    once in :meth:`setup`.

    Example: freeze the first layer by zeroing its gradients.

        >>> import numbanet as nbn
        >>> class FreezeFirstLayer(nbn.optim.GradientTransform):
        ...     def setup(self, model):
        ...         self.grads = [p.grad for p in model.parameters() if p.name.startswith("0.")]
        ...     def update(self, grads, params, scale):
        ...         for g in self.grads:
        ...             g[...] = 0.0
        ...         return scale
    """

    def setup(self, model: PipelineTarget) -> None:
        """Called once per model before the first :meth:`update` (by
        :meth:`GradientPipeline.setup`): precompute masks, views and workspaces here."""

    def update(self, grads: np.ndarray, params: np.ndarray, scale: float) -> float:
        """Transform in place; return the new pending scale.

        Args:
            grads: the model's flat gradient buffer (the true gradient is
                ``scale * grads``); may be edited in place.
            params: the model's flat parameter buffer; may be edited in place.
            scale: the pending gradient scale from the stages before (1.0 first).

        Returns:
            the pending scale for the next stage (``scale`` when unchanged). It must stay
            finite: the optimizer multiplies every gradient by the final one.
        """
        raise NotImplementedError

    #: Attributes shown by ``repr`` (the constructor arguments); ``None``: every public one.
    repr_fields: ClassVar[tuple[str, ...] | None] = None

    def __repr__(self) -> str:
        names = self.repr_fields
        if names is None:
            names = tuple(k for k in vars(self) if not k.startswith("_"))
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in names)
        return f"{type(self).__name__}({fields})"


_POSITIVE = Real(min=0, closed="neither")


# ---------------------------------------------------------------------------- transforms


class AllReduce(GradientTransform):
    """The cross-process slot: sum the flat gradient over processes, then average.

    ``reduce_(grads)`` must replace ``grads`` in place by the elementwise sum over all
    processes (an MPI ``Allreduce`` with ``MPI.IN_PLACE``); the average comes from
    dividing by ``divisor`` (the number of processes), folded into the pending scale.
    Without ``reduce_`` this stage does nothing, so single-process code can keep it.

    A pending scale other than 1 (a stage before this one scaled the gradients) is
    written into the buffer first: processes may disagree on it, and a sum of
    differently scaled buffers would be wrong. Put this stage first to avoid that pass.

    Args:
        reduce_: ``reduce_(flat_grads) -> None``, in place; ``None`` for one process.
        divisor: the pending scale is divided by this after the reduction.
    """

    def __init__(self, reduce_: Callable[[np.ndarray], None] | None = None,
                 divisor: float = 1.0) -> None:
        if reduce_ is not None and not callable(reduce_):
            raise TypeError(f"AllReduce: reduce_ must be callable or None, got "
                            f"{type(reduce_).__name__}")
        self.reduce_ = reduce_
        self.divisor = check_arg("divisor", divisor, _POSITIVE, where="AllReduce")

    def update(self, grads: np.ndarray, params: np.ndarray, scale: float) -> float:
        if self.reduce_ is None:
            return scale
        if scale != 1.0:
            grads *= scale
        self.reduce_(grads)
        return 1.0 / self.divisor


class ScaleGradients(GradientTransform):
    """Multiply the gradients by ``factor`` (loss-scale undo, accumulation averaging);
    folded into the pending scale, so no pass over the buffer.

    Args:
        factor: a finite, non-zero number.
    """

    def __init__(self, factor: float) -> None:
        factor = check_arg("factor", factor, Real(), where="ScaleGradients")
        if factor == 0.0:
            raise ValueError("ScaleGradients: factor must be non-zero, got 0.0")
        self.factor = factor

    def update(self, grads: np.ndarray, params: np.ndarray, scale: float) -> float:
        return scale * self.factor


class ClipByValue(GradientTransform):
    """Clip every gradient element to ``[-clip_value, clip_value]``, in place.

    With a pending scale ``s`` the true gradient ``s * grads`` is what gets clipped: the
    buffer is clipped to ``±clip_value / |s|`` (equal up to rounding, exact when
    ``s == 1``).

    Args:
        clip_value: a positive finite number.
    """

    def __init__(self, clip_value: float) -> None:
        self.clip_value = check_arg("clip_value", clip_value, _POSITIVE, where="ClipByValue")

    def update(self, grads: np.ndarray, params: np.ndarray, scale: float) -> float:
        if scale == 0.0:
            return scale
        bound = self.clip_value / abs(scale)
        np.clip(grads, -bound, bound, out=grads)
        return scale


class ClipByGlobalNorm(GradientTransform):
    """Scale the gradients so their global L2 norm is at most ``max_norm``
    (``torch.nn.utils.clip_grad_norm_``, including its ``1e-6`` in the denominator).

    The norm ``|s| * ||grads||`` comes from the deterministic chunked sum of squares
    (:func:`numbanet.kernels.reductions.sum_of_squares`, float64, independent of the
    thread count); clipping multiplies the pending scale by
    ``max_norm / (norm + 1e-6)`` and writes nothing.

    Args:
        max_norm: a positive finite number.

    Attributes:
        last_norm: the norm measured at the last step (before clipping), for logging.
    """

    repr_fields = ("max_norm",)

    def __init__(self, max_norm: float) -> None:
        self.max_norm = check_arg("max_norm", max_norm, _POSITIVE, where="ClipByGlobalNorm")
        self.last_norm = math.nan
        self._partials: np.ndarray | None = None

    def setup(self, model: PipelineTarget) -> None:
        grads = model.flat_gradients
        if grads.ndim != 1 or not grads.flags.c_contiguous:
            raise ValueError("ClipByGlobalNorm: flat_gradients must be 1-D and C-contiguous")
        self._partials = sum_partials(grads.shape[0])

    def update(self, grads: np.ndarray, params: np.ndarray, scale: float) -> float:
        partials = self._partials
        if partials is None or partials.shape[0] * CHUNK < grads.shape[0]:
            # Only when update runs without setup: the kernels do not check bounds.
            partials = self._partials = sum_partials(grads.shape[0])
        # The unchecked twins of sum_of_squares (validated once in setup); the same
        # size threshold picks between them, so the value is sum_of_squares' bit for bit.
        if grads.shape[0] >= PARALLEL_MIN:
            squares = _chunked_sum_parallel(grads, partials, True)
        else:
            squares = _chunked_sum_serial(grads, partials, True)
        norm = math.sqrt(float(squares))
        if scale != 1.0:
            norm *= abs(scale)
        self.last_norm = norm
        if norm > self.max_norm:
            # The epsilon matches torch.nn.utils.clip_grad_norm_.
            scale = scale * (self.max_norm / (norm + 1e-6))
        return scale


#: Which parameters :class:`DecoupledWeightDecay` decays: a set of roles, a list of
#: parameter names, or a predicate on :class:`~numbanet.nn.Parameter`.
DecayMask = Collection[str] | Callable[[Parameter], bool]


class DecoupledWeightDecay(GradientTransform):
    """Decoupled weight decay (Loshchilov & Hutter 2019, "AdamW"): before the update,
    multiply the selected parameters by ``1 - lr * weight_decay``, independently of the
    gradient (``lr`` is the optimizer's current learning rate, read every step).

    Which parameters decay is decided by their ``role`` (declared by their layer, see
    :meth:`numbanet.nn.Module.parameter_roles`), not their name: by default only
    ``"weight"`` parameters; biases and normalization parameters are left alone.

    Args:
        weight_decay: a finite number >= 0.
        mask: which parameters decay:

            * a ``set``/``frozenset`` of roles, e.g. ``{"weight", "bias"}``;
            * a ``list``/``tuple`` of parameter names, e.g. ``["0.weight", "2.weight"]``;
            * a callable ``mask(param) -> bool`` on each :class:`~numbanet.nn.Parameter`;
            * ``None``: ``{"weight"}``.

    Attributes:
        decayed: names of the parameters that decay (known after :meth:`setup`).
    """

    repr_fields = ("weight_decay", "mask")

    def __init__(self, weight_decay: float, mask: DecayMask | None = None) -> None:
        weight_decay = check_arg("weight_decay", weight_decay, Real(min=0),
                                 where="DecoupledWeightDecay")
        self.weight_decay = weight_decay
        self.mask = _check_mask(mask)
        self.decayed: list[str] = []
        self._values: list[np.ndarray] = []
        self._model: PipelineTarget | None = None

    def setup(self, model: PipelineTarget) -> None:
        params = model.parameters()
        mask = self.mask
        if isinstance(mask, frozenset):
            chosen = [p for p in params if p.role in mask]
        elif isinstance(mask, tuple):
            by_name = {p.name: p for p in params}
            unknown = [name for name in mask if name not in by_name]
            if unknown:
                raise ValueError(f"DecoupledWeightDecay: mask names {unknown}, which the model "
                                 f"does not have; its parameters are {list(by_name)}")
            names = set(mask)
            chosen = [p for p in params if p.name in names]
        else:
            chosen = [p for p in params if mask(p)]
        self.decayed = [p.name for p in chosen]
        self._values = [p.value for p in chosen]
        self._model = model

    def update(self, grads: np.ndarray, params: np.ndarray, scale: float) -> float:
        if self._values and self.weight_decay:
            assert self._model is not None
            factor = 1.0 - self._model.optimizer.lr * self.weight_decay
            for value in self._values:
                value *= factor
        return scale


def _check_mask(mask: object) -> frozenset[str] | tuple[str, ...] | Callable[[Parameter], bool]:
    if mask is None:
        return frozenset({"weight"})
    if isinstance(mask, (set, frozenset)):
        bad = sorted(str(m) for m in mask if m not in ROLES)
        if bad:
            raise ValueError(f"DecoupledWeightDecay: a set mask holds roles {ROLES}; got "
                             f"{bad} (pass a list to select parameters by name)")
        return frozenset(mask)
    if isinstance(mask, (list, tuple)):
        if not all(isinstance(m, str) for m in mask):
            raise TypeError("DecoupledWeightDecay: a list mask holds parameter names (str)")
        return tuple(mask)
    if callable(mask):
        return mask  # type: ignore[return-value]
    raise TypeError(f"DecoupledWeightDecay: mask must be a set of roles, a list of parameter "
                    f"names or a callable on Parameter, got {type(mask).__name__}")


# ------------------------------------------------------------------------------ pipeline


class GradientPipeline:
    """An ordered chain of :class:`GradientTransform` stages over a model's flat buffers.

    ``pipeline(model)`` runs the stages in order on ``model.flat_gradients`` /
    ``model.flat_parameters`` and returns the gradient scale the optimizer applies; this
    is the hook :meth:`numbanet.Sequential.train_batch` calls between backward and the
    update. The first call with a model (or :meth:`setup`) lets each stage precompute.

    Args:
        *transforms: the stages, in order: :class:`GradientTransform` objects (or any
            object with ``update(grads, params, scale) -> float`` and optionally
            ``setup(model)``).

    Example:
        >>> from numbanet.optim import (AllReduce, ClipByGlobalNorm, ClipByValue,
        ...                             DecoupledWeightDecay, GradientPipeline)
        >>> GradientPipeline(AllReduce(), ClipByValue(5.0), ClipByGlobalNorm(1.0),
        ...                  DecoupledWeightDecay(1e-2, mask={"weight"}))  # doctest: +ELLIPSIS
        GradientPipeline(AllReduce(...), ClipByValue(clip_value=5.0), ...)
    """

    def __init__(self, *transforms: Any) -> None:
        if len(transforms) == 1 and isinstance(transforms[0], (list, tuple)):
            transforms = tuple(transforms[0])
        for i, t in enumerate(transforms):
            if isinstance(t, type):
                raise TypeError(f"GradientPipeline: transform {i} is the class {t.__name__}; "
                                f"pass an instance")
            if not callable(getattr(t, "update", None)):
                raise TypeError(f"GradientPipeline: transform {i} ({type(t).__name__}) has no "
                                f"update(grads, params, scale) method")
        self.transforms: tuple[Any, ...] = tuple(transforms)
        self._model: object = None
        self._updates: tuple[Callable[[np.ndarray, np.ndarray, float], float], ...] = ()

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.transforms)

    def setup(self, model: PipelineTarget) -> GradientPipeline:
        """Bind to ``model``: every stage's ``setup(model)`` runs once. Returns ``self``."""
        for t in self.transforms:
            setup = getattr(t, "setup", None)
            if setup is not None:
                setup(model)
        self._updates = tuple(t.update for t in self.transforms)
        self._model = model
        return self

    def __call__(self, model: PipelineTarget) -> float:
        """Run every stage on ``model``'s flat buffers; return the optimizer's gradient scale."""
        if model is not self._model:
            self.setup(model)
        grads, params = model.flat_gradients, model.flat_parameters
        scale = 1.0
        for update in self._updates:
            scale = update(grads, params, scale)
        return scale

    def __repr__(self) -> str:
        return f"GradientPipeline({', '.join(repr(t) for t in self.transforms)})"


def make_pipeline(
    *,
    all_reduce: AllReduce | None = None,
    transforms: Sequence[Any] = (),
    clip_value: float | None = None,
    clip_norm: float | None = None,
    weight_decay: float | None = None,
    decay_mask: DecayMask | None = None,
) -> GradientPipeline:
    """The pipeline ``fit``'s keyword arguments stand for, in the documented order.

    ``all_reduce`` first (the gradient every later stage sees is the global one), then
    your ``transforms`` (on the raw gradient), then ``ClipByValue(clip_value)``, then
    ``ClipByGlobalNorm(clip_norm)``, then ``DecoupledWeightDecay(weight_decay,
    decay_mask)``; stages whose argument is ``None`` are left out.

    Example:
        >>> make_pipeline(clip_norm=1.0, weight_decay=1e-4)  # doctest: +ELLIPSIS
        GradientPipeline(ClipByGlobalNorm(max_norm=1.0), DecoupledWeightDecay(...))
    """
    stages: list[Any] = []
    if all_reduce is not None:
        stages.append(all_reduce)
    stages.extend(transforms)
    if clip_value is not None:
        stages.append(ClipByValue(clip_value))
    if clip_norm is not None:
        stages.append(ClipByGlobalNorm(clip_norm))
    if weight_decay is not None:
        stages.append(DecoupledWeightDecay(weight_decay, decay_mask))
    return GradientPipeline(*stages)
