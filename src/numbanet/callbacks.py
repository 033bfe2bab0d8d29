"""Callbacks: small objects :func:`numbanet.train.fit` calls at fixed points of training.

The protocol is Keras's, reduced to what the fit loop needs. A callback subclasses
:class:`Callback` and overrides any of::

    on_train_begin(logs)            on_train_end(logs)
    on_epoch_begin(epoch, logs)     on_epoch_end(epoch, logs)
    on_train_batch_begin(step, logs)
    on_train_batch_end(step, logs)  # logs = {"loss": float, "size": int}

``epoch`` counts over the model's lifetime from 0 (a resumed model continues its count),
``step`` is the batch index within the epoch. ``logs`` at epoch end holds the keys of
:class:`numbanet.train.History` (``loss``, metrics, ``val_*``, ``lr``). Before training,
``callback.model`` is the model and ``callback.params`` the run's parameters (``epochs``,
``batch_size``, ``steps``, ``metrics``: the keys that will be logged). A callback stops
training by setting ``self.model.stop_training = True`` and optionally
``self.model.stop_reason``, a :class:`~numbanet.train.StopReason` (plain text becomes one
of kind ``"callback"``); fit finishes the current step and epoch bookkeeping first and
puts the reason in ``History.stop_reason``.

Distributed training (``fit(distributed=True)``): every rank runs every callback with the
same logs (they are reduced over the ranks), so decisions such as early stopping agree;
``params["rank"]`` is this process's rank, and the built-in callbacks that write files
or print (:class:`ModelCheckpoint`, :class:`CSVLogger`, the ``verbose`` messages) do so
on rank 0 only.

The per-batch hooks are only called when some callback overrides them, so callbacks that
work per epoch add nothing to the cost of a step.

Example:
    >>> import numbanet as nbn
    >>> X, y = nbn.datasets.make_blobs(200, n_features=4, centers=3, seed=0)
    >>> model = nbn.Sequential([nbn.Dense(4, 16, activation="relu"), nbn.Dense(16, 3)], seed=0)
    >>> _ = model.compile(loss="cross_entropy", optimizer=nbn.get_optimizer("adam", lr=1e-2))
    >>> history = model.fit(X, y, epochs=50, validation_split=0.2, verbose=0, callbacks=[
    ...     nbn.EarlyStopping(patience=5, restore_best_weights=True),
    ...     nbn.ReduceLROnPlateau(factor=0.5, patience=2),
    ...     nbn.CSVLogger("train.csv")])
    >>> len(history["loss"]) <= 50
    True
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from numbanet._validation import InstanceOf, Integer, OneOf, Optional, Real, check_arg
from numbanet.train import StopReason

__all__ = [
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "TerminateOnNaN",
]

_HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
          "on_train_batch_begin", "on_train_batch_end")
_BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end")


class Callback:
    """Base class: every hook does nothing. Override the ones you need.

    Attributes:
        model: the model being trained (set by fit before ``on_train_begin``).
        params: the run's parameters (``epochs``, ``batch_size``, ``steps``, ``samples``,
            ``metrics``, ``initial_epoch``, ``greater_is_better``, and ``rank`` and
            ``world_size`` of a distributed run: 0 and 1 otherwise).
    """

    model: Any = None
    params: dict[str, Any] = {}  # noqa: RUF012 - replaced per run by set_params

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Called once before the first epoch."""

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """Called once after the last epoch (also after an early stop)."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Called before each epoch."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Called after each epoch with its losses and metrics."""

    def on_train_batch_begin(self, step: int, logs: dict[str, Any] | None = None) -> None:
        """Called before each training step."""

    def on_train_batch_end(self, step: int, logs: dict[str, Any] | None = None) -> None:
        """Called after each training step with ``{"loss": ..., "size": ...}``."""


