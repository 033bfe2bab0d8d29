"""Sequential: a stack of layers over one flat parameter buffer."""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from numbanet._aligned import aligned_zeros
from numbanet._validation import Integer, Optional, check_arg, resolve_dtype
from numbanet.kernels.checks import all_finite
from numbanet.nn.dense_stack import DenseStack
from numbanet.nn.module import (
    Module,
    Shape,
    Workspace,
    backward_chain,
    check_roles,
    fuse_output_relus,
    fusion_partners,
)
from numbanet.nn.parameter import Parameter

# Each parameter starts on a 64-byte boundary of the flat buffer (16 float32 values), so
# vector loads in the kernels start aligned. The gaps stay zero: their gradient is zero,
# and every optimizer maps a zero parameter with zero gradient and zero state to zero.
_ALIGN_BYTES = 64

LayoutEntry = tuple[str, int, int, tuple[int, ...]]


def _check_shape(name: str, shape: Any) -> Shape:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise TypeError(f"{name} must be a tuple of positive ints (one sample's shape, batch "
                        f"axis excluded), e.g. (8, 8, 1); got {shape!r}")
    return tuple(int(d) for d in shape)


class Sequential:
    """A feed-forward network: layers applied one after the other.

    Args:
        layers: the layers. Each maps ``(batch, *in_shape)`` to ``(batch, *out_shape)``;
            consecutive shapes must agree.
        seed: seeds weight initialisation, dropout and shuffling; ``None`` draws fresh
            entropy. The same seed gives bit-identical initial weights.
        dtype: ``"float32"`` (default, fastest) or ``"float64"``.
        input_shape: one sample's shape, batch axis excluded (``(64,)``, ``(8, 8, 1)``).
            When given, the whole stack is checked here. Without it the first layer
            fixes the input shape when it can (``Dense(64, 10)`` takes ``(64,)``);
            otherwise shapes are resolved and checked at the first call.

    All parameters live in one contiguous buffer (:attr:`flat_parameters`) and all
    gradients in another (:attr:`flat_gradients`); each :class:`Parameter` is a view into
    them, so an optimizer step is one parallel pass over one array. Non-trainable layer
    state (running statistics) lives in :attr:`flat_buffers`.

    A model is not meant to be used from two Python threads at once: its layers keep
    per-batch workspaces. Train two models in two threads instead.
    """

    def __init__(
        self,
        layers: Sequence[Module],
        seed: int | None = None,
        dtype: str | np.dtype = "float32",
        input_shape: Sequence[int] | int | None = None,
    ) -> None:
        if isinstance(layers, Module) or not isinstance(layers, Sequence):
            raise TypeError("layers must be a list of layers, e.g. [Dense(64, 10)]")
        layers = list(layers)
        if not layers:
            raise ValueError("layers must not be empty")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}] must be a numbanet layer, got {type(layer).__name__}")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("the same layer object appears twice in layers")
        seed = check_arg("seed", seed, Optional(Integer(min=0)))

        self.layers: list[Module] = layers
        self.dtype: np.dtype = resolve_dtype(dtype)
        self.seed = seed
        self._declared_input_shape = (None if input_shape is None
                                      else _check_shape("input_shape", input_shape))
        self._input_shape: Shape | None = None
        self._output_shape: Shape | None = None
        self._layer_shapes: list[Shape] = []
        first = (self._declared_input_shape if self._declared_input_shape is not None
                 else layers[0].input_shape)
        if first is not None:
            self._resolve_shapes(tuple(first))

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
            layer.set_rng(self.rng)
        # Backward pairs each layer with the layer below when the two can fuse an
        # activation derivative into the upper layer's input-gradient GEMM.
        self._fusion_below: list[Module | None] = fusion_partners(layers)
        # A ReLU layer right above a BatchNorm or a Residual is applied by that layer as
        # it writes its output (no pass of its own forward).
        fuse_output_relus(layers)
        # An MLP (Dense layers only) trains through one native call (forward, loss rows,
        # backward) instead of the layers' methods where every product is serial anyway
        # (nn/dense_stack.py).
        self._dense_stack = DenseStack.for_layers(layers, self._layout, self.dtype)

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
        # What a model loaded with numbanet.load(..., compile=False) was compiled with.
        self.training_config: dict[str, Any] | None = None

    # -- shapes ------------------------------------------------------------------------
    def _resolve_shapes(self, in_shape: Shape) -> None:
        """Run ``output_shape`` through the stack; errors name the layer."""
        shapes = [in_shape]
        shape = in_shape
        for i, layer in enumerate(self.layers):
            try:
                shape = tuple(layer.output_shape(shape))
            except ValueError as exc:
                raise ValueError(f"layers[{i}] ({layer!r}): {exc}") from None
            shapes.append(shape)
        self._layer_shapes = shapes
        self._input_shape, self._output_shape = in_shape, shape

    @property
    def input_shape(self) -> Shape | None:
        """One sample's input shape (batch excluded), or ``None`` until the first call
        resolves it."""
        return self._input_shape

    @property
    def output_shape(self) -> Shape | None:
        """One sample's output shape (batch excluded), or ``None`` until resolved."""
        return self._output_shape

    @property
    def in_features(self) -> int | None:
        """Numbers per input sample (``prod(input_shape)``), or ``None`` until resolved."""
        return None if self._input_shape is None else math.prod(self._input_shape)

    @property
    def out_features(self) -> int:
        """Width ``k`` of the ``(batch, k)`` outputs that losses and metrics read.

        Raises:
            ValueError: the network's outputs are not ``(batch, k)`` (end it with a layer
                that flattens), or shapes are not resolved yet.
        """
        shape = self._output_shape
        if shape is None:
            raise ValueError("the model's shapes are not known yet: pass input_shape= to "
                             "Sequential or call it on data first")
        if len(shape) != 1:
            raise ValueError(
                f"the network's outputs have shape (batch, {', '.join(map(str, shape))}), "
                f"but losses and metrics need (batch, k): end the network with a layer "
                f"that flattens its input"
            )
        return shape[0]

    # -- parameters and buffers ----------------------------------------------------------
    def _build_buffers(self) -> None:
        align = max(1, _ALIGN_BYTES // self.dtype.itemsize)

        def lay_out(shapes_of: Callable[[Module], list[tuple[str, Shape]]]) -> tuple[
                list[LayoutEntry], int]:
            layout: list[LayoutEntry] = []
            offset = 0
            for index, layer in enumerate(self.layers):
                for local, shape in shapes_of(layer):
                    size = math.prod(shape)
                    layout.append((f"{index}.{local}", offset, offset + size, tuple(shape)))
                    offset += -(-size // align) * align
            return layout, offset

        self._layout, n_params = lay_out(lambda layer: layer.parameter_shapes())
        self._buffer_layout, n_buffers = lay_out(lambda layer: layer.buffer_shapes())
        self.flat_parameters = aligned_zeros(n_params, self.dtype)
        self.flat_gradients = aligned_zeros(n_params, self.dtype)
        self.flat_buffers = aligned_zeros(n_buffers, self.dtype)
        self._parameters: list[Parameter] = []
        self._buffers: dict[str, np.ndarray] = {}
        entries, buffer_entries = iter(self._layout), iter(self._buffer_layout)
        for layer in self.layers:
            roles = check_roles(layer)
            params = {}
            for local, _shape in layer.parameter_shapes():
                name, start, stop, shape = next(entries)
                param = Parameter(
                    name,
                    self.flat_parameters[start:stop].reshape(shape),
                    self.flat_gradients[start:stop].reshape(shape),
                    roles[local],
                )
                params[local] = param
                self._parameters.append(param)
            buffers = {}
            for local, _shape in layer.buffer_shapes():
                name, start, stop, shape = next(buffer_entries)
                buffers[local] = self._buffers[name] = self.flat_buffers[start:stop].reshape(shape)
            layer.attach(params, self.dtype, buffers)

    def parameters(self) -> list[Parameter]:
        """Every :class:`Parameter` in layer order (weight before bias)."""
        return list(self._parameters)

    def parameter_layout(self) -> list[LayoutEntry]:
        """``[(name, start, stop, shape), ...]``: where each parameter sits in the flat buffers."""
        return list(self._layout)

    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trainable layer state by qualified name (``"1.running_mean"``): views into
        :attr:`flat_buffers`, saved and loaded with the model, never trained."""
        return dict(self._buffers)

    def buffer_layout(self) -> list[LayoutEntry]:
        """``[(name, start, stop, shape), ...]``: where each buffer sits in :attr:`flat_buffers`."""
        return list(self._buffer_layout)

    @property
    def num_parameters(self) -> int:
        """Number of trainable scalars (alignment padding excluded)."""
        return sum(stop - start for _, start, stop, _ in self._layout)

    def get_weights(self) -> list[np.ndarray]:
        """Copies of every parameter, then every buffer, layer by layer (Keras's order)."""
        weights = []
        for index, layer in enumerate(self.layers):
            weights += [layer.parameter(local).value.copy()
                        for local, _ in layer.parameter_shapes()]
            weights += [self._buffers[f"{index}.{local}"].copy()
                        for local, _ in layer.buffer_shapes()]
        return weights

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Write arrays in the order of :meth:`get_weights` into the model (converted to
        its dtype; the optimizer state is left as it is).

        Raises:
            ValueError: wrong number of arrays, a wrong shape, or NaN/infinity (nothing is
                written then).
        """
        targets = []
        for index, layer in enumerate(self.layers):
            targets += [(f"{index}.{local}", layer.parameter(local).value)
                        for local, _ in layer.parameter_shapes()]
            targets += [(f"{index}.{local}", self._buffers[f"{index}.{local}"])
                        for local, _ in layer.buffer_shapes()]
        weights = list(weights)
        if len(weights) != len(targets):
            raise ValueError(f"set_weights needs {len(targets)} arrays (see get_weights()), "
                             f"got {len(weights)}")
        converted = []
        for (name, target), value in zip(targets, weights, strict=True):
            array = np.asarray(value)
            if array.shape != target.shape:
                raise ValueError(f"set_weights: {name} must have shape {target.shape}, got "
                                 f"{array.shape}")
            if array.dtype.kind not in "fiu" or not np.isfinite(array).all():
                raise ValueError(f"set_weights: {name} must hold finite real numbers")
            converted.append(array.astype(self.dtype, copy=False))
        for (_, target), array in zip(targets, converted, strict=True):
            target[...] = array

    # -- input checks ----------------------------------------------------------------
    def validate_input(self, X: Any, name: str = "X") -> np.ndarray:
        """Validate ``X`` and return it as a C-contiguous array of the model's dtype.

        ``X`` must be ``(n, *input_shape)``. Integer and float arrays of another dtype are
        converted (copied); booleans, strings, objects and complex numbers are rejected.
        A model whose input shape is not known yet resolves its shapes from ``X``.
        """
        if not isinstance(X, np.ndarray):
            try:
                X = np.asarray(X)
            except (ValueError, TypeError) as exc:
                raise TypeError(f"{name} must be an array of numbers: {exc}") from None
        first = self.layers[0]
        takes_indices = first.input_kind == "index"
        if takes_indices and X.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer indices for {first.layer_type}, got dtype "
                            f"{X.dtype}; convert with X.astype(numpy.int64) if the values are "
                            f"whole numbers")
        if X.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
        expected = self._input_shape
        if expected is None:
            if X.ndim < (1 if takes_indices else 2):
                raise ValueError(f"{name} must have a batch axis and at least one more, got "
                                 f"shape {X.shape}")
            with self._lock:
                self._resolve_shapes(tuple(int(d) for d in X.shape[1:]))
            expected = self._input_shape
            assert expected is not None
        if X.ndim != 1 + len(expected):
            if len(expected) == 1:
                raise ValueError(
                    f"{name} must be 2-D (samples, features), got {X.ndim}-D with shape "
                    f"{X.shape}")
            raise ValueError(f"{name} must be {1 + len(expected)}-D (samples, "
                             f"{', '.join(map(str, expected))}), got shape {X.shape}")
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty (0 samples)")
        if X.shape[1:] != expected:
            if len(expected) == 1:
                raise ValueError(
                    f"{name} has {X.shape[1]} features per sample but the model expects "
                    f"{expected[0]}")
            raise ValueError(f"{name} has samples of shape {X.shape[1:]} but the model "
                             f"expects {expected}")
        if takes_indices:
            converted = np.ascontiguousarray(X, dtype=np.int64)
            first.check_input(converted, name)
            return converted
        with np.errstate(over="ignore", invalid="ignore"):
            converted = np.ascontiguousarray(X, dtype=self.dtype)
        if not all_finite(converted.reshape(converted.shape[0], -1)):
            if X.dtype.kind == "f" and np.isfinite(X).all():
                # Finite data that overflowed in the cast (1e300 into float32): say so.
                raise ValueError(
                    f"{name} holds values beyond the range of {self.dtype.name} (largest "
                    f"magnitude {np.abs(X).max():.3g}); rescale the data or use a float64 model"
                )
            raise ValueError(f"{name} contains NaN or infinity")
        first.check_input(converted, name)
        return converted

    # -- computation -----------------------------------------------------------------
    def _forward(self, X: np.ndarray, training: bool) -> np.ndarray:
        out = X
        for layer in self.layers:
            out = layer.forward(out, training)
        return out

    def _backward(self, d_out: np.ndarray, need_input_grad: bool) -> np.ndarray | None:
        return backward_chain(self.layers, self._fusion_below, d_out, need_input_grad)

    def forward(self, X: Any, training: bool = True) -> np.ndarray:
        """Run the network on ``X`` (``(batch, *input_shape)``) and return a new array of
        outputs ``(batch, *output_shape)``. ``training=True`` applies dropout and keeps
        what :meth:`backward` needs."""
        X = self.validate_input(X)
        with self._lock:
            self._last_rows = X.shape[0]
            return self._forward(X, training).copy()

    def backward(self, d_out: Any) -> np.ndarray | None:
        """Backpropagate ``d_out`` = d(loss)/d(outputs) of the last :meth:`forward`.

        Fills every ``Parameter.grad`` (overwriting) and returns d(loss)/d(X), a new array
        (``None`` when the input is integer indices, which have no gradient).
        """
        rows = getattr(self, "_last_rows", None)
        if rows is None:
            raise RuntimeError("backward called before forward")
        d_out = self._check_gradient(d_out, rows)
        takes_indices = self.layers[0].input_kind == "index"
        with self._lock:
            dx = self._backward(d_out, need_input_grad=not takes_indices)
            return None if dx is None else dx.copy()

    def _check_gradient(self, d_out: Any, rows: int) -> np.ndarray:
        d_out = np.asarray(d_out)
        if d_out.dtype.kind not in "fiu":
            raise TypeError(f"d_out must hold real numbers, got dtype {d_out.dtype}")
        assert self._output_shape is not None
        expected = (rows, *self._output_shape)
        if d_out.shape != expected:
            raise ValueError(
                f"d_out must have the shape of the last forward's output {expected}, got "
                f"{d_out.shape}"
            )
        return np.ascontiguousarray(d_out, dtype=self.dtype)

    def predict(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """Network outputs for ``X`` in inference mode (no dropout), computed in batches.

        For a model compiled with a cross-entropy loss these are logits; see
        ``predict_proba`` for probabilities.
        """
        from numbanet._validation import check_positive_int

        batch_size = check_positive_int("batch_size", batch_size)
        return self.predict_validated(self.validate_input(X), batch_size)

    def predict_validated(self, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """:meth:`predict` for ``X`` already returned by :meth:`validate_input`: a new
        ``(n, *output_shape)`` array."""
        assert self._output_shape is not None
        result = np.empty((X.shape[0], *self._output_shape), dtype=self.dtype)
        for start in range(0, X.shape[0], batch_size):
            stop = min(start + batch_size, X.shape[0])
            with self._lock:  # the forward pass writes the model's shared workspaces
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

        Raises:
            ValueError: the network's outputs are not ``(batch, k)`` (when shapes are
                known), or an unknown name.
        """
        from numbanet.plugins import get_loss, get_optimizer

        if self._output_shape is not None:
            _ = self.out_features  # raises the (batch, k) error now rather than in fit
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
        self._warn_doubled_output_activation()
        return self

    def _warn_doubled_output_activation(self) -> None:
        # A Keras habit: softmax in the last layer *and* a loss that applies softmax
        # itself. It trains, slowly and badly, so say so once per compile.
        applied = self.layers[-1].output_activation
        expected = getattr(self.loss, "output_activation", None)
        if applied is not None and applied == expected:
            name = getattr(self.loss, "name", type(self.loss).__name__)
            warnings.warn(
                f"the last layer ({self.layers[-1]!r}) applies {applied}, and the loss "
                f"{name!r} applies {applied} to the network's outputs again; the loss takes "
                f"logits: remove the activation from the last layer (predict_proba gives "
                f"probabilities)", UserWarning, stacklevel=3)

    @staticmethod
    def _resolve_metrics(metrics: Any) -> list[Any]:
        if metrics is None:
            return []
        if isinstance(metrics, str) or callable(metrics):
            metrics = [metrics]
        from numbanet.metrics import get_metric

        return [get_metric(m) for m in metrics]

    def require_compiled(self, what: str) -> None:
        """Raise ``RuntimeError`` naming ``what`` unless :meth:`compile` was called."""
        if self.loss is None or self.optimizer is None:
            raise RuntimeError(
                f"call model.compile(loss=..., optimizer=...) before {what}"
            )

    def train_step(self, X: Any, y: Any) -> float:
        """One step of training on a batch: forward, loss, backward, optimizer update.

        Args:
            X: inputs ``(batch, *input_shape)``.
            y: targets in the form the loss expects (integer labels for cross-entropy,
                ``(batch, out_features)`` floats for mse, ...).

        Returns:
            the loss of this batch measured before the update.
        """
        self.require_compiled("train_step")
        X = self.validate_input(X)
        targets = self.loss.prepare_targets(y, self.out_features, self.dtype)
        if len(targets) != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} samples but y has {len(targets)}")
        return self.train_batch(X, targets)

    def train_batch(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        pipeline: Callable[[Sequential], float] | None = None,
    ) -> float:
        """:meth:`train_step` on already validated arrays (the fit loop's hot path).

        Args:
            X: inputs from :meth:`validate_input`.
            targets: targets from ``model.loss.prepare_targets``.
            pipeline: the gradient pipeline (:class:`numbanet.optim.GradientPipeline`),
                called after backward and before the optimizer update as
                ``pipeline(model)``; it may edit the gradients or parameters in place
                (clipping, weight decay, an all-reduce) and returns the factor the
                optimizer applies to the gradients.

        Returns:
            the loss of this batch measured before the update.
        """
        with self._lock:
            stack = self._dense_stack
            fused = None if stack is None else stack.step_for(X.shape[0])
            # The loss's class must define the fused entry itself: a wrapper that forwards
            # other attributes (__getattr__) would skip its own forward_backward.
            if fused is not None and hasattr(type(self.loss), "forward_backward_fused"):
                # An MLP: forward, loss and backward in one native call (nn/dense_stack.py).
                d_out = self._workspace.get("d_out", (X.shape[0], stack.out_features))
                loss_value = stack.train(fused, X, self.flat_parameters, self.flat_gradients,
                                         d_out, self.loss, targets)
            else:
                out = self._forward(X, training=True)
                d_out = self._workspace.get("d_out", out.shape)
                # Built-in loss and optimizer objects offer unchecked entries (the buffers
                # here are the model's own, validated once); others need the public methods.
                loss_step = getattr(self.loss, "forward_backward_unchecked",
                                    self.loss.forward_backward)
                loss_value = loss_step(out, targets, d_out)
                self._backward(d_out, need_input_grad=False)
            grad_scale = 1.0 if pipeline is None else float(pipeline(self))
            update = getattr(self.optimizer, "step_unchecked", self.optimizer.step)
            update(self.flat_parameters, self.flat_gradients, grad_scale)
        return float(loss_value)

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        validation_split: float = 0.0,
        validation_data: tuple[Any, ...] | None = None,
        sample_weight: Any = None,
        class_weight: Any = None,
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
        gradient_pipeline: Any = None,
        on_nan: str = "stop",
        distributed: bool = False,
        shard: str = "global",
    ) -> Any:
        """Train on ``(X, y)`` for ``epochs`` passes over the data.

        The arguments are those of :func:`numbanet.train.fit`, whose docstring describes
        each (``help(numbanet.train.fit)``): batching, validation, sample and class
        weights (``sample_weight``, ``class_weight``), ``drop_last``, reproducibility
        (``seed``), callbacks, the gradient pipeline (``clip_norm``, ``clip_value``,
        ``weight_decay``, ``gradient_transforms``, ``gradient_pipeline``) and what a NaN
        loss does (``on_nan``); data-parallel training over MPI (``distributed``,
        ``shard``, :mod:`numbanet.distributed`); ``X`` may be a ``numpy.memmap`` or, with
        ``y=None``, an iterable of ``(X_batch, y_batch)`` pairs.

        Returns:
            a :class:`numbanet.train.History` of per-epoch losses and metrics.
        """
        from numbanet.train import fit

        return fit(self, X, y, epochs=epochs, batch_size=batch_size,
                   validation_split=validation_split, validation_data=validation_data,
                   sample_weight=sample_weight, class_weight=class_weight, shuffle=shuffle,
                   drop_last=drop_last, seed=seed, callbacks=callbacks, verbose=verbose,
                   clip_norm=clip_norm, clip_value=clip_value, weight_decay=weight_decay,
                   decay_biases=decay_biases, gradient_transforms=gradient_transforms,
                   gradient_pipeline=gradient_pipeline, on_nan=on_nan,
                   distributed=distributed, shard=shard)

    def evaluate(self, X: Any, y: Any, *, batch_size: int = 1024,
                 verbose: int = 0, sample_weight: Any = None) -> dict[str, float]:
        """Loss and metrics on ``(X, y)`` in inference mode, the loss weighted by
        ``sample_weight`` if given; see :func:`numbanet.train.evaluate`."""
        from numbanet.train import evaluate

        return evaluate(self, X, y, batch_size=batch_size, verbose=verbose,
                        sample_weight=sample_weight)

    def predict_proba(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities: the loss's output activation applied to :meth:`predict`."""
        from numbanet.train import predict_proba

        return predict_proba(self, X, batch_size=batch_size)

    def save(self, path: Any) -> None:
        """Write the model (architecture, weights, buffers, optimizer state) to ``path``
        atomically; see :func:`numbanet.io.save`."""
        from numbanet.io import save

        save(self, path)

    # -- description -------------------------------------------------------------------
    def summary(self, print_fn: Callable[[str], Any] = print) -> None:
        """Print each layer with its output shape and parameter count, then the totals.

        Args:
            print_fn: called with each line (default :func:`print`); pass
                ``lines.append`` to collect them.
        """
        rows = [("#", "layer", "output shape", "params")]
        shapes = self._layer_shapes[1:] if self._layer_shapes else [None] * len(self.layers)
        for i, (layer, shape) in enumerate(zip(self.layers, shapes, strict=True)):
            count = sum(math.prod(s) for _, s in layer.parameter_shapes())
            shown = "?" if shape is None else "(batch, " + ", ".join(map(str, shape)) + ")"
            rows.append((str(i), repr(layer), shown, f"{count:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]

        def line(r: tuple[str, str, str, str]) -> str:
            return (f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  "
                    f"{r[3]:>{widths[3]}}")

        rule = "-" * len(line(rows[0]))
        input_shape = ("not known until the first call" if self._input_shape is None
                       else "(batch, " + ", ".join(map(str, self._input_shape)) + ")")
        print_fn(f"Sequential, {self.dtype.name}, input {input_shape}")
        print_fn(line(rows[0]))
        print_fn(rule)
        for r in rows[1:]:
            print_fn(line(r))
        print_fn(rule)
        n_buffers = sum(stop - start for _, start, stop, _ in self._buffer_layout)
        print_fn(f"trainable parameters: {self.num_parameters:,}"
                 + (f"; non-trainable buffers: {n_buffers:,}" if n_buffers else ""))

    def get_config(self) -> dict[str, Any]:
        """The architecture as JSON-serialisable data (see :func:`from_config`)."""
        config: dict[str, Any] = {
            "layers": [layer.get_config() for layer in self.layers],
            "dtype": self.dtype.name,
            "seed": self.seed,
        }
        if self._declared_input_shape is not None:
            config["input_shape"] = list(self._declared_input_shape)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Sequential:
        """Build a fresh (newly initialised) model from :meth:`get_config` output; layer
        types are looked up in the layer registry (built-ins and plugins)."""
        from numbanet.nn.registry import layer_from_config

        try:
            layers = [layer_from_config(c) for c in config["layers"]]
            return cls(layers, seed=config.get("seed"), dtype=config.get("dtype", "float32"),
                       input_shape=config.get("input_shape"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"invalid model config: {exc}") from None

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}], dtype={self.dtype.name!r})"

