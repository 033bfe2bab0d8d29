"""Export a :class:`~numbanet.Sequential` to ONNX, to serve it from ONNX Runtime (Python,
C++, C#, Java, the browser) or any other ONNX consumer.

::

    import numbanet.onnx
    numbanet.onnx.export(model, "model.onnx")                       # outputs model.predict
    numbanet.onnx.export(model, "proba.onnx", probabilities=True)   # ... model.predict_proba

    import onnxruntime as ort
    session = ort.InferenceSession("model.onnx")
    outputs = session.run(None, {"input": X.astype("float32")})[0]

The graph has one input, ``"input"``, of shape ``(batch, *model.input_shape)`` and the
model's dtype (``int64`` when the first layer takes indices), and one output,
``"output"`` (``"probabilities"`` with ``probabilities=True``); the batch axis is dynamic.
Weights are stored in the model's dtype. The graph is built with ``onnx.helper`` and
passes ``onnx.checker.check_model(..., full_check=True)``.

**What exports.** Every built-in layer: :class:`~numbanet.Dense` (a ``Gemm`` and its
activation), :class:`~numbanet.Activation`, :class:`~numbanet.Dropout` (an ``Identity``:
inference does not drop), :class:`~numbanet.Flatten`, :class:`~numbanet.Conv2D` (any
stride, padding, dilation and groups, with its fused activation),
:class:`~numbanet.MaxPool2D`, :class:`~numbanet.AvgPool2D`,
:class:`~numbanet.GlobalAvgPool2D`, :class:`~numbanet.BatchNorm` (its running
statistics, folded into one scale and shift per feature), :class:`~numbanet.LayerNorm`
(``LayerNormalization`` from opset 17, its formula before), :class:`~numbanet.Embedding`
(a ``Gather`` on the graph's ``int64`` input) and :class:`~numbanet.Residual` (its inner
layers, nested blocks included, and an ``Add``), and every activation of
``numbanet.kernels.activations.ACTIVATIONS``. numbanet's images are channels-last
``(N, H, W, C)`` and so are the graph's tensors between layers: convolution and pooling
nodes sit between two ``Transpose`` nodes (ONNX Runtime's optimizer removes the pairs
that cancel). ``probabilities=True`` appends the compiled loss's output activation
(``softmax`` for cross-entropy, ``sigmoid`` for binary cross-entropy), so the graph
outputs what ``model.predict_proba`` returns.

**float64 models.** ONNX Runtime's CPU provider has no double kernels for some operators
(``Conv``, ``AveragePool``, ``Erf``, ``Gelu``, ``Elu``, ``Selu``, ``LeakyRelu``,
``Softplus``, ... see :data:`NO_DOUBLE_KERNEL`). For float64 models the exporter writes
those layers with elementary operators that have double kernels: ``Conv2D`` as im2col
(one ``Gather`` of precomputed pixel indices) and a ``MatMul``, ``AvgPool2D`` as the
``ReduceMean`` of the gathered windows, and ``elu``, ``selu``, ``leaky_relu`` and
``softplus`` from ``Exp``, ``Log``, ``Where``... ``gelu`` needs ``Erf``, so a float64
model using it is refused with an error saying so (export a float32 copy, or run float64
in numbanet). Any mapping that adds one of those operators to a float64 graph is refused
the same way, naming the layer.

**How a layer maps to ONNX (for layer authors).** The exporter looks, for each layer, in
this order:

1. a method on the layer, ``layer.onnx_export(builder, input_name) -> output_name``:
   the way a plugin layer ships its own mapping;
2. :data:`LAYER_EXPORTERS`, a table ``{layer class: fn(builder, layer, input_name) ->
   output_name}`` holding the built-in layers; :func:`register_exporter` adds an entry
   for a layer class you do not own. Lookup is by exact class, so a subclass that
   changes what a layer computes never inherits a wrong mapping.

A layer with neither is refused with an error naming it and saying how to add one. The
mapping receives an :class:`OnnxBuilder` and the name of its input tensor
``(batch, *in_shape)``; it adds nodes and initializers through the builder and returns
the name of its output tensor ``(batch, *out_shape)``. A complete plugin mapping::

    class Scale(numbanet.Module):          # y = x * gamma, gamma of shape (features,)
        ...
        def onnx_export(self, builder, x):
            gamma = builder.initializer(self.parameter("gamma").value, "gamma")
            return builder.node("Mul", [x, gamma])

:meth:`OnnxBuilder.activation` writes any numbanet activation (what Dense uses for its
fused one), :meth:`OnnxBuilder.constant` a scalar in the model's dtype, and
:meth:`OnnxBuilder.sublayer` exports a layer nested in a block (what Residual uses).

Needs ``onnx``: ``pip install "numbanet[onnx]"`` (which also brings ONNX Runtime, to run
the files; exporting needs only ``onnx``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from numbanet._validation import Boolean, Integer, Optional, check_arg

__all__ = [
    "DEFAULT_OPSET",
    "LAYER_EXPORTERS",
    "MIN_OPSET",
    "NO_DOUBLE_KERNEL",
    "OnnxBuilder",
    "OnnxExportError",
    "export",
    "register_exporter",
    "to_onnx",
]

#: The opset written when ``opset=None``: read by ONNX Runtime 1.12 and later, and
#: recent enough for ``LayerNormalization``.
DEFAULT_OPSET = 17
#: The oldest opset the exporter writes (``Softmax`` over the last axis only from 13).
MIN_OPSET = 13

#: Operators ONNX Runtime's CPU provider runs in float32 but not in float64 (checked
#: against onnxruntime 1.32): a float64 graph must not contain them.
NO_DOUBLE_KERNEL = frozenset({
    "AveragePool", "Conv", "ConvTranspose", "Elu", "Erf", "Gelu", "GlobalAveragePool",
    "HardSigmoid", "LeakyRelu", "Mish", "Selu", "Softplus", "ThresholdedRelu",
})

_EXTRA = 'pip install "numbanet[onnx]"'


def _onnx() -> Any:
    """The ``onnx`` package, or an ImportError naming the extra to install."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"numbanet.onnx needs the onnx package, which could not be "
                          f"imported ({exc}): {_EXTRA}") from exc
    return onnx


