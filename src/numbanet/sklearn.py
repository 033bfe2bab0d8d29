"""scikit-learn estimators over :class:`~numbanet.Sequential`: drop-in for ``MLPClassifier``
and ``MLPRegressor``.

:class:`NumbanetClassifier` and :class:`NumbanetRegressor` train an MLP (or any stack of
numbanet layers, through ``layers=``) with numbanet's kernels and behave as scikit-learn
estimators: pipelines, grid search, cross-validation, ``clone``, pickling, pandas input,
sample weights. They pass scikit-learn's own estimator checks
(``sklearn.utils.estimator_checks``); the checks they are expected to fail, with the
reason, are in :data:`EXPECTED_FAILED_CHECKS`.

Parameters shared with ``MLPClassifier`` mean what they mean there: ``hidden_layer_sizes``,
``activation`` (``"logistic"`` is ``"sigmoid"``; every numbanet activation is accepted),
``alpha`` (L2 penalty), ``batch_size``, ``learning_rate_init``, ``max_iter`` (epochs),
``shuffle``, ``random_state``, ``tol``, ``early_stopping``, ``validation_fraction``,
``n_iter_no_change``, ``verbose``, ``warm_start``. numbanet adds ``optimizer`` and
``optimizer_params`` (any registered optimizer, PyTorch's hyperparameter names),
``dropout``, ``dtype``, ``n_threads``, ``layers`` and, for the regressor, ``loss``.

What is computed:

* the objective of a batch ``B`` is ``sum_i w_i l_i / sum_i w_i + alpha / (2 sum_i w_i)
  * ||W||^2`` over the batch (``l_i`` numbanet's per-sample loss, ``W`` every parameter
  whose role is ``"weight"``, not biases): scikit-learn's MLP formula, so ``alpha`` has the
  same strength relative to the loss. Without ``sample_weight`` every ``w_i`` is 1.
* classifiers: binary problems have one output trained with ``binary_cross_entropy`` (a
  logistic output, as in ``MLPClassifier``), multiclass problems ``k`` outputs with
  ``cross_entropy`` (softmax), multilabel indicator targets ``k`` outputs with
  ``binary_cross_entropy``. Regressors: identity outputs, ``loss="mse"`` by default
  (numbanet's mean over all outputs of the squared error, i.e. twice ``MLPRegressor``'s
  half squared error for one output).
* ``sample_weight``: equal weights take the same path as no weights (the weight only
  scales ``alpha``'s divisor, as in scikit-learn); unequal weights go to numbanet's
  ``fit(sample_weight=...)``, whose loss host takes each batch's weighted mean, so integer
  weights equal repeated rows whenever the batch holds all rows (``batch_size="auto"`` on
  fewer than 200 samples).
* initialisation: ``MLPClassifier``'s, weights and biases uniform in ``±sqrt(f /
  (fan_in + fan_out))`` (``f = 2`` for ``"logistic"``, else 6), for the MLP built from
  ``hidden_layer_sizes``; layers from ``layers=`` keep numbanet's own.
* ``dtype="float64"`` by default, like scikit-learn's solvers; ``dtype="float32"`` trains
  about twice as fast with results equal up to float32 rounding.

The fitted network is ``model_``, a :class:`~numbanet.Sequential`, so it exports to ONNX
(:func:`numbanet.onnx.export`) and saves with :func:`numbanet.save`. Pickling stores it in
numbanet's model format (arrays and JSON, see :mod:`numbanet.io`), never code objects.

Threads: ``n_threads=None`` uses numbanet's setting (:func:`numbanet.set_num_threads`).
With ``GridSearchCV(n_jobs=k)`` each worker process has its own thread pool: pass
``n_threads`` so that ``k * n_threads`` does not exceed the cores.

Example:
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.model_selection import train_test_split
    >>> from numbanet.sklearn import NumbanetClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> X_train, X_test, y_train, y_test = train_test_split(X / 16, y, random_state=0)
    >>> clf = NumbanetClassifier(hidden_layer_sizes=(64,), max_iter=30, random_state=0)
    >>> clf.fit(X_train, y_train).score(X_test, y_test) > 0.9
    True

Needs scikit-learn: ``pip install "numbanet[sklearn]"``.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        f"numbanet.sklearn needs scikit-learn, which could not be imported ({exc}): "
        f'pip install "numbanet[sklearn]"'
    ) from exc

from numbanet._validation import (
    AnyOf,
    Boolean,
    Constraint,
    FloatDtype,
    InstanceOf,
    Integer,
    OneOf,
    Optional,
    Real,
    check_arg,
)
from numbanet.callbacks import Callback
from numbanet.kernels.activations import ACTIVATIONS
from numbanet.kernels.penalty import add_scaled_ranges
from numbanet.losses import WeightedTargets
from numbanet.nn import Dense, Dropout, Module, Sequential
from numbanet.optim import GradientTransform
from numbanet.plugins import get_loss, get_optimizer
from numbanet.threads import get_num_threads, set_num_threads
from numbanet.train import StopReason

__all__ = [
    "EXPECTED_FAILED_CHECKS",
    "L2Penalty",
    "NumbanetClassifier",
    "NumbanetRegressor",
]

#: scikit-learn estimator checks (``sklearn.utils.estimator_checks``) these estimators
#: are expected to fail, check name -> reason; pass it to ``parametrize_with_checks`` /
#: ``check_estimator`` as ``expected_failed_checks``. Empty: both estimators pass every
#: check of scikit-learn 1.9 with their default parameters.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}

# MLPClassifier's activation names on top of numbanet's.
_ACTIVATION_ALIASES = {"logistic": "sigmoid"}

# The "auto" batch size of MLPClassifier: min(200, n_samples).
_AUTO_BATCH = 200

_EXTRA = 'pip install "numbanet[sklearn]"'


class _Callable(Constraint):
    """A callable (the ``layers`` factory)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("a callable layers(n_features, n_outputs) -> list of layers")

    def matches_type(self, value: object) -> bool:
        return callable(value)

    def check(self, name: str, value: Any, where: str | None = None) -> Any:
        if callable(value):
            return value
        raise self.type_error(name, value, where)