class CallbackList:
    """Fans each hook out to a list of callbacks (used by fit; not needed by users)."""

    def __init__(self, callbacks: Sequence[Any] | None, model: Any, params: dict[str, Any]):
        if callbacks is None:
            callbacks = []
        if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
            raise TypeError(
                "callbacks must be a list of numbanet.callbacks.Callback objects, got "
                f"{type(callbacks).__name__}"
            )
        for i, cb in enumerate(callbacks):
            if isinstance(cb, type):
                raise TypeError(f"callbacks[{i}] is the class {cb.__name__}; pass an instance "
                                f"such as {cb.__name__}()")
            if not any(callable(getattr(cb, hook, None)) for hook in _HOOKS):
                raise TypeError(f"callbacks[{i}] ({type(cb).__name__}) has none of the "
                                f"callback hooks {_HOOKS}")
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if hasattr(cb, "set_model"):
                cb.set_model(model)
            else:
                cb.model = model
            if hasattr(cb, "set_params"):
                cb.set_params(params)
            else:
                cb.params = params
        self.per_batch = any(_overrides(cb, hook) for cb in self.callbacks for hook in _BATCH_HOOKS)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if method is not None:
                method(*args)

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self._call("on_train_begin", logs)

    def on_train_end(self, logs: dict[str, Any]) -> None:
        self._call("on_train_end", logs)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        self._call("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self._call("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, step: int, logs: dict[str, Any]) -> None:
        self._call("on_train_batch_begin", step, logs)

    def on_train_batch_end(self, step: int, logs: dict[str, Any]) -> None:
        self._call("on_train_batch_end", step, logs)


def _on_rank0(cb: Any) -> bool:
    """Whether ``cb`` may write files and print: rank 0 of a distributed fit, or any
    process outside one."""
    return (getattr(cb, "params", None) or {}).get("rank", 0) == 0


def _overrides(cb: Any, hook: str) -> bool:
    # Looked up on the instance: a callback may bind a hook per instance (as
    # LearningRateScheduler does for per="step").
    method = getattr(cb, hook, None)
    if not callable(method):
        return False
    return getattr(method, "__func__", method) is not getattr(Callback, hook)


# ------------------------------------------------------------------------ monitoring


class _Monitor:
    """Tracks the best value of one logged quantity and decides what counts as better."""

    def __init__(self, owner: str, monitor: str, mode: str, min_delta: float) -> None:
        monitor = check_arg("monitor", monitor, _LOG_KEY, where=owner)
        if not monitor:
            raise ValueError(f"{owner}: monitor must be a log key such as 'val_loss', got ''")
        mode = check_arg("mode", mode, _MODE, where=owner)
        min_delta = check_arg("min_delta", min_delta, _NON_NEGATIVE, where=owner)
        self.owner, self.monitor, self.mode, self.min_delta = owner, monitor, mode, min_delta
        self.greater = mode == "max"
        self.best = math.inf

    def begin(self, params: dict[str, Any]) -> None:
        keys = params.get("metrics", [])
        if self.monitor not in keys:
            hint = ""
            if self.monitor.startswith("val_"):
                hint = " (pass validation_data=... or validation_split=... to fit)"
            raise ValueError(
                f"{self.owner}: monitor={self.monitor!r} is not logged in this run{hint}; "
                f"logged keys: {keys}"
            )
        if self.mode == "auto":
            base = self.monitor[4:] if self.monitor.startswith("val_") else self.monitor
            if base == "loss":
                self.greater = False
            else:
                direction = params.get("greater_is_better", {}).get(base)
                if direction is None:
                    raise ValueError(
                        f"{self.owner}: cannot tell whether {self.monitor!r} should go up or "
                        f"down; pass mode='min' or mode='max'"
                    )
                self.greater = bool(direction)
        self.best = -math.inf if self.greater else math.inf

    def improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.greater:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta


# What the callbacks' arguments accept (numbanet._validation writes the messages).
_LOG_KEY = InstanceOf(str, what="a log key such as 'val_loss'")
_MODE = OneOf("auto", "min", "max")
_NON_NEGATIVE = Real(min=0)
_COUNT = Integer(min=0)
_PATH = InstanceOf(str, os.PathLike, what="a path")