class OnnxExportError(ValueError):
    """A model (or one of its layers) that cannot be written as ONNX; the message names
    the layer and says what to do."""


# ------------------------------------------------------------------------------ builder


class OnnxBuilder:
    """What a layer mapping uses to add its part of the graph.

    One builder serves the whole export; before each layer the exporter sets
    :attr:`layer`, :attr:`prefix`, :attr:`in_shape` and :attr:`out_shape`.

    Attributes:
        dtype: the model's dtype (``numpy.float32`` or ``numpy.float64``).
        elem_type: the matching ``onnx.TensorProto`` element type.
        opset: the opset being written.
        layer: the layer being exported.
        prefix: a name prefix unique to the layer (``"layers.2"``).
        in_shape: the layer's per-sample input shape (batch axis excluded).
        out_shape: its per-sample output shape.
    """

    def __init__(self, dtype: np.dtype, opset: int) -> None:
        onnx = _onnx()
        self._helper, self._numpy_helper = onnx.helper, onnx.numpy_helper
        self.dtype = np.dtype(dtype)
        self.elem_type = onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.layer: Any = None
        self.prefix = "graph"
        self.in_shape: tuple[int, ...] = ()
        self.out_shape: tuple[int, ...] = ()
        self._names: set[str] = set()
        self._constants: dict[tuple[str, float], str] = {}

    def name(self, hint: str) -> str:
        """A tensor or node name not used yet, starting with :attr:`prefix`."""
        base = f"{self.prefix}.{hint}" if self.prefix else hint
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def initializer(self, array: np.ndarray, hint: str) -> str:
        """Store ``array`` in the graph (converted to :attr:`dtype` unless it holds
        integers); returns its name."""
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(self.dtype)
        name = self.name(hint)
        self.initializers.append(self._numpy_helper.from_array(np.ascontiguousarray(array),
                                                               name))
        return name

    def constant(self, value: float) -> str:
        """A scalar of :attr:`dtype` (shared by every node that uses the same value)."""
        key = (self.dtype.name, float(value))
        name = self._constants.get(key)
        if name is None:
            saved, self.prefix = self.prefix, "const"
            name = self.initializer(np.array(value, dtype=self.dtype), repr(float(value)))
            self.prefix = saved
            self._constants[key] = name
        return name

    def node(self, op_type: str, inputs: Sequence[str], hint: str | None = None,
             n_outputs: int = 1, domain: str = "", **attributes: Any) -> Any:
        """Add a node; returns its output name (a list of names when ``n_outputs > 1``).

        Raises:
            OnnxExportError: a float64 graph would need ``op_type``, which ONNX Runtime's
                CPU provider cannot run in double precision (:data:`NO_DOUBLE_KERNEL`).
        """
        if self.dtype == np.float64 and op_type in NO_DOUBLE_KERNEL and not domain:
            raise OnnxExportError(
                f"{self._layer_text()} needs the ONNX operator {op_type}, which ONNX "
                f"Runtime's CPU provider has no float64 (double) kernel for, so this "
                f"float64 model would not run there; export a float32 copy of the model "
                f"(numbanet.Sequential.from_config with dtype='float32' and set_weights) or "
                f"keep float64 inference in numbanet")
        hint = hint or op_type.lower()
        outputs = [self.name(hint if n_outputs == 1 else f"{hint}{i}")
                   for i in range(n_outputs)]
        self.nodes.append(self._helper.make_node(
            op_type, list(inputs), outputs, name=self.name(f"{hint}_node"), domain=domain,
            **attributes))
        return outputs[0] if n_outputs == 1 else outputs

    def activation(self, name: str, x: str, param: float | None = None) -> str:
        """Apply numbanet activation ``name`` (elementwise ones to every element,
        ``softmax``/``log_softmax`` along the last axis); returns the output's name.

        Args:
            name: an entry of ``numbanet.kernels.activations.ACTIVATIONS``.
            x: the input tensor's name.
            param: the activation's parameter (``leaky_relu``'s slope, ``elu``'s
                alpha); ``None``: its default.
        """
        from numbanet.kernels.activations import get_activation

        spec = get_activation(name)
        if param is None:
            param = spec.default_param
        emit = _ACTIVATIONS.get(spec.name)
        if emit is None:  # pragma: no cover - a new activation without an ONNX mapping
            raise OnnxExportError(f"{self._layer_text()}: activation {spec.name!r} has no "
                                  f"ONNX mapping yet (add it to numbanet.onnx._ACTIVATIONS)")
        return emit(self, x, float(param))

    def shape(self, dims: Sequence[int]) -> str:
        """An ``int64`` shape tensor for ``Reshape`` (``0`` copies the input's dim,
        ``-1`` infers one)."""
        return self.initializer(np.asarray(dims, dtype=np.int64), "shape")

    def reshape(self, x: str, dims: Sequence[int]) -> str:
        """``Reshape(x, dims)``; ``dims`` as for :meth:`shape`."""
        return self.node("Reshape", [x, self.shape(dims)])

    def reduce_mean(self, x: str, axes: Sequence[int], keepdims: bool = False) -> str:
        """``ReduceMean`` over ``axes`` (an attribute before opset 18, an input since)."""
        if self.opset >= 18:
            axes_name = self.initializer(np.asarray(axes, dtype=np.int64), "axes")
            return self.node("ReduceMean", [x, axes_name], keepdims=int(keepdims))
        return self.node("ReduceMean", [x], axes=list(axes), keepdims=int(keepdims))

    def to_channels_first(self, x: str) -> str:
        """``(N, H, W, C)`` (numbanet's images) -> ``(N, C, H, W)`` (ONNX's Conv, pools)."""
        return self.node("Transpose", [x], hint="nchw", perm=[0, 3, 1, 2])

    def to_channels_last(self, x: str) -> str:
        """``(N, C, H, W)`` -> ``(N, H, W, C)``."""
        return self.node("Transpose", [x], hint="nhwc", perm=[0, 2, 3, 1])

    def sublayer(self, layer: Any, x: str, index: int | str) -> str:
        """Export ``layer``, nested in the layer being exported (a block's inner layer),
        on input ``x`` of shape :attr:`in_shape`; afterwards :attr:`in_shape` is the inner
        layer's output shape, so calling it layer after layer chains them. Returns the
        inner layer's output name.

        Args:
            layer: the inner layer (found as any layer is: its ``onnx_export`` method,
                then :data:`LAYER_EXPORTERS`).
            x: its input tensor's name.
            index: its position in the block, for names and messages.
        """
        saved = (self.layer, self.prefix, self.in_shape, self.out_shape)
        in_shape = self.in_shape
        out_shape = tuple(layer.output_shape(in_shape))
        try:
            y = self._export(layer, x, f"{self.prefix}.{index}", in_shape, out_shape)
        finally:
            self.layer, self.prefix, _, self.out_shape = saved
        self.in_shape = out_shape
        return y

    def _export(self, layer: Any, x: str, prefix: str, in_shape: tuple[int, ...],
                out_shape: tuple[int, ...]) -> str:
        self.layer, self.prefix = layer, prefix
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        where = prefix.split(".", 1)[1] if "." in prefix else prefix
        y = _exporter_for(layer, where)(self, x)
        if not isinstance(y, str):
            raise OnnxExportError(f"the ONNX mapping of layer {where} ({layer!r}) returned "
                                  f"{type(y).__name__}; it must return its output's name")
        return y

    def _layer_text(self) -> str:
        if self.layer is None:
            return "the model"
        where = self.prefix.split(".", 1)[1] if "." in self.prefix else self.prefix
        return f"layer {where} ({self.layer!r})"