class _HiddenSizes(Constraint):
    """An int or a sequence of positive ints (``()`` for a linear model)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("a positive int or a tuple of positive ints")

    def matches_type(self, value: object) -> bool:
        return True

    def check(self, name: str, value: Any, where: str | None = None) -> tuple[int, ...]:
        sizes = [value] if not isinstance(value, (list, tuple, np.ndarray)) else list(value)
        return tuple(check_arg(f"{name}[{i}]", s, Integer(min=1), where=where)
                     for i, s in enumerate(sizes))


#: Constructor parameters and what they accept (checked at fit, never in ``__init__``,
#: as scikit-learn requires).
_PARAMETER_CONSTRAINTS: dict[str, Constraint] = {
    "hidden_layer_sizes": _HiddenSizes(),
    "activation": OneOf(*ACTIVATIONS, *_ACTIVATION_ALIASES),
    "alpha": Real(min=0),
    "batch_size": AnyOf(OneOf("auto"), Integer(min=1)),
    "learning_rate_init": Real(min=0, closed="neither"),
    "max_iter": Integer(min=1),
    "shuffle": Boolean(),
    "tol": Real(min=0),
    "early_stopping": Boolean(),
    "validation_fraction": Real(min=0, max=1, closed="neither"),
    "n_iter_no_change": Integer(min=1),
    "verbose": AnyOf(Boolean(), Integer(min=0)),
    "warm_start": Boolean(),
    "optimizer": InstanceOf(str, what="an optimizer name (numbanet.list_optimizers())"),
    "optimizer_params": Optional(InstanceOf(dict)),
    "dropout": Real(min=0, max=1, closed="left"),
    "dtype": FloatDtype(),
    "n_threads": Optional(Integer(min=1)),
    "layers": Optional(_Callable()),
    "loss": InstanceOf(str, what="a loss name (numbanet.list_losses())"),
}


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` numbanet threads (``None``: as set), then restore."""
    if n is None:
        yield
        return
    before = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(before)


# --------------------------------------------------------------------- loss and penalty


class L2Penalty(GradientTransform):
    """scikit-learn's ``alpha``: add ``alpha * W / divisor`` to the gradient of every
    ``"weight"`` parameter ``W`` (biases and normalization parameters are left alone).

    ``divisor`` is the batch's total sample weight (its row count without weights),
    set before each step by the estimator, so the penalty is ``alpha / (2 * divisor) *
    ||W||^2`` added to the batch's mean loss, as in ``MLPClassifier``.

    A step is one kernel call over the model's flat buffers
    (:func:`numbanet.kernels.penalty.add_scaled_ranges`) when every weight and its
    gradient are views at the same offsets into ``model.flat_parameters`` and
    ``model.flat_gradients`` (as in a :class:`~numbanet.Sequential`), else two NumPy calls
    per weight; both give the same numbers.

    Args:
        alpha: the penalty strength, ``>= 0``.
    """

    repr_fields = ("alpha",)

    def __init__(self, alpha: float) -> None:
        self.alpha = check_arg("alpha", alpha, Real(min=0), where="L2Penalty")
        self.divisor = 1.0
        self._weights: list[tuple[np.ndarray, np.ndarray]] = []
        # The flat buffers and the weights' (start, stop) ranges in them, for the kernel;
        # None when the weights are not views into them.
        self._flat: tuple[np.ndarray, np.ndarray] | None = None
        self._ranges = np.empty((0, 2), dtype=np.int64)
        self._scratch: list[np.ndarray] | None = None

    def setup(self, model: Any) -> None:
        self._weights = [(p.value, p.grad) for p in model.parameters() if p.role == "weight"]
        self._scratch = None
        params = getattr(model, "flat_parameters", None)
        grads = getattr(model, "flat_gradients", None)
        ranges = _flat_ranges(self._weights, params, grads)
        if ranges is None:
            self._flat = None
        else:
            self._flat, self._ranges = (params, grads), ranges

    def update(self, grads: np.ndarray, params: np.ndarray, scale: float) -> float:
        if self.alpha and self.divisor > 0 and scale != 0:
            # The true gradient is scale * grads: add the penalty divided by the scale.
            factor = self.alpha / (self.divisor * scale)
            flat = self._flat
            if flat is not None and params is flat[0] and grads is flat[1]:
                add_scaled_ranges(params, self._ranges, factor, grads)
            else:
                self._add_per_weight(factor)
        return scale

    def _add_per_weight(self, factor: float) -> None:
        """The NumPy form of the kernel's step, on the weight views from :meth:`setup`."""
        if self._scratch is None:
            self._scratch = [np.empty_like(value) for value, _ in self._weights]
        for (value, grad), scaled in zip(self._weights, self._scratch, strict=True):
            np.multiply(value, factor, out=scaled)
            grad += scaled

    def value(self, divisor: float) -> float:
        """``alpha / (2 * divisor) * ||W||^2`` with the current weights."""
        squares = sum(float(np.dot(v.ravel(), v.ravel())) for v, _ in self._weights)
        return 0.5 * self.alpha * squares / divisor


