"""Metrics: scores computed from network outputs and targets, for training logs.

Every metric is a function ``metric(outputs, y) -> float``:

* ``outputs`` are what the network returns, shape ``(n, C)``: logits or probabilities
  for classification, predictions for regression. A 1-D ``outputs`` of shape ``(n,)``
  is read as one column, ``(n, 1)``.
* ``y`` is either integer class labels, shape ``(n,)`` (or ``(n, 1)``), or float targets
  with the shape of ``outputs`` (one-hot or soft labels for classification, values for
  regression).

The result is a Python float computed in float64. These run once per epoch on the
validation data, not per step, so they are vectorised NumPy rather than Numba kernels.

Use :func:`get_metric` to turn the names accepted by ``model.compile(metrics=[...])``
into :class:`Metric` objects that carry a name (the history key) and the direction of
improvement (for early stopping).

Example:
    >>> import numpy as np
    >>> from numbanet import metrics
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]], dtype=np.float32)
    >>> metrics.accuracy(logits, np.array([0, 2]))
    0.5
    >>> metrics.top_k_accuracy(logits, np.array([0, 2]), k=2)
    1.0
    >>> top2 = metrics.get_metric("top2_accuracy")
    >>> top2.name, top2(logits, np.array([0, 2]))
    ('top2_accuracy', 1.0)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from numbanet._validation import check_positive_int

__all__ = [
    "Metric",
    "accuracy",
    "get_metric",
    "list_metrics",
    "mae",
    "mse",
    "top_k_accuracy",
]


# --------------------------------------------------------------------------- checks


def _as_outputs(outputs: object) -> np.ndarray:
    """``outputs`` as a 2-D real array ``(n, C)`` with ``n >= 1``; 1-D means one column."""
    arr = np.asarray(outputs)
    if (
        arr.dtype == np.bool_
        or not np.issubdtype(arr.dtype, np.number)
        or np.issubdtype(arr.dtype, np.complexfloating)
    ):
        raise TypeError(f"outputs must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"outputs must be 1-D or 2-D (n, C), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"outputs must hold at least one sample and column, got {arr.shape}")
    return arr


def _as_targets(y: object, n: int) -> np.ndarray:
    """``y`` as a real array whose first axis has ``n`` samples."""
    arr = np.asarray(y)
    if arr.dtype != np.bool_ and (
        not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating)
    ):
        raise TypeError(f"y must be integer labels or real targets, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"y must be 1-D labels or 2-D targets, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"y has {arr.shape[0]} samples but outputs has {n}")
    return arr


def _class_labels(y: np.ndarray, n_classes: int) -> np.ndarray:
    """True class indices, int64 ``(n,)``, from labels ``(n,)``/``(n, 1)`` or targets ``(n, C)``.

    Targets of shape ``(n, C)`` (one-hot or soft labels) give their argmax. Labels may be
    integers, or floats holding whole numbers (targets converted for a loss), in
    ``0..C-1``.
    """
    if y.ndim == 2 and y.shape[1] == n_classes and n_classes > 1:
        return np.argmax(y, axis=1)
    if y.ndim == 2 and y.shape[1] != 1:
        raise ValueError(
            f"y must be labels of shape (n,) or targets of shape (n, {n_classes}) "
            f"matching outputs, got {y.shape}"
        )
    labels = y.reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            raise ValueError("y holds non-integer values; class labels must be whole numbers")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"y labels must lie in 0..{n_classes - 1} for outputs with {n_classes} columns, "
            f"got values in {labels.min()}..{labels.max()}"
        )
    return labels


# --------------------------------------------------------------------------- metrics


def accuracy(outputs: np.ndarray, y: np.ndarray, *, from_logits: bool = True) -> float:
    """Fraction of samples whose predicted class is the true class.

    How the prediction is made depends on the number of output columns, so no guessing
    between logits and probabilities is ever needed for multi-class outputs:

    * ``C >= 2`` columns (softmax classifiers): the predicted class is the argmax of the
      row, which is the same for logits and probabilities. ``y`` is labels ``(n,)`` in
      ``0..C-1`` or targets ``(n, C)`` (one-hot or soft), whose argmax is the true class.
    * ``C == 1`` column (binary classifiers): the prediction is positive when the output
      is above the threshold, ``0`` if ``from_logits`` (the default, matching
      ``model.predict`` of a BCE-with-logits model) and ``0.5`` if not (a model ending in
      a sigmoid). ``y`` is 0/1 labels or float targets in ``[0, 1]``, positive above 0.5.

    The flag is explicit rather than inferred from the value range because logits that
    happen to fall in ``[0, 1]`` are indistinguishable from probabilities but thresholded
    differently. Rows that contain NaN or infinity count as wrong.

    Args:
        outputs: network outputs, ``(n, C)`` or ``(n,)`` (one column), any real dtype.
        y: labels or targets for the ``n`` samples, as described above.
        from_logits: single-column outputs only: threshold at 0 (logits) or 0.5
            (probabilities). Ignored when ``C >= 2``.

    Returns:
        The accuracy in ``[0, 1]``.

    Raises:
        TypeError: non-numeric ``outputs``/``y``, or ``from_logits`` is not a bool.
        ValueError: wrong shapes, labels out of range, or binary targets outside [0, 1].
    """
    if not isinstance(from_logits, (bool, np.bool_)):
        raise TypeError(f"from_logits must be True or False, got {type(from_logits).__name__}")
    out = _as_outputs(outputs)
    n, n_classes = out.shape
    targets = _as_targets(y, n)
    finite = np.isfinite(out).all(axis=1)
    if n_classes > 1:
        correct = np.argmax(out, axis=1) == _class_labels(targets, n_classes)
    else:
        if targets.ndim == 2 and targets.shape[1] != 1:
            raise ValueError(
                f"y must have shape (n,) or (n, 1) for single-column outputs, got {targets.shape}"
            )
        t = targets.reshape(-1).astype(np.float64)
        if not (np.isfinite(t).all() and (t >= 0).all() and (t <= 1).all()):
            raise ValueError(
                "y must hold 0/1 labels or targets in [0, 1] for single-column outputs"
            )
        threshold = 0.0 if from_logits else 0.5
        correct = (out[:, 0] > threshold) == (t > 0.5)
    return float(np.mean(correct & finite))


def top_k_accuracy(outputs: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    """Fraction of samples whose true class is among the ``k`` highest outputs.

    A sample counts as correct when fewer than ``k`` classes score strictly higher than
    its true class, so ties at the k-th place are resolved in the sample's favour (a
    deterministic rule; sorting would break ties by column order). With ``k=1`` and no
    ties this is :func:`accuracy`. Rows that contain NaN or infinity count as wrong.

    Args:
        outputs: network outputs ``(n, C)`` with ``C >= 2``, logits or probabilities.
        y: labels ``(n,)`` in ``0..C-1`` or targets ``(n, C)`` (argmax taken).
        k: how many top classes to accept, ``1 <= k <= C``.

    Returns:
        The top-k accuracy in ``[0, 1]``.

    Raises:
        TypeError: non-numeric inputs or a non-integer ``k``.
        ValueError: wrong shapes, labels out of range, fewer than 2 columns, or ``k``
            outside ``1..C``.
    """
    k = check_positive_int("k", k)
    out = _as_outputs(outputs)
    n, n_classes = out.shape
    if n_classes < 2:
        raise ValueError(
            f"top_k_accuracy needs outputs with at least 2 columns, got shape {out.shape}"
        )
    if k > n_classes:
        raise ValueError(f"k={k} exceeds the number of classes ({n_classes}) in outputs")
    labels = _class_labels(_as_targets(y, n), n_classes)
    true_score = np.take_along_axis(out, labels[:, None], axis=1)
    n_higher = np.count_nonzero(out > true_score, axis=1)
    correct = (n_higher < k) & np.isfinite(out).all(axis=1)
    return float(np.mean(correct))


def _paired(outputs: object, y: object, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Outputs and targets as float64 arrays of the same ``(n, C)`` shape."""
    out = _as_outputs(outputs)
    targets = _as_targets(y, out.shape[0])
    if targets.ndim == 1:
        if out.shape[1] != 1:
            raise ValueError(
                f"{metric} compares outputs and y element by element: y has shape "
                f"{targets.shape} but outputs has {out.shape}; pass y of shape {out.shape} "
                "(e.g. one-hot targets)"
            )
        targets = targets.reshape(-1, 1)
    if targets.shape != out.shape:
        raise ValueError(f"{metric}: y has shape {targets.shape} but outputs has {out.shape}")
    return out.astype(np.float64), targets.astype(np.float64)