# ------------------------------------------------------------------------ activations
#
# One function per activation, each exactly the formula of numbanet's kernel
# (numbanet/kernels/activations.py); float64 graphs use elementary operators where ONNX
# Runtime lacks a double kernel for the fused one.


def _double(b: OnnxBuilder) -> bool:
    return b.dtype == np.float64


def _where_positive(b: OnnxBuilder, x: str, positive: str, other: str) -> str:
    """``positive`` where ``x > 0``, else ``other``."""
    return b.node("Where", [b.node("Greater", [x, b.constant(0.0)]), positive, other])


def _expm1_nonpositive(b: OnnxBuilder, x: str) -> str:
    """``exp(min(x, 0)) - 1`` (exact to float64 rounding in absolute terms)."""
    return b.node("Sub", [b.node("Exp", [b.node("Min", [x, b.constant(0.0)])]),
                          b.constant(1.0)])


def _elu(b: OnnxBuilder, x: str, alpha: float) -> str:
    if not _double(b):
        return b.node("Elu", [x], alpha=alpha)
    negative = b.node("Mul", [_expm1_nonpositive(b, x), b.constant(alpha)])
    return _where_positive(b, x, x, negative)


def _selu(b: OnnxBuilder, x: str, _: float) -> str:
    from numbanet.kernels.activations import SELU_ALPHA, SELU_SCALE

    if not _double(b):
        return b.node("Selu", [x], alpha=SELU_ALPHA, gamma=SELU_SCALE)
    positive = b.node("Mul", [x, b.constant(SELU_SCALE)])
    negative = b.node("Mul", [_expm1_nonpositive(b, x), b.constant(SELU_SCALE * SELU_ALPHA)])
    return _where_positive(b, x, positive, negative)