def _flat_ranges(weights: list[tuple[np.ndarray, np.ndarray]], params: Any,
                 grads: Any) -> np.ndarray | None:
    """The ``(k, 2)`` int64 ``(start, stop)`` ranges of the weights in the flat buffers, or
    ``None`` when the kernel cannot take them: the buffers are not 1-D C-contiguous
    float32/float64 arrays of one dtype, or a weight or its gradient is not a C-contiguous
    view into its buffer, at the same offset in both."""
    if not (isinstance(params, np.ndarray) and isinstance(grads, np.ndarray)
            and params.ndim == 1 and params.shape == grads.shape
            and params.dtype == grads.dtype and params.dtype in (np.float32, np.float64)
            and params.flags.c_contiguous and grads.flags.c_contiguous
            and not np.shares_memory(params, grads)):
        return None
    ranges = []
    for value, grad in weights:
        start = _offset_in(value, params)
        if start is None or _offset_in(grad, grads) != start:
            return None
        ranges.append((start, start + value.size))
    return np.array(ranges, dtype=np.int64).reshape(-1, 2)


def _offset_in(view: np.ndarray, flat: np.ndarray) -> int | None:
    """Where the C-contiguous ``view`` starts in the 1-D C-contiguous ``flat`` (an element
    index), or ``None`` when it is not a contiguous run of ``flat``'s elements."""
    if view.dtype != flat.dtype or not view.flags.c_contiguous:
        return None
    start, misaligned = divmod(view.ctypes.data - flat.ctypes.data, flat.itemsize)
    if misaligned or start < 0 or start + view.size > flat.size:
        return None
    return start


def _init_like_sklearn(model: Sequential, activation: str, rng: np.random.Generator) -> None:
    """Start every Dense layer of the MLP where ``MLPClassifier`` starts its own: weights
    and biases uniform in ``±sqrt(f / (fan_in + fan_out))``, ``f = 2`` for the logistic
    activation and 6 otherwise (Glorot), on every layer, the output layer included.

    numbanet's own Dense initialisation (He uniform before ReLU, zero biases) trained
    the make_classification benchmark MLP (20-100-4, 20 epochs) to a training loss of
    0.21 and 93.6% test accuracy against scikit-learn's 0.18 and 95.2%; from this start
    it reaches 0.17-0.18 and 95.0-95.3%, so the estimators are a drop-in in score too.
    """
    factor = 2.0 if activation == "sigmoid" else 6.0
    for layer in model.layers:
        if isinstance(layer, Dense):
            bound = math.sqrt(factor / (layer.in_features + layer.out_features))
            layer.weight.value[...] = rng.uniform(-bound, bound, layer.weight.value.shape)
            layer.bias.value[...] = rng.uniform(-bound, bound, layer.bias.value.shape)


class _BatchWeight:
    """The compiled loss, seen through, telling :class:`L2Penalty` each batch's total
    weight (scikit-learn's penalty divisor: the rows times the common weight, or the sum
    of a weighted batch's weights) before the loss host computes the batch's mean;
    everything else is the loss's own. (A per-batch callback could tell it too, but
    turns on the fit loop's per-batch callback calls: a few microseconds a step.)"""

    def __init__(self, loss: Any, penalty: L2Penalty, weight: float) -> None:
        self._loss, self._penalty, self._weight = loss, penalty, weight

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loss, name)

    def _note(self, targets: Any) -> None:
        if isinstance(targets, WeightedTargets):
            total = float(np.sum(targets.weight))
            # A batch of zero weights has gradient 0; it gets no penalty step either.
            self._penalty.divisor = total if total > 0 else math.inf
        else:
            self._penalty.divisor = self._weight * len(targets)

    def forward_backward(self, outputs: np.ndarray, targets: Any, grad: np.ndarray) -> float:
        self._note(targets)
        return float(self._loss.forward_backward(outputs, targets, grad))

    def forward_backward_unchecked(self, outputs: np.ndarray, targets: Any,
                                   grad: np.ndarray) -> float:
        self._note(targets)
        return float(self._loss.forward_backward_unchecked(outputs, targets, grad))

    def forward_backward_fused(self, shape: tuple[int, int], dtype: np.dtype, targets: Any,
                               run: Callable[..., Any]) -> float:
        self._note(targets)
        return float(self._loss.forward_backward_fused(shape, dtype, targets, run))


