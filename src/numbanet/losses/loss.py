"""The loss host: target checks, reductions, weights and the per-row driver call."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numba.core.errors import NumbaError

from numbanet._validation import (
    InstanceOf,
    Integer,
    OneOf,
    check_arg,
    check_float_array,
    resolve_dtype,
    validate_args,
)
from numbanet.kernels.losses import (
    LossDriver,
    count_equal,
    label_weight_sum,
    labels_in_range,
    loss_driver,
    scale_rows,
)
from numbanet.kernels.reductions import fixed_order_sum
from numbanet.specs import (
    LossSpec,
    PluginError,
    flatten_hyperparams,
    numba_root_cause,
    validate_hyperparams,
)

__all__ = ["Loss", "WeightedTargets", "check_sample_weight"]


class WeightedTargets(NamedTuple):
    """Prepared targets with one weight per row: what the fit loop hands the loss host
    for a batch when ``fit`` was given ``sample_weight`` or ``class_weight``.

    Attributes:
        targets: what :meth:`Loss.prepare_targets` returned, for the batch's rows.
        weight: float64 ``(n,)`` non-negative weights of those rows.
    """

    targets: np.ndarray
    weight: np.ndarray


def check_sample_weight(weight: Any, n: int, name: str = "sample_weight") -> np.ndarray:
    """``weight`` as a C-contiguous float64 ``(n,)`` array of finite, non-negative values.

    Raises:
        TypeError: not numeric.
        ValueError: wrong shape, NaN/infinity or negative values.
    """
    arr = np.asarray(weight)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one weight per sample, got "
                         f"{arr.shape}")
    out = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or infinity")
    if (out < 0).any():
        raise ValueError(f"{name} must be >= 0, got {out.min():g}")
    return out


class _RowPass(NamedTuple):
    """One batch's call of the row kernel, prepared by :meth:`Loss._prepare`."""

    kernel: Any  # the spec's row kernel for these targets
    driver: LossDriver  # its parallel/serial driver
    hp: tuple  # the flattened hyperparameters
    gs: float  # the gradient scale, 1 / divisor
    weight: np.ndarray | None  # float64 sample weights of the rows, or None
    rowloss: np.ndarray  # float64 (n,), filled by the kernel
    divisor: float  # of the reduction


#: The ``weight`` a fused pass gets for an unweighted batch.
_NO_WEIGHTS = np.zeros(0)