def _leaky_relu(b: OnnxBuilder, x: str, slope: float) -> str:
    if not _double(b):
        return b.node("LeakyRelu", [x], alpha=slope)
    return _where_positive(b, x, x, b.node("Mul", [x, b.constant(slope)]))


def _gelu(b: OnnxBuilder, x: str, _: float) -> str:
    # numbanet's GELU is the exact one, x * Phi(x) (not the tanh approximation).
    if b.opset >= 20 and not _double(b):
        return b.node("Gelu", [x], approximate="none")
    erf = b.node("Erf", [b.node("Mul", [x, b.constant(1 / math.sqrt(2.0))])])
    cdf = b.node("Mul", [b.node("Add", [erf, b.constant(1.0)]), b.constant(0.5)])
    return b.node("Mul", [x, cdf])


def _softplus(b: OnnxBuilder, x: str, _: float) -> str:
    from numbanet.kernels.activations import SOFTPLUS_THRESHOLD

    if not _double(b):
        return b.node("Softplus", [x])
    # max(x, 0) + log(1 + exp(-|x|)), and x itself above PyTorch's threshold of 20.
    tail = b.node("Log", [b.node("Add", [b.constant(1.0), b.node("Exp", [
        b.node("Neg", [b.node("Abs", [x])])])])])
    soft = b.node("Add", [b.node("Relu", [x]), tail])
    above = b.node("Greater", [x, b.constant(SOFTPLUS_THRESHOLD)])
    return b.node("Where", [above, x, soft])