# -------------------------------------------------------------------------- callbacks


class _Convergence(Callback):
    """MLPClassifier's stopping rule, per epoch: the training loss (or, with
    ``early_stopping``, the validation score) has not improved by ``tol`` for more
    than ``n_iter_no_change`` epochs. Records the estimator's curves as it goes."""

    def __init__(self, est: _NumbanetEstimator, penalty: L2Penalty | None, steps: int,
                 total_weight: float, validation: tuple[Any, Any, Any] | None) -> None:
        self.est, self.penalty, self.validation = est, penalty, validation
        self.steps, self.total_weight = steps, total_weight
        self.best_params: np.ndarray | None = None
        self.stopped = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        est = self.est
        loss = float((logs or {}).get("loss", math.nan))
        if self.penalty is not None and self.total_weight > 0:
            # MLPClassifier's loss_: each batch's loss carries alpha / (2 * its weight).
            loss += self.penalty.value(self.total_weight / self.steps)
        est.loss_curve_.append(loss)
        est.loss_ = loss
        est.n_iter_ += 1
        est.t_ += est._n_train
        if self.validation is not None:
            X_val, y_val, sw_val = self.validation
            score = est._validation_score(X_val, y_val, sw_val)
            est.validation_scores_.append(score)
            worse = score < est.best_validation_score_ + est.tol
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                if self.best_params is None:
                    self.best_params = np.empty_like(self.model.flat_parameters)
                np.copyto(self.best_params, self.model.flat_parameters)
        else:
            worse = loss > est.best_loss_ - est.tol
            if loss < est.best_loss_:
                est.best_loss_ = loss
        est._no_improvement_count = est._no_improvement_count + 1 if worse else 0
        if est._no_improvement_count > est.n_iter_no_change:
            what = ("validation score" if self.validation is not None else "training loss")
            self.stopped = True
            self.model.stop_training = True
            self.model.stop_reason = StopReason(
                f"{what} did not improve by more than tol={est.tol} for "
                f"{est.n_iter_no_change} consecutive epochs", "no_improvement", epoch=epoch)


# -------------------------------------------------------------------------- estimators