# ----------------------------------------------------------------------- callbacks


class EarlyStopping(Callback):
    """Stop when a monitored quantity has stopped improving.

    Args:
        monitor: the log key to watch (``"val_loss"``, ``"val_accuracy"``, ``"loss"``).
        min_delta: a change smaller than this is not an improvement.
        patience: epochs without improvement before stopping.
        mode: ``"min"``, ``"max"``, or ``"auto"`` (min for losses, the metric's direction
            otherwise).
        restore_best_weights: at the end of training, put back the parameters of the
            best epoch (the optimizer state is not rewound).
        baseline: stop unless the monitored value beats this within ``patience`` epochs.

    The best weights are kept in one buffer allocated at the start of training.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 mode: str = "auto", restore_best_weights: bool = False,
                 baseline: float | None = None) -> None:
        self._monitor = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self.patience = check_arg("patience", patience, _COUNT, where="EarlyStopping")
        self.restore_best_weights = bool(restore_best_weights)
        self.baseline = check_arg("baseline", baseline, Optional(Real(finite=False)),
                                  where="EarlyStopping")
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.wait = 0
        self._best_weights: np.ndarray | None = None

    @property
    def monitor(self) -> str:
        return self._monitor.monitor

    @property
    def best(self) -> float:
        return self._monitor.best

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._monitor.begin(self.params)
        if self.baseline is not None:
            self._monitor.best = self.baseline
        self.wait, self.best_epoch, self.stopped_epoch = 0, None, None
        if self.restore_best_weights:
            self._best_weights = np.empty_like(self.model.flat_parameters)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        if self._monitor.improved(float(value)):
            self._monitor.best = float(value)
            self.best_epoch = epoch
            self.wait = 0
            if self._best_weights is not None:
                np.copyto(self._best_weights, self.model.flat_parameters)
            return
        self.wait += 1
        if self.wait >= max(1, self.patience):
            self.stopped_epoch = epoch
            self.model.stop_training = True
            self.model.stop_reason = StopReason(
                f"early stopping at epoch {epoch + 1}: {self.monitor} did not improve for "
                f"{self.wait} epoch(s); best {self.best:.6g} at epoch "
                f"{'-' if self.best_epoch is None else self.best_epoch + 1}",
                "early_stopping", epoch=epoch,
            )

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._best_weights is not None and self.best_epoch is not None:
            np.copyto(self.model.flat_parameters, self._best_weights)


class ModelCheckpoint(Callback):
    """Save the model (:func:`numbanet.io.save`, atomic) at the end of epochs.

    Args:
        filepath: where to write; may contain ``{epoch}`` (1-based) and log keys, e.g.
            ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``.
        monitor: the log key compared when ``save_best_only``.
        save_best_only: save only when ``monitor`` improved (the file is overwritten).
        mode: ``"min"``, ``"max"`` or ``"auto"``, as for :class:`EarlyStopping`.
        verbose: 1 prints a line per save.

    A checkpoint is never written from weights holding NaN or infinity or when the
    monitored value is NaN: the epoch is skipped with a warning and the last good file
    stays as it was. In a distributed fit only rank 0 writes (every rank holds the same
    weights); load the file on every rank to resume, with any number of ranks.
    """

    def __init__(self, filepath: str | os.PathLike[str], monitor: str = "val_loss",
                 save_best_only: bool = False, mode: str = "auto", verbose: int = 0) -> None:
        self.filepath = os.fspath(check_arg("filepath", filepath, _PATH,
                                            where="ModelCheckpoint"))
        self.save_best_only = bool(save_best_only)
        self._monitor = _Monitor("ModelCheckpoint", monitor, mode, 0.0)
        self.verbose = verbose
        self.saved: list[str] = []

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.save_best_only:
            self._monitor.begin(self.params)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        from numbanet.io import save
        from numbanet.kernels.checks import all_finite

        if not _on_rank0(self):
            return
        logs = dict(logs or {})
        if self.save_best_only:
            value = logs.get(self._monitor.monitor)
            if value is None or not self._monitor.improved(float(value)):
                return
        if not all_finite(self.model.flat_parameters):
            warnings.warn(f"ModelCheckpoint: epoch {epoch + 1}: the weights hold NaN or "
                          f"infinity; not saving (the last checkpoint is kept)",
                          RuntimeWarning, stacklevel=2)
            return
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"ModelCheckpoint: cannot format filepath {self.filepath!r} with "
                             f"epoch and the keys {sorted(logs)}: {exc}") from None
        save(self.model, path)
        if self.save_best_only:
            self._monitor.best = float(logs[self._monitor.monitor])
        self.saved.append(path)
        if self.verbose:
            print(f"epoch {epoch + 1}: saved {path}", flush=True)


def _schedule_arity(schedule: Callable[..., float]) -> int:
    try:
        params = [p for p in inspect.signature(schedule).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    except (TypeError, ValueError):
        return 1
    return 2 if len(params) >= 2 else 1


_LEARNING_RATE = Real(min=0, hint="the schedule returns the learning rate")


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate from a schedule before each epoch or step.

    Args:
        schedule: ``schedule(t) -> lr`` (see :mod:`numbanet.schedules`), or Keras-style
            ``schedule(t, lr) -> lr``. ``t`` is the 0-based epoch index for
            ``per="epoch"``, or the optimizer's step count (steps completed so far) for
            ``per="step"``; both continue across save/load, so a resumed run follows
            the same schedule.
        per: ``"epoch"`` or ``"step"``.
        verbose: 1 prints the new rate at each epoch.
    """

    def __init__(self, schedule: Callable[..., float], per: str = "epoch",
                 verbose: int = 0) -> None:
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be callable, got "
                            f"{type(schedule).__name__}")
        per = check_arg("per", per, OneOf("epoch", "step"), where="LearningRateScheduler")
        self.schedule = schedule
        self.per = per
        self.verbose = verbose
        self._arity = _schedule_arity(schedule)
        if per == "step":
            self.on_train_batch_begin = self._on_step  # type: ignore[method-assign]

    def _set(self, t: int) -> float:
        opt = self.model.optimizer
        lr = self.schedule(t, opt.lr) if self._arity == 2 else self.schedule(t)
        lr = check_arg(f"schedule({t})", lr, _LEARNING_RATE, where="LearningRateScheduler")
        if lr != opt.lr:
            opt.lr = lr
        return lr

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.per == "epoch":
            lr = self._set(epoch)
            if self.verbose and _on_rank0(self):
                print(f"epoch {epoch + 1}: learning rate {lr:.6g}", flush=True)

    def _on_step(self, step: int, logs: dict[str, Any] | None = None) -> None:
        self._set(int(self.model.optimizer.step_count))


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when a monitored quantity stalls.

    Args:
        monitor: the log key to watch.
        factor: multiplier in ``(0, 1)``.
        patience: epochs without improvement before reducing.
        mode: ``"min"``, ``"max"`` or ``"auto"``.
        min_delta: a change smaller than this is not an improvement.
        cooldown: epochs after a reduction in which stalls are not counted, so the new
            rate gets a chance first (``cooldown=1`` skips one epoch; in Keras the first
            epoch of a cooldown still counts).
        min_lr: the rate never goes below this.
        verbose: 1 prints each reduction.
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0,
                 min_lr: float = 0.0, verbose: int = 0) -> None:
        owner = "ReduceLROnPlateau"
        self._monitor = _Monitor(owner, monitor, mode, min_delta)
        self.factor = check_arg("factor", factor, Real(min=0, max=1, closed="neither"),
                                where=owner)
        self.patience = check_arg("patience", patience, _COUNT, where=owner)
        self.cooldown = check_arg("cooldown", cooldown, _COUNT, where=owner)
        self.min_lr = check_arg("min_lr", min_lr, _NON_NEGATIVE, where=owner)
        self.verbose = verbose
        self.wait = 0
        self.cooldown_left = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._monitor.begin(self.params)
        self.wait = 0
        self.cooldown_left = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self._monitor.monitor)
        if value is None:
            return
        if self._monitor.improved(float(value)):
            self._monitor.best = float(value)
            self.wait = 0
        elif self.cooldown_left == 0:
            self.wait += 1
        if self.cooldown_left > 0:
            # Let the new rate act before judging it (see ``cooldown``).
            self.cooldown_left -= 1
            return
        if self.wait == 0:
            return
        if self.wait >= self.patience:
            opt = self.model.optimizer
            new_lr = max(opt.lr * self.factor, self.min_lr)
            if new_lr < opt.lr:
                opt.lr = new_lr
                if self.verbose and _on_rank0(self):
                    print(f"epoch {epoch + 1}: ReduceLROnPlateau lowered the learning rate "
                          f"to {new_lr:.6g}", flush=True)
            self.cooldown_left = self.cooldown
            self.wait = 0