_ACTIVATIONS: dict[str, Callable[[OnnxBuilder, str, float], str]] = {
    "identity": lambda b, x, p: b.node("Identity", [x]),
    "sigmoid": lambda b, x, p: b.node("Sigmoid", [x]),
    "relu": lambda b, x, p: b.node("Relu", [x]),
    "leaky_relu": _leaky_relu,
    "tanh": lambda b, x, p: b.node("Tanh", [x]),
    "gelu": _gelu,
    "elu": _elu,
    "selu": _selu,
    "silu": lambda b, x, p: b.node("Mul", [x, b.node("Sigmoid", [x])]),
    "softplus": _softplus,
    "softmax": lambda b, x, p: b.node("Softmax", [x], axis=-1),
    "log_softmax": lambda b, x, p: b.node("LogSoftmax", [x], axis=-1),
}


# ------------------------------------------------------------------------ layer table


def _dense(b: OnnxBuilder, layer: Any, x: str) -> str:
    weight = b.initializer(layer.parameter("weight").value, "weight")
    bias = b.initializer(layer.parameter("bias").value, "bias")
    z = b.node("Gemm", [x, weight, bias], hint="gemm")
    return z if layer.activation == "identity" else b.activation(layer.activation, z)


def _activation(b: OnnxBuilder, layer: Any, x: str) -> str:
    return b.activation(layer.name, x)


def _dropout(b: OnnxBuilder, layer: Any, x: str) -> str:
    # Inference never drops: the exported graph is the identity.
    return b.node("Identity", [x])


def _flatten(b: OnnxBuilder, layer: Any, x: str) -> str:
    # C order over (height, width, channels), as numbanet's Flatten.
    return b.node("Flatten", [x], axis=1)


def _conv_pads(layer: Any) -> tuple[int, int, int, int]:
    """Conv2D's (top, bottom, left, right) zero padding, from its public arguments."""
    if layer.padding == "valid":
        return (0, 0, 0, 0)
    if layer.padding == "same":
        th = layer.dilation[0] * (layer.kernel_size[0] - 1)
        tw = layer.dilation[1] * (layer.kernel_size[1] - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = layer.padding
    return (ph, ph, pw, pw)


def _windows(b: OnnxBuilder, x: str, window: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int], pads: tuple[int, int, int, int]) -> str:
    """im2col with elementary operators (every one has float64 kernels): the zero-padded
    ``(N, H, W, C)`` input's windows as ``(N, OH * OW * KH * KW, C)``, window by window,
    taps in (row, column) order, by one ``Gather`` of precomputed pixel indices."""
    h, w, c = b.in_shape
    pt, pb, pl, pr = pads
    if any(pads):
        x = b.node("Pad", [x, b.initializer(np.array([0, pt, pl, 0, 0, pb, pr, 0], np.int64),
                                            "pads")])
    hp, wp = h + pt + pb, w + pl + pr
    oh, ow = b.out_shape[0], b.out_shape[1]
    rows = (np.arange(oh)[:, None, None, None] * stride[0]
            + np.arange(window[0])[None, None, :, None] * dilation[0])
    cols = (np.arange(ow)[None, :, None, None] * stride[1]
            + np.arange(window[1])[None, None, None, :] * dilation[1])
    index = (rows * wp + cols).reshape(-1).astype(np.int64)
    pixels = b.reshape(x, [0, hp * wp, c])
    return b.node("Gather", [pixels, b.initializer(index, "window_index")], axis=1)


def _conv2d(b: OnnxBuilder, layer: Any, x: str) -> str:
    weight = layer.parameter("weight").value  # (KH, KW, C / groups, CO)
    kh, kw, cg, co = weight.shape
    groups = layer.groups
    pads = _conv_pads(layer)
    bias = layer.parameter("bias").value if layer.bias_enabled else None
    oh, ow, _ = b.out_shape
    if b.dtype != np.float64:
        inputs = [b.to_channels_first(x),
                  b.initializer(np.ascontiguousarray(weight.transpose(3, 2, 0, 1)), "weight")]
        if bias is not None:
            inputs.append(b.initializer(bias, "bias"))
        z = b.node("Conv", inputs, kernel_shape=[kh, kw], strides=list(layer.stride),
                   dilations=list(layer.dilation), group=groups,
                   pads=[pads[0], pads[2], pads[1], pads[3]])
        z = b.to_channels_last(z)
    else:
        # ONNX Runtime has no float64 Conv: im2col by Gather, then one (grouped) MatMul.
        cols = _windows(b, x, (kh, kw), layer.stride, layer.dilation, pads)
        if groups == 1:
            flat = b.reshape(cols, [-1, kh * kw * cg])  # (N*OH*OW, KH*KW*C)
            z = b.node("MatMul", [flat, b.initializer(weight.reshape(kh * kw * cg, co),
                                                      "weight")])
        else:
            cog = co // groups
            split = b.reshape(cols, [-1, kh * kw, groups, cg])  # (M, KH*KW, G, Cg)
            per_group = b.reshape(b.node("Transpose", [split], perm=[2, 0, 1, 3]),
                                  [groups, -1, kh * kw * cg])  # (G, M, KH*KW*Cg)
            w = weight.reshape(kh * kw * cg, groups, cog).transpose(1, 0, 2)
            z = b.node("MatMul", [per_group, b.initializer(np.ascontiguousarray(w),
                                                           "weight")])  # (G, M, COg)
            z = b.reshape(b.node("Transpose", [z], perm=[1, 0, 2]), [-1, co])
        if bias is not None:
            z = b.node("Add", [z, b.initializer(bias, "bias")])
        z = b.reshape(z, [-1, oh, ow, co])
    return z if layer.activation == "identity" else b.activation(layer.activation, z)


