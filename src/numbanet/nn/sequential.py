"""Sequential: a stack of layers over one flat parameter buffer."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from numbanet._validation import resolve_dtype
from numbanet.kernels.checks import all_finite
from numbanet.nn.layers import Dense, Dropout
from numbanet.nn.module import Module, Workspace
from numbanet.nn.parameter import Parameter

# Each parameter starts on a 64-byte boundary of the flat buffer (16 float32 values), so
# vector loads in the kernels start aligned. The gaps stay zero: their gradient is zero,
# and every optimizer maps a zero parameter with zero gradient and zero state to zero.
_ALIGN_BYTES = 64

LayoutEntry = tuple[str, int, int, tuple[int, ...]]


class Sequential:
    """A feed-forward network: layers applied one after the other.

    Args:
        layers: the layers; the first must be a :class:`~numbanet.nn.Dense`, which fixes
            the input width. Consecutive widths must agree.
        seed: seeds weight initialisation, dropout and shuffling; ``None`` draws fresh
            entropy. The same seed gives bit-identical initial weights.
        dtype: ``"float32"`` (default, fastest) or ``"float64"``.

    All parameters live in one contiguous buffer (:attr:`flat_parameters`) and all
    gradients in another (:attr:`flat_gradients`); each :class:`Parameter` is a view into
    them, so an optimizer step is one parallel pass over one array.

    A model is not meant to be used from two Python threads at once: its layers keep
    per-batch workspaces. Train two models in two threads instead.
    """

    def __init__(
        self, layers: Sequence[Module], seed: int | None = None, dtype: str | np.dtype = "float32"
    ) -> None:
        if isinstance(layers, Module) or not isinstance(layers, Sequence):
            raise TypeError("layers must be a list of layers, e.g. [Dense(64, 10)]")
        layers = list(layers)
        if not layers:
            raise ValueError("layers must not be empty")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}] must be a numbanet layer, got {type(layer).__name__}")
        if not isinstance(layers[0], Dense):
            raise ValueError(
                "the first layer must be Dense: it fixes the input width of the model"
            )
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("the same layer object appears twice in layers")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")

        self.layers: list[Module] = layers
        self.dtype: np.dtype = resolve_dtype(dtype)
        self.seed = seed
        self.in_features: int = layers[0].in_features  # type: ignore[assignment]
        width = self.in_features
        for i, layer in enumerate(layers):
            try:
                width = layer.output_features(width)
            except ValueError as exc:
                raise ValueError(f"layers[{i}]: {exc}") from None
        self.out_features: int = width

        self._build_buffers()
        seed_seq = np.random.SeedSequence(seed)
        init_seq, noise_seq = seed_seq.spawn(2)
        init_rng = np.random.default_rng(init_seq)
        for layer in layers:
            layer.initialize(init_rng)
        # One generator for everything random during training (dropout masks, shuffling),
        # so saving its state is enough to resume bit for bit.
        self.rng = np.random.default_rng(noise_seq)
        for layer in layers:
            if isinstance(layer, Dropout):
                layer.rng = self.rng

        self.loss: Any = None
        self.optimizer: Any = None
        self.metrics: list[Any] = []
        self._workspace = Workspace(self.dtype)
        # Layers keep their activations in per-model workspaces, so two threads using one
        # model at once would overwrite each other's batches: every forward pass (with the
        # copy out of the workspace) and every training step holds this lock.
        self._lock = threading.RLock()
        # Training state kept by fit and restored by numbanet.load.
        self.epochs_completed = 0
        self.stop_training = False
        self.stop_reason: str | None = None
        self.metadata: dict[str, Any] = {}

    # -- parameters ------------------------------------------------------------------
    def _build_buffers(self) -> None:
        align = max(1, _ALIGN_BYTES // self.dtype.itemsize)
        layout: list[LayoutEntry] = []
        offset = 0
        for index, layer in enumerate(self.layers):
            for local, shape in layer.parameter_shapes():
                size = int(np.prod(shape))
                layout.append((f"{index}.{local}", offset, offset + size, tuple(shape)))
                offset += -(-size // align) * align
        self._layout = layout
        self.flat_parameters = np.zeros(offset, dtype=self.dtype)
        self.flat_gradients = np.zeros(offset, dtype=self.dtype)
        self._parameters: list[Parameter] = []
        entries = iter(layout)
        for layer in self.layers:
            params = {}
            for local, _shape in layer.parameter_shapes():
                name, start, stop, shape = next(entries)
                param = Parameter(
                    name,
                    self.flat_parameters[start:stop].reshape(shape),
                    self.flat_gradients[start:stop].reshape(shape),
                )
                params[local] = param
                self._parameters.append(param)
            layer.attach(params, self.dtype)

    def parameters(self) -> list[Parameter]:
        """Every :class:`Parameter` in layer order (weight before bias)."""
        return list(self._parameters)

    def parameter_layout(self) -> list[LayoutEntry]:
        """``[(name, start, stop, shape), ...]``: where each parameter sits in the flat buffers."""
        return list(self._layout)

    @property
    def num_parameters(self) -> int:
        """Number of trainable scalars (alignment padding excluded)."""
        return sum(stop - start for _, start, stop, _ in self._layout)

    # -- input checks ----------------------------------------------------------------
    def _check_input(self, X: Any, name: str = "X") -> np.ndarray:
        """Validate ``X`` and return it as a C-contiguous array of the model's dtype.

        Integer and float arrays of another dtype are converted (copied); booleans,
        strings, objects and complex numbers are rejected.
        """
        if not isinstance(X, np.ndarray):
            try:
                X = np.asarray(X)
            except (ValueError, TypeError) as exc:
                raise TypeError(f"{name} must be a 2-D array of numbers: {exc}") from None
        if X.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
        if X.ndim != 2:
            raise ValueError(
                f"{name} must be 2-D (samples, features), got {X.ndim}-D with shape {X.shape}"
            )
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty (0 samples)")
        if X.shape[1] != self.in_features:
            raise ValueError(
                f"{name} has {X.shape[1]} features per sample but the model expects "
                f"{self.in_features}"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            converted = np.ascontiguousarray(X, dtype=self.dtype)
        if not all_finite(converted):
            if X.dtype.kind == "f" and np.isfinite(X).all():
                # Finite data that overflowed in the cast (1e300 into float32): say so.
                raise ValueError(
                    f"{name} holds values beyond the range of {self.dtype.name} (largest "
                    f"magnitude {np.abs(X).max():.3g}); rescale the data or use a float64 model"
                )
            raise ValueError(f"{name} contains NaN or infinity")
        return converted

    # -- computation -----------------------------------------------------------------
    def _forward(self, X: np.ndarray, training: bool) -> np.ndarray:
        out = X
        for layer in self.layers:
            out = layer.forward(out, training)
        return out

    def _backward(self, d_out: np.ndarray, need_input_grad: bool) -> np.ndarray | None:
        grad: np.ndarray | None = d_out
        grad_is_dz = False  # grad already went through the next layer's activation
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            layer = self.layers[i]
            # The first layer's input gradient is only needed when the caller asks for it.
            need = need_input_grad or i > 0
            if isinstance(layer, Dense):
                # Dense over Dense: the derivative of the lower layer's activation is
                # applied in the epilogue of this layer's dx GEMM (no separate pass).
                below = self.layers[i - 1] if i > 0 else None
                fuse = isinstance(below, Dense) and below.fuses_derivative
                grad = layer.backward_fused(grad, grad_is_dz, need, below if fuse else None)
                grad_is_dz = fuse
            else:
                grad = layer.backward(grad, need_input_grad=need)
                grad_is_dz = False
        return grad

    def forward(self, X: Any, training: bool = True) -> np.ndarray:
        """Run the network on ``X`` (``(batch, in_features)``) and return a new array of
        outputs ``(batch, out_features)``. ``training=True`` applies dropout and keeps what
        :meth:`backward` needs."""
        X = self._check_input(X)
        with self._lock:
            self._last_rows = X.shape[0]
            return self._forward(X, training).copy()

    def backward(self, d_out: Any) -> np.ndarray:
        """Backpropagate ``d_out`` = d(loss)/d(outputs) of the last :meth:`forward`.

        Fills every ``Parameter.grad`` (overwriting) and returns d(loss)/d(X), a new array.
        """
        rows = getattr(self, "_last_rows", None)
        if rows is None:
            raise RuntimeError("backward called before forward")
        d_out = self._check_gradient(d_out, rows)
        with self._lock:
            dx = self._backward(d_out, need_input_grad=True)
            assert dx is not None
            return dx.copy()

    def _check_gradient(self, d_out: Any, rows: int) -> np.ndarray:
        d_out = np.asarray(d_out)
        if d_out.dtype.kind not in "fiu":
            raise TypeError(f"d_out must hold real numbers, got dtype {d_out.dtype}")
        if d_out.shape != (rows, self.out_features):
            raise ValueError(
                f"d_out must have the shape of the last forward's output "
                f"{(rows, self.out_features)}, got {d_out.shape}"
            )
        return np.ascontiguousarray(d_out, dtype=self.dtype)

    def predict(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """Network outputs for ``X`` in inference mode (no dropout), computed in batches.

        For a model compiled with a cross-entropy loss these are logits; see
        ``predict_proba`` for probabilities.
        """
        from numbanet._validation import check_positive_int

        batch_size = check_positive_int("batch_size", batch_size)
        X = self._check_input(X)
        result = np.empty((X.shape[0], self.out_features), dtype=self.dtype)
        for start in range(0, X.shape[0], batch_size):
            stop = min(start + batch_size, X.shape[0])
            with self._lock:
                result[start:stop] = self._forward(X[start:stop], training=False)
        return result

    # -- training --------------------------------------------------------------------
    def compile(self, loss: Any = "cross_entropy", optimizer: Any = "sgd", metrics: Any = None):
        """Choose the loss, optimizer and metrics used by :meth:`train_step` and ``fit``.

        Args:
            loss: a loss name (``numbanet.list_losses()``) or a loss object from
                ``numbanet.get_loss``.
            optimizer: an optimizer name (``numbanet.list_optimizers()``, default
                hyperparameters) or an object from ``numbanet.get_optimizer``.
            metrics: metric names or callables, e.g. ``["accuracy"]``.

        Returns:
            the model, so calls can be chained.
        """
        from numbanet.plugins import get_loss, get_optimizer

        self.loss = get_loss(loss) if isinstance(loss, str) else loss
        self.optimizer = get_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
        for attr, needed in (("loss", ("forward_backward", "prepare_targets")),
                             ("optimizer", ("step",))):
            obj = getattr(self, attr)
            missing = [m for m in needed if not hasattr(obj, m)]
            if missing:
                raise TypeError(
                    f"{attr} must be a name or a numbanet {attr} object; "
                    f"{type(obj).__name__} lacks {missing}"
                )
        self.metrics = self._resolve_metrics(metrics)
        return self

    @staticmethod
    def _resolve_metrics(metrics: Any) -> list[Any]:
        if metrics is None:
            return []
        if isinstance(metrics, str) or callable(metrics):
            metrics = [metrics]
        from numbanet.metrics import get_metric

        return [get_metric(m) for m in metrics]

    def _require_compiled(self, what: str) -> None:
        if self.loss is None or self.optimizer is None:
            raise RuntimeError(
                f"call model.compile(loss=..., optimizer=...) before {what}"
            )

    def _grad_buffer(self, rows: int) -> np.ndarray:
        """The reused ``(rows, out_features)`` buffer for d(loss)/d(outputs)."""
        return self._workspace.get("d_out", rows, self.out_features)

    def train_step(self, X: Any, y: Any) -> float:
        """One step of training on a batch: forward, loss, backward, optimizer update.

        Args:
            X: inputs ``(batch, in_features)``.
            y: targets in the form the loss expects (integer labels for cross-entropy,
                ``(batch, out_features)`` floats for mse, ...).

        Returns:
            the loss of this batch measured before the update.
        """
        self._require_compiled("train_step")
        X = self._check_input(X)
        targets = self.loss.prepare_targets(y, self.out_features, self.dtype)
        if len(targets) != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} samples but y has {len(targets)}")
        return self._train_step(X, targets)

    def _train_step(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        before_update: Callable[[], float] | None = None,
    ) -> float:
        """:meth:`train_step` on already validated arrays (the fit loop's hot path).

        Args:
            X, targets: validated inputs and prepared targets.
            before_update: called after backward, before the optimizer update; it may
                edit the gradients or parameters in place (clipping, weight decay) and
                returns the factor the optimizer applies to the gradients.
        """
        with self._lock:
            out = self._forward(X, training=True)
            d_out = self._grad_buffer(X.shape[0])
            # Built-in loss and optimizer objects offer unchecked entries (the buffers
            # here are the model's own, validated once); others need the public methods.
            loss_step = getattr(self.loss, "forward_backward_unchecked",
                                self.loss.forward_backward)
            loss_value = loss_step(out, targets, d_out)
            self._backward(d_out, need_input_grad=False)
            grad_scale = 1.0 if before_update is None else float(before_update())
            update = getattr(self.optimizer, "step_unchecked", self.optimizer.step)
            update(self.flat_parameters, self.flat_gradients, grad_scale)
        return float(loss_value)

    def fit(self, X: Any, y: Any, **kwargs: Any) -> Any:
        """Train on ``(X, y)``; see :func:`numbanet.train.fit` for the arguments.

        Returns:
            a :class:`numbanet.train.History` of per-epoch losses and metrics.
        """
        from numbanet.train import fit

        return fit(self, X, y, **kwargs)

    def evaluate(self, X: Any, y: Any, **kwargs: Any) -> dict[str, float]:
        """Loss and metrics on ``(X, y)``; see :func:`numbanet.train.evaluate`."""
        from numbanet.train import evaluate

        return evaluate(self, X, y, **kwargs)

    def predict_proba(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities: the loss's output activation applied to :meth:`predict`."""
        from numbanet.train import predict_proba

        return predict_proba(self, X, batch_size=batch_size)

    def save(self, path: Any) -> None:
        """Write the model (architecture, weights, optimizer state) to ``path`` atomically;
        see :func:`numbanet.io.save`."""
        from numbanet.io import save

        save(self, path)

    # -- description -------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """The architecture as JSON-serialisable data (see :func:`from_config`)."""
        return {
            "layers": [layer.get_config() for layer in self.layers],
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Sequential:
        """Build a fresh (newly initialised) model from :meth:`get_config` output."""
        from numbanet.nn.layers import layer_from_config

        try:
            layers = [layer_from_config(c) for c in config["layers"]]
            return cls(layers, seed=config.get("seed"), dtype=config.get("dtype", "float32"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"invalid model config: {exc}") from None

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}], dtype={self.dtype.name!r})"