class CSVLogger(Callback):
    """Write one CSV row per epoch: ``epoch`` (1-based) and every logged key.

    Args:
        filename: the CSV file.
        separator: the field separator.
        append: add to an existing file instead of overwriting it (the header is written
            only when the file is new or empty).

    Each row is flushed when written, so the file is readable while training runs. In a
    distributed fit only rank 0 writes.
    """

    def __init__(self, filename: str | os.PathLike[str], separator: str = ",",
                 append: bool = False) -> None:
        filename = check_arg("filename", filename, _PATH, where="CSVLogger")
        separator = check_arg("separator", separator, InstanceOf(str), where="CSVLogger")
        if len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r}")
        self.filename = os.fspath(filename)
        self.separator = separator
        self.append = bool(append)
        self._file: Any = None
        self._keys: list[str] = []

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._keys = [*self.params.get("metrics", []), "lr"]
        if not _on_rank0(self):
            return
        new = not (self.append and os.path.exists(self.filename)
                   and os.path.getsize(self.filename) > 0)
        self._file = open(self.filename, "a" if self.append else "w",  # noqa: SIM115
                          encoding="utf-8", newline="")
        if new:
            self._file.write(self.separator.join(["epoch", *self._keys]) + "\n")
            self._file.flush()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._file is None:
            return
        logs = logs or {}
        cells = [str(epoch + 1)]
        for key in self._keys:
            value = logs.get(key)
            cells.append("" if value is None else repr(float(value)))
        self._file.write(self.separator.join(cells) + "\n")
        self._file.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TerminateOnNaN(Callback):
    """Stop training as soon as a step's loss is NaN or infinite.

    ``fit`` already does this by default (``on_nan="stop"``); this callback is for runs
    with ``on_nan="continue"`` that still want to stop on a bad *validation* loss, and for
    Keras familiarity. The stop message names the epoch and step.
    """

    def __init__(self) -> None:
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, step: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.model.stop_training = True
            self.model.stop_reason = StopReason(
                f"TerminateOnNaN: loss is {loss} at epoch {self._epoch + 1}, step {step + 1}",
                "terminate_on_nan", epoch=self._epoch, step=step,
            )
            if _on_rank0(self):
                print(f"numbanet: {self.model.stop_reason}; training stopped", flush=True)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.model.stop_training:
            return
        for key, value in (logs or {}).items():
            if key.endswith("loss") and not math.isfinite(value):
                self.model.stop_training = True
                self.model.stop_reason = StopReason(
                    f"TerminateOnNaN: {key} is {value} at epoch {epoch + 1}",
                    "terminate_on_nan", epoch=epoch,
                )
                if _on_rank0(self):
                    print(f"numbanet: {self.model.stop_reason}; training stopped",
                          flush=True)
                return