def _pool_attributes(layer: Any) -> dict[str, Any]:
    ph, pw = layer.padding
    return {"kernel_shape": list(layer.kernel_size), "strides": list(layer.stride),
            "pads": [ph, pw, ph, pw]}


def _max_pool2d(b: OnnxBuilder, layer: Any, x: str) -> str:
    # ONNX pads max pooling with -inf (padding never wins), as numbanet does.
    y = b.node("MaxPool", [b.to_channels_first(x)], **_pool_attributes(layer))
    return b.to_channels_last(y)


def _avg_pool2d(b: OnnxBuilder, layer: Any, x: str) -> str:
    if b.dtype != np.float64:
        y = b.node("AveragePool", [b.to_channels_first(x)], count_include_pad=1,
                   **_pool_attributes(layer))
        return b.to_channels_last(y)
    # No float64 AveragePool in ONNX Runtime: the mean of each zero-padded window.
    ph, pw = layer.padding
    kh, kw = layer.kernel_size
    oh, ow, c = b.out_shape
    cols = _windows(b, x, layer.kernel_size, layer.stride, (1, 1), (ph, ph, pw, pw))
    windows = b.reshape(cols, [0, oh * ow, kh * kw, c])
    return b.reshape(b.reduce_mean(windows, [2]), [0, oh, ow, c])


def _global_avg_pool2d(b: OnnxBuilder, layer: Any, x: str) -> str:
    return b.reduce_mean(x, [1, 2])


def _batch_norm(b: OnnxBuilder, layer: Any, x: str) -> str:
    # Inference: the running statistics, folded into one scale per feature (computed in
    # float64): y = (x - mean) * (weight / sqrt(var + eps)) + bias, over the last axis.
    mean = layer.buffer("running_mean").astype(np.float64)
    scale = 1.0 / np.sqrt(layer.buffer("running_var").astype(np.float64) + layer.eps)
    if layer.affine:
        scale = scale * layer.parameter("weight").value
    y = b.node("Mul", [b.node("Sub", [x, b.initializer(mean, "running_mean")]),
                       b.initializer(scale, "scale")])
    if layer.affine:
        y = b.node("Add", [y, b.initializer(layer.parameter("bias").value, "bias")])
    return y


def _layer_norm(b: OnnxBuilder, layer: Any, x: str) -> str:
    n = layer.normalized_shape
    affine = layer.elementwise_affine
    weight = layer.parameter("weight").value if affine else np.ones(n)
    if b.opset >= 17:
        inputs = [x, b.initializer(weight, "weight")]
        if affine:
            inputs.append(b.initializer(layer.parameter("bias").value, "bias"))
        return b.node("LayerNormalization", inputs, axis=-1, epsilon=layer.eps)
    # Before opset 17: the same formula (population variance over the last axis).
    centered = b.node("Sub", [x, b.reduce_mean(x, [-1], keepdims=True)])
    var = b.reduce_mean(b.node("Mul", [centered, centered]), [-1], keepdims=True)
    std = b.node("Sqrt", [b.node("Add", [var, b.constant(layer.eps)])])
    y = b.node("Div", [centered, std])
    if affine:
        y = b.node("Add", [b.node("Mul", [y, b.initializer(weight, "weight")]),
                           b.initializer(layer.parameter("bias").value, "bias")])
    return y