class Loss:
    """Runs a :class:`~numbanet.LossSpec` over a batch.

    Build it with :func:`numbanet.get_loss`. The spec's fused per-row kernel computes
    each row's loss and its gradient in one pass inside the host's ``prange`` over rows;
    the host applies the reduction (PyTorch's semantics) and class weights.

    Reductions: ``"mean"`` divides by the number of rows, of elements or by the sum of
    the targets' class weights (see :attr:`LossSpec.mean_over`), ``"sum"`` adds, and
    ``"none"`` makes :meth:`forward` return one value per row (for losses over several
    outputs per row, the sum over that row); :meth:`forward_backward` then returns the
    sum and the gradient of the sum.

    Sample weights (``sample_weight=`` of :meth:`forward` and :meth:`forward_backward`,
    or :class:`WeightedTargets` in the fit loop) multiply each row's loss ``l_i``; the
    mean is then PyTorch's weighted mean, ``Σ w_i l_i / Σ w_i`` (times the outputs per
    row for element-wise losses such as ``mse``, and with class weights ``c`` the
    divisor ``Σ w_i c[y_i]``, exactly what ``F.cross_entropy(weight=c)`` divides by), so
    equal weights give the unweighted mean. A batch whose weights sum to zero has loss
    0 and gradient 0 (it teaches nothing). ``"sum"`` gives ``Σ w_i l_i`` and ``"none"``
    the weighted rows ``w_i l_i``.

    Attributes:
        spec: the :class:`~numbanet.LossSpec`.
        qualified_id: ``"distribution:name"``.
        reduction: ``"mean"``, ``"sum"``, ``"none"`` or a spec-specific one.
        weight: per-class weights (float64) or ``None``.
        output_activation: ``"softmax"``, ``"sigmoid"`` or ``None``.
        accepts_sample_weight: ``True``: the fit loop may pass :class:`WeightedTargets`.

    Example:
        >>> import numpy as np, numbanet as nbn
        >>> loss = nbn.get_loss("mse")
        >>> out = np.array([[1.0, 2.0]]); t = loss.prepare_targets(np.array([[0.0, 0.0]]), 2,
        ...                                                       "float64")
        >>> grad = np.empty_like(out); loss.forward_backward(out, t, grad), grad
        (2.5, array([[1., 2.]]))
    """

    accepts_sample_weight = True

    @validate_args({"spec": InstanceOf(LossSpec)})
    def __init__(
        self,
        spec: LossSpec,
        qualified_id: str,
        *,
        reduction: str = "mean",
        weight: Any = None,
        **hyperparams: Any,
    ) -> None:
        self.spec = spec
        self.qualified_id = qualified_id
        where = f"loss {spec.name!r}"
        reductions = OneOf("mean", "sum", "none", *spec.extra_reductions)
        self.reduction: str = check_arg("reduction", reduction, reductions, where=where)
        self._hp = validate_hyperparams("loss", spec, hyperparams)
        self._hp_tuple = flatten_hyperparams(self._hp)
        self.ignore_label: int | None = None
        if spec.ignore_label is not None:
            value = self._hp[spec.ignore_label]
            if isinstance(value, tuple) or float(value) != int(value):
                raise TypeError(f"{where}: {spec.ignore_label} must be an integer, got {value!r}")
            self._hp[spec.ignore_label] = int(value)
            self.ignore_label = int(value)
        self.weight = self._check_weight(weight)
        self._driver: LossDriver = loss_driver(spec.kernel)
        self._dense_driver: LossDriver | None = (
            loss_driver(spec.dense_kernel) if spec.dense_kernel is not None else None
        )
        self._rowloss = np.zeros(0)
        self._rowloss_by_rows: dict[int, np.ndarray] = {}
        self._aux: dict[int, np.ndarray] = {}
        self._scratch: np.ndarray | None = None
        # The buffers above are reused call to call; one loss object compiled into two
        # models trained in two threads takes turns on them.
        self._lock = threading.Lock()

    def _check_weight(self, weight: Any) -> np.ndarray | None:
        if weight is None:
            return None
        where = f"loss {self.spec.name!r}"
        if not self.spec.supports_weight:
            raise ValueError(f"{where}: does not accept a class weight")
        try:
            w = np.asarray(weight, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{where}: weight must be a 1-D array of floats") from None
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"{where}: weight must be a non-empty 1-D array, got shape {w.shape}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"{where}: weight must be finite and non-negative")
        return np.ascontiguousarray(w)

    @property
    def name(self) -> str:
        """The short name (``"cross_entropy"``)."""
        return self.spec.name

    @property
    def hyperparams(self) -> dict[str, Any]:
        """A copy of the hyperparameters, with ``reduction`` and ``weight``.

        The ignored label (``ignore_index``) is listed only when it differs from its
        default, so records written before it existed compare equal.
        """
        out: dict[str, Any] = dict(self._hp)
        key = self.spec.ignore_label
        if key is not None and out[key] == self.spec.hyperparams[key]:
            del out[key]
        out["reduction"] = self.reduction
        if self.spec.supports_weight:
            out["weight"] = None if self.weight is None else self.weight.copy()
        return out

    @property
    def output_activation(self) -> str | None:
        """What ``predict_proba`` applies to the outputs: ``"softmax"``, ``"sigmoid"``, ``None``."""
        return self.spec.output_activation

    # -- targets -------------------------------------------------------------------------
    @validate_args({"n_outputs": Integer(min=1)})
    def prepare_targets(self, y: Any, n_outputs: int, dtype: Any) -> np.ndarray:
        """Check and convert user targets once, before training.

        Args:
            y: integer class labels ``(n,)`` for label losses; float targets ``(n, k)``
                (or ``(n,)`` when ``k == 1``) for dense losses; cross-entropy accepts both
                (a 2-D float array of shape ``(n, n_outputs)`` means class probabilities).
            n_outputs: the network's number of outputs ``k``.
            dtype: the model dtype (float targets are converted to it).

        Returns:
            ``int64`` labels ``(n,)`` or a C-contiguous ``(n, k)`` float array.

        Raises:
            TypeError: targets of a non-numeric type.
            ValueError: labels that are not integers or not in ``[0, n_outputs)``; float
                targets of the wrong shape or with NaN/inf. Messages name ``y``.
        """
        where = f"loss {self.spec.name!r}"
        dtype = resolve_dtype(dtype)
        arr = np.asarray(y)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{where}: y must be numeric, got dtype {arr.dtype}")
        kind = self.spec.target
        if kind == "labels_or_dense":
            kind = "dense" if arr.ndim == 2 and arr.shape[1] == n_outputs and (
                arr.dtype.kind == "f" and n_outputs > 1) else "labels"
        if kind == "labels":
            return _prepare_labels(where, arr, n_outputs, self.ignore_label)
        if arr.dtype.kind == "b":
            arr = arr.astype(dtype)
        if arr.ndim == 1 and n_outputs == 1:
            arr = arr.reshape(-1, 1)
        if arr.ndim != 2 or arr.shape[1] != n_outputs:
            raise ValueError(
                f"{where}: y must have shape (n, {n_outputs}) to match the outputs, "
                f"got {arr.shape}"
            )
        out = np.ascontiguousarray(arr, dtype=dtype)
        if not np.isfinite(out).all():
            raise ValueError(f"{where}: y contains NaN or infinity")
        bounds = self.spec.target_range
        if bounds is not None and out.size and (out.min() < bounds[0] or out.max() > bounds[1]):
            raise ValueError(
                f"{where}: y must lie in [{bounds[0]:g}, {bounds[1]:g}], got values from "
                f"{out.min():g} to {out.max():g}"
            )
        return out

    # -- evaluation ----------------------------------------------------------------------
    def _setup(self, outputs: np.ndarray, targets: Any) -> tuple[Any, np.ndarray, str]:
        where = f"loss {self.spec.name!r}"
        check_float_array("outputs", outputs, ndim=2)
        n, k = outputs.shape
        if not isinstance(targets, np.ndarray):
            targets = self.prepare_targets(targets, k, outputs.dtype)
        if targets.ndim == 2 and targets.dtype.kind == "f" and self.spec.target != "labels":
            check_float_array("targets", targets, dtype=outputs.dtype, shape=(n, k))
            target_kind = "dense"
        elif targets.ndim == 1 and targets.dtype == np.int64 and self.spec.target != "dense":
            if targets.shape[0] != n:
                raise ValueError(f"{where}: targets have {targets.shape[0]} rows, outputs {n}")
            if n and (targets.min() < 0 or targets.max() >= k):
                outside = targets[(targets < 0) | (targets >= k)]
                if self.ignore_label is None or (outside != self.ignore_label).any():
                    raise ValueError(
                        f"{where}: y must hold class labels in [0, {k}), got values from "
                        f"{targets.min()} to {targets.max()}"
                    )
            target_kind = "labels"
        else:
            targets = self.prepare_targets(targets, k, outputs.dtype)
            return self._setup(outputs, targets)
        aux = self._aux_for(k)
        return targets, aux, target_kind

    def _aux_for(self, k: int) -> np.ndarray:
        if self.weight is not None:
            if self.weight.shape[0] != k:
                raise ValueError(
                    f"loss {self.spec.name!r}: weight has {self.weight.shape[0]} entries but "
                    f"the outputs have {k} classes"
                )
            return self.weight
        aux = self._aux.get(k)
        if aux is None:
            aux = self._aux[k] = np.ones(k)
        return aux

    def _divisor(self, n: int, k: int, targets: np.ndarray, aux: np.ndarray, kind: str) -> float:
        if self.reduction in ("sum", "none"):
            return 1.0
        over = self.spec.extra_reductions.get(self.reduction, self.spec.mean_over)
        if over == "elements":
            return float(n * k)
        # A compiled count, not numpy reductions: in a training step numpy's reduction
        # machinery runs with cold caches (10 us for 256 labels, against 1-2 us).
        n_ignored = (
            count_equal(targets, self.ignore_label)
            if kind == "labels" and self.ignore_label is not None else 0
        )
        if over == "weights" and kind == "labels" and self.weight is not None:
            if n_ignored:
                return float(np.sum(aux[targets[targets != self.ignore_label]]))
            return float(np.sum(aux[targets]))
        return float(n - n_ignored)

    def _weighted_divisor(self, k: int, targets: np.ndarray, aux: np.ndarray, kind: str,
                          weight: np.ndarray) -> float:
        """:meth:`_divisor` with sample weights: ``Σ w_i`` (times ``k`` over elements,
        ``Σ w_i c[y_i]`` over class weights), ignored labels left out."""
        if self.reduction in ("sum", "none"):
            return 1.0
        over = self.spec.extra_reductions.get(self.reduction, self.spec.mean_over)
        if kind == "labels":
            ignore = -1 if self.ignore_label is None else self.ignore_label
            use_aux = over == "weights" and self.weight is not None
            total = label_weight_sum(targets, aux, weight, ignore, use_aux)
        else:
            total = fixed_order_sum(weight, False)
        return float(total * k if over == "elements" else total)

    def _run(self, outputs: np.ndarray, targets: Any, grad: np.ndarray,
             weight: np.ndarray | None = None) -> tuple[float, int]:
        targets, aux, kind = self._setup(outputs, targets)
        if weight is not None:
            weight = check_sample_weight(weight, outputs.shape[0])
        return self._compute(outputs, targets, aux, kind, grad, weight)

    def _prepare(
        self, n: int, k: int, targets: np.ndarray, aux: np.ndarray, kind: str,
        weight: np.ndarray | None,
    ) -> _RowPass:
        """What the row kernel needs for a batch of ``n`` rows and ``k`` outputs (checked
        arguments): the kernel, the gradient scale and this batch size's ``rowloss``."""
        if weight is None:
            divisor = self._divisor(n, k, targets, aux, kind)
            gs = 1.0 / divisor if divisor != 0.0 else math.inf
        else:
            divisor = self._weighted_divisor(k, targets, aux, kind, weight)
            # Zero total weight: every row is scaled by 0 below, so the loss and the
            # gradient are 0 (gs = inf would turn them into 0 * inf = NaN).
            gs = 1.0 / divisor if divisor != 0.0 else 0.0
        if self._rowloss.shape[0] != n:
            # One buffer per batch size: fit alternates full and last batches.
            rowloss = self._rowloss_by_rows.get(n)
            if rowloss is None:
                if len(self._rowloss_by_rows) >= 8:
                    self._rowloss_by_rows.clear()
                rowloss = self._rowloss_by_rows[n] = np.zeros(n)
            self._rowloss = rowloss
        dense = kind == "dense" and self._dense_driver is not None
        return _RowPass(self.spec.dense_kernel if dense else self.spec.kernel,
                        self._dense_driver if dense else self._driver,
                        self._hp_tuple, gs, weight, self._rowloss, divisor)

    def _reduce(self, rows: _RowPass) -> float:
        """The reduced loss from ``rows.rowloss`` (already scaled by the sample weights)."""
        if rows.weight is not None and not rows.divisor:
            return 0.0
        # A fixed-order sum: thread-count independent (and cheaper than np.sum here).
        return fixed_order_sum(rows.rowloss, False) / rows.divisor if rows.divisor else math.nan

    def _run_kernel(self, run: Callable[[], Any], dtype: np.dtype, kind: str) -> None:
        """``run()``, a call that compiles the row kernel, with a plugin's errors
        named: a kernel that does not type-check, or one that raises."""
        try:
            run()
        except NumbaError as exc:
            # Arguments were validated before: only a plugin kernel that does not
            # type-check gets here.
            raise TypeError(
                f"loss {self.qualified_id!r}: its kernel does not compile for "
                f"{dtype} outputs and {kind} targets; fix the plugin's kernel. "
                f"Numba said: {numba_root_cause(exc, self.spec.kernel)}"
            ) from exc
        except Exception as exc:
            raise PluginError(
                f"loss {self.qualified_id!r}: its kernel raised {type(exc).__name__}: {exc}"
            ) from exc

    def _compute(
        self, outputs: np.ndarray, targets: np.ndarray, aux: np.ndarray, kind: str,
        grad: np.ndarray, weight: np.ndarray | None = None,
    ) -> tuple[float, int]:
        """Run the kernel on checked arguments; return (reduced value, rows)."""
        n, k = outputs.shape
        rows = self._prepare(n, k, targets, aux, kind, weight)
        self._run_kernel(lambda: rows.driver(outputs, targets, aux, rows.hp, rows.gs, grad,
                                             rows.rowloss), outputs.dtype, kind)
        if weight is not None:
            scale_rows(weight, grad, rows.rowloss)
        return self._reduce(rows), n

    def forward_backward(self, outputs: np.ndarray, targets: Any, grad: np.ndarray,
                         sample_weight: Any = None) -> float:
        """Loss value and its gradient in one fused pass.

        Args:
            outputs: ``(n, k)`` float32/float64 network outputs.
            targets: what :meth:`prepare_targets` returned (raw targets are prepared here,
                at the cost of a conversion per call), or :class:`WeightedTargets`.
            grad: preallocated array like ``outputs``; receives d(loss)/d(outputs).
            sample_weight: optional ``(n,)`` non-negative weight per row (see the class
                docstring for the weighted reductions).

        Returns:
            The reduced loss (the sum for ``reduction="none"``).
        """
        check_float_array("outputs", outputs, ndim=2)
        check_float_array("grad", grad, dtype=outputs.dtype, shape=outputs.shape, writeable=True)
        targets, sample_weight = _unpack(targets, sample_weight)
        with self._lock:
            value, _ = self._run(outputs, targets, grad, sample_weight)
        return value

    def forward_backward_unchecked(
        self, outputs: np.ndarray, targets: np.ndarray, grad: np.ndarray
    ) -> float:
        """:meth:`forward_backward` for the training step's hot path.

        ``targets`` must come from :meth:`prepare_targets` and ``outputs``/``grad`` be
        buffers the caller validated (the model's own): nothing is checked again, which
        saves about half the cost of the call on small batches.
        """
        weight = None
        if type(targets) is WeightedTargets:  # the fit loop's sample-weighted batches
            targets, weight = targets
        kind = "labels" if targets.ndim == 1 else "dense"
        with self._lock:
            value, _ = self._compute(outputs, targets, self._aux_for(outputs.shape[1]), kind,
                                     grad, weight)
        return value

    def forward_backward_fused(
        self, shape: tuple[int, int], dtype: np.dtype, targets: np.ndarray,
        run: Callable[[Any, np.ndarray, np.ndarray, tuple, float, np.ndarray, np.ndarray],
                      Any],
    ) -> float:
        """:meth:`forward_backward_unchecked` with the row kernel called by the caller's
        own compiled pass (the Dense stack runs each shard's loss rows between its
        forward and backward passes, on the thread that holds those rows).

        Args:
            shape, dtype: the outputs' shape ``(n, k)`` and dtype.
            targets: as for :meth:`forward_backward_unchecked`.
            run: called once as ``run(kernel, targets, aux, hp, gs, weight, rowloss)``;
                it must, for every row ``r``, set ``rowloss[r]`` to
                ``kernel(r, outputs, targets, aux, hp, gs, grad)`` and then, when
                ``weight`` is not empty, multiply ``rowloss[r]`` and ``grad[r, :]`` by
                ``weight[r]`` (:func:`numbanet.kernels.losses.scale_row_range`): exactly
                what :meth:`forward_backward` computes. ``weight`` is float64, empty
                for unweighted batches.

        Returns:
            the reduced loss, as :meth:`forward_backward_unchecked`.
        """
        weight = None
        if type(targets) is WeightedTargets:
            targets, weight = targets
        kind = "labels" if targets.ndim == 1 else "dense"
        n, k = shape
        with self._lock:
            aux = self._aux_for(k)
            rows = self._prepare(n, k, targets, aux, kind, weight)
            weights = _NO_WEIGHTS if weight is None else weight
            self._run_kernel(lambda: run(rows.kernel, targets, aux, rows.hp, rows.gs,
                                         weights, rows.rowloss), dtype, kind)
            return self._reduce(rows)

    def forward(self, outputs: np.ndarray, targets: Any,
                sample_weight: Any = None) -> float | np.ndarray:
        """The loss value (per row, float64 ``(n,)``, for ``reduction="none"``).

        ``targets`` and ``sample_weight`` as for :meth:`forward_backward`.
        """
        check_float_array("outputs", outputs, ndim=2)
        targets, sample_weight = _unpack(targets, sample_weight)
        with self._lock:
            if (
                self._scratch is None
                or self._scratch.shape != outputs.shape
                or self._scratch.dtype != outputs.dtype
            ):
                self._scratch = np.empty_like(outputs)
            value, _ = self._run(outputs, targets, self._scratch, sample_weight)
            if self.reduction == "none":
                return self._rowloss.copy()
            return value

    __call__ = forward

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self._hp.items())
        sep = ", " if hp else ""
        return f"Loss({self.qualified_id!r}, reduction={self.reduction!r}{sep}{hp})"


def _unpack(targets: Any, sample_weight: Any) -> tuple[Any, Any]:
    if isinstance(targets, WeightedTargets):
        if sample_weight is not None:
            raise ValueError("pass the weights either in WeightedTargets or as "
                             "sample_weight, not both")
        return targets.targets, targets.weight
    return targets, sample_weight


def _prepare_labels(
    where: str, arr: np.ndarray, n_outputs: int, ignore: int | None = None
) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{where}: y must be a 1-D array of class labels, got shape {arr.shape}")
    if arr.dtype.kind == "b":
        raise TypeError(f"{where}: y must hold integer class labels, got booleans")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise ValueError(f"{where}: y must hold integer class labels, got non-integer values")
    labels = np.ascontiguousarray(arr, dtype=np.int64)
    # Compiled range check: numpy's min/max cost 5-8 us each per training step (cold).
    if not labels_in_range(labels, n_outputs):
        outside = labels[(labels < 0) | (labels >= n_outputs)]
        if ignore is not None:
            outside = outside[outside != ignore]
        if outside.size == 0:
            return labels
        bad = outside[0]
        raise ValueError(
            f"{where}: y must hold class labels in [0, {n_outputs}) for {n_outputs} outputs, "
            f"found {bad}"
        )
    return labels
