"""Dense: the fully connected layer on ``(batch, features)`` inputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from numbanet._validation import check_positive_int
from numbanet.kernels.activations import get_activation
from numbanet.kernels.matmul import GemmPlan, gemm_into, gemm_plan
from numbanet.kernels.reductions import column_sum_into, column_sum_partials
from numbanet.nn.init import init_weight
from numbanet.nn.module import FusedDerivative, Module, Shape
from numbanet.nn.parameter import Parameter


def activation_name(activation: str | None) -> str:
    """The canonical activation name for a layer argument (``None`` means identity)."""
    if activation is None:
        return "identity"
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a name (str) or None, got {type(activation).__name__}")
    return get_activation(activation).name  # raises ValueError listing known names


class Dense(Module):
    """Fully connected layer: ``y = activation(x @ weight + bias)``.

    Args:
        in_features: width of the input rows.
        out_features: width of the output rows.
        activation: name of an activation (see ``numbanet.kernels.activations.ACTIVATIONS``)
            or ``None`` for identity. It also picks the initialisation
            (:mod:`numbanet.nn.init`).

    Shapes: ``x`` is ``(batch, in_features)``; ``weight.value`` ``(in_features,
    out_features)``; ``bias.value`` ``(out_features,)``; the output ``(batch, out_features)``.

    The forward pass is one GEMM whose epilogue adds the bias and applies an elementwise
    activation while the output tile is in cache. Backward computes
    ``dz = dy * act'(z)``, ``dW = x.T @ dz``, ``db = sum(dz, axis=0)``, ``dx = dz @ W.T``.
    Inside a :class:`~numbanet.nn.Sequential`, when the layer below offers its activation
    derivative (:meth:`~numbanet.nn.Module.fused_derivative`: a Dense layer with ReLU
    does), the ``dx`` GEMM's epilogue multiplies by that derivative, so the layer below
    receives its ``dz`` directly (:meth:`backward_fused`).

    Parameter roles: ``weight`` is a ``"weight"`` (decayed by default), ``bias`` a
    ``"bias"``.
    """

    accepts_fused_derivative = True

    def __init__(self, in_features: int, out_features: int, activation: str | None = None):
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.activation = activation_name(activation)
        self._act = get_activation(self.activation)
        self._x: np.ndarray | None = None
        self._z: np.ndarray | None = None
        self._y: np.ndarray | None = None
        # Float64 partial sums of the bias gradient, one buffer per batch size.
        self._bias_partials: dict[int, np.ndarray] = {}
        self._plan_cache: dict[int, tuple[GemmPlan, GemmPlan, GemmPlan, np.ndarray]] = {}

    @property
    def weight(self) -> Parameter:
        """``(in_features, out_features)``."""
        return self.parameter("weight")

    @property
    def bias(self) -> Parameter:
        """``(out_features,)``."""
        return self.parameter("bias")

    @property
    def input_shape(self) -> Shape:  # type: ignore[override]
        return (self.in_features,)

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        return [("weight", (self.in_features, self.out_features)), ("bias", (self.out_features,))]

    def parameter_roles(self) -> dict[str, str]:
        return {"weight": "weight", "bias": "bias"}

    def initialize(self, rng: np.random.Generator) -> None:
        init_weight(rng, self.in_features, self.out_features, self.activation,
                    self._params["weight"].value)
        self._params["bias"].value[...] = 0

    def output_shape(self, in_shape: Shape) -> Shape:
        if tuple(in_shape) != (self.in_features,):
            hint = (" (flatten the input first)" if len(in_shape) > 1
                    and int(np.prod(in_shape)) == self.in_features else "")
            raise ValueError(
                f"{self!r} expects samples of shape ({self.in_features},) but receives "
                f"{tuple(in_shape)}{hint}"
            )
        return (self.out_features,)

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.layer_type,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "activation": None if self.activation == "identity" else self.activation,
        }

    def _plans(self, rows: int) -> tuple[GemmPlan, GemmPlan, GemmPlan, np.ndarray]:
        """GEMM plans for a batch of ``rows`` (forward, dW, dx) and the packing space.

        Computed once per batch size, so a step makes no planning or lookup calls.
        """
        cached = self._plan_cache.get(rows)
        if cached is None:
            dtype = self.workspace.dtype
            i, o = self.in_features, self.out_features
            plans = (
                gemm_plan(rows, o, i, dtype),  # z = x @ W:     (rows, o), k = i
                gemm_plan(i, o, rows, dtype),  # dW = x.T @ dz: (i, o),    k = rows
                gemm_plan(rows, i, o, dtype),  # dx = dz @ W.T: (rows, i), k = o
            )
            work = self.workspace.scratch(max(p.workspace for p in plans))
            if len(self._plan_cache) >= 8:
                self._plan_cache.clear()
            cached = self._plan_cache[rows] = (*plans, work)
        return cached

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        # The GEMM's unchecked entry: the model validated x once; buffers and packing
        # space are reused, so a training step neither re-validates nor allocates.
        rows = x.shape[0]
        plan, _, _, work = self._plans(rows)
        z = self.workspace.get("z", rows, self.out_features)
        act = self._act
        w, b = self._params["weight"].value, self._params["bias"].value
        if act.name == "identity":
            y = z
            gemm_into(x, w, z, False, False, work, plan, bias=b)
        elif act.elementwise:
            # Bias and activation applied in the GEMM epilogue, while the tile is in
            # cache; in place when backward needs only the output.
            # When the derivative needs only the output (the table's
            # derivative_from_output: ReLU, sigmoid, tanh), the epilogue overwrites z
            # with y: one array instead of two, 0.17 ms (5%) off a 512x1024x1024 GEMM.
            y = z if act.derivative_from_output else self.workspace.get(
                "y", rows, self.out_features)
            gemm_into(x, w, z, False, False, work, plan, bias=b, y=y, act_id=act.id,
                      param=act.default_param)
        else:  # row-wise (softmax, log_softmax): needs the whole row of z first
            y = self.workspace.get("y", rows, self.out_features)
            gemm_into(x, w, z, False, False, work, plan, bias=b)
            act.forward_unchecked(z, y)
        self._x, self._z, self._y = x, z, y
        return y

    @property
    def output_activation(self) -> str | None:
        return None if self.activation == "identity" else self.activation

    def fused_derivative(self) -> FusedDerivative | None:
        """ReLU's derivative, for the layer above's ``dx`` GEMM epilogue; else ``None``.

        ReLU only: its derivative epilogue is a SIMD select per vector. A row-by-row
        epilogue for the other activations measured slower than their separate
        vectorised pass (tanh, 256x128 output: +106 us fused, 6 us separate), so the
        GEMM offers none.
        """
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
        """Backward pass with the activation derivatives fused into the GEMMs.

        Args:
            grad: ``(batch, out_features)``: d(loss)/d(y), or d(loss)/d(z) (this layer's
                pre-activation) when ``grad_is_dz``.
            grad_is_dz: the layer above already multiplied by this layer's derivative.
            need_input_grad: return a gradient for the input (else ``None``).
            below: what the layer below offered through its
                :meth:`~numbanet.nn.Module.fused_derivative`, or ``None``. When given,
                the returned gradient is that layer's d(loss)/d(z):
                ``(dz @ W.T) * act'(saved)`` in one GEMM.

        Returns:
            ``(batch, in_features)`` (a buffer reused next step), or ``None``.
        """
        if self._x is None:
            raise RuntimeError("Dense.backward called before forward")
        rows = grad.shape[0]
        _, dw_plan, dx_plan, work = self._plans(rows)
        if grad_is_dz or self._act.name == "identity":
            dz = grad
        else:
            dz = self.workspace.get("dz", rows, self.out_features)
            self._act.backward_unchecked(self._z, self._y, grad, dz)
        weight = self._params["weight"]
        gemm_into(self._x, dz, weight.grad, True, False, work, dw_plan)  # dW = x.T @ dz
        partials = self._bias_partials.get(rows)
        if partials is None:
            partials = self._bias_partials[rows] = column_sum_partials(rows, self.out_features)
        column_sum_into(dz, self._params["bias"].grad, partials)  # db = sum of dz over the batch
        if not need_input_grad:
            return None
        dx = self.workspace.get("dx", rows, self.in_features)
        if below is None:
            gemm_into(dz, weight.value, dx, False, True, work, dx_plan)  # dx = dz @ W.T
        else:
            # dz_below = (dz @ W.T) * act_below'(z_below), tile by tile in the epilogue.
            gemm_into(dz, weight.value, dx, False, True, work, dx_plan,
                      act_id=below.act_id, derivative=True, z_saved=below.saved)
        return dx

    def __repr__(self) -> str:
        act = "" if self.activation == "identity" else f", activation={self.activation!r}"
        return f"Dense({self.in_features}, {self.out_features}{act})"