def _embedding(b: OnnxBuilder, layer: Any, x: str) -> str:
    # The graph's int64 indices pick rows of the table (out-of-range indices are an
    # error in ONNX Runtime, as numbanet's check_input refuses them).
    return b.node("Gather", [b.initializer(layer.parameter("weight").value, "weight"), x],
                  axis=0)


def _residual(b: OnnxBuilder, layer: Any, x: str) -> str:
    h = x
    for j, inner in enumerate(layer.layers):
        h = b.sublayer(inner, h, j)
    return b.node("Add", [x, h], hint="residual")


LayerExporter = Callable[[OnnxBuilder, Any, str], str]


def _builtin_exporters() -> dict[type, LayerExporter]:
    from numbanet.nn import (
        Activation,
        AvgPool2D,
        BatchNorm,
        Conv2D,
        Dense,
        Dropout,
        Embedding,
        Flatten,
        GlobalAvgPool2D,
        LayerNorm,
        MaxPool2D,
        Residual,
    )

    return {Dense: _dense, Activation: _activation, Dropout: _dropout, Flatten: _flatten,
            Conv2D: _conv2d, MaxPool2D: _max_pool2d, AvgPool2D: _avg_pool2d,
            GlobalAvgPool2D: _global_avg_pool2d, BatchNorm: _batch_norm,
            LayerNorm: _layer_norm, Embedding: _embedding, Residual: _residual}


#: ``{layer class: fn(builder, layer, input_name) -> output_name}``: the built-in
#: mappings; see :func:`register_exporter` for adding one.
LAYER_EXPORTERS: dict[type, LayerExporter] = _builtin_exporters()


def register_exporter(layer_class: type, exporter: LayerExporter) -> None:
    """Map ``layer_class`` (exact class) to ONNX with ``exporter(builder, layer,
    input_name) -> output_name``; replaces an earlier mapping for that class.

    For layers you write yourself, an ``onnx_export(builder, input_name)`` method on the
    class is simpler (it takes precedence over this table).

    Raises:
        TypeError: ``layer_class`` is not a class or ``exporter`` not callable.
    """
    if not isinstance(layer_class, type):
        raise TypeError(f"register_exporter: layer_class must be a class, got "
                        f"{type(layer_class).__name__}")
    if not callable(exporter):
        raise TypeError(f"register_exporter: exporter must be callable, got "
                        f"{type(exporter).__name__}")
    LAYER_EXPORTERS[layer_class] = exporter


def _exporter_for(layer: Any, index: int | str) -> Callable[[OnnxBuilder, str], str]:
    method = getattr(layer, "onnx_export", None)
    if callable(method):
        return method
    table = LAYER_EXPORTERS.get(type(layer))
    if table is not None:
        return lambda b, x: table(b, layer, x)
    kind = getattr(layer, "layer_type", type(layer).__name__)
    raise OnnxExportError(
        f"layer {index} ({layer!r}, type {kind!r}, class {type(layer).__module__}."
        f"{type(layer).__qualname__}) has no ONNX mapping: give the class an "
        f"onnx_export(builder, input_name) -> output_name method, or call "
        f"numbanet.onnx.register_exporter({type(layer).__qualname__}, fn) (see the "
        f"numbanet.onnx module docstring)")


# ---------------------------------------------------------------------------- export


def _output_activation(model: Any) -> str:
    """The activation ``predict_proba`` applies: the compiled loss's, or for a model
    loaded with ``compile=False`` the one its training loss declares."""
    loss = getattr(model, "loss", None)
    if loss is not None:
        activation = getattr(loss, "output_activation", None)
        what = repr(getattr(loss, "name", type(loss).__name__))
    else:
        config = (getattr(model, "training_config", None) or {}).get("loss")
        if not config:
            raise OnnxExportError("probabilities=True needs to know the loss: compile the "
                                  "model (model.compile(loss=...)) first")
        from numbanet.plugins import resolve_loss

        try:
            _, spec = resolve_loss(config["id"])
        except ValueError as exc:
            raise OnnxExportError(f"probabilities=True: {exc}") from None
        activation, what = spec.output_activation, repr(config["id"])
    if activation is None:
        raise OnnxExportError(f"probabilities=True needs a classification loss (softmax or "
                              f"sigmoid outputs); the model's loss {what} has none: export "
                              f"without probabilities")
    return str(activation)