def mse(outputs: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error over all elements, ``mean((outputs - y) ** 2)``.

    Args:
        outputs: predictions ``(n, C)`` or ``(n,)``.
        y: targets of the same shape (``(n,)`` is accepted for one column).

    Returns:
        The mean squared error, computed in float64; NaN propagates.

    Raises:
        TypeError: non-numeric inputs.
        ValueError: shapes differ.
    """
    out, targets = _paired(outputs, y, "mse")
    return float(np.mean(np.square(out - targets)))


def mae(outputs: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute error over all elements, ``mean(abs(outputs - y))``.

    Args:
        outputs: predictions ``(n, C)`` or ``(n,)``.
        y: targets of the same shape (``(n,)`` is accepted for one column).

    Returns:
        The mean absolute error, computed in float64; NaN propagates.

    Raises:
        TypeError: non-numeric inputs.
        ValueError: shapes differ.
    """
    out, targets = _paired(outputs, y, "mae")
    return float(np.mean(np.abs(out - targets)))


# --------------------------------------------------------------------------- lookup


class Metric:
    """A metric function with the name it is logged under and its direction.

    Calling it, ``metric(outputs, y)``, returns a float.

    Attributes:
        name: the key used in training history and logs, e.g. ``"accuracy"``,
            ``"top5_accuracy"``, ``"mse"``, or a user function's ``__name__``.
        fn: the underlying function ``fn(outputs, y, **kwargs) -> float``.
        kwargs: keyword arguments bound to ``fn`` (e.g. ``{"k": 5}``).
        greater_is_better: True for accuracies, False for errors, None when unknown
            (user functions); callbacks that monitor a metric need this direction.
    """

    __slots__ = ("fn", "greater_is_better", "kwargs", "name")

    def __init__(
        self,
        name: str,
        fn: Callable[..., float],
        kwargs: dict[str, Any] | None = None,
        greater_is_better: bool | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.kwargs = dict(kwargs or {})
        self.greater_is_better = greater_is_better

    def __call__(self, outputs: np.ndarray, y: np.ndarray) -> float:
        return float(self.fn(outputs, y, **self.kwargs))

    def __repr__(self) -> str:
        bound = "".join(f", {key}={value!r}" for key, value in self.kwargs.items())
        return f"Metric({self.name!r}{bound})"


# name -> (function, allowed keyword arguments, greater_is_better)
_BUILTINS: dict[str, tuple[Callable[..., float], tuple[str, ...], bool]] = {
    "accuracy": (accuracy, ("from_logits",), True),
    "top_k_accuracy": (top_k_accuracy, ("k",), True),
    "mse": (mse, (), False),
    "mae": (mae, (), False),
}
_ALIASES = {"mean_squared_error": "mse", "mean_absolute_error": "mae"}
_TOP_K_NAME = re.compile(r"top_?(\d+)_accuracy")


def list_metrics() -> list[str]:
    """Names :func:`get_metric` accepts (plus ``top<k>_accuracy`` for any k, and aliases)."""
    return sorted(_BUILTINS)


def _known_names() -> str:
    return (
        "accuracy, top_k_accuracy, top<k>_accuracy (e.g. top5_accuracy), mse, mae, "
        "mean_squared_error, mean_absolute_error"
    )


def get_metric(metric: str | Callable[..., float] | Metric, **kwargs: Any) -> Metric:
    """Resolve a metric name or function to a :class:`Metric`.

    Args:
        metric: a name (case-insensitive): ``"accuracy"``; ``"top_k_accuracy"`` (``k``
            defaults to 5) or ``"top<k>_accuracy"`` such as ``"top5_accuracy"``;
            ``"mse"`` / ``"mean_squared_error"``; ``"mae"`` / ``"mean_absolute_error"``.
            Or a callable ``fn(outputs, y) -> float``, named by its ``__name__``. A
            :class:`Metric` is returned unchanged.
        **kwargs: bound to the function, e.g. ``get_metric("accuracy", from_logits=False)``
            or ``get_metric("top_k_accuracy", k=3)``.

    Returns:
        A :class:`Metric`. Built-in top-k metrics are named ``top<k>_accuracy``.

    Raises:
        ValueError: unknown name (the message lists the known ones), or ``k`` given
            twice (in the name and as an argument).
        TypeError: ``metric`` is neither a string nor callable, or an unknown keyword
            argument for a built-in metric.
    """
    if isinstance(metric, Metric):
        if kwargs:
            raise TypeError("get_metric: cannot bind keyword arguments to a Metric instance")
        return metric
    if isinstance(metric, str):
        key = metric.strip().lower()
        key = _ALIASES.get(key, key)
        match = _TOP_K_NAME.fullmatch(key)
        if match:
            if "k" in kwargs:
                raise ValueError(
                    f"get_metric: {metric!r} already sets k; do not pass k={kwargs['k']!r}"
                )
            kwargs = {**kwargs, "k": int(match.group(1))}
            key = "top_k_accuracy"
        if key not in _BUILTINS:
            raise ValueError(f"unknown metric {metric!r}; known metrics: {_known_names()}")
        fn, allowed, greater_is_better = _BUILTINS[key]
        unexpected = sorted(set(kwargs) - set(allowed))
        if unexpected:
            takes = ", ".join(allowed) if allowed else "no keyword arguments"
            raise TypeError(
                f"get_metric: metric {key!r} got unexpected argument(s) {unexpected}; "
                f"it takes {takes}"
            )
        name = key
        if key == "top_k_accuracy":
            k = check_positive_int("k", kwargs.get("k", 5))
            kwargs = {**kwargs, "k": k}
            name = f"top{k}_accuracy"
        if "from_logits" in kwargs and not isinstance(kwargs["from_logits"], (bool, np.bool_)):
            raise TypeError(
                f"from_logits must be True or False, got {type(kwargs['from_logits']).__name__}"
            )
        return Metric(name, fn, kwargs, greater_is_better)
    if callable(metric):
        # A built-in passed as a function keeps its direction of improvement.
        direction = next((g for f, _, g in _BUILTINS.values() if f is metric), None)
        name = getattr(metric, "__name__", type(metric).__name__)
        return Metric(name, metric, kwargs, direction)
    raise TypeError(
        f"metric must be a name or a callable fn(outputs, y) -> float, got {type(metric).__name__}"
    )
