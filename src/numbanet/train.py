"""The training loop: :func:`fit`, :func:`evaluate`, :func:`predict_proba` and :class:`History`.

``model.fit(...)``, ``model.evaluate(...)`` and ``model.predict_proba(...)`` delegate
here. What one call of :func:`fit` does:

1. Check and convert ``X``/``y`` once (``model._check_input``,
   ``model.loss.prepare_targets``): wrong kinds, NaN, length mismatches and labels out of
   range fail here, before any training, with an error naming the argument.
2. Allocate the batch buffers once. Every epoch draws one permutation from the model's
   generator (``model.rng``, the same one dropout uses) and gathers each batch into
   those buffers with ``np.take(..., out=...)``; the step itself is
   ``model._train_step``, whose workspaces are reused too. In steady state a step
   allocates no arrays.
3. After every step the loss is checked: a NaN or infinite loss stops training with a
   message naming the epoch and the step (``on_nan="stop"``), raises
   (``on_nan="raise"``) or is recorded and ignored (``on_nan="continue"``).
4. At the end of an epoch the model is evaluated in inference mode (no dropout) on the
   validation data (``val_loss``, ``val_<metric>``) and, when metrics were compiled, on
   the training data (``<metric>``), so the numbers in :class:`History` describe the
   weights at the end of the epoch rather than a running average over changing weights.
   The training ``loss`` is the sample-weighted mean of the step losses of the epoch.

Determinism: everything random comes from ``model.rng``, and the kernels reduce in a
fixed order, so a seeded model gives bit-identical weights run to run and for any thread
count; training 10 epochs equals training 5, ``save``, ``load`` and 5 more.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from numbanet._validation import check_positive_int

__all__ = ["History", "evaluate", "fit", "predict_proba"]

_ON_NAN = ("stop", "raise", "continue")


class History:
    """What :func:`fit` returns: per-epoch logs.

    Attributes:
        history: ``{key: [value per epoch]}``; keys are ``"loss"``, each compiled metric
            (``"accuracy"``, ...), and with validation data ``"val_loss"`` and
            ``"val_<metric>"``. Also ``"lr"``, the learning rate used in the epoch.
        epoch: the (0-based, counted over the model's lifetime) index of each logged epoch.
        params: the arguments of the run (``epochs``, ``batch_size``, ``steps``,
            ``samples``, ``metrics``: the keys that will be logged).
        stop_reason: ``None`` when all epochs ran, else why training stopped early
            (early stopping, a NaN loss, ...).

    Example:
        >>> history = model.fit(X, y, epochs=3)            # doctest: +SKIP
        >>> history["loss"]                                 # doctest: +SKIP
        [0.91, 0.42, 0.30]
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.params: dict[str, Any] = {}
        self.stop_reason: str | None = None

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


# ----------------------------------------------------------------------------- checks


def _check_epochs(epochs: object) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)):
        raise TypeError(f"epochs must be a non-negative int, got {type(epochs).__name__}")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    return int(epochs)


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def _check_optional_positive(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a positive number or None, got {type(value).__name__}")
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _check_verbose(verbose: object) -> int:
    if isinstance(verbose, bool):
        return int(verbose)
    if not isinstance(verbose, (int, np.integer)) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0 (quiet), 1 (progress bar) or 2 (one line per "
                         f"epoch), got {verbose!r}")
    return int(verbose)


def _prepare(model: Any, X: Any, y: Any, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert one ``(X, y)`` pair once; errors name the arguments."""
    if X is None:
        raise TypeError(f"{x_name} must be a 2-D array of samples, got None")
    if y is None:
        raise TypeError(f"{y_name} must be labels or targets, got None")
    X = model._check_input(X, name=x_name)
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


# --------------------------------------------------------------------------- stepping


class _Stepper:
    """One training step with the optional extras of :func:`fit` folded in.

    Without clipping and weight decay this is exactly ``model._train_step``. With them,
    between backward and the optimizer update it

    * clips each gradient to ``[-clip_value, clip_value]`` in place,
    * scales all gradients so their global L2 norm is at most ``clip_norm``; the norm
      comes from the deterministic chunked ``sum_of_squares`` kernel and the scale is
      handed to the optimizer as its ``grad_scale``, so no extra pass writes the
      gradients,
    * shrinks the decayed parameters by ``1 - lr * weight_decay`` before the optimizer
      update (decoupled weight decay, Loshchilov & Hutter 2019, "AdamW"); biases are
      skipped unless ``decay_biases``.
    """

    def __init__(
        self,
        model: Any,
        clip_norm: float | None,
        clip_value: float | None,
        weight_decay: float | None,
        decay_biases: bool,
    ) -> None:
        self.model = model
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.weight_decay = weight_decay
        self.plain = clip_norm is None and clip_value is None and weight_decay is None
        self.decayed: list[np.ndarray] = []
        if weight_decay is not None:
            for param in model.parameters():
                if decay_biases or not param.name.endswith("bias"):
                    self.decayed.append(param.value)
        self.partials: np.ndarray | None = None
        if clip_norm is not None:
            from numbanet.kernels.reductions import sum_partials

            self.partials = sum_partials(model.flat_gradients.shape[0])

    def __call__(self, X: np.ndarray, targets: np.ndarray) -> float:
        if self.plain:
            return self.model._train_step(X, targets)
        return self.model._train_step(X, targets, self._before_update)

    def _before_update(self) -> float:
        """Clip and decay in place; return the optimizer's gradient scale."""
        model = self.model
        grads = model.flat_gradients
        if self.clip_value is not None:
            np.clip(grads, -self.clip_value, self.clip_value, out=grads)
        scale = 1.0
        if self.clip_norm is not None:
            from numbanet.kernels.reductions import sum_of_squares

            norm = math.sqrt(sum_of_squares(grads, self.partials))
            if norm > self.clip_norm:
                # The epsilon matches torch.nn.utils.clip_grad_norm_.
                scale = self.clip_norm / (norm + 1e-6)
        if self.decayed:
            factor = 1.0 - model.optimizer.lr * self.weight_decay
            for value in self.decayed:
                value *= factor
        return scale


class _Batches:
    """Preallocated batch buffers and the gather of one shuffled batch into them."""

    def __init__(self, X: np.ndarray, targets: np.ndarray, batch_size: int, shuffle: bool):
        n = X.shape[0]
        self.X, self.targets, self.n, self.batch_size = X, targets, n, batch_size
        self.shuffle = shuffle
        self.steps = -(-n // batch_size)
        self.order = np.arange(n, dtype=np.intp)
        self.identity = self.order.copy()
        self.bufs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if shuffle:
            rem = n % batch_size
            for rows in {batch_size if n >= batch_size else rem, rem}:
                if rows:
                    self.bufs[rows] = (
                        np.empty((rows,) + X.shape[1:], dtype=X.dtype),
                        np.empty((rows,) + targets.shape[1:], dtype=targets.dtype),
                    )

    def new_epoch(self, rng: np.random.Generator) -> None:
        if self.shuffle:
            # Reset, then shuffle in place: the permutation depends only on the
            # generator's state, which save/load restores, and nothing is allocated.
            np.copyto(self.order, self.identity)
            rng.shuffle(self.order)

    def get(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        start = step * self.batch_size
        stop = min(start + self.batch_size, self.n)
        if not self.shuffle:
            return self.X[start:stop], self.targets[start:stop]
        xb, tb = self.bufs[stop - start]
        idx = self.order[start:stop]
        # mode="clip" skips the temporary copy np.take makes for mode="raise" when `out`
        # is given; the indices are a permutation, so they are always in range.
        np.take(self.X, idx, axis=0, out=xb, mode="clip")
        np.take(self.targets, idx, axis=0, out=tb, mode="clip")
        return xb, tb


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
    """Per-epoch output: a tqdm bar on a terminal (``verbose=1``) or one line per epoch.

    ``verbose=0`` prints nothing. ``verbose=1`` shows a bar with the running loss and
    samples/s when stdout is a terminal and tqdm is installed, else prints the epoch line.
    ``verbose=2`` always prints just the epoch line.
    """

    def __init__(self, verbose: int, epochs: int, steps: int, stream: Any = None) -> None:
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.stream = stream if stream is not None else sys.stdout
        self.bar: Any = None
        self.tqdm: Any = None
        if verbose == 1 and _isatty(self.stream):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            self.tqdm = tqdm

    def epoch_begin(self, epoch_number: int) -> None:
        if self.tqdm is not None:
            self.bar = self.tqdm(
                total=self.steps, desc=f"epoch {epoch_number}/{self.epochs}", unit="step",
                leave=True, file=self.stream, dynamic_ncols=True,
            )

    def step(self, loss: float, samples_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {loss:.4f}, {samples_per_s:,.0f} samples/s",
                                     refresh=False)

    def epoch_end(self, epoch_number: int, logs: dict[str, float], seconds: float,
                  samples: int) -> None:
        if self.verbose == 0:
            return
        rate = samples / seconds if seconds > 0 else float("inf")
        line = f"{_format_logs(logs)} - {rate:,.0f} samples/s - {seconds:.2f}s"
        if self.bar is not None:
            self.bar.set_postfix_str(line, refresh=True)
            self.bar.close()
            self.bar = None
        else:
            print(f"epoch {epoch_number}/{self.epochs} - {line}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.verbose:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# -------------------------------------------------------------------------------- fit


def fit(
    model: Any,
    X: Any,
    y: Any,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    validation_split: float = 0.0,
    validation_data: tuple[Any, Any] | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    callbacks: Sequence[Any] | None = None,
    verbose: int = 1,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    weight_decay: float | None = None,
    decay_biases: bool = False,
    on_nan: str = "stop",
) -> History:
    """Train ``model`` on ``(X, y)`` for ``epochs`` passes over the data.

    Args:
        model: a compiled :class:`~numbanet.Sequential`.
        X: inputs ``(n, in_features)``; any real dtype (converted once to the model's).
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
        validation_data: ``(X_val, y_val)`` evaluated at the end of every epoch.
        shuffle: draw a new order of the training samples every epoch.
        seed: if given, reseed the model's generator (shuffling and dropout) at the start
            of this call, so the call is reproducible whatever ran before. Leave it
            ``None`` to continue the model's stream (what resuming needs).
        callbacks: :class:`numbanet.callbacks.Callback` objects.
        verbose: 0 quiet; 1 a progress bar per epoch on a terminal with tqdm installed,
            else one line per epoch; 2 one line per epoch.
        clip_norm: scale the gradients so their global L2 norm is at most this
            (PyTorch's ``clip_grad_norm_``), applied after ``clip_value``.
        clip_value: clip every gradient element to ``[-clip_value, clip_value]``.
        weight_decay: decoupled weight decay: before each update, multiply the weights
            by ``1 - lr * weight_decay`` (AdamW-style, independent of the gradient).
        decay_biases: also decay biases (by default they are excluded).
        on_nan: what a NaN or infinite training loss does: ``"stop"`` (default) ends
            training with a message naming the epoch and step (printed when ``verbose``,
            else a ``RuntimeWarning``; also in ``History.stop_reason``), ``"raise"``
            raises ``FloatingPointError``, ``"continue"`` keeps training.

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

    model._require_compiled("fit")
    epochs = _check_epochs(epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    validation_split = _check_fraction("validation_split", validation_split)
    verbose = _check_verbose(verbose)
    clip_norm = _check_optional_positive("clip_norm", clip_norm)
    clip_value = _check_optional_positive("clip_value", clip_value)
    if weight_decay is not None:
        if isinstance(weight_decay, bool) or not isinstance(
            weight_decay, (int, float, np.floating, np.integer)
        ):
            raise TypeError(f"weight_decay must be a number or None, got "
                            f"{type(weight_decay).__name__}")
        weight_decay = float(weight_decay)
        if not (weight_decay >= 0.0 and math.isfinite(weight_decay)):
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not isinstance(shuffle, (bool, np.bool_)):
        raise TypeError(f"shuffle must be True or False, got {type(shuffle).__name__}")
    if not isinstance(decay_biases, (bool, np.bool_)):
        raise TypeError(f"decay_biases must be True or False, got {type(decay_biases).__name__}")
    if on_nan not in _ON_NAN:
        raise ValueError(f"on_nan must be one of {_ON_NAN}, got {on_nan!r}")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be a non-negative int or None, got {type(seed).__name__}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int or None, got {seed}")
        # Reset the state of the existing generator rather than replacing it: Dropout
        # layers hold a reference to this very object.
        model.rng.bit_generator.state = np.random.default_rng(int(seed)).bit_generator.state

    X, targets = _prepare(model, X, y, "X", "y")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a tuple (X_val, y_val)")
        X_val, t_val = _prepare(model, validation_data[0], validation_data[1],
                                "validation_data[0]", "validation_data[1]")
    else:
        X, targets, X_val, t_val = _split_validation(X, targets, validation_split)
    n = X.shape[0]
    batch_size = min(batch_size, n)

    metric_names = [m.name for m in model.metrics]
    keys = ["loss", *metric_names]
    if X_val is not None:
        keys += ["val_loss", *(f"val_{name}" for name in metric_names)]
    batches = _Batches(X, targets, batch_size, bool(shuffle))
    stepper = _Stepper(model, clip_norm, clip_value, weight_decay, bool(decay_biases))

    history = History()
    first_epoch = int(getattr(model, "epochs_completed", 0))
    history.params = {
        "epochs": epochs, "batch_size": batch_size, "steps": batches.steps, "samples": n,
        "metrics": keys, "initial_epoch": first_epoch,
        "greater_is_better": {m.name: m.greater_is_better for m in model.metrics},
    }
    cbs = CallbackList(callbacks, model=model, params=history.params)
    model.stop_training = False
    progress = _Progress(verbose, first_epoch + epochs, batches.steps)
    cbs.on_train_begin({})
    try:
        for epoch in range(first_epoch, first_epoch + epochs):
            cbs.on_epoch_begin(epoch, {})
            progress.epoch_begin(epoch + 1)
            batches.new_epoch(model.rng)
            started = time.perf_counter()
            total = 0.0
            nan_message = None
            lr_used = float(model.optimizer.lr)
            for step in range(batches.steps):
                xb, tb = batches.get(step)
                if cbs.per_batch:
                    cbs.on_train_batch_begin(step, {"size": xb.shape[0]})
                    lr_used = float(model.optimizer.lr)
                loss_value = stepper(xb, tb)
                total += loss_value * xb.shape[0]
                if not math.isfinite(loss_value):
                    nan_message = (
                        f"loss is {loss_value} at epoch {epoch + 1}, step {step + 1} of "
                        f"{batches.steps} (optimizer step {model.optimizer.step_count})"
                    )
                    if on_nan == "raise":
                        raise FloatingPointError(
                            f"{nan_message}; lower the learning rate, clip gradients "
                            f"(clip_norm=...), or pass on_nan='continue'"
                        )
                if cbs.per_batch:
                    cbs.on_train_batch_end(step, {"loss": loss_value, "size": xb.shape[0]})
                if progress.bar is not None:
                    elapsed = time.perf_counter() - started
                    progress.step(loss_value, (step * batch_size + xb.shape[0]) / max(elapsed,
                                                                                       1e-9))
                if (nan_message is not None and on_nan == "stop") or model.stop_training:
                    break
            seconds = time.perf_counter() - started
            seen = min((step + 1) * batch_size, n)
            logs: dict[str, float] = {"loss": total / seen}
            if nan_message is not None and on_nan == "stop":
                # Weights may hold NaN now: skip evaluation, which would only echo it.
                model.epochs_completed = epoch + 1
                history._append(epoch, logs)
                history.stop_reason = f"{nan_message}; training stopped"
                progress.close()
                advice = ("lower the learning rate or clip gradients (clip_norm=...); pass "
                          "on_nan='continue' to keep going")
                if verbose:
                    progress.message(f"numbanet: {history.stop_reason}; {advice}")
                else:
                    warnings.warn(f"{history.stop_reason}; {advice}", RuntimeWarning,
                                  stacklevel=3)
                model.stop_training = True
                cbs.on_epoch_end(epoch, logs)
                break
            if model.metrics:
                logs.update(_metric_values(model, X, targets, prefix=""))
            if X_val is not None:
                logs.update(_evaluate_prepared(model, X_val, t_val, prefix="val_"))
            logs["lr"] = lr_used
            model.epochs_completed = epoch + 1
            cbs.on_epoch_end(epoch, logs)
            history._append(epoch, logs)
            progress.epoch_end(epoch + 1, logs, seconds, seen)
            if model.stop_training:
                history.stop_reason = getattr(model, "stop_reason", None) or "stopped by a callback"
                break
    finally:
        progress.close()
    cbs.on_train_end({})
    if history.stop_reason is None and model.stop_training:
        history.stop_reason = getattr(model, "stop_reason", None) or "stopped by a callback"
    model.stop_training = False
    return history


def _metric_values(model: Any, X: np.ndarray, targets: np.ndarray, prefix: str,
                   outputs: np.ndarray | None = None) -> dict[str, float]:
    if outputs is None:
        outputs = _predict_prepared(model, X)
    return {f"{prefix}{m.name}": float(m(outputs, targets)) for m in model.metrics}


def _predict_prepared(model: Any, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    out = np.empty((X.shape[0], model.out_features), dtype=model.dtype)
    for start in range(0, X.shape[0], batch_size):
        stop = min(start + batch_size, X.shape[0])
        with model._lock:  # the forward pass writes the model's shared workspaces
            out[start:stop] = model._forward(X[start:stop], training=False)
    return out


def _loss_value(model: Any, outputs: np.ndarray, targets: np.ndarray) -> float:
    value = model.loss.forward(outputs, targets)
    if isinstance(value, np.ndarray):  # reduction="none": report the mean
        return float(np.mean(value, dtype=np.float64))
    return float(value)


def _evaluate_prepared(model: Any, X: np.ndarray, targets: np.ndarray, prefix: str = "",
                       batch_size: int = 1024) -> dict[str, float]:
    outputs = _predict_prepared(model, X, batch_size)
    logs = {f"{prefix}loss": _loss_value(model, outputs, targets)}
    logs.update(_metric_values(model, X, targets, prefix, outputs))
    return logs


# -------------------------------------------------------------------- evaluate/predict


def evaluate(model: Any, X: Any, y: Any, *, batch_size: int = 1024,
             verbose: int = 0) -> dict[str, float]:
    """Loss and compiled metrics of ``model`` on ``(X, y)``, in inference mode.

    Args:
        model: a compiled :class:`~numbanet.Sequential`.
        X: inputs ``(n, in_features)``.
        y: targets as for :func:`fit`.
        batch_size: rows per forward pass (memory only; the result does not depend on it).
        verbose: 1 or 2 prints the result on one line.

    Returns:
        ``{"loss": ..., "<metric>": ...}`` as Python floats.
    """
    model._require_compiled("evaluate")
    batch_size = check_positive_int("batch_size", batch_size)
    verbose = _check_verbose(verbose)
    X, targets = _prepare(model, X, y, "X", "y")
    logs = _evaluate_prepared(model, X, targets, batch_size=batch_size)
    if verbose:
        print(_format_logs(logs), flush=True)
    return logs


def predict_proba(model: Any, X: Any, batch_size: int = 1024) -> np.ndarray:
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
    outputs = model.predict(X, batch_size=batch_size)
    probs = np.empty_like(outputs)
    from numbanet.kernels import activations

    apply: Callable[[np.ndarray, np.ndarray], None] = getattr(activations, activation)
    apply(outputs, probs)
    return probs


def _loss_name(loss: Any) -> str:
    return repr(getattr(loss, "qualified_id", None) or getattr(loss, "name", None)
                or type(loss).__name__)