def to_onnx(model: Any, opset: int | None = None, probabilities: bool = False) -> Any:
    """The ONNX ``ModelProto`` of ``model`` (what :func:`export` writes).

    Args:
        model: a :class:`~numbanet.Sequential` whose input shape is known.
        opset: the ONNX opset, from :data:`MIN_OPSET` to what the installed ``onnx``
            knows; ``None``: :data:`DEFAULT_OPSET`.
        probabilities: end with the loss's output activation (the graph computes
            ``model.predict_proba``; its output is called ``"probabilities"``).

    Raises:
        OnnxExportError: a layer without a mapping, an operator float64 cannot run in
            ONNX Runtime, an unknown input shape, or ``probabilities=True`` without a
            classification loss.
        ImportError: ``onnx`` is not installed.
    """
    onnx = _onnx()
    helper = onnx.helper
    from numbanet.nn import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a numbanet.Sequential, got {type(model).__name__}")
    newest = int(onnx.defs.onnx_opset_version())
    opset = check_arg("opset", opset, Optional(Integer(min=MIN_OPSET, max=newest)))
    opset = DEFAULT_OPSET if opset is None else opset
    probabilities = check_arg("probabilities", probabilities, Boolean())
    if model.input_shape is None or model.output_shape is None:
        raise OnnxExportError("the model's input shape is not known yet: pass input_shape= "
                              "to Sequential, or call the model on data once")

    builder = OnnxBuilder(model.dtype, opset)
    first = model.layers[0]
    input_type = (onnx.TensorProto.INT64 if getattr(first, "input_kind", "real") == "index"
                  else builder.elem_type)
    x = "input"
    builder._names.add(x)
    shapes = [tuple(model.input_shape)]
    for layer in model.layers:
        shapes.append(tuple(layer.output_shape(shapes[-1])))
    for index, layer in enumerate(model.layers):
        x = builder._export(layer, x, f"layers.{index}", shapes[index], shapes[index + 1])
    builder.layer, builder.prefix = None, "head"
    if probabilities:
        x = builder.activation(_output_activation(model), x)
    output = "probabilities" if probabilities else "output"
    builder._names.add(output)
    builder.nodes.append(helper.make_node("Identity", [x], [output], name=f"{output}_node"))

    graph = helper.make_graph(
        builder.nodes, "numbanet_sequential",
        [helper.make_tensor_value_info("input", input_type, ["batch", *model.input_shape])],
        [helper.make_tensor_value_info(output, builder.elem_type,
                                       ["batch", *model.output_shape])],
        initializer=builder.initializers,
        doc_string=f"numbanet {_version()}: {model!r}",
    )
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="numbanet",
                              producer_version=_version(),
                              ir_version=helper.find_min_ir_version_for(opsets))
    helper.set_model_props(proto, {
        "numbanet.config": json.dumps(model.get_config()),
        "numbanet.output": "probabilities" if probabilities else "predict",
    })
    return proto


def export(model: Any, path: str | os.PathLike[str], opset: int | None = None,
           probabilities: bool = False) -> Any:
    """Write ``model`` as an ONNX file (see the module docstring for what it holds).

    Args:
        model: a :class:`~numbanet.Sequential` whose input shape is known.
        path: the ``.onnx`` file to write (replaced if it exists).
        opset: the ONNX opset; ``None``: :data:`DEFAULT_OPSET`.
        probabilities: the graph computes ``model.predict_proba`` instead of
            ``model.predict``.

    Returns:
        the ``onnx.ModelProto`` written, already checked with
        ``onnx.checker.check_model(..., full_check=True)``.

    Raises:
        OnnxExportError: a layer without a mapping, a float64 model that needs an
            operator ONNX Runtime cannot run in double, ``probabilities=True`` without a
            classification loss.
        ImportError: ``onnx`` is not installed (``pip install "numbanet[onnx]"``).

    Example:
        >>> import numbanet as nbn, numbanet.onnx
        >>> model = nbn.Sequential([nbn.Dense(4, 8, activation="relu"), nbn.Dense(8, 3)])
        >>> proto = numbanet.onnx.export(model, "model.onnx")   # doctest: +SKIP
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    onnx = _onnx()
    proto = to_onnx(model, opset=opset, probabilities=probabilities)
    onnx.checker.check_model(proto, full_check=True)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        onnx.save_model(proto, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return proto


def _version() -> str:
    from numbanet import __version__

    return __version__