class _NumbanetEstimator(BaseEstimator):
    """What the classifier and the regressor share: parameters, the network, the
    training call, threads and pickling."""

    _is_classifier = False

    # -- parameters ------------------------------------------------------------------
    def _checked_params(self) -> dict[str, Any]:
        where = type(self).__name__
        params = {}
        for name, value in self.get_params(deep=False).items():
            constraint = _PARAMETER_CONSTRAINTS.get(name)
            params[name] = value if constraint is None else check_arg(
                name, value, constraint, where=where)
        params["activation"] = _ACTIVATION_ALIASES.get(params["activation"],
                                                       params["activation"])
        params["optimizer_params"] = dict(params["optimizer_params"] or {})
        if "lr" in params["optimizer_params"]:
            raise ValueError(f"{where}: set the learning rate with learning_rate_init, not "
                             f"optimizer_params['lr']")
        return params

    # -- network ---------------------------------------------------------------------
    def _build_model(self, params: dict[str, Any], n_features: int, n_outputs: int,
                     loss: str, seed: int) -> Sequential:
        where = type(self).__name__
        factory = params["layers"]
        if factory is None:
            layers: list[Module] = []
            width = n_features
            for size in params["hidden_layer_sizes"]:
                layers.append(Dense(width, size, activation=params["activation"]))
                if params["dropout"]:
                    layers.append(Dropout(params["dropout"]))
                width = size
            layers.append(Dense(width, n_outputs))
        else:
            layers = list(factory(n_features, n_outputs))
        model = Sequential(layers, seed=seed, dtype=params["dtype"], input_shape=(n_features,))
        if factory is None:
            _init_like_sklearn(model, params["activation"], np.random.default_rng(seed))
        if model.output_shape != (n_outputs,):
            raise ValueError(f"{where}: the layers from layers(n_features={n_features}, "
                             f"n_outputs={n_outputs}) output samples of shape "
                             f"{model.output_shape}, expected ({n_outputs},)")
        optimizer = get_optimizer(params["optimizer"], lr=params["learning_rate_init"],
                                  **params["optimizer_params"])
        return model.compile(loss=get_loss(loss), optimizer=optimizer)

    # -- data ------------------------------------------------------------------------
    def _validate_X(self, X: Any, reset: bool, dtype: np.dtype) -> np.ndarray:
        X = validate_data(self, X, reset=reset, dtype=dtype, order="C")
        return np.require(X, requirements=("C", "W"))

    def _sample_weight(self, sample_weight: Any, n: int) -> np.ndarray | None:
        if sample_weight is None:
            return None
        sw = np.asarray(sample_weight)
        if sw.dtype.kind not in "biuf":
            raise TypeError(f"sample_weight must hold numbers, got dtype {sw.dtype}")
        sw = sw.astype(np.float64)
        if sw.ndim == 0:
            sw = np.full(n, float(sw))
        if sw.shape != (n,):
            raise ValueError(f"sample_weight.shape == {sw.shape}, expected {(n,)}")
        if not np.isfinite(sw).all():
            raise ValueError("sample_weight contains NaN or infinity")
        if (sw < 0).any():
            raise ValueError("sample_weight must be >= 0 (negative weights are not supported)")
        if not sw.any():
            raise ValueError("Sample weights must contain at least one non-zero number "
                             "(all sample_weight values are zero)")
        return sw

    # -- training --------------------------------------------------------------------
    def _train(self, params: dict[str, Any], X: np.ndarray, targets: np.ndarray,
               sw: np.ndarray | None, *, incremental: bool, loss: str,
               validation: tuple[Any, Any, Any] | None) -> None:
        model: Sequential = self.model_
        n = X.shape[0]
        batch = min(_AUTO_BATCH, n) if params["batch_size"] == "auto" else min(
            params["batch_size"], n)
        steps = -(-n // batch)
        uniform = sw is None or bool(np.all(sw == sw[0]))
        weight = 1.0 if sw is None else float(sw[0])
        penalty = L2Penalty(params["alpha"]) if params["alpha"] > 0 else None
        callbacks: list[Callback] = []
        total_weight = n * weight if uniform else float(np.sum(sw))
        convergence = _Convergence(self, penalty, steps, total_weight, validation)
        callbacks.append(convergence)
        self._n_train = n
        base_loss = model.loss
        # Equal weights take the unweighted path (the weight only scales alpha's
        # divisor); unequal ones go to numbanet's own weighted mean (fit(sample_weight=)).
        weights = None if uniform else sw
        if penalty is not None:
            model.compile(loss=_BatchWeight(base_loss, penalty, weight),
                          optimizer=model.optimizer)
        try:
            with _threads(params["n_threads"]):
                model.fit(X, targets, epochs=1 if incremental else params["max_iter"],
                          batch_size=batch, shuffle=params["shuffle"],
                          verbose=2 if params["verbose"] else 0, callbacks=callbacks,
                          gradient_transforms=None if penalty is None else [penalty],
                          sample_weight=weights)
        finally:
            if model.loss is not base_loss:
                model.compile(loss=base_loss, optimizer=model.optimizer)
        if convergence.best_params is not None:
            # early_stopping: keep the weights of the best validation score.
            np.copyto(model.flat_parameters, convergence.best_params)
        if not incremental and not convergence.stopped and self.n_iter_ == params["max_iter"]:
            warnings.warn(
                f"{type(self).__name__}: maximum iterations ({params['max_iter']}) reached and "
                f"the optimization hasn't converged yet.", ConvergenceWarning, stacklevel=4)

    def _fit(self, X: Any, y: Any, sample_weight: Any, *, incremental: bool,
             classes: Any = None) -> _NumbanetEstimator:
        params = self._checked_params()
        fitted = hasattr(self, "model_")
        first = not fitted or not (incremental or params["warm_start"])
        X, y = self._validate_X_y_shapes(X, y, first, params["dtype"])
        sw = self._sample_weight(sample_weight, X.shape[0])
        targets, n_outputs = self._targets(y, sw, first=first, incremental=incremental,
                                           classes=classes)
        loss = self._loss_name(params)
        if first or not fitted:
            random_state = check_random_state(params["random_state"])
            self._random_state = random_state
            seed = int(random_state.randint(np.iinfo(np.int32).max))
            self.model_ = self._build_model(params, X.shape[1], n_outputs, loss, seed)
            self.n_outputs_ = n_outputs
            self.t_ = 0
            self.n_layers_ = len(self.model_.layers)
        if not incremental or first:
            self.loss_curve_: list[float] = []
            self.best_loss_ = math.inf
            self._no_improvement_count = 0
            self.n_iter_ = 0
        elif self.best_loss_ is None:  # partial_fit after a fit with early_stopping
            self.best_loss_ = math.inf
        validation = None
        early = params["early_stopping"] and not incremental
        if early:
            X, targets, sw, validation = self._split_validation(params, X, y, targets, sw)
            self.validation_scores_: list[float] = []
            self.best_validation_score_ = -math.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
        self._train(params, X, targets, sw, incremental=incremental, loss=loss,
                    validation=validation)
        return self

    def _split_validation(self, params: dict[str, Any], X: np.ndarray, y: np.ndarray,
                          targets: np.ndarray, sw: np.ndarray | None) -> tuple[Any, ...]:
        stratify = y if self._is_classifier and y.ndim == 1 else None
        arrays = [X, y, targets] + ([] if sw is None else [sw])
        parts = train_test_split(*arrays, test_size=params["validation_fraction"],
                                 random_state=self._random_state, stratify=stratify)
        X_train, X_val, _, y_val, t_train, _ = parts[:6]
        sw_train, sw_val = (None, None) if sw is None else (parts[6], parts[7])
        if X_val.shape[0] < 2:
            raise ValueError(f"{type(self).__name__}: validation_fraction="
                             f"{params['validation_fraction']} leaves {X_val.shape[0]} sample "
                             f"for early stopping; use more samples or a larger fraction")
        return X_train, t_train, sw_train, (X_val, y_val, sw_val)

    # -- inference -------------------------------------------------------------------
    def _outputs(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = self._validate_X(X, reset=False, dtype=self.model_.dtype)
        with _threads(self.n_threads):
            return self.model_.predict(X)

    # -- pickling --------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        from numbanet.io import save

        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        if model is not None:
            with tempfile.TemporaryDirectory(prefix="numbanet-pickle-") as tmp:
                path = os.path.join(tmp, "model.npz")
                save(model, path, allow_nonfinite=True)
                with open(path, "rb") as fh:
                    state["_model_npz"] = fh.read()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from numbanet.io import load

        state = dict(state)
        blob = state.pop("_model_npz", None)
        if blob is not None:
            with tempfile.TemporaryDirectory(prefix="numbanet-pickle-") as tmp:
                path = os.path.join(tmp, "model.npz")
                with open(path, "wb") as fh:
                    fh.write(blob)
                state["model_"] = load(path)
        super().__setstate__(state)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        return tags

    # Implemented by the subclasses.
    def _validate_X_y_shapes(self, X: Any, y: Any, reset: bool,
                             dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _targets(self, y: np.ndarray, sw: np.ndarray | None, *, first: bool,
                 incremental: bool, classes: Any) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def _loss_name(self, params: dict[str, Any]) -> str:
        raise NotImplementedError

    def _validation_score(self, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None) -> float:
        raise NotImplementedError


_SHARED_DOC = """
    Args:
        hidden_layer_sizes: width of each hidden layer; ``()`` for a linear model.
        activation: hidden activation: ``"relu"``, ``"tanh"``, ``"logistic"``
            (``"sigmoid"``), ``"identity"`` or any numbanet activation
            (``numbanet.kernels.activations.ACTIVATIONS``).
        alpha: L2 penalty on the weights (not biases), scikit-learn's formula.
        batch_size: samples per step; ``"auto"`` is ``min(200, n_samples)``.
        learning_rate_init: the optimizer's learning rate.
        max_iter: epochs (passes over the data) per ``fit``.
        shuffle: reshuffle the samples every epoch.
        random_state: seeds weight initialization, shuffling, dropout and the
            early-stopping split (``None``, an int or a ``numpy.random.RandomState``).
        tol: an epoch improves when the loss drops (or the validation score rises) by
            more than this.
        early_stopping: hold out ``validation_fraction`` of the data (stratified for
            classifiers), stop when its score stalls and keep the best weights.
        validation_fraction: the held-out fraction for ``early_stopping``.
        n_iter_no_change: epochs without improvement before stopping.
        verbose: print one line per epoch.
        warm_start: ``fit`` continues from the previous solution (weights and optimizer
            state) instead of starting afresh.
        optimizer: a numbanet optimizer name (``numbanet.list_optimizers()``, plugins
            included).
        optimizer_params: its other hyperparameters, PyTorch's names
            (``{"betas": (0.9, 0.999), "eps": 1e-8}``); the learning rate is
            ``learning_rate_init``.
        dropout: dropout rate after each hidden layer (0: none).
        dtype: ``"float64"`` (default) or ``"float32"`` (faster).
        n_threads: threads of numbanet's kernels during ``fit``/``predict``; ``None``:
            :func:`numbanet.get_num_threads`.
        layers: a factory ``layers(n_features, n_outputs) -> list of layers`` for any
            architecture (it replaces ``hidden_layer_sizes``, ``activation`` and
            ``dropout``); the last layer must output ``n_outputs`` values per sample.
"""


class NumbanetClassifier(ClassifierMixin, _NumbanetEstimator):
    """A neural-network classifier trained by numbanet, the counterpart of
    ``sklearn.neural_network.MLPClassifier``.
    {shared}
    Attributes:
        classes_: the class labels (any type: strings, non-contiguous ints).
        model_: the trained :class:`~numbanet.Sequential` (outputs are logits).
        n_features_in_, feature_names_in_: as scikit-learn defines them.
        n_outputs_: outputs of the network (1 for binary problems).
        out_activation_: ``"logistic"`` (binary, multilabel) or ``"softmax"``.
        loss_, loss_curve_, best_loss_: the training loss (with the penalty) of the
            last epoch, of every epoch, and the best.
        validation_scores_, best_validation_score_: with ``early_stopping``.
        n_iter_: epochs run by the last ``fit`` (``partial_fit`` adds one).
        t_: training samples seen, over all calls.

    Example:
        >>> import numpy as np
        >>> from numbanet.sklearn import NumbanetClassifier
        >>> X = np.random.default_rng(0).normal(size=(200, 4)); y = np.where(X[:, 0] > 0,
        ...                                                               "yes", "no")
        >>> clf = NumbanetClassifier((16,), max_iter=100, random_state=0).fit(X, y)
        >>> clf.classes_.tolist(), clf.predict_proba(X[:2]).shape
        (['no', 'yes'], (2, 2))
    """

    _is_classifier = True

    def __init__(
        self,
        hidden_layer_sizes: int | Sequence[int] = (100,),
        activation: str = "relu",
        *,
        alpha: float = 1e-4,
        batch_size: int | str = "auto",
        learning_rate_init: float = 1e-3,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        verbose: bool | int = False,
        warm_start: bool = False,
        optimizer: str = "adam",
        optimizer_params: dict[str, Any] | None = None,
        dropout: float = 0.0,
        dtype: str = "float64",
        n_threads: int | None = None,
        layers: Callable[[int, int], Sequence[Module]] | None = None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.verbose = verbose
        self.warm_start = warm_start
        self.optimizer = optimizer
        self.optimizer_params = optimizer_params
        self.dropout = dropout
        self.dtype = dtype
        self.n_threads = n_threads
        self.layers = layers

    # -- fitting ---------------------------------------------------------------------
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> NumbanetClassifier:
        """Train on ``(X, y)`` for up to ``max_iter`` epochs.

        Args:
            X: ``(n_samples, n_features)`` array-like or DataFrame.
            y: labels ``(n_samples,)`` of any type, or a multilabel indicator matrix.
            sample_weight: ``(n_samples,)`` non-negative weights, or ``None``.

        Returns:
            the estimator.
        """
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X: Any, y: Any, classes: Any = None,
                    sample_weight: Any = None) -> NumbanetClassifier:
        """One epoch over ``(X, y)``, continuing from the current weights.

        Args:
            X, y, sample_weight: as for :meth:`fit`.
            classes: every class label that will ever be seen; required on the first
                call, ignored afterwards.

        Returns:
            the estimator.
        """
        if not hasattr(self, "model_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def _validate_X_y_shapes(self, X: Any, y: Any, reset: bool,
                             dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, reset=reset, dtype=dtype, order="C",
                             multi_output=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        return np.require(X, requirements=("C", "W")), y

    def _targets(self, y: np.ndarray, sw: np.ndarray | None, *, first: bool,
                 incremental: bool, classes: Any) -> tuple[np.ndarray, int]:
        name = type(self).__name__
        multilabel = type_of_target(y) == "multilabel-indicator"
        if multilabel:
            seen = np.arange(y.shape[1])
        elif incremental and first:
            seen = np.unique(np.asarray(classes))
            missing = np.setdiff1d(np.unique(y), seen)
            if missing.size:
                raise ValueError(f"{name}.partial_fit: y holds labels {missing.tolist()} "
                                 f"that are not in classes={seen.tolist()}")
        else:
            seen = np.unique(y)
        if first:
            self.classes_ = seen
            self._multilabel = multilabel
        elif multilabel != self._multilabel or (
            multilabel and seen.shape != self.classes_.shape
        ):
            raise ValueError(f"{name}: y has another kind or number of labels than in the "
                             f"previous call to fit")
        elif incremental:
            unknown = np.setdiff1d(seen, self.classes_)
            if unknown.size:
                raise ValueError(f"{name}.partial_fit: y holds labels {unknown.tolist()} that "
                                 f"are not in classes_ {self.classes_.tolist()}")
        elif not np.array_equal(seen, self.classes_):
            raise ValueError(f"{name}: warm_start can only be used where y has the same "
                             f"classes as in the previous call to fit: previous "
                             f"{self.classes_.tolist()}, now {seen.tolist()}")
        if not multilabel and not incremental:
            present = seen if sw is None else np.unique(y[sw > 0])
            if present.shape[0] < 2:
                raise ValueError(
                    f"{name} needs samples of at least 2 classes in the data (with non-zero "
                    f"sample_weight), but the data contains only one class: {present[0]!r}")
        k = self.classes_.shape[0]
        self.out_activation_ = "logistic" if multilabel or k == 2 else "softmax"
        dtype = _model_dtype(self.dtype)
        if multilabel:
            return np.ascontiguousarray(y, dtype=dtype), k
        codes = np.searchsorted(self.classes_, y)
        if k == 2:
            return codes.astype(dtype).reshape(-1, 1), 1
        if k < 2:
            raise ValueError(f"{name}: classes must hold at least 2 labels, got "
                             f"{self.classes_.tolist()}")
        return codes.astype(np.int64), k

    def _loss_name(self, params: dict[str, Any]) -> str:
        return "cross_entropy" if self.out_activation_ == "softmax" else "binary_cross_entropy"

    def _validation_score(self, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None) -> float:
        return float(accuracy_score(y, self._predict_from(self.model_.predict(X)),
                                    sample_weight=sw))

    # -- prediction ------------------------------------------------------------------
    def _predict_from(self, logits: np.ndarray) -> np.ndarray:
        if self._multilabel:
            return (logits > 0).astype(int)
        if logits.shape[1] == 1:
            return self.classes_[(logits[:, 0] > 0).astype(np.intp)]
        return self.classes_[np.argmax(logits, axis=1)]

    def decision_function(self, X: Any) -> np.ndarray:
        """The network's logits: ``(n_samples,)`` for binary problems (positive means
        ``classes_[1]``), ``(n_samples, n_classes)`` otherwise."""
        logits = self._outputs(X)
        return logits[:, 0].copy() if logits.shape[1] == 1 and not self._multilabel else logits

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each sample (an indicator matrix for multilabel)."""
        return self._predict_from(self._outputs(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n_samples, n_classes)``: softmax of the logits, or the
        sigmoid for binary (``[1 - p, p]``) and multilabel problems."""
        logits = self._outputs(X)
        if self.out_activation_ == "softmax":
            shifted = logits - logits.max(axis=1, keepdims=True)
            np.exp(shifted, out=shifted)
            shifted /= shifted.sum(axis=1, keepdims=True)
            return shifted
        p = _sigmoid(logits)
        if self._multilabel:
            return p
        return np.hstack([1.0 - p, p])

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """``log(predict_proba(X))``."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class NumbanetRegressor(RegressorMixin, _NumbanetEstimator):
    """A neural-network regressor trained by numbanet, the counterpart of
    ``sklearn.neural_network.MLPRegressor``; single- and multi-output.
    {shared}        loss: a numbanet regression loss (``"mse"``, ``"mae"``, ``"huber"``,
            ``"smooth_l1"`` or a plugin's).

    Attributes:
        model_: the trained :class:`~numbanet.Sequential`.
        n_features_in_, feature_names_in_: as scikit-learn defines them.
        n_outputs_: outputs per sample.
        loss_, loss_curve_, best_loss_, validation_scores_, best_validation_score_,
        n_iter_, t_: as for :class:`NumbanetClassifier` (validation scores are R²).

    Example:
        >>> import numpy as np
        >>> from numbanet.sklearn import NumbanetRegressor
        >>> X = np.random.default_rng(0).normal(size=(300, 3)); y = X @ [1.0, -2.0, 0.5]
        >>> reg = NumbanetRegressor((32,), max_iter=300, random_state=0).fit(X, y)
        >>> reg.score(X, y) > 0.9
        True
    """

    def __init__(
        self,
        hidden_layer_sizes: int | Sequence[int] = (100,),
        activation: str = "relu",
        *,
        loss: str = "mse",
        alpha: float = 1e-4,
        batch_size: int | str = "auto",
        learning_rate_init: float = 1e-3,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        verbose: bool | int = False,
        warm_start: bool = False,
        optimizer: str = "adam",
        optimizer_params: dict[str, Any] | None = None,
        dropout: float = 0.0,
        dtype: str = "float64",
        n_threads: int | None = None,
        layers: Callable[[int, int], Sequence[Module]] | None = None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.loss = loss
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.verbose = verbose
        self.warm_start = warm_start
        self.optimizer = optimizer
        self.optimizer_params = optimizer_params
        self.dropout = dropout
        self.dtype = dtype
        self.n_threads = n_threads
        self.layers = layers

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> NumbanetRegressor:
        """Train on ``(X, y)`` for up to ``max_iter`` epochs.

        Args:
            X: ``(n_samples, n_features)`` array-like or DataFrame.
            y: targets ``(n_samples,)`` or ``(n_samples, n_outputs)``.
            sample_weight: ``(n_samples,)`` non-negative weights, or ``None``.

        Returns:
            the estimator.
        """
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> NumbanetRegressor:
        """One epoch over ``(X, y)``, continuing from the current weights."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _validate_X_y_shapes(self, X: Any, y: Any, reset: bool,
                             dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, reset=reset, dtype=dtype, order="C",
                             multi_output=True, y_numeric=True)
        return np.require(X, requirements=("C", "W")), y

    def _targets(self, y: np.ndarray, sw: np.ndarray | None, *, first: bool,
                 incremental: bool, classes: Any) -> tuple[np.ndarray, int]:
        k = 1 if y.ndim == 1 else y.shape[1]
        if not first and k != self.n_outputs_:
            raise ValueError(f"{type(self).__name__}: y has {k} outputs but the model was "
                             f"fitted with {self.n_outputs_}")
        targets = np.ascontiguousarray(y.reshape(-1, k), dtype=_model_dtype(self.dtype))
        return targets, k

    def _loss_name(self, params: dict[str, Any]) -> str:
        return params["loss"]

    def _validation_score(self, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None) -> float:
        return float(r2_score(y, self._shape_predictions(self.model_.predict(X)),
                              sample_weight=sw))

    def _shape_predictions(self, outputs: np.ndarray) -> np.ndarray:
        return outputs[:, 0].copy() if outputs.shape[1] == 1 else outputs

    def predict(self, X: Any) -> np.ndarray:
        """Predictions ``(n_samples,)`` for one output, else ``(n_samples, n_outputs)``."""
        return self._shape_predictions(self._outputs(X))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


def _model_dtype(dtype: Any) -> np.dtype:
    """The model dtype a ``dtype`` parameter stands for."""
    return check_arg("dtype", dtype, FloatDtype())


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of -|z| only: never overflows.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


NumbanetClassifier.__doc__ = (NumbanetClassifier.__doc__ or "").replace(
    "{shared}", _SHARED_DOC)
NumbanetRegressor.__doc__ = (NumbanetRegressor.__doc__ or "").replace(
    "{shared}", _SHARED_DOC)
