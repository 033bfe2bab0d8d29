"""Conv2D: 2-D convolution on channels-last images, as matrix products with the packed GEMM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from numbanet._aligned import aligned_empty
from numbanet._validation import Boolean, Integer, check_arg
from numbanet.kernels.activations import RELU, get_activation
from numbanet.kernels.conv import (
    ConvGeometry,
    DirectLayout,
    col2im_into,
    conv2d_grouped_backward_input_into,
    conv2d_grouped_backward_weight_into,
    conv2d_grouped_forward_into,
    direct_applies,
    direct_backward_weight_into,
    direct_forward_into,
    direct_input_gradient_applies,
    direct_lanes,
    direct_layout,
    direct_partials_shape,
    direct_workspace,
    flip_weights,
    gemm_prefers_transpose,
    im2col_into,
    transpose_small,
    transposed_geometry,
    untranspose_into,
)
from numbanet.kernels.matmul import GemmPlan, gemm_into, gemm_plan
from numbanet.kernels.reductions import column_sum_into, column_sum_partials
from numbanet.kernels.winograd import (
    POSITIONS,
    transform_weights_into,
    weight_partials_shape,
    weight_scratch_shape,
    winograd_applies,
    winograd_conv_into,
    winograd_weight_gradient_into,
    winograd_workspace,
)
from numbanet.nn.dense import activation_name
from numbanet.nn.init import init_weight
from numbanet.nn.module import FusedDerivative, Module, Shape
from numbanet.nn.parameter import Parameter
from numbanet.threads import max_threads

__all__ = ["Conv2D", "image_shape_error", "pair"]

# Activations whose derivative backward can take from the output alone: the GEMM
# epilogue then writes y over z (one array instead of two), as in Dense.
_DERIVATIVE_FROM_OUTPUT = frozenset({"relu", "sigmoid", "tanh"})
_PADDING_WORDS = ("valid", "same")


def pair(name: str, value: Any, minimum: int, where: str) -> tuple[int, int]:
    """``value`` (an int or a pair of ints, each ``>= minimum``) as a pair of ints."""
    constraint = Integer(min=minimum)
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{where}: {name} must be an int or a pair (rows, columns), got "
                             f"{value!r}")
        return (check_arg(f"{name}[0]", value[0], constraint, where=where),
                check_arg(f"{name}[1]", value[1], constraint, where=where))
    if isinstance(value, str):
        raise TypeError(f"{where}: {name} must be an int or a pair of ints, got str {value!r}")
    v = check_arg(name, value, constraint, where=where)
    return (v, v)


def image_shape_error(layer: Module, in_shape: Shape, channels: int | None) -> ValueError | None:
    """The error for samples that are not ``(height, width, channels)`` images, or ``None``.

    ``channels`` is the channel count the layer needs, or ``None`` for any.
    """
    in_shape = tuple(in_shape)
    want = f"(height, width, {channels if channels is not None else 'channels'})"
    if len(in_shape) != 3:
        if len(in_shape) == 2:
            fix = "add a channel axis: X.reshape(N, height, width, 1)"
        elif len(in_shape) == 1:
            fix = "reshape flat samples to (N, height, width, channels)"
        else:
            fix = "pass images as (N, height, width, channels)"
        return ValueError(f"{layer!r} expects channels-last images, samples of shape {want}, "
                          f"but receives samples of shape {in_shape}; {fix}")
    if channels is not None and in_shape[2] != channels:
        fix = ("transpose channels-first data to channels-last: X.transpose(0, 2, 3, 1)"
               if in_shape[0] == channels else f"set in_channels={in_shape[2]}")
        return ValueError(f"{layer!r} expects {channels} channels on the last axis, samples "
                          f"of shape {want}, but receives samples of shape {in_shape}; {fix}")
    return None


class _Plan(NamedTuple):
    """How a step computes for one input shape, decided once.

    Forward and weight gradient (``groups == 1``) take one of five routes: ``winograd``
    (3x3, stride 1, at least 16 channels in whole vectors:
    :mod:`numbanet.kernels.winograd`, which then computes the input gradient too),
    ``pointwise`` (1x1, stride 1, no padding: the image is already the im2col matrix),
    ``direct`` (few output channels: :func:`~numbanet.kernels.conv.direct_forward_into`,
    no im2col), ``transposed`` (one input channel: im2col writes ``(K, M)``) or plain
    im2col + GEMM. The input gradient takes the direct kernel when ``gx`` is set (a stride-1
    convolution with at most 32 input channels whose gradient grid is at most twice the
    output, :func:`~numbanet.kernels.conv.direct_input_gradient_applies`), else the GEMM
    and col2im.
    """

    geo: ConvGeometry
    g: tuple[int, ...]  # geo as a plain tuple: Numba leaks memory on NamedTuple arguments
    rows: int          # M = N * OH * OW
    depth: int         # K = KH * KW * C // groups
    pointwise: bool
    winograd: bool
    direct: bool
    transposed: bool
    layout: DirectLayout | None     # direct: the padded input's layout
    gx: tuple[int, ...] | None      # the input gradient's window, when direct
    layout_dx: DirectLayout | None
    fwd_t: bool        # the forward GEMM computes z.T (a narrow output: few channels)
    dw_t: bool         # the weight-gradient GEMM computes dW.T
    fwd: GemmPlan | None
    dw: GemmPlan | None
    dx: GemmPlan | None
    work: np.ndarray | None


class Conv2D(Module):
    """2-D convolution (cross-correlation, as ``torch.nn.Conv2d``) on channels-last images.

    ``z[n, i, j, o] = bias[o] + sum_{a, b, c} x[n, i*sh - pt + a*dh, j*sw - pl + b*dw, c]
    * weight[a, b, c, o]``, then ``y = activation(z)``.

    Args:
        in_channels: channels ``C`` of the input ``(N, H, W, C)``.
        out_channels: channels ``CO`` of the output ``(N, OH, OW, CO)``.
        kernel_size: ``KH`` and ``KW``: an int or a pair.
        stride: an int or a pair, ``>= 1``.
        padding: zeros added on each side, an int or a pair ``(rows, columns)``; or
            ``"valid"`` (none) or ``"same"`` (output as large as the input; stride 1;
            an odd total goes on the bottom/right, as in PyTorch).
        dilation: spacing of the kernel taps, an int or a pair, ``>= 1``.
        groups: split channels into this many groups convolved separately (it divides
            both channel counts); ``groups == in_channels`` is a depthwise convolution.
        bias: whether to add a learned bias.
        activation: an elementwise activation fused into the GEMM epilogue, or ``None``.

    Shapes: ``weight.value`` is ``(KH, KW, in_channels // groups, out_channels)`` (in before
    out, like ``Dense.weight``), ``bias.value`` ``(out_channels,)``.
    ``OH = (H + pad_rows - dh * (KH - 1) - 1) // sh + 1`` (``pad_rows`` both sides), and
    likewise ``OW``.

    How it computes (``groups == 1``): a 3x3, stride-1, undilated convolution whose
    channel counts are at least 16 and whole SIMD vectors (16, 32, 64, ... float32 on
    any CPU) runs Winograd's F(4x4, 3x3) algorithm for its forward pass, input gradient
    and weight gradient (:mod:`numbanet.kernels.winograd`: 4x fewer multiply-adds;
    float32 results within about 4e-6 of the output's largest magnitude of the direct
    sum, float64 within 1e-14). Otherwise ``im2col``
    copies each output pixel's receptive field into a row of a ``(N*OH*OW, KH*KW*C)``
    matrix, so the convolution is one GEMM
    with the weight seen as ``(KH*KW*C, CO)``; its epilogue adds the bias and applies the
    activation. Backward: ``dW = cols.T @ dz`` and ``dcols = dz @ W.T`` (GEMMs), then
    ``col2im`` adds ``dcols`` back onto the input pixels. A 1x1 convolution with stride 1
    and no padding skips im2col (the image is already the matrix). With at most 32
    output channels and stride 1 (LeNet's layers, the 16- and 32-channel stages of a
    small ResNet), direct kernels vectorized over output pixels replace im2col and the
    forward and weight-gradient GEMMs (the GEMM's 32-column register tile would be
    mostly padding, or fed by packing a 9x copy of the image for a single column panel;
    :data:`~numbanet.kernels.conv.DIRECT_MAX_CHANNELS`). The input gradient of any stride-1
    convolution with at most 32 input channels takes the direct kernel too (the output
    gradient convolved with the flipped kernel, no col2im) whenever that convolution's
    grid is at most twice the output, whatever the route of the forward pass; grouped
    convolutions run direct kernels too (:mod:`numbanet.kernels.conv`). The route is
    chosen once per input shape.

    Fusion: with ReLU the layer offers its derivative to the layer above
    (:meth:`fused_derivative`; pooling layers take it), and it applies the ReLU derivative
    of the layer below in its input-gradient pass (col2im, the direct or Winograd kernels,
    or the GEMM epilogue for 1x1).

    Initialisation: as a Dense layer with ``KH*KW*in_channels/groups`` inputs and
    ``out_channels`` outputs (:mod:`numbanet.nn.init`); bias zero.

    Example:
        >>> import numbanet as nbn
        >>> model = nbn.Sequential([nbn.Conv2D(1, 8, 3, padding="same", activation="relu"),
        ...                         nbn.MaxPool2D(2), nbn.Flatten(), nbn.Dense(128, 10)],
        ...                        input_shape=(8, 8, 1), seed=0)
        >>> model.forward(np.zeros((2, 8, 8, 1))).shape
        (2, 10)
    """

    accepts_fused_derivative = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        activation: str | None = None,
    ):
        super().__init__()
        where = "Conv2D"
        self.in_channels = check_arg("in_channels", in_channels, Integer(min=1), where=where)
        self.out_channels = check_arg("out_channels", out_channels, Integer(min=1),
                                      where=where)
        self.kernel_size = pair("kernel_size", kernel_size, 1, where)
        self.stride = pair("stride", stride, 1, where)
        self.dilation = pair("dilation", dilation, 1, where)
        self.groups = check_arg("groups", groups, Integer(min=1), where=where)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"{where}: groups ({self.groups}) must divide in_channels "
                f"({self.in_channels}) and out_channels ({self.out_channels}); for a "
                f"depthwise convolution use groups=in_channels and a multiple of it as "
                f"out_channels")
        self.bias_enabled = check_arg("bias", bias, Boolean(), where=where)
        if isinstance(padding, str):
            word = padding.lower()
            if word not in _PADDING_WORDS:
                raise ValueError(f"{where}: padding must be an int, a pair, 'valid' or 'same', "
                                 f"got {padding!r}")
            if word == "same" and self.stride != (1, 1):
                raise ValueError(
                    f"{where}: padding='same' needs stride 1 (got stride={self.stride}), as "
                    f"in PyTorch; pass the padding as numbers for a strided convolution, "
                    f"e.g. padding={self.dilation[0] * (self.kernel_size[0] - 1) // 2}")
            self.padding: tuple[int, int] | str = word
        else:
            self.padding = pair("padding", padding, 0, where)
        self.activation = activation_name(activation)
        self._act = get_activation(self.activation)
        # (top, bottom, left, right)
        if self.padding == "valid":
            self._pads = (0, 0, 0, 0)
        elif self.padding == "same":
            th = self.dilation[0] * (self.kernel_size[0] - 1)
            tw = self.dilation[1] * (self.kernel_size[1] - 1)
            self._pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            ph, pw = self.padding  # type: ignore[misc]
            self._pads = (ph, ph, pw, pw)
        self._plans: dict[tuple[int, ...], _Plan] = {}
        self._views: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._bias_partials: dict[int, np.ndarray] = {}
        self._buffers_own: dict[str, np.ndarray] = {}
        self._x: np.ndarray | None = None
        self._cols: np.ndarray | None = None
        self._z: np.ndarray | None = None
        self._y: np.ndarray | None = None
        self._plan: _Plan | None = None

    # -- structure ---------------------------------------------------------------------
    @property
    def weight(self) -> Parameter:
        """``(KH, KW, in_channels // groups, out_channels)``."""
        return self.parameter("weight")

    @property
    def bias(self) -> Parameter:
        """``(out_channels,)`` (only with ``bias=True``)."""
        return self.parameter("bias")

    def _weight_shape(self) -> Shape:
        kh, kw = self.kernel_size
        return (kh, kw, self.in_channels // self.groups, self.out_channels)

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        shapes = [("weight", self._weight_shape())]
        if self.bias_enabled:
            shapes.append(("bias", (self.out_channels,)))
        return shapes

    def parameter_roles(self) -> dict[str, str]:
        roles = {"weight": "weight"}
        if self.bias_enabled:
            roles["bias"] = "bias"
        return roles

    def initialize(self, rng: np.random.Generator) -> None:
        kh, kw, cg, co = self._weight_shape()
        init_weight(rng, kh * kw * cg, co, self.activation,
                    self._params["weight"].value.reshape(kh * kw * cg, co))
        if self.bias_enabled:
            self._params["bias"].value[...] = 0

    def output_shape(self, in_shape: Shape) -> Shape:
        error = image_shape_error(self, in_shape, self.in_channels)
        if error is not None:
            raise error
        h, w, _ = in_shape
        pt, pb, pl, pr = self._pads
        eh = self.dilation[0] * (self.kernel_size[0] - 1) + 1
        ew = self.dilation[1] * (self.kernel_size[1] - 1) + 1
        if h + pt + pb < eh or w + pl + pr < ew:
            dilated = " dilated" if self.dilation != (1, 1) else ""
            raise ValueError(
                f"{self!r}: the{dilated} kernel ({eh} x {ew}) is larger than the padded "
                f"input ({h + pt + pb} x {w + pl + pr}) of samples of shape "
                f"{tuple(in_shape)}; use a smaller kernel_size or dilation, more padding, "
                f"or padding='same'")
        oh = (h + pt + pb - eh) // self.stride[0] + 1
        ow = (w + pl + pr - ew) // self.stride[1] + 1
        return (oh, ow, self.out_channels)

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.layer_type,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "bias": self.bias_enabled,
            "activation": None if self.activation == "identity" else self.activation,
        }

    # -- plans and views -------------------------------------------------------------------
    def _plan_for(self, shape: tuple[int, ...]) -> _Plan:
        """Route, GEMM plans, geometry and packing space for an input of ``shape``, made
        once per shape."""
        plan = self._plans.get(shape)
        if plan is not None:
            return plan
        n, h, w, c = shape
        oh, ow, co = self.output_shape((h, w, c))
        kh, kw = self.kernel_size
        pt, _, pl, _ = self._pads
        geo = ConvGeometry(kh, kw, self.stride[0], self.stride[1], pt, pl,
                           self.dilation[0], self.dilation[1], oh, ow)
        g = tuple(geo)
        rows = n * oh * ow
        depth = kh * kw * c // self.groups
        dtype = self.workspace.dtype
        lanes = direct_lanes(dtype)
        pointwise = (kh, kw) == (1, 1) and self.stride == (1, 1) and self._pads == (0,) * 4
        grouped = self.groups > 1
        winograd = winograd_applies(g, c, co, self.groups, dtype)
        direct = not pointwise and not winograd and direct_applies(g, co, self.groups, dtype)
        transposed = not grouped and not pointwise and not winograd and not direct and c == 1
        gx = None
        if (not grouped and not pointwise and not winograd
                and direct_input_gradient_applies(g, (h, w), c, dtype)):
            gx = transposed_geometry(g, (h, w))
        fwd_t = dw_t = False
        fwd = dw = dx = None
        work = None
        if not grouped and not winograd:
            fwd_t = gemm_prefers_transpose(rows, co, dtype)
            dw_t = gemm_prefers_transpose(depth, co, dtype)
            # z = cols @ W, or z.T = W.T @ cols.T
            fwd = gemm_plan(co, rows, depth, dtype) if fwd_t else gemm_plan(rows, co, depth, dtype)
            # dW = cols.T @ dz, or dW.T = dz.T @ cols
            dw = gemm_plan(co, depth, rows, dtype) if dw_t else gemm_plan(depth, co, rows, dtype)
            dx = gemm_plan(rows, depth, co, dtype)      # dcols = dz @ W.T
            work = self.workspace.scratch(max(fwd.workspace, dw.workspace, dx.workspace))
        plan = _Plan(geo, g, rows, depth, pointwise, winograd, direct, transposed,
                     direct_layout(g, lanes, w) if direct else None, gx,
                     None if gx is None else direct_layout(gx, lanes, ow),
                     fwd_t, dw_t, fwd, dw, dx, work)
        if len(self._plans) >= 8:
            self._plans.clear()
        self._plans[shape] = plan
        return plan

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: Any = None) -> np.ndarray:
        """A per-layer buffer (not per batch size), made again only when its shape
        changes: the direct kernels' per-thread tiles, flipped weights, ..."""
        dtype = self.workspace.dtype if dtype is None else np.dtype(dtype)
        array = self._buffers_own.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = self._buffers_own[name] = aligned_empty(shape, dtype)
        return array

    def _winograd_work(self) -> np.ndarray:
        """Per-thread scratch of the Winograd kernels (zeroed once: the forward's last
        block of tiles computes, and drops, rows left from an earlier block)."""
        shape = winograd_workspace(max_threads(), self.in_channels, self.out_channels)
        array = self._buffers_own.get("winograd")
        if array is None or array.shape != shape or array.dtype != self.workspace.dtype:
            array = self._buffers_own["winograd"] = np.zeros(shape, self.workspace.dtype)
        return array

    def _tiles(self, p: _Plan) -> np.ndarray:
        """Per-thread scratch of the direct kernels, for every use in this plan."""
        lanes = direct_lanes(self.workspace.dtype)
        c, co = self.in_channels, self.out_channels
        size = 0
        if p.direct:
            size = direct_workspace(max_threads(), p.layout, c, co, lanes)[0][1]
        if p.gx is not None:
            size = max(size, direct_workspace(max_threads(), p.layout_dx, co, c, lanes)[0][1])
        return self._scratch("tiles", (max_threads(), size))

    def _winograd_weight_scratch(self) -> np.ndarray:
        """Float64 scratch of :func:`~numbanet.kernels.winograd.transform_weights_into`."""
        return self._scratch("winograd_t", weight_scratch_shape(
            max_threads(), self.in_channels, self.out_channels), np.float64)

    def _btiles(self, co: int) -> np.ndarray:
        """Per-thread scratch of :func:`~numbanet.kernels.conv.untranspose_into`."""
        return self._scratch("btiles", (max_threads(), direct_lanes(self.workspace.dtype) * co))

    def _matrix(self, name: str, array: np.ndarray, rows: int, cols: int) -> np.ndarray:
        """``array`` seen as a ``(rows, cols)`` matrix; the view is kept while ``array``
        stays the same buffer, so a step creates no new view objects."""
        cached = self._views.get(name)
        if cached is not None and cached[0] is array:
            return cached[1]
        view = array.reshape(rows, cols)
        self._views[name] = (array, view)
        return view

    # -- computation -------------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        p = self._plan_for(x.shape)
        g = p.g
        n = x.shape[0]
        co = self.out_channels
        ws = self.workspace
        act = self._act
        weight = self._params["weight"].value
        bias = self._params["bias"].value if self.bias_enabled else None
        z = ws.get("z", (n, p.geo.oh, p.geo.ow, co))
        in_place = act.name == "identity" or act.name in _DERIVATIVE_FROM_OUTPUT
        y = z if in_place else ws.get("y", (n, p.geo.oh, p.geo.ow, co))
        cols = None
        if p.winograd:
            c = self.in_channels
            u = self._scratch("winograd_u", (POSITIONS, c, co))
            transform_weights_into(weight, u, self._winograd_weight_scratch())
            pt, _, pl, _ = self._pads
            winograd_conv_into(x, u, bias, act.name == "relu", z, (pt, pl),
                               self._winograd_work())
            if act.name not in ("relu", "identity"):
                act.forward_unchecked(self._matrix("z", z, p.rows, co),
                                      self._matrix("y", y, p.rows, co))
        elif p.direct:
            lay = p.layout
            xp = ws.get("xpad", (n, self.in_channels, lay.plane))
            relu = act.name == "relu"
            direct_forward_into(x, xp, weight, bias, z, relu, g, lay, self._tiles(p))
            if act.name not in ("relu", "identity"):
                act.forward_unchecked(self._matrix("z", z, p.rows, co),
                                      self._matrix("y", y, p.rows, co))
            cols = xp
        elif self.groups > 1:
            conv2d_grouped_forward_into(x, weight, bias, z, g, self.groups)
            if act.name != "identity":
                act.forward_unchecked(self._matrix("z", z, p.rows, co),
                                      self._matrix("y", y, p.rows, co))
        else:
            if p.pointwise:
                cols = self._matrix("x", x, p.rows, p.depth)
            elif p.transposed:
                # (K, M): a batch-first buffer of the same size, seen as that matrix.
                cols = self._matrix("cols_t", ws.get("cols_t", (n, p.geo.oh * p.geo.ow * p.depth)),
                                    p.depth, p.rows)
                im2col_into(x, cols, g, True)
            else:
                cols = self._matrix("cols", ws.get("cols", (n, p.geo.oh * p.geo.ow, p.depth)),
                                    p.rows, p.depth)
                im2col_into(x, cols, g)
            w2 = self._matrix("w", weight, p.depth, co)
            z2 = self._matrix("z", z, p.rows, co)
            t = p.transposed
            if p.fwd_t:
                # z.T = W.T @ cols.T, then z = act(z.T.T + b) in one pass.
                zt = self._matrix("zt", ws.get("zt", (n, co * p.geo.oh * p.geo.ow)), co,
                                  p.rows)
                gemm_into(w2, cols, zt, True, not t, p.work, p.fwd)
                relu = act.name == "relu"
                untranspose_into(zt, bias, relu, z2, self._btiles(co))
                if act.name not in ("relu", "identity"):
                    act.forward_unchecked(z2, self._matrix("y", y, p.rows, co))
            elif act.name == "identity":
                gemm_into(cols, w2, z2, t, False, p.work, p.fwd, bias=bias)
            elif act.elementwise:
                gemm_into(cols, w2, z2, t, False, p.work, p.fwd, bias=bias,
                          y=self._matrix("y", y, p.rows, co), act_id=act.id,
                          param=act.default_param)
            else:  # softmax / log_softmax over the channels of each pixel
                gemm_into(cols, w2, z2, t, False, p.work, p.fwd, bias=bias)
                act.forward_unchecked(z2, self._matrix("y", y, p.rows, co))
        self._x, self._cols, self._z, self._y, self._plan = x, cols, z, y, p
        return y

    def fused_derivative(self) -> FusedDerivative | None:
        """ReLU's derivative for the layer above (a pooling layer or a convolution), or
        ``None``. ``saved`` is the layer's output ``(N, OH, OW, CO)``."""
        if self._act.name != "relu" or self._z is None:
            return None
        return FusedDerivative(self._act.id, self._z)

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        return self.backward_fused(dy, False, need_input_grad, None)

    def backward_fused(
        self,
        grad: np.ndarray,
        grad_is_dz: bool,
        need_input_grad: bool,
        below: FusedDerivative | None,
    ) -> np.ndarray | None:
        """Backward pass; see :meth:`numbanet.nn.Dense.backward_fused` for the arguments.

        ``below`` (a ReLU derivative, ``saved`` shaped like this layer's input) is applied
        while the input gradient is written: in col2im, in the direct kernel, or in the
        GEMM epilogue of a 1x1 convolution.
        """
        p = self._plan
        x = self._x
        if p is None or x is None:
            raise RuntimeError("Conv2D.backward called before forward")
        if below is not None and below.act_id != RELU:
            raise RuntimeError(f"{self!r} fuses only ReLU's derivative, got act_id "
                               f"{below.act_id}")
        g = p.g
        n = x.shape[0]
        co = self.out_channels
        ws = self.workspace
        weight = self._params["weight"]
        if grad_is_dz or self._act.name == "identity":
            dz = grad
        else:
            dz = ws.get("dz", grad.shape)
            self._act.backward_unchecked(self._matrix("zb", self._z, p.rows, co),
                                         self._matrix("yb", self._y, p.rows, co),
                                         self._matrix("grad", grad, p.rows, co),
                                         self._matrix("dz", dz, p.rows, co))
        dz2 = self._matrix("dz2", dz, p.rows, co)
        bias_grad = self._params["bias"].grad if self.bias_enabled else None
        pt, _, pl, _ = self._pads
        if p.winograd:
            c = self.in_channels
            parts = ws.get("winograd_parts", weight_partials_shape(n, p.geo.oh, p.geo.ow, c, co))
            winograd_weight_gradient_into(x, dz, (pt, pl), weight.grad, self._winograd_work(),
                                          parts, self._scratch("winograd_du", (POSITIONS, c * co),
                                                               np.float64))
        elif p.direct:
            _, per_block = direct_workspace(max_threads(), p.layout, self.in_channels, co,
                                            direct_lanes(self.workspace.dtype))
            partials = ws.get("partials", direct_partials_shape(n, p.layout, per_block),
                              dtype=np.float64)
            direct_backward_weight_into(self._cols, dz, weight.grad, bias_grad, p.g, p.layout,
                                        self._tiles(p), partials)
        elif self.groups > 1:
            conv2d_grouped_backward_weight_into(
                x, dz, self._scratch("dw_acc", self._weight_shape(), np.float64), weight.grad,
                g, self.groups)
        else:
            dw2 = self._matrix("dw", weight.grad, p.depth, co)
            if p.dw_t:  # dW.T = dz.T @ cols
                dwt = self._scratch("dwt", (co, p.depth))
                gemm_into(dz2, self._cols, dwt, True, p.transposed, p.work, p.dw)
                transpose_small(dwt, dw2)
            else:  # dW = cols.T @ dz
                gemm_into(self._cols, dz2, dw2, not p.transposed, False, p.work, p.dw)
        if bias_grad is not None and not p.direct:
            partials = self._bias_partials.get(p.rows)
            if partials is None:
                partials = self._bias_partials[p.rows] = column_sum_partials(p.rows, co)
            column_sum_into(dz2, bias_grad, partials)
        if not need_input_grad:
            return None
        dx = ws.get("dx", x.shape)
        saved = None if below is None else below.saved
        if self.groups > 1:
            conv2d_grouped_backward_input_into(dz, weight.value, dx, g, self.groups, saved)
            return dx
        if p.winograd:
            # dx = the output gradient convolved with the flipped kernel, padded 2 - pad.
            u = self._scratch("winograd_u_dx", (POSITIONS, co, self.in_channels))
            transform_weights_into(weight.value, u,
                                   self._winograd_weight_scratch(), flip=True)
            winograd_conv_into(dz, u, None, False, dx, (2 - pt, 2 - pl), self._winograd_work(),
                               saved)
            return dx
        if p.gx is not None:
            # dx = the output gradient, padded, convolved with the flipped kernel.
            lay = p.layout_dx
            kh, kw, c, _ = weight.value.shape
            wf = self._scratch("flipped", (kh, kw, co, c))
            flip_weights(weight.value, wf)
            dzp = ws.get("dzpad", (n, co, lay.plane))
            direct_forward_into(dz, dzp, wf, None, dx, False, p.gx, lay, self._tiles(p), saved)
            return dx
        w2 = self._matrix("w", weight.value, p.depth, co)
        if p.pointwise:
            dx2 = self._matrix("dx", dx, p.rows, p.depth)
            if saved is None:
                gemm_into(dz2, w2, dx2, False, True, p.work, p.dx)
            else:
                gemm_into(dz2, w2, dx2, False, True, p.work, p.dx, act_id=RELU,
                          derivative=True, z_saved=self._matrix("saved", saved, p.rows,
                                                                p.depth))
            return dx
        dcols = self._matrix("dcols", ws.get("dcols", (n, p.geo.oh * p.geo.ow, p.depth)), p.rows,
                             p.depth)
        gemm_into(dz2, w2, dcols, False, True, p.work, p.dx)  # dcols = dz @ W.T
        col2im_into(dcols, dx, g, saved)
        return dx

    def __repr__(self) -> str:
        kh, kw = self.kernel_size
        parts = [str(self.in_channels), str(self.out_channels),
                 f"kernel_size={kh if kh == kw else (kh, kw)}"]
        for name, value, default in (("stride", self.stride, (1, 1)),
                                     ("dilation", self.dilation, (1, 1))):
            if value != default:
                parts.append(f"{name}={value[0] if value[0] == value[1] else value}")
        if self.padding != (0, 0):
            pad = self.padding
            if isinstance(pad, tuple) and pad[0] == pad[1]:
                pad = pad[0]
            parts.append(f"padding={pad!r}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if not self.bias_enabled:
            parts.append("bias=False")
        if self.activation != "identity":
            parts.append(f"activation={self.activation!r}")
        return f"Conv2D({', '.join(parts)})"
