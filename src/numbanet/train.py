"""The training loop: :func:`fit`, :func:`evaluate`, :func:`predict_proba` and :class:`History`.

``model.fit(...)``, ``model.evaluate(...)`` and ``model.predict_proba(...)`` delegate
here. The loop uses only the public members of the model that :class:`TrainableModel`
lists. One call of :func:`fit` runs these parts, each a named piece below:

1. **Data** (:func:`_prepare_data`): check and convert ``X``/``y`` once
   (``model.validate_input``, ``model.loss.prepare_targets``) and split off the
   validation data: wrong kinds, NaN, length mismatches and labels out of range fail
   here, before any training, with an error naming the argument.
2. **Batching** (:class:`numbanet.sampling.BatchSampler` and
   :class:`~numbanet.sampling.BatchLoader`): every epoch draws one permutation from the
   model's generator (``model.rng``, the same one dropout uses) and gathers each batch
   into buffers allocated once.
3. **Gradient pipeline** (:mod:`numbanet.optim.pipeline`): ``clip_value``, ``clip_norm``,
   ``weight_decay`` and ``gradient_transforms`` become one
   :class:`~numbanet.optim.GradientPipeline` that ``model.train_batch`` runs between
   backward and the optimizer update. In steady state a step allocates no arrays.
4. **Epoch loop** (:class:`_FitLoop`): callbacks, the steps of an epoch
   (:meth:`_FitLoop.train_epoch`), the end-of-epoch evaluation and the stop checks.
5. **NaN policy** (:class:`_NanPolicy`): after every step the loss is checked; a NaN or
   infinite loss stops training with a message naming the epoch and the step
   (``on_nan="stop"``), raises (``on_nan="raise"``) or is recorded and ignored
   (``on_nan="continue"``).
6. **Validation** (:meth:`_FitLoop.epoch_logs`): at the end of an epoch the model is
   evaluated in inference mode (no dropout) on the validation data (``val_loss``,
   ``val_<metric>``) and, when metrics were compiled, on the training data
   (``<metric>``), so the numbers in :class:`History` describe the weights at the end of
   the epoch rather than a running average over changing weights. The training ``loss``
   is the running mean of the step losses of the epoch (weighted by batch rows), as in
   Keras: the log line says ``loss ... (running mean)`` and ``History.measured`` records
   how each key was measured.
7. **Progress** (:class:`_Progress`): on a terminal a bar for the steps, then one full
   summary line per epoch (never truncated); elsewhere just the summary lines. Time
   Numba spends compiling or loading cached kernels (:mod:`numbanet._compilation`) is
   reported apart and kept out of the samples/s figure.

Why training stopped early is a :class:`StopReason` in ``History.stop_reason``.

Data that does not fit in memory: a ``numpy.memmap`` ``X`` stays on disk and each batch
is converted and checked on its own (:class:`~numbanet.sampling.LazyRows`); ``fit(batches)``
with ``y=None`` trains on an iterable of ``(X_batch, y_batch)`` pairs
(:class:`~numbanet.sampling.StreamLoader`).

Data parallelism (``distributed=True``, :mod:`numbanet.distributed`) plugs in at four
places and nowhere else: the batch sampler (each rank's slice of each global batch), the
:class:`~numbanet.optim.AllReduce` slot of the gradient pipeline, the step's loss (reduced
over the ranks, so the NaN policy and the logs agree everywhere) and the end-of-epoch
outputs (gathered, so metrics are one process's). Only rank 0 prints.

Determinism: everything random comes from ``model.rng``, and the kernels reduce in a
fixed order, so a seeded model gives bit-identical weights run to run and for any thread
count; training 10 epochs equals training 5, ``save``, ``load`` and 5 more.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from numbanet._compilation import COMPILING_MESSAGE, CompileWatch
from numbanet._validation import (
    AnyOf,
    Boolean,
    Integer,
    OneOf,
    Optional,
    Real,
    check_arg,
    validate_args,
)
from numbanet.losses.loss import WeightedTargets, check_sample_weight
from numbanet.optim.pipeline import GradientPipeline, PipelineTarget, make_pipeline
from numbanet.sampling import BatchLoader, BatchSampler, LazyBatchLoader, LazyRows, StreamLoader

__all__ = ["History", "StopReason", "TrainableModel", "evaluate", "fit", "predict_proba"]

_ON_NAN = ("stop", "raise", "continue")


# ----------------------------------------------------------------------- stop reasons


class StopReason(str):
    """Why training stopped early: the message, plus what kind of stop it was.

    A ``str`` (the human-readable message, so ``"early stopping" in reason`` and printing
    work as they always did) carrying structured fields for programs.

    Args:
        message: the text.
        kind: what stopped training. Built-in kinds: ``"nan_loss"`` (fit's
            ``on_nan="stop"``), ``"early_stopping"`` (:class:`~numbanet.EarlyStopping`),
            ``"terminate_on_nan"`` (:class:`~numbanet.TerminateOnNaN`), ``"callback"``
            (a callback set ``model.stop_training`` without a structured reason). Your
            callbacks may use their own.
        epoch: 0-based epoch index (counted over the model's lifetime, as in
            ``History.epoch``) in which training stopped, or ``None``.
        step: 0-based step within that epoch, or ``None`` when the stop came at the
            end of the epoch.

    Example:
        >>> from numbanet.train import StopReason
        >>> reason = StopReason("loss is nan at epoch 2, step 5", "nan_loss", epoch=1, step=4)
        >>> reason.kind, reason.epoch, reason.step, "loss is" in reason
        ('nan_loss', 1, 4, True)
    """

    kind: str
    epoch: int | None
    step: int | None

    def __new__(cls, message: str, kind: str = "callback", epoch: int | None = None,
                step: int | None = None) -> StopReason:
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"StopReason: kind must be a non-empty str, got {kind!r}")
        self = super().__new__(cls, message)
        self.kind = kind
        self.epoch = None if epoch is None else int(epoch)
        self.step = None if step is None else int(step)
        return self

    @property
    def message(self) -> str:
        """The text as a plain ``str``."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return (f"StopReason({self.message!r}, kind={self.kind!r}, epoch={self.epoch!r}, "
                f"step={self.step!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (StopReason, (self.message, self.kind, self.epoch, self.step))


def _as_stop_reason(reason: object, epoch: int | None) -> StopReason:
    """What a callback left in ``model.stop_reason``, as a :class:`StopReason`."""
    if isinstance(reason, StopReason):
        return reason
    if isinstance(reason, str) and reason:
        return StopReason(reason, "callback", epoch=epoch)
    return StopReason("stopped by a callback", "callback", epoch=epoch)


#: ``History.measured`` values: how a logged figure was measured.
RUNNING_MEAN = "running mean over the epoch's training steps"
END_OF_EPOCH = "at the end of the epoch, in inference mode"


class History:
    """What :func:`fit` returns: per-epoch logs.

    Attributes:
        history: ``{key: [value per epoch]}``; keys are ``"loss"``, each compiled metric
            (``"accuracy"``, ...), and with validation data ``"val_loss"`` and
            ``"val_<metric>"``. Also ``"lr"``, the learning rate used in the epoch.
        epoch: the (0-based, counted over the model's lifetime) index of each logged epoch.
        params: the arguments of the run (``epochs``, ``batch_size``, ``steps``,
            ``samples``, ``metrics``: the keys that will be logged).
        stop_reason: ``None`` when all epochs ran, else a :class:`StopReason` saying why
            training stopped early (its ``.kind``: ``"nan_loss"``, ``"early_stopping"``,
            ...).
        measured: how each logged key was measured: ``"loss"`` is the running mean of
            the epoch's step losses (weights changing, dropout on, as in Keras);
            every metric and every ``val_`` key is measured at the end of the epoch in
            inference mode (:data:`RUNNING_MEAN`, :data:`END_OF_EPOCH`).

    Example:
        >>> history = model.fit(X, y, epochs=3)            # doctest: +SKIP
        >>> history["loss"]                                 # doctest: +SKIP
        [0.91, 0.42, 0.30]
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.params: dict[str, Any] = {}
        self.stop_reason: StopReason | None = None
        self.measured: dict[str, str] = {}

    def _append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: object) -> bool:
        return key in self.history

    def keys(self) -> Iterable[str]:
        """The logged keys."""
        return self.history.keys()

    def __repr__(self) -> str:
        last = {k: round(v[-1], 6) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"


# ------------------------------------------------------------------ what the loop uses


class LossLike(Protocol):
    """The loss members the loop uses (a :class:`numbanet.losses.Loss` has them)."""

    def prepare_targets(self, y: Any, n_outputs: int, dtype: Any) -> np.ndarray: ...

    def forward(self, outputs: np.ndarray, targets: Any) -> float | np.ndarray: ...


class OptimizerLike(Protocol):
    """The optimizer members the loop reads (an :class:`numbanet.optim.Optimizer` has
    them)."""

    @property
    def lr(self) -> float: ...

    @property
    def step_count(self) -> int: ...


class MetricLike(Protocol):
    """A compiled metric (:class:`numbanet.metrics.Metric`)."""

    @property
    def name(self) -> str: ...

    @property
    def greater_is_better(self) -> bool | None: ...

    def __call__(self, outputs: np.ndarray, targets: np.ndarray) -> float: ...


class TrainableModel(PipelineTarget, Protocol):
    """Everything :func:`fit`, :func:`evaluate` and :func:`predict_proba` use of a model.

    A :class:`~numbanet.Sequential` implements it; so can any model that wants to reuse
    this loop. The loop touches nothing else (no private member).

    Attributes:
        epochs_completed: epochs trained over the model's lifetime (fit advances it).
        stop_training: set by callbacks to end training after the current step/epoch.
        stop_reason: optionally set with ``stop_training`` (a :class:`StopReason` or
            text).
    """

    epochs_completed: int
    stop_training: bool
    stop_reason: str | None

    @property
    def rng(self) -> np.random.Generator:
        """The generator shuffling and dropout draw from."""
        ...

    @property
    def loss(self) -> Any:
        """The compiled loss (:class:`LossLike`), ``None`` before compile."""
        ...

    @property
    def metrics(self) -> Sequence[MetricLike]: ...

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def out_features(self) -> int:
        """Size of the last axis of the outputs (what ``loss.prepare_targets`` needs)."""
        ...

    def require_compiled(self, what: str) -> None:
        """Raise ``RuntimeError`` naming ``what`` unless loss and optimizer are set."""
        ...

    def validate_input(self, X: Any, name: str = "X") -> np.ndarray:
        """``X`` checked and converted once (C-contiguous, the model's dtype, no NaN)."""
        ...

    def predict_validated(self, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Outputs for an already validated ``X``, in inference mode (a new array)."""
        ...

    def train_batch(self, X: np.ndarray, targets: np.ndarray,
                    pipeline: Callable[[Any], float] | None = None) -> float:
        """Forward, loss, backward, ``pipeline(model)``, optimizer update; the loss
        before the update."""
        ...


# ----------------------------------------------------------------------------- checks

_VERBOSE_LEVELS = "0: quiet, 1: a progress bar, 2: one line per epoch"
_VERBOSE = AnyOf(Boolean(), Integer(min=0, max=2, hint=_VERBOSE_LEVELS), hint=_VERBOSE_LEVELS)
_BATCH_SIZE = Integer(min=1)

#: The allowed types and ranges of :func:`fit`'s scalar arguments (checked by
#: :func:`numbanet._validation.validate_args`, which writes the messages).
FIT_CONSTRAINTS = {
    "epochs": Integer(min=0),
    "batch_size": _BATCH_SIZE,
    "validation_split": Real(min=0, max=1, closed="left"),
    "shuffle": Boolean(),
    "drop_last": Boolean(),
    "seed": Optional(Integer(min=0)),
    "verbose": _VERBOSE,
    "clip_norm": Optional(Real(min=0, closed="neither")),
    "clip_value": Optional(Real(min=0, closed="neither")),
    "weight_decay": Optional(Real(min=0)),
    "decay_biases": Boolean(),
    "on_nan": OneOf(*_ON_NAN),
    "distributed": Boolean(),
    "shard": OneOf("global", "local"),
}


# ------------------------------------------------------------------------------- data


def _prepare(model: TrainableModel, X: Any, y: Any, x_name: str,
             y_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert one ``(X, y)`` pair once; errors name the arguments."""
    if X is None:
        raise TypeError(f"{x_name} must be an array of samples, got None")
    if y is None:
        raise TypeError(f"{y_name} must be labels or targets, got None")
    X = _rows(model, X, x_name)
    y_len = _length(y, y_name)
    if y_len != X.shape[0]:
        raise ValueError(f"{x_name} has {X.shape[0]} samples but {y_name} has {y_len}")
    try:
        targets = model.loss.prepare_targets(y, model.out_features, model.dtype)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        if y_name != "y":
            message = f"{y_name}: {message}"
        raise type(exc)(message) from None
    targets = np.ascontiguousarray(targets)
    if targets.dtype.kind == "f" and not np.isfinite(targets).all():
        raise ValueError(f"{y_name} contains NaN or infinity")
    if len(targets) != X.shape[0]:
        raise ValueError(f"{x_name} has {X.shape[0]} samples but {y_name} has {len(targets)}")
    return X, targets


def _length(y: Any, name: str) -> int:
    try:
        return len(y)
    except TypeError:
        raise TypeError(
            f"{name} must be an array of labels or targets, got {type(y).__name__}"
        ) from None


def _rows(model: TrainableModel, X: Any, name: str) -> np.ndarray | LazyRows:
    """``X`` checked and converted once; a ``numpy.memmap`` (``np.load(...,
    mmap_mode="r")``) stays on disk instead, as :class:`~numbanet.sampling.LazyRows`: its
    shape is checked here, and each batch is converted and checked when it is read (an
    error names the row)."""
    if isinstance(X, np.memmap) and X.ndim >= 2 and X.shape[0] > 0:
        first = model.validate_input(np.asarray(X[:1]), name=name)  # shape, dtype kind
        return LazyRows(X, first.dtype, model.validate_input, name)
    return model.validate_input(X, name=name)


def _is_stream(X: Any, y: Any) -> bool:
    """``fit(batches)``: ``y`` is None and ``X`` an iterable of ``(X_batch, y_batch)``."""
    return (y is None and X is not None and not isinstance(X, (np.ndarray, str, bytes))
            and hasattr(X, "__iter__") and not hasattr(X, "__array__"))


def _split_validation(
    X: np.ndarray, targets: np.ndarray, validation_split: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    if validation_split == 0.0:
        return X, targets, None, None
    n = X.shape[0]
    # Like Keras: the last fraction of the samples, taken before any shuffling, so the
    # split needs no random numbers and a resumed run validates on the same samples.
    n_val = int(math.ceil(n * validation_split))
    if n_val >= n:
        raise ValueError(
            f"validation_split={validation_split} leaves no training samples out of {n}"
        )
    cut = n - n_val
    return X[:cut], targets[:cut], X[cut:], targets[cut:]


class _Data(NamedTuple):
    """The checked arrays of one fit call."""

    X: np.ndarray
    targets: np.ndarray
    X_val: np.ndarray | None
    t_val: np.ndarray | None
    weights: np.ndarray | None = None  # float64 per training sample, or None
    w_val: np.ndarray | None = None  # per validation sample (weighs val_loss), or None


def _prepare_data(model: TrainableModel, X: Any, y: Any,
                  validation_data: tuple[Any, ...] | None,
                  validation_split: float, sample_weight: Any = None,
                  class_weight: Any = None) -> _Data:
    """Training and validation arrays, checked and converted once."""
    X, targets = _prepare(model, X, y, "X", "y")
    weights = _sample_weights(model, targets, sample_weight, class_weight)
    if validation_data is None:
        data = _Data(*_split_validation(X, targets, validation_split))
        if weights is None:
            return data
        cut = data.X.shape[0]
        w_val = weights[cut:] if data.X_val is not None and sample_weight is not None else None
        return data._replace(weights=weights[:cut], w_val=w_val)
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise TypeError("validation_data must be a tuple (X_val, y_val) or "
                        "(X_val, y_val, sample_weight_val)")
    X_val, t_val = _prepare(model, validation_data[0], validation_data[1],
                            "validation_data[0]", "validation_data[1]")
    w_val = None
    if len(validation_data) == 3 and validation_data[2] is not None:
        _require_weighted_loss(model, "validation_data[2]")
        w_val = _nonzero(check_sample_weight(validation_data[2], X_val.shape[0],
                                             "validation_data[2]"), "validation_data[2]")
    return _Data(X, targets, X_val, t_val, weights, w_val)


# ------------------------------------------------------------------- sample weights


def _require_weighted_loss(model: TrainableModel, name: str) -> None:
    if not getattr(model.loss, "accepts_sample_weight", False):
        raise TypeError(
            f"{name} needs a loss that applies sample weights (one from "
            f"numbanet.get_loss); {_loss_name(model.loss)} does not"
        )


def _nonzero(weights: np.ndarray, name: str) -> np.ndarray:
    if weights.size and not weights.any():
        raise ValueError(f"{name} is zero for every sample: nothing would count")
    return weights


def _sample_weights(model: TrainableModel, targets: np.ndarray, sample_weight: Any,
                    class_weight: Any) -> np.ndarray | None:
    """One float64 weight per sample: ``sample_weight`` times the weight of each sample's
    class (Keras's and scikit-learn's rule), or ``None`` when neither is given."""
    if sample_weight is None and class_weight is None:
        return None
    n = targets.shape[0]
    weights = np.ones(n)
    if sample_weight is not None:
        _require_weighted_loss(model, "sample_weight")
        weights = check_sample_weight(sample_weight, n)
    if class_weight is not None:
        _require_weighted_loss(model, "class_weight")
        weights = weights * _class_weights(class_weight, targets, model.out_features)
    return _nonzero(weights, "sample_weight" if class_weight is None
                    else "the sample weight (sample_weight times class_weight)")


def _class_weights(class_weight: Any, targets: np.ndarray, k: int) -> np.ndarray:
    """Each sample's class weight: from ``{label: weight}`` (unlisted classes 1) or
    ``"balanced"``, scikit-learn's ``n_samples / (n_classes * count(label))`` over the
    classes present; samples whose label is out of range (an ignored label) get 1."""
    if targets.ndim != 1 or targets.dtype.kind not in "iu":
        raise ValueError(
            f"class_weight needs integer class labels as y; the loss's targets have shape "
            f"{targets.shape} (pass sample_weight instead)"
        )
    valid = (targets >= 0) & (targets < k)
    labels = targets[valid]
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be a dict {{label: weight}} or 'balanced', "
                             f"got {class_weight!r}")
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        present = counts > 0
        per_class = np.ones(k)
        per_class[present] = labels.size / (present.sum() * counts[present])
    elif isinstance(class_weight, Mapping):
        per_class = np.ones(k)
        for label, value in class_weight.items():
            if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
                raise TypeError(f"class_weight keys must be integer class labels, got "
                                f"{label!r}")
            if not 0 <= int(label) < k:
                raise ValueError(f"class_weight has label {label}, outside [0, {k}) for "
                                 f"{k} outputs")
            weight = check_arg(f"class_weight[{label}]", value, Real(min=0))
            per_class[int(label)] = float(weight)
    else:
        raise TypeError(f"class_weight must be a dict {{label: weight}} or 'balanced', got "
                        f"{type(class_weight).__name__}")
    out = np.ones(targets.shape[0])
    out[valid] = per_class[labels]
    return out


# ------------------------------------------------------------------ gradient pipeline


def _gradient_pipeline(
    pipeline: object,
    transforms: object,
    clip_norm: float | None,
    clip_value: float | None,
    weight_decay: float | None,
    decay_biases: bool,
) -> GradientPipeline:
    """The pipeline fit's keyword arguments stand for (a given one, or one built)."""
    if pipeline is not None:
        if not isinstance(pipeline, GradientPipeline):
            raise TypeError(
                f"gradient_pipeline must be a numbanet.optim.GradientPipeline, got "
                f"{type(pipeline).__name__}; to add single stages pass "
                f"gradient_transforms=[...]"
            )
        given = [name for name, value in (
            ("clip_norm", clip_norm), ("clip_value", clip_value),
            ("weight_decay", weight_decay), ("gradient_transforms", transforms),
            ("decay_biases", True if decay_biases else None),
        ) if value is not None]
        if given:
            raise ValueError(
                f"pass either gradient_pipeline or {', '.join(given)}, not both: put every "
                f"stage in the pipeline (numbanet.optim.make_pipeline builds fit's order)"
            )
        return pipeline
    if transforms is None:
        transforms = ()
    elif not isinstance(transforms, (list, tuple)):
        raise TypeError(f"gradient_transforms must be a list of gradient transforms, got "
                        f"{type(transforms).__name__}")
    try:
        return make_pipeline(
            transforms=transforms, clip_value=clip_value, clip_norm=clip_norm,
            weight_decay=weight_decay,
            decay_mask={"weight", "bias"} if decay_biases else None,
        )
    except TypeError as exc:
        raise TypeError(f"gradient_transforms: {exc}") from None


# -------------------------------------------------------------------------- NaN policy


class _NanPolicy:
    """What a NaN or infinite training loss does (``fit(on_nan=...)``)."""

    ADVICE = ("lower the learning rate or clip gradients (clip_norm=...); pass "
              "on_nan='continue' to keep going")

    def __init__(self, on_nan: str) -> None:
        self.on_nan = on_nan

    def check(self, loss: float, epoch: int, step: int, steps: int,
              optimizer_step: int) -> StopReason | None:
        """Called with a non-finite step loss: raise, or the reason to stop, or ``None``."""
        if self.on_nan == "continue":
            return None
        of_steps = "" if steps is None else f" of {steps}"  # a stream's length is unknown
        message = (f"loss is {loss} at epoch {epoch + 1}, step {step + 1}{of_steps} "
                   f"(optimizer step {optimizer_step})")
        if self.on_nan == "raise":
            raise FloatingPointError(
                f"{message}; lower the learning rate, clip gradients (clip_norm=...), or "
                f"pass on_nan='continue'"
            )
        return StopReason(f"{message}; training stopped", "nan_loss", epoch=epoch, step=step)

    #: Say nothing (the ranks other than 0 of a distributed fit).
    quiet = False

    def report(self, reason: StopReason, progress: _Progress) -> None:
        """Tell the user: a line when ``verbose``, else a ``RuntimeWarning``."""
        if self.quiet:
            return
        if progress.verbose:
            progress.message(f"numbanet: {reason}; {self.ADVICE}")
        else:
            warnings.warn(f"{reason}; {self.ADVICE}", RuntimeWarning,
                          stacklevel=_caller_stacklevel())


def _in_numbanet(module: str) -> bool:
    return module == "numbanet" or module.startswith("numbanet.")


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside numbanet."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and _in_numbanet(frame.f_globals.get("__name__", "")):
        frame = frame.f_back
        level += 1
    return level


# ----------------------------------------------------------------------------- output


def _format_logs(logs: dict[str, float]) -> str:
    parts = []
    for key, value in logs.items():
        if key == "lr":
            parts.append(f"lr {value:.3g}")
        else:
            parts.append(f"{key} {value:.4f}")
    return " - ".join(parts)


class _Progress:
    """What fit prints: Keras's and tqdm's habit, a bar for the steps, then one summary
    line per epoch.

    ``verbose=0`` prints nothing. ``verbose=1`` on a terminal at least
    :attr:`MIN_COLUMNS` wide draws a one-line bar for the steps (redrawn in place at
    most every :attr:`REDRAW_SECONDS`, never wider than the terminal), then replaces it
    with the epoch's summary line. Elsewhere (a pipe, a file, a notebook, a terminal that
    reports no size) and with ``verbose=2`` it prints just the summary lines. The summary
    line is never truncated: a narrow terminal wraps it.

    Args:
        verbose: 0, 1 or 2.
        epochs: the last epoch number (for ``epoch 3/30``).
        steps: steps per epoch.
        stream: where to write (default ``sys.stdout``).
        columns: the terminal width to draw the bar for; ``None`` asks the terminal at
            every epoch (so a resized window is followed).
    """

    MIN_COLUMNS = 40
    REDRAW_SECONDS = 0.1

    def __init__(self, verbose: int, epochs: int, steps: int, stream: Any = None,
                 columns: int | None = None) -> None:
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.stream = stream if stream is not None else sys.stdout
        self.columns = columns
        self.draw_bars = verbose == 1 and _isatty(self.stream)
        # The bar being drawn: ``(epoch_number, width)`` while an epoch runs on a terminal,
        # else None (the fit loop calls ``step`` only then).
        self.bar: tuple[int, int] | None = None
        self._shown = 0  # characters of the bar on screen
        self._drawn_at = 0.0
        self._started = 0.0

    def _width(self) -> int:
        if self.columns is not None:
            return self.columns
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return 0

    def epoch_begin(self, epoch_number: int) -> None:
        if not self.draw_bars:
            return
        width = self._width()
        self.bar = (epoch_number, width) if width >= self.MIN_COLUMNS else None
        self._started = self._drawn_at = time.perf_counter()

    def step(self, done: int, running_loss: float) -> None:
        """Redraw the bar after ``done`` of the epoch's steps (throttled)."""
        if self.bar is None:
            return
        now = time.perf_counter()
        if done != self.steps and now - self._drawn_at < self.REDRAW_SECONDS:
            return
        self._drawn_at = now
        epoch_number, width = self.bar
        head = f"epoch {epoch_number}/{self.epochs} "
        count = f"{done}/{self.steps}" if self.steps > 0 else f"{done} steps"
        tail = f" {count} - loss {running_loss:.4f} - {now - self._started:.1f}s"
        room = width - 1 - len(head) - len(tail) - 2
        line = head + tail.lstrip()
        if room >= 10 and self.steps > 0:  # a stream of unknown length gets no bar
            filled = room * done // max(self.steps, 1)
            arrow = ">" if filled < room else ""
            line = f"{head}[{'=' * filled}{arrow}{'.' * (room - filled - len(arrow))}]{tail}"
        line = line[: width - 1]
        self.stream.write("\r" + line + " " * max(0, self._shown - len(line)))
        self.stream.flush()
        self._shown = len(line)

    def _clear_bar(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self._shown = 0

    def epoch_end(self, epoch_number: int, logs: dict[str, float], seconds: float,
                  samples: int, warmup: float = 0.0) -> None:
        if self.verbose == 0:
            return
        self._clear_bar()
        self.bar = None
        print(f"epoch {epoch_number}/{self.epochs} - "
              f"{_epoch_summary(logs, seconds, samples, warmup)}",
              file=self.stream, flush=True)

    def compiling(self) -> None:
        """Numba started compiling kernels: say so once, the first time."""
        self.message(COMPILING_MESSAGE)

    def message(self, text: str) -> None:
        if self.verbose:
            self._clear_bar()
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        self._clear_bar()
        self.bar = None


def _epoch_summary(logs: dict[str, float], seconds: float, samples: int,
                   warmup: float) -> str:
    """``loss 0.31 (running mean) - accuracy 0.93 - ... - 51,234 samples/s - 0.03s``."""
    parts = []
    for key, value in logs.items():
        if key == "lr":
            parts.append(f"lr {value:.3g}")
        elif key == "loss":
            parts.append(f"loss {value:.4f} (running mean)")
        else:
            parts.append(f"{key} {value:.4f}")
    rate = samples / seconds if seconds > 0 else float("inf")
    line = f"{' - '.join(parts)} - {rate:,.0f} samples/s - {seconds:.2f}s"
    if warmup >= 0.05:
        line += f" (+{warmup:.1f}s compiling or loading kernels)"
    return line


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ------------------------------------------------------------------------- epoch loop


class _EpochSteps(NamedTuple):
    """What the steps of one epoch leave for its end."""

    loss: float  # sample-weighted mean of the step losses
    samples: int  # samples trained on
    lr: float  # the learning rate in force (after per-step callbacks)
    seconds: float  # training time, without the time in Numba's compiler
    nan_stop: StopReason | None  # set when on_nan="stop" ended the epoch
    warmup: float = 0.0  # seconds Numba spent compiling or loading kernels in the steps


class _FitLoop:
    """The epoch loop of one :func:`fit` call, over parts built beforehand."""

    #: The data-parallel plumbing (:class:`numbanet.distributed.DataParallel`) or None.
    dist: Any = None

    def __init__(self, model: TrainableModel, data: _Data, loader: BatchLoader,
                 pipeline: GradientPipeline, callbacks: Any, progress: _Progress,
                 nan_policy: _NanPolicy, history: History,
                 watch: CompileWatch | None = None) -> None:
        self.model, self.data, self.loader = model, data, loader
        self.watch = watch
        # An empty pipeline is skipped: train_batch's plain path has no hook call at all.
        self.pipeline: GradientPipeline | None = pipeline if len(pipeline) else None
        self.callbacks, self.progress = callbacks, progress
        self.nan_policy, self.history = nan_policy, history

    def run(self, first_epoch: int, epochs: int) -> None:
        """Train ``epochs`` epochs; leave why it stopped early in the history."""
        if self.dist is None:
            return self._run(first_epoch, epochs)
        try:
            self._run(first_epoch, epochs)
        except FloatingPointError:
            raise  # on_nan="raise" sees the global loss: every rank raises at this step
        except Exception as exc:
            # Only this rank may have failed, and the others would wait for it in a
            # collective forever: end them all, with this error shown.
            self.dist.fail(exc)

    def _run(self, first_epoch: int, epochs: int) -> None:
        model, callbacks = self.model, self.callbacks
        last = None
        callbacks.on_train_begin({})
        try:
            for epoch in range(first_epoch, first_epoch + epochs):
                last = epoch
                if not self.run_epoch(epoch):
                    break
        finally:
            self.progress.close()
        callbacks.on_train_end({})
        if self.history.stop_reason is None and model.stop_training:
            # A callback stopped training in on_train_end.
            self.history.stop_reason = _as_stop_reason(model.stop_reason, last)

    def run_epoch(self, epoch: int) -> bool:
        """One epoch with its callbacks and logs; ``False`` when training must stop."""
        model, callbacks, history = self.model, self.callbacks, self.history
        callbacks.on_epoch_begin(epoch, {})
        self.progress.epoch_begin(epoch + 1)
        steps = self.train_epoch(epoch)
        logs: dict[str, float] = {"loss": steps.loss}
        if steps.nan_stop is not None:
            self.stop_on_nan(epoch, logs, steps.nan_stop)
            return False
        logs.update(self.epoch_logs())
        logs["lr"] = steps.lr
        model.epochs_completed = epoch + 1
        callbacks.on_epoch_end(epoch, logs)
        if self.dist is not None:  # a callback that stops one rank stops all
            model.stop_training = self.dist.any(model.stop_training)
        history._append(epoch, logs)
        self.progress.epoch_end(epoch + 1, logs, steps.seconds, steps.samples, steps.warmup)
        if model.stop_training:
            history.stop_reason = _as_stop_reason(model.stop_reason, epoch)
            return False
        return True

    def train_epoch(self, epoch: int) -> _EpochSteps:
        """The steps of one epoch: batch, callbacks, train, NaN check, progress."""
        model, loader, callbacks, progress = self.model, self.loader, self.callbacks, self.progress
        pipeline, per_batch = self.pipeline, callbacks.per_batch
        weighted = loader.weights is not None
        dist = self.dist
        steps = loader.steps
        loader.new_epoch(model.rng)
        compiling = self.watch.seconds if self.watch is not None else 0.0
        started = time.perf_counter()
        total = 0.0
        seen = 0
        nan_stop = None
        lr_used = float(model.optimizer.lr)
        for step, (xb, tb) in enumerate(loader):
            if weighted:
                tb = WeightedTargets(tb, loader.get_weights(step))
            rows = xb.shape[0]
            if per_batch:
                callbacks.on_train_batch_begin(step, {"size": rows})
                lr_used = float(model.optimizer.lr)
            if dist is None:
                loss_value = model.train_batch(xb, tb, pipeline)
            else:  # the global batch's loss and rows, the same on every rank
                loss_value, rows = dist.train_batch(model, step, xb, tb, pipeline)
            total += loss_value * rows
            seen += rows
            if not math.isfinite(loss_value):
                nan_stop = self.nan_policy.check(loss_value, epoch, step, steps,
                                                 model.optimizer.step_count)
            if per_batch:
                callbacks.on_train_batch_end(step, {"loss": loss_value, "size": rows})
                if dist is not None:  # a callback that stops one rank stops all
                    model.stop_training = dist.any(model.stop_training)
            if progress.bar is not None:
                progress.step(step + 1, total / seen)
            if nan_stop is not None or model.stop_training:
                break
        if not seen:
            raise ValueError(f"the training batches of epoch {epoch + 1} held no samples "
                             f"(an empty or exhausted iterable?)")
        seconds = time.perf_counter() - started
        # Compiling (or loading cached) kernels is not training: report it apart.
        warmup = self.watch.seconds - compiling if self.watch is not None else 0.0
        return _EpochSteps(total / seen, seen, lr_used, seconds - warmup, nan_stop, warmup)

    def epoch_logs(self) -> dict[str, float]:
        """End-of-epoch evaluation: training metrics and validation loss and metrics."""
        model, data = self.model, self.data
        logs: dict[str, float] = {}
        if self.dist is not None:
            self.dist.end_epoch(model)
        if model.metrics and not isinstance(data.X, StreamLoader):
            outputs, targets, _ = self.outputs(data.X, data.targets, None)
            logs.update(_metric_values(model, data.X, targets, prefix="", outputs=outputs))
        if data.X_val is not None and data.t_val is not None:
            outputs, targets, weight = self.outputs(data.X_val, data.t_val, data.w_val)
            logs.update(_evaluate_prepared(model, data.X_val, targets, prefix="val_",
                                           weight=weight, outputs=outputs))
        return logs

    def outputs(self, X: Any, targets: Any, weight: Any) -> tuple[np.ndarray, Any, Any]:
        """Inference outputs of every row of ``X`` with its targets and weights (in a
        distributed fit each rank computes a share and all receive every row)."""
        def predict(rows: Any) -> np.ndarray:
            return _predict_rows(self.model, rows)

        if self.dist is None:
            return predict(X), targets, weight
        return self.dist.outputs(X, targets, weight, predict)

    def stop_on_nan(self, epoch: int, logs: dict[str, float], reason: StopReason) -> None:
        """End training after a NaN loss (``on_nan="stop"``)."""
        # The weights may hold NaN now: skip evaluation, which would only echo it.
        self.model.epochs_completed = epoch + 1
        self.history._append(epoch, logs)
        self.history.stop_reason = reason
        self.progress.close()
        self.nan_policy.report(reason, self.progress)
        self.model.stop_training = True
        self.callbacks.on_epoch_end(epoch, logs)


# -------------------------------------------------------------------------------- fit


@validate_args(FIT_CONSTRAINTS)
def fit(
    model: TrainableModel,
    X: Any,
    y: Any,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    validation_split: float = 0.0,
    validation_data: tuple[Any, ...] | None = None,
    sample_weight: Any = None,
    class_weight: Mapping[int, float] | str | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    seed: int | None = None,
    callbacks: Sequence[Any] | None = None,
    verbose: int = 1,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    weight_decay: float | None = None,
    decay_biases: bool = False,
    gradient_transforms: Sequence[Any] | None = None,
    gradient_pipeline: GradientPipeline | None = None,
    on_nan: str = "stop",
    distributed: bool = False,
    shard: str = "global",
) -> History:
    """Train ``model`` on ``(X, y)`` for ``epochs`` passes over the data.

    Args:
        model: a compiled :class:`~numbanet.Sequential` (or any :class:`TrainableModel`).
        X: inputs ``(n, *input_shape)``; any real dtype (converted once to the model's).
            A ``numpy.memmap`` (``np.load(path, mmap_mode="r")``) is never copied whole:
            each batch is read, converted and checked on its own, and an error names the
            row (``X[1234] contains NaN or infinity``). With ``y=None``, ``X`` is an
            iterable of ``(X_batch, y_batch)`` pairs, one pass per epoch (a generator
            serves one epoch; a list or any object whose ``iter()`` starts over serves
            many); ``batch_size``, ``shuffle`` and ``drop_last`` then do not apply, and
            training metrics are not logged (the stream cannot be read again at the
            epoch's end).
        y: targets in the form the loss expects: integer labels ``(n,)`` in
            ``0..out_features-1`` for cross-entropy, float targets
            ``(n, out_features)`` for regression losses, ...
        epochs: number of passes over the training data (0 trains nothing).
        batch_size: samples per step; the last batch of an epoch holds the rest. Larger
            than ``n`` means one full-batch step per epoch.
        validation_split: fraction in ``[0, 1)`` of the samples held out for validation:
            the *last* ones, before shuffling (like Keras), so shuffle sorted data first
            (:func:`numbanet.datasets.train_test_split` does). Ignored when
            ``validation_data`` is given.
        validation_data: ``(X_val, y_val)`` evaluated at the end of every epoch, or
            ``(X_val, y_val, sample_weight_val)`` to weigh ``val_loss``.
        sample_weight: ``(n,)`` non-negative weight per sample (Keras's and
            scikit-learn's argument). Each sample's loss counts ``w_i`` times; the loss
            host's mean is PyTorch's weighted mean ``Σ w_i l_i / Σ w_i`` per batch (see
            :class:`numbanet.losses.Loss`), so equal weights train exactly as none. With
            ``validation_split`` the held-out part of the weights weighs ``val_loss``.
            Metrics are not weighted.
        class_weight: ``{label: weight}`` (unlisted classes weigh 1) or ``"balanced"``
            (scikit-learn's ``n_samples / (n_classes * count(label))``): each sample's
            weight is its class's, times its ``sample_weight``. Needs integer labels as
            ``y``. Applies to training only, as in Keras. For cross-entropy it trains
            like ``F.cross_entropy(weight=...)``.
        shuffle: draw a new order of the training samples every epoch.
        drop_last: leave out each epoch's last batch when it is short (PyTorch's
            ``DataLoader(drop_last=True)``), so every step sees ``batch_size`` samples:
            what :class:`~numbanet.nn.BatchNorm` needs when ``n % batch_size == 1`` (its
            batch statistics need two samples). With shuffling the left-out samples
            change from epoch to epoch. Training metrics still cover every sample.
            Not with ``shard="local"``.
        seed: if given, reseed the model's generator (shuffling and dropout) at the start
            of this call, so the call is reproducible whatever ran before. Leave it
            ``None`` to continue the model's stream (what resuming needs).
        callbacks: :class:`numbanet.callbacks.Callback` objects.
        verbose: 0 quiet; 1 on a terminal a bar for the steps of each epoch, then the
            epoch's summary line (elsewhere just the summary lines); 2 summary lines
            only. The summary line shows ``loss ... (running mean)`` (the mean of the
            epoch's step losses), the other figures measured at the end of the epoch,
            and samples/s without the time spent compiling kernels (reported apart;
            the first compilation prints "compiling kernels (first run only, cached
            afterwards)...").
        clip_norm: scale the gradients so their global L2 norm is at most this
            (PyTorch's ``clip_grad_norm_``), applied after ``clip_value``
            (:class:`~numbanet.optim.ClipByGlobalNorm`).
        clip_value: clip every gradient element to ``[-clip_value, clip_value]``
            (:class:`~numbanet.optim.ClipByValue`).
        weight_decay: decoupled weight decay: before each update, multiply the
            parameters whose role is ``"weight"`` by ``1 - lr * weight_decay``
            (AdamW-style, independent of the gradient;
            :class:`~numbanet.optim.DecoupledWeightDecay`).
        decay_biases: also decay ``"bias"`` parameters (by default they are excluded).
        gradient_transforms: your own :class:`~numbanet.optim.GradientTransform` stages,
            run on the raw gradient after backward, before ``clip_value``, ``clip_norm``
            and ``weight_decay`` (see :func:`numbanet.optim.make_pipeline`).
        gradient_pipeline: a whole :class:`~numbanet.optim.GradientPipeline` instead of
            the four arguments above (passing both is an error).
        on_nan: what a NaN or infinite training loss does: ``"stop"`` (default) ends
            training with a message naming the epoch and step (printed when ``verbose``,
            else a ``RuntimeWarning``; also in ``History.stop_reason``, whose ``kind`` is
            ``"nan_loss"``), ``"raise"`` raises ``FloatingPointError``, ``"continue"``
            keeps training.
        distributed: data-parallel training over MPI (:mod:`numbanet.distributed`;
            ``pip install "numbanet[mpi]"``, start with ``mpiexec -n N``). ``batch_size``
            is then the *global* batch: each rank trains on its slice of every batch,
            one all-reduce per step sums the gradients, and every rank ends with the
            same weights, those of one process's ``fit`` up to rounding. Loss, metrics
            and validation are reduced over the ranks; only rank 0 prints (callbacks
            that write files write on rank 0 only).
        shard: with ``distributed``, ``"global"`` (every rank passes the same ``X, y``)
            or ``"local"`` (each rank passes its own rows; see
            :mod:`numbanet.distributed`).

    Returns:
        a :class:`History`.

    Raises:
        RuntimeError: the model is not compiled.
        TypeError / ValueError: a bad argument, named in the message (wrong kinds,
            NaN in the data, length mismatches, labels out of range, ``batch_size <= 0``,
            ``epochs < 0``, ``validation_split`` outside ``[0, 1)``, ...).
        FloatingPointError: the loss became NaN and ``on_nan="raise"``.
    """
    from numbanet.callbacks import CallbackList

    # The scalar arguments arrive checked and normalized (FIT_CONSTRAINTS).
    model.require_compiled("fit")
    pipeline = _gradient_pipeline(gradient_pipeline, gradient_transforms, clip_norm,
                                  clip_value, weight_decay, decay_biases)
    dist = _data_parallel(distributed, shard)
    if dist is not None:
        pipeline = dist.pipeline(pipeline)
    if seed is not None:
        # Reset the state of the existing generator rather than replacing it: Dropout
        # layers hold a reference to this very object.
        model.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state

    prepare = _prepare_stream if _is_stream(X, y) else _prepare_data
    args = (model, X, y, validation_data, validation_split, sample_weight, class_weight)
    data = prepare(*args) if dist is None else dist.agree(prepare, *args)
    loader, n, batch_size = _loader(model, data, batch_size, shuffle, drop_last, dist)
    pipeline.setup(model)

    metric_names = [m.name for m in model.metrics]
    keys = ["loss", *(metric_names if n is not None else [])]  # a stream: no train metrics
    if data.X_val is not None:
        keys += ["val_loss", *(f"val_{name}" for name in metric_names)]
    history = History()
    history.measured = {key: END_OF_EPOCH for key in keys}
    history.measured["loss"] = RUNNING_MEAN
    first_epoch = int(model.epochs_completed)
    history.params = {
        "epochs": epochs, "batch_size": batch_size, "steps": loader.steps, "samples": n,
        "rank": 0 if dist is None else dist.rank, "world_size": 1 if dist is None else dist.size,
        "metrics": keys, "initial_epoch": first_epoch,
        "greater_is_better": {m.name: m.greater_is_better for m in model.metrics},
    }
    cbs = CallbackList(callbacks, model=model, params=history.params)
    model.stop_training = False
    model.stop_reason = None
    main = dist is None or dist.is_main  # only rank 0 prints
    progress = _Progress(int(verbose) if main else 0, first_epoch + epochs, loader.steps or 0)
    if loader.steps is None:
        progress.draw_bars = False  # a stream of unknown length: summary lines only
    with CompileWatch(on_compile=progress.compiling) as watch:
        loop = _FitLoop(model, data, loader, pipeline, cbs, progress, _NanPolicy(on_nan),
                        history, watch)
        loop.dist = dist
        loop.nan_policy.quiet = not main
        loop.run(first_epoch, epochs)
    model.stop_training = False
    return history


def _data_parallel(distributed: bool, shard: str) -> Any:
    """The :class:`numbanet.distributed.DataParallel` of a distributed fit, else None."""
    if not distributed:
        if shard != "global":
            raise ValueError(f"shard={shard!r} needs distributed=True")
        return None
    from numbanet.distributed import DataParallel  # imports mpi4py, or names the extra

    return DataParallel(shard)


def _prepare_stream(model: TrainableModel, X: Any, y: Any, validation_data: Any,
                    validation_split: float, sample_weight: Any = None,
                    class_weight: Any = None) -> _Data:
    """``fit(batches)``: the stream of training batches, and the validation arrays."""
    if sample_weight is not None or class_weight is not None:
        raise TypeError("sample_weight and class_weight need X and y arrays; a stream of "
                        "batches cannot carry them")
    if validation_split:
        raise ValueError("validation_split needs X and y arrays: with a stream of batches "
                         "pass validation_data=(X_val, y_val)")
    X_val = t_val = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a tuple (X_val, y_val)")
        X_val, t_val = _prepare(model, validation_data[0], validation_data[1],
                                "validation_data[0]", "validation_data[1]")

    def prepare(xb: Any, yb: Any, step: int) -> tuple[np.ndarray, np.ndarray]:
        # np.asarray: a memmap batch is converted now (it is one batch).
        return _prepare(model, np.asarray(xb), yb, f"X batch {step}", f"y batch {step}")

    return _Data(StreamLoader(X, prepare), None, X_val, t_val)  # type: ignore[arg-type]


def _loader(model: TrainableModel, data: _Data, batch_size: int, shuffle: bool,
            drop_last: bool, dist: Any) -> tuple[Any, int | None, int | None]:
    """The batch loader of a fit call, the training samples (over every rank; ``None``
    for a stream) and the batch size in force (``None`` for a stream)."""
    if isinstance(data.X, StreamLoader):
        if dist is None:
            return data.X, None, None
        dist.synchronize(model)
        return dist.stream(model, data.X), None, None
    if dist is None:
        n = data.X.shape[0]
        batch_size = min(batch_size, n)
        sampler = BatchSampler(n, batch_size, shuffle=shuffle, drop_last=drop_last)
    else:
        dist.synchronize(model)
        sampler = dist.sampler(model, data.X, data.targets, batch_size, shuffle, drop_last)
        n = dist.samples
        batch_size = min(batch_size, n)
    cls = LazyBatchLoader if isinstance(data.X, LazyRows) else BatchLoader
    weights = getattr(data, "weights", None)
    if weights is None:
        return cls(data.X, data.targets, sampler), n, batch_size
    return cls(data.X, data.targets, sampler, weights=weights), n, batch_size


# ------------------------------------------------------------------------- evaluation


def _predict_rows(model: TrainableModel, X: Any, batch_size: int = 1024) -> np.ndarray:
    """Inference outputs of checked rows: an array, or :class:`~numbanet.sampling.LazyRows`
    read and converted ``batch_size`` rows at a time."""
    if not isinstance(X, LazyRows):
        return model.predict_validated(X, batch_size)
    n = X.shape[0]
    if n == 0:
        return model.predict_validated(X.take(slice(0, 0)), batch_size)
    out: np.ndarray | None = None
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        part = model.predict_validated(X.take(slice(start, stop)), batch_size)
        if out is None:
            out = np.empty((n, *part.shape[1:]), dtype=part.dtype)
        out[start:stop] = part
    assert out is not None
    return out


def _metric_values(model: TrainableModel, X: np.ndarray, targets: np.ndarray, prefix: str,
                   outputs: np.ndarray | None = None) -> dict[str, float]:
    if outputs is None:
        outputs = _predict_rows(model, X)
    return {f"{prefix}{m.name}": float(m(outputs, targets)) for m in model.metrics}


def _loss_value(model: TrainableModel, outputs: np.ndarray, targets: np.ndarray,
                weight: np.ndarray | None = None) -> float:
    if weight is None:
        value = model.loss.forward(outputs, targets)
    else:
        value = model.loss.forward(outputs, targets, sample_weight=weight)
    if isinstance(value, np.ndarray):  # reduction="none": report the mean
        return float(np.mean(value, dtype=np.float64))
    return float(value)


def _evaluate_prepared(model: TrainableModel, X: np.ndarray, targets: np.ndarray, prefix: str = "",
                       batch_size: int = 1024,
                       weight: np.ndarray | None = None,
                       outputs: np.ndarray | None = None) -> dict[str, float]:
    if outputs is None:
        outputs = _predict_rows(model, X, batch_size)
    logs = {f"{prefix}loss": _loss_value(model, outputs, targets, weight)}
    logs.update(_metric_values(model, X, targets, prefix, outputs))
    return logs


# -------------------------------------------------------------------- evaluate/predict


@validate_args({"batch_size": _BATCH_SIZE, "verbose": _VERBOSE})
def evaluate(model: TrainableModel, X: Any, y: Any, *, batch_size: int = 1024,
             verbose: int = 0, sample_weight: Any = None) -> dict[str, float]:
    """Loss and compiled metrics of ``model`` on ``(X, y)``, in inference mode.

    Args:
        model: a compiled :class:`~numbanet.Sequential` (or any :class:`TrainableModel`).
        X: inputs ``(n, *input_shape)``.
        y: targets as for :func:`fit`.
        batch_size: rows per forward pass (memory only; the result does not depend on it).
        verbose: 1 or 2 prints the result on one line.
        sample_weight: ``(n,)`` non-negative weights for the loss (PyTorch's weighted
            mean, as in :func:`fit`); metrics are not weighted.

    Returns:
        ``{"loss": ..., "<metric>": ...}`` as Python floats.
    """
    model.require_compiled("evaluate")
    X, targets = _prepare(model, X, y, "X", "y")
    weight = None
    if sample_weight is not None:
        _require_weighted_loss(model, "sample_weight")
        weight = _nonzero(check_sample_weight(sample_weight, X.shape[0]), "sample_weight")
    logs = _evaluate_prepared(model, X, targets, batch_size=batch_size, weight=weight)
    if verbose:
        print(_format_logs(logs), flush=True)
    return logs


def predict_proba(model: TrainableModel, X: Any, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities ``(n, out_features)`` (same dtype as the model).

    The loss's ``output_activation`` is applied to the network outputs: a softmax over
    each row for cross-entropy, an elementwise sigmoid for BCE-with-logits (the
    probability of the positive class per column).

    Raises:
        RuntimeError: the model is not compiled.
        ValueError: the loss does not define probabilities (a regression loss).
    """
    if model.loss is None:
        raise RuntimeError("call model.compile(loss=...) before predict_proba: the loss "
                           "decides how outputs become probabilities")
    activation = getattr(model.loss, "output_activation", None)
    if activation is None:
        raise ValueError(
            f"predict_proba needs a classification loss (softmax or sigmoid outputs); "
            f"{_loss_name(model.loss)} has none: use model.predict"
        )
    batch_size = check_arg("batch_size", batch_size, _BATCH_SIZE)
    outputs = model.predict_validated(model.validate_input(X), batch_size)
    probs = np.empty_like(outputs)
    from numbanet.kernels import activations

    apply: Callable[[np.ndarray, np.ndarray], None] = getattr(activations, activation)
    apply(outputs, probs)
    return probs


def _loss_name(loss: Any) -> str:
    return repr(getattr(loss, "qualified_id", None) or getattr(loss, "name", None)
                or type(loss).__name__)
