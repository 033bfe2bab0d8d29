"""Two float32 CNN training steps per framework, for :mod:`numbanet.bench` (issue 13).

* ``lenet5``: LeNet-5 on 28x28x1 images: conv 5x5 6ch pad 2 + ReLU, maxpool 2, conv 5x5
  16ch + ReLU, maxpool 2, flatten, dense 400-120-84-10 (ReLU between).
* ``resnet-small``: a small residual CNN on 32x32x3 images: conv 3x3 16ch + BN + ReLU,
  then three stages of two residual blocks (``x + [conv 3x3, BN, ReLU, conv 3x3, BN](x)``,
  then ReLU) at widths 16, 32 and 64, with a 3x3 stride-2 conv + BN + ReLU between
  stages that changes the width, global average pool, dense 64-10. Convolutions followed
  by BN have no bias.

A model is a tuple of small layer records (:class:`Conv`, :class:`BatchNorm`, ...) that
each framework's builder translates into its own layers, so every framework runs one
description. As for the MLPs (:mod:`numbanet._bench_steps`): the same float32 initial
weights (:func:`initial_weights`: He-uniform weights as numbanet initialises a layer
followed by ReLU, small non-zero biases, BN ``gamma=1, beta=0``) copied into every
framework and transposed where its layout differs, the same batch (channels-last
images), softmax cross-entropy averaged over the batch, one Adam step. BatchNorm runs in
training mode everywhere: batch statistics normalise (biased variance) and the running
statistics move with momentum 0.1 (PyTorch's convention), eps ``1e-5``.

Layouts: numbanet, JAX and Keras run channels-last (NHWC) with kernels
``(KH, KW, C_in, C_out)``; PyTorch runs ``channels_last`` memory format (its fastest
on CPU here) with ``(C_out, C_in, KH, KW)`` weights, and its ``Flatten`` orders features
``(C, H, W)``, so the rows of the dense layer after it are permuted from numbanet's
``(H, W, C)``. The NumPy reference covers the MLPs only (skipped with a note).

Like :mod:`numbanet._bench_steps`, this module imports only the standard library and
NumPy at the top; a cold-start child loads it by file path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

if __name__.startswith("numbanet."):
    from numbanet import _bench_steps as _steps
else:  # loaded by file path in a cold-start child, by _bench_steps.cnn_module()
    _steps = sys.modules["_numbanet_bench_steps"]

#: BatchNorm settings shared by every framework (PyTorch's defaults).
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


# ---------------------------------------------------------------------------------------
# Architecture records
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    """``k x k`` convolution, zero padding ``pad`` on every side."""

    cin: int
    cout: int
    k: int
    stride: int = 1
    pad: int = 0
    bias: bool = True


@dataclass(frozen=True)
class BatchNorm:
    """BatchNorm over the channels (the last axis, channels-last)."""

    channels: int


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class MaxPool:
    """``k x k`` max pooling, stride ``k``."""

    k: int


@dataclass(frozen=True)
class Flatten:
    pass


@dataclass(frozen=True)
class GlobalAvgPool:
    """Mean over height and width: ``(N, H, W, C) -> (N, C)``."""


@dataclass(frozen=True)
class Dense:
    fan_in: int
    fan_out: int


@dataclass(frozen=True)
class Residual:
    """``x + body(x)``."""

    body: tuple[Any, ...]


def _lenet5() -> tuple[Any, ...]:
    return (
        Conv(1, 6, 5, pad=2), ReLU(), MaxPool(2),
        Conv(6, 16, 5), ReLU(), MaxPool(2),
        Flatten(), Dense(400, 120), ReLU(), Dense(120, 84), ReLU(), Dense(84, 10),
    )


def _resnet_small() -> tuple[Any, ...]:
    def conv_bn(cin: int, cout: int, stride: int = 1) -> list[Any]:
        return [Conv(cin, cout, 3, stride=stride, pad=1, bias=False), BatchNorm(cout)]

    layers: list[Any] = [*conv_bn(3, 16), ReLU()]
    width = 16
    for stage_width in (16, 32, 64):
        if stage_width != width:
            layers += [*conv_bn(width, stage_width, stride=2), ReLU()]
            width = stage_width
        for _ in range(2):
            body = (*conv_bn(width, width), ReLU(), *conv_bn(width, width))
            layers += [Residual(body), ReLU()]
    return (*layers, GlobalAvgPool(), Dense(64, 10))


#: The CNNs by name: (input shape (H, W, C), layer records, description).
ARCHITECTURES: dict[str, tuple[tuple[int, int, int], Callable[[], tuple[Any, ...]], str]] = {
    "lenet5": ((28, 28, 1), _lenet5, "LeNet-5 on 28x28x1"),
    "resnet-small": ((32, 32, 3), _resnet_small,
                     "residual CNN on 32x32x3: 3 stages x 2 blocks, widths 16/32/64, BN"),
}

#: The batch size of a CNN name given without ``@batch``.
DEFAULT_BATCH = 64


def _out_shape(layer: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Output shape of ``layer`` for one sample of ``shape`` ((H, W, C) or (F,))."""
    if isinstance(layer, Conv):
        h, w, _ = shape
        return ((h + 2 * layer.pad - layer.k) // layer.stride + 1,
                (w + 2 * layer.pad - layer.k) // layer.stride + 1, layer.cout)
    if isinstance(layer, MaxPool):
        return (shape[0] // layer.k, shape[1] // layer.k, shape[2])
    if isinstance(layer, Flatten):
        return (int(np.prod(shape)),)
    if isinstance(layer, GlobalAvgPool):
        return (shape[-1],)
    if isinstance(layer, Dense):
        return (layer.fan_out,)
    return shape  # BatchNorm, ReLU, Residual keep the shape


def _with_shapes(layers: tuple[Any, ...], shape: tuple[int, ...]
                 ) -> Iterator[tuple[Any, tuple[int, ...]]]:
    """Every layer (inside residual bodies too, depth first, in parameter order) with
    its input shape."""
    for layer in layers:
        if isinstance(layer, Residual):
            yield from _with_shapes(layer.body, shape)
        else:
            yield layer, shape
        shape = _out_shape(layer, shape)


@dataclass(frozen=True)
class CNNSpec:
    """A CNN of :data:`ARCHITECTURES` and the batch size it is trained at (the CNN
    counterpart of :class:`numbanet._bench_steps.ModelSpec`).

    Attributes:
        arch: ``"lenet5"`` or ``"resnet-small"``.
        batch: samples per training step.
    """

    arch: str
    batch: int

    @property
    def name(self) -> str:
        """``"lenet5@64"``: the form :func:`parse_cnn` reads."""
        return f"{self.arch}@{self.batch}"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One image, channels last: ``(H, W, C)``."""
        return ARCHITECTURES[self.arch][0]

    @property
    def layers(self) -> tuple[Any, ...]:
        """The layer records, input first."""
        return ARCHITECTURES[self.arch][1]()

    @property
    def classes(self) -> int:
        return self.layers[-1].fan_out

    @property
    def num_parameters(self) -> int:
        """Trained parameters (weights, biases, BN scales and shifts)."""
        return sum(w.size for w in initial_weights(self))

    @property
    def flops_per_step(self) -> int:
        """2 x multiply-adds of the convolutions and dense layers: forward, weight
        gradient and input gradient (none for the first layer, whose input is data).
        BatchNorm, pooling and activations are not counted."""
        total = 0
        first = True
        for layer, shape in _with_shapes(self.layers, self.input_shape):
            if isinstance(layer, Conv):
                oh, ow, _ = _out_shape(layer, shape)
                macs = self.batch * oh * ow * layer.k * layer.k * layer.cin * layer.cout
            elif isinstance(layer, Dense):
                macs = self.batch * layer.fan_in * layer.fan_out
            else:
                continue
            total += (2 if first else 3) * 2 * macs
            first = False
        return total


def parse_cnn(text: str) -> CNNSpec:
    """Read ``"lenet5@64"`` (or ``"lenet5"``: batch :data:`DEFAULT_BATCH`).

    Raises:
        ValueError: unknown architecture or a bad batch size.
    """
    arch, _, batch = text.strip().partition("@")
    arch = arch.strip().lower()
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown CNN {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    try:
        size = int(batch) if batch.strip() else DEFAULT_BATCH
    except ValueError:
        size = 0
    if size < 2:  # BatchNorm needs more than one sample's values per channel
        raise ValueError(f"model {text!r}: the batch after '@' must be an integer >= 2, "
                         f"e.g. {arch}@64")
    return CNNSpec(arch, size)


def initial_weights(spec: CNNSpec, seed: int = 0) -> list[np.ndarray]:
    """The trained parameters in numbanet's order and layouts, float32.

    Per layer: conv weight ``(KH, KW, C_in, C_out)`` and, with a bias, bias ``(C_out,)``;
    BatchNorm ``gamma`` (ones) and ``beta`` (zeros); dense weight ``(in, out)`` and bias.
    Weights are He-uniform (``U(-sqrt(6 / fan_in), sqrt(6 / fan_in))``, fan_in
    ``KH*KW*C_in`` for a conv: numbanet's scheme for a layer followed by ReLU); biases
    ``U(-0.1, 0.1)``, non-zero so that a wrong bias gradient changes the loss.
    """
    rng = np.random.default_rng(seed)
    arrays: list[np.ndarray] = []
    for layer, _ in _with_shapes(spec.layers, spec.input_shape):
        if isinstance(layer, (Conv, Dense)):
            if isinstance(layer, Conv):
                shape: tuple[int, ...] = (layer.k, layer.k, layer.cin, layer.cout)
                fan_in, bias = layer.k * layer.k * layer.cin, layer.bias
            else:
                shape, fan_in, bias = (layer.fan_in, layer.fan_out), layer.fan_in, True
            bound = np.sqrt(6.0 / fan_in)
            arrays.append(rng.uniform(-bound, bound, size=shape).astype(np.float32))
            if bias:
                arrays.append(rng.uniform(-0.1, 0.1, size=shape[-1]).astype(np.float32))
        elif isinstance(layer, BatchNorm):
            arrays += [np.ones(layer.channels, np.float32), np.zeros(layer.channels, np.float32)]
    return arrays


def unsupported(framework: str) -> str | None:
    """Why ``framework`` has no CNN step (a note), or ``None``."""
    if framework == "numpy":
        return "no CNN step (the NumPy reference covers the MLPs only)"
    return None


# ---------------------------------------------------------------------------------------
# One training step per framework: ``builder(spec, weights, x, y) -> step() -> float``
# ---------------------------------------------------------------------------------------


def _numbanet_layers(layers: tuple[Any, ...]) -> list[Any]:
    """numbanet layers for the records; a ReLU after a conv or dense layer is fused into
    it (``activation="relu"``), as a user writes it."""
    import numbanet as nbn

    out: list[Any] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        fuse = isinstance(layer, (Conv, Dense)) and i + 1 < len(layers) \
            and isinstance(layers[i + 1], ReLU)
        activation = "relu" if fuse else None
        if isinstance(layer, Conv):
            out.append(nbn.Conv2D(layer.cin, layer.cout, layer.k, stride=layer.stride,
                                  padding=layer.pad, bias=layer.bias, activation=activation))
        elif isinstance(layer, Dense):
            out.append(nbn.Dense(layer.fan_in, layer.fan_out, activation=activation))
        elif isinstance(layer, BatchNorm):
            out.append(nbn.BatchNorm(layer.channels, eps=BN_EPS, momentum=BN_MOMENTUM))
        elif isinstance(layer, ReLU):
            out.append(nbn.Activation("relu"))
        elif isinstance(layer, MaxPool):
            out.append(nbn.MaxPool2D(layer.k))
        elif isinstance(layer, Flatten):
            out.append(nbn.Flatten())
        elif isinstance(layer, GlobalAvgPool):
            out.append(nbn.GlobalAvgPool2D())
        elif isinstance(layer, Residual):
            out.append(nbn.Residual(_numbanet_layers(layer.body)))
        i += 2 if fuse else 1
    return out


def _numbanet_step(spec: CNNSpec, weights, x, y) -> Callable[[], float]:
    import numbanet as nbn
    from numbanet.plugins import get_optimizer

    model = nbn.Sequential(_numbanet_layers(spec.layers), input_shape=spec.input_shape,
                           seed=0, dtype="float32")
    params = model.parameters()
    if [p.value.shape for p in params] != [w.shape for w in weights]:
        raise RuntimeError(f"numbanet's {spec.arch} parameters do not line up with the "
                           "benchmark's weights")
    for p, w in zip(params, weights, strict=True):
        p.value[...] = w
    model.compile(loss="cross_entropy", optimizer=get_optimizer("adam", lr=_steps.LEARNING_RATE))

    # The public train_step: it validates X and y each call, as a user's loop would.
    def step() -> float:
        return float(model.train_step(x, y))

    return step


def _torch_net(spec: CNNSpec, weights: list[np.ndarray]) -> Any:
    """The CNN as a ``torch.nn.Sequential`` holding ``weights``, in ``channels_last``."""
    import torch

    nn = torch.nn

    class _Residual(nn.Module):
        def __init__(self, body: Any) -> None:
            super().__init__()
            self.body = body

        def forward(self, x: Any) -> Any:
            return x + self.body(x)

    arrays = iter(weights)

    def fill(parameter: Any, value: np.ndarray) -> None:
        with torch.no_grad():
            parameter.copy_(torch.from_numpy(np.ascontiguousarray(value)))

    def modules(layers: tuple[Any, ...], shape: tuple[int, ...]) -> list[Any]:
        out: list[Any] = []
        before_flatten = None
        for layer in layers:
            if isinstance(layer, Conv):
                module = nn.Conv2d(layer.cin, layer.cout, layer.k, stride=layer.stride,
                                   padding=layer.pad, bias=layer.bias)
                fill(module.weight, next(arrays).transpose(3, 2, 0, 1))  # -> (out, in, kh, kw)
                if layer.bias:
                    fill(module.bias, next(arrays))
            elif isinstance(layer, BatchNorm):
                module = nn.BatchNorm2d(layer.channels, eps=BN_EPS, momentum=BN_MOMENTUM)
                fill(module.weight, next(arrays))
                fill(module.bias, next(arrays))
            elif isinstance(layer, Dense):
                module = nn.Linear(layer.fan_in, layer.fan_out)
                w = next(arrays)
                if before_flatten is not None:  # rows (h, w, c) -> torch's flatten (c, h, w)
                    h, wd, c = before_flatten
                    w = w.reshape(h, wd, c, -1).transpose(2, 0, 1, 3).reshape(layer.fan_in, -1)
                fill(module.weight, w.T)  # torch keeps (out, in)
                fill(module.bias, next(arrays))
            elif isinstance(layer, ReLU):
                module = nn.ReLU()
            elif isinstance(layer, MaxPool):
                module = nn.MaxPool2d(layer.k)
            elif isinstance(layer, Flatten):
                module = nn.Flatten()
            elif isinstance(layer, GlobalAvgPool):
                module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            else:
                module = _Residual(nn.Sequential(*modules(layer.body, shape)))
            before_flatten = shape if isinstance(layer, Flatten) else None
            out.append(module)
            shape = _out_shape(layer, shape)
        return out

    net = nn.Sequential(*modules(spec.layers, spec.input_shape))
    return net.to(memory_format=torch.channels_last)


def _torch_batch(x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
    """NHWC images as a logical NCHW tensor in ``channels_last`` memory (the same bytes)."""
    import torch

    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    return xt, torch.from_numpy(y)


def _torch_step(spec: CNNSpec, weights, x, y) -> Callable[[], float]:
    return _steps.torch_train_step(_torch_net(spec, weights), *_torch_batch(x, y))


def _torch_compile_step(spec: CNNSpec, weights, x, y) -> Callable[[], float]:
    return _steps.torch_compiled_train_step(_torch_net(spec, weights), *_torch_batch(x, y))


def _jax_step(spec: CNNSpec, weights, x, y) -> Callable[[], float]:
    """NHWC with ``lax.conv_general_dilated`` (HWIO kernels: numbanet's layout), the whole
    step under one ``jax.jit`` (:func:`numbanet._bench_steps.jax_train_step`); BatchNorm's
    running statistics are carried from step to step, as a framework's layer keeps them."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    layers = spec.layers

    def forward(params: list[Any], stats: list[Any], h: Any) -> tuple[Any, list[Any]]:
        taken = iter(params)
        old = iter(stats)
        new: list[Any] = []

        def run(records: tuple[Any, ...], h: Any) -> Any:
            for layer in records:
                if isinstance(layer, Conv):
                    pad = ((layer.pad, layer.pad), (layer.pad, layer.pad))
                    h = lax.conv_general_dilated(
                        h, next(taken), (layer.stride, layer.stride), pad,
                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
                    if layer.bias:
                        h = h + next(taken)
                elif isinstance(layer, BatchNorm):
                    gamma, beta = next(taken), next(taken)
                    mean = jnp.mean(h, axis=(0, 1, 2))
                    var = jnp.mean(jnp.square(h - mean), axis=(0, 1, 2))
                    h = (h - mean) * lax.rsqrt(var + BN_EPS) * gamma + beta
                    count = h.size // h.shape[-1]
                    running_mean, running_var = next(old)
                    new.append(((1 - BN_MOMENTUM) * running_mean + BN_MOMENTUM * mean,
                                (1 - BN_MOMENTUM) * running_var
                                + BN_MOMENTUM * var * (count / (count - 1))))
                elif isinstance(layer, ReLU):
                    h = jax.nn.relu(h)
                elif isinstance(layer, MaxPool):
                    window = (1, layer.k, layer.k, 1)
                    h = lax.reduce_window(h, -jnp.inf, lax.max, window, window, "VALID")
                elif isinstance(layer, Flatten):
                    h = h.reshape(h.shape[0], -1)  # (h, w, c) order, as numbanet's
                elif isinstance(layer, GlobalAvgPool):
                    h = jnp.mean(h, axis=(1, 2))
                elif isinstance(layer, Dense):
                    h = h @ next(taken) + next(taken)
                else:
                    h = h + run(layer.body, h)
            return h

        return run(layers, h), new

    def loss_fn(params: Any, stats: Any, inputs: Any, labels: Any) -> Any:
        logits, stats = forward(params, stats, inputs)
        return _steps.jax_cross_entropy(logits, labels), stats

    stats = [(np.zeros(layer.channels, np.float32), np.ones(layer.channels, np.float32))
             for layer, _ in _with_shapes(layers, spec.input_shape)
             if isinstance(layer, BatchNorm)]
    return _steps.jax_train_step(loss_fn, list(weights), stats, x, y)


def _keras_step(spec: CNNSpec, weights, x, y) -> Callable[[], float]:
    """Keras 3 on JAX, channels-last, built with the functional API (``Add`` for the
    residual sums). Keras's ``padding="same"`` pads a strided convolution unevenly
    (bottom/right only), so a padded convolution other than a stride-1 odd "same" one gets
    an explicit ``ZeroPadding2D`` and ``"valid"``, which is what the others compute."""
    keras = _steps.import_keras()
    kl = keras.layers
    arrays = iter(weights)
    assign: list[tuple[Any, list[np.ndarray]]] = []

    def run(records: tuple[Any, ...], h: Any) -> Any:
        for layer in records:
            if isinstance(layer, Conv):
                padding = "valid"
                if layer.pad and layer.stride == 1 and 2 * layer.pad == layer.k - 1:
                    padding = "same"
                elif layer.pad:
                    h = kl.ZeroPadding2D(layer.pad)(h)
                conv = kl.Conv2D(layer.cout, layer.k, strides=layer.stride, padding=padding,
                                 use_bias=layer.bias)
                h = conv(h)
                assign.append((conv, [next(arrays) for _ in range(2 if layer.bias else 1)]))
            elif isinstance(layer, BatchNorm):
                norm = kl.BatchNormalization(epsilon=BN_EPS, momentum=1 - BN_MOMENTUM)
                h = norm(h)
                c = layer.channels
                assign.append((norm, [next(arrays), next(arrays), np.zeros(c, np.float32),
                                      np.ones(c, np.float32)]))
            elif isinstance(layer, Dense):
                dense = kl.Dense(layer.fan_out)
                h = dense(h)
                assign.append((dense, [next(arrays), next(arrays)]))  # (in, out) as ours
            elif isinstance(layer, ReLU):
                h = kl.ReLU()(h)
            elif isinstance(layer, MaxPool):
                h = kl.MaxPooling2D(layer.k)(h)
            elif isinstance(layer, Flatten):
                h = kl.Flatten()(h)
            elif isinstance(layer, GlobalAvgPool):
                h = kl.GlobalAveragePooling2D()(h)
            else:
                h = kl.Add()([h, run(layer.body, h)])
        return h

    inputs = keras.Input(shape=spec.input_shape)
    model = keras.Model(inputs, run(spec.layers, inputs))
    for layer, values in assign:
        layer.set_weights(values)
    return _steps.keras_train_step(model, x, y)


#: Step builders by framework (NumPy has none: :func:`unsupported`).
BUILDERS: dict[str, Callable[..., Callable[[], float]]] = {
    "numbanet": _numbanet_step,
    "jax": _jax_step,
    "torch.compile": _torch_compile_step,
    "torch": _torch_step,
    "keras": _keras_step,
}
