"""The training step of a model made only of Dense layers, in two native calls.

A :class:`~numbanet.nn.Sequential` whose layers are all :class:`~numbanet.nn.Dense` with
elementwise activations (an MLP) trains through :class:`DenseStack`: one call of
:func:`~numbanet.kernels.dense_stack.stack_forward` replaces the layers' ``forward``
methods, one of :func:`~numbanet.kernels.dense_stack.stack_backward` their backward
chain. The loss and the optimizer are called as before. The results are the
layer-by-layer path's bit for bit (see :mod:`numbanet.kernels.dense_stack`); only the
Python and the kernel dispatch between layers go: 42 -> 25 us a step on 64-32-10 @ 32.

The stack runs only where every product of the step is serial anyway (one thread, or a
model small enough that no product reaches ``SERIAL_WORK``); otherwise the layers' own
methods run, with their parallel kernels. Either way the layers' gradients and the
model's outputs are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numba
import numpy as np

from numbanet.kernels import dense_stack as k
from numbanet.kernels.activations import IDENTITY, RELU
from numbanet.kernels.matmul import GemmPlan, gemm_plan
from numbanet.kernels.reductions import ROW_CHUNK
from numbanet.nn.dense import Dense
from numbanet.nn.module import Module

# Batch sizes whose tables and buffers are kept (the training batch, its remainder, and
# a few more); the least recently used is dropped beyond this.
_MAX_BATCH_SIZES = 4


class _Step(NamedTuple):
    """Everything a step on ``rows`` samples needs, allocated once per batch size."""

    table: np.ndarray  # (layers, N_COLUMNS) int64
    acts: np.ndarray  # every z, y, dz, dx
    work: np.ndarray  # GEMM packing space
    partials: np.ndarray  # float64 partial sums of the bias gradients
    serial: bool  # no product reaches SERIAL_WORK: the stack may run at any thread count


def _plan_columns(plan: GemmPlan) -> list[int]:
    return [plan.mb, plan.nb, int(plan.swap), int(plan.narrow)]


class DenseStack:
    """The fused path of an all-Dense :class:`~numbanet.nn.Sequential`; build it with
    :meth:`for_layers`, which returns ``None`` for any other model.

    Args:
        layers: the model's layers, all :class:`~numbanet.nn.Dense` with elementwise
            activations.
        offsets: ``(weight offset, bias offset)`` of each layer in the model's flat
            parameter buffer (the gradient buffer has the same layout).
        dtype: the model's dtype.
    """

    def __init__(self, layers: Sequence[Dense], offsets: Sequence[tuple[int, int]],
                 dtype: np.dtype) -> None:
        self.layers = list(layers)
        self.offsets = list(offsets)
        self.dtype = np.dtype(dtype)
        self.act_params = np.array([layer._act.default_param for layer in self.layers],
                                   dtype=np.float64)
        self._steps: dict[int, _Step] = {}

    @classmethod
    def for_layers(cls, layers: Sequence[Module], layout: Sequence[tuple[str, int, int, tuple]],
                   dtype: np.dtype) -> DenseStack | None:
        """The stack for ``layers``, or ``None`` unless every layer is a plain
        :class:`~numbanet.nn.Dense` (not a subclass: it could override its methods) with
        an elementwise activation.

        Args:
            layers: the model's layers.
            layout: the model's ``parameter_layout()``: ``(name, start, stop, shape)``.
            dtype: the model's dtype.
        """
        if not layers or any(type(layer) is not Dense or not layer._act.elementwise
                             for layer in layers):
            return None
        start = {name: begin for name, begin, _, _ in layout}
        offsets = [(start[f"{i}.weight"], start[f"{i}.bias"]) for i in range(len(layers))]
        return cls(layers, offsets, dtype)

    def _build(self, rows: int) -> _Step:
        """Table, buffers and plans for batches of ``rows`` samples."""
        table = np.zeros((len(self.layers), k.N_COLUMNS), dtype=np.int64)
        acts_size = 0
        partials_size = 0
        work_size = 1
        serial = True
        n_chunks = max(1, -(-rows // ROW_CHUNK))

        def take(size: int) -> int:
            nonlocal acts_size
            offset = acts_size
            acts_size += size
            return offset

        for i, (layer, (w_off, b_off)) in enumerate(zip(self.layers, self.offsets,
                                                        strict=True)):
            n_in, n_out, act = layer.in_features, layer.out_features, layer._act
            row = table[i]
            row[k.IN], row[k.OUT], row[k.W], row[k.B] = n_in, n_out, w_off, b_off
            row[k.ACT] = act.id
            row[k.TILE_ACT] = RELU if act.id == RELU else -1
            row[k.Z] = take(rows * n_out)
            # As Dense.forward: y overwrites z when backward needs only the output.
            in_place = act.id == IDENTITY or act.derivative_from_output
            row[k.Y] = row[k.Z] if in_place else take(rows * n_out)
            row[k.DZ] = take(rows * n_out) if act.id != IDENTITY else 0
            row[k.DX] = take(rows * n_in) if i > 0 else 0
            below = self.layers[i - 1] if i > 0 else None
            row[k.FUSE_BELOW] = int(below is not None and below._act.id == RELU)
            row[k.PARTIALS] = partials_size
            partials_size += n_chunks * n_out
            plans = (gemm_plan(rows, n_out, n_in, self.dtype),  # z = x @ W
                     gemm_plan(n_in, n_out, rows, self.dtype),  # dW = x.T @ dz
                     gemm_plan(rows, n_in, n_out, self.dtype))  # dx = dz @ W.T
            for column, plan in zip((k.PLAN_FORWARD, k.PLAN_DW, k.PLAN_DX), plans,
                                    strict=True):
                row[column : column + 4] = _plan_columns(plan)
                work_size = max(work_size, plan.workspace)
            serial = serial and not any(plan.parallel for plan in plans[: 2 if i == 0 else 3])
        return _Step(table, np.zeros(acts_size, self.dtype), np.empty(work_size, self.dtype),
                     np.empty(max(partials_size, 1), np.float64), serial)

    def step_for(self, rows: int) -> _Step | None:
        """The step for a batch of ``rows``, or ``None`` when the layers' own (parallel)
        methods should run: more than one thread and some product large enough to
        split."""
        step = self._steps.pop(rows, None)
        if step is None:
            if len(self._steps) >= _MAX_BATCH_SIZES:
                self._steps.pop(next(iter(self._steps)))  # least recently used
            step = self._build(rows)
        self._steps[rows] = step  # most recently used last
        if step.serial or numba.get_num_threads() == 1:
            return step
        return None

    def forward(self, step: _Step, X: np.ndarray, params: np.ndarray) -> np.ndarray:
        """The model's training forward pass on ``X`` ``(rows, in)``: the last layer's
        output ``(rows, out)``, a buffer reused by the next step of this size."""
        return k.stack_forward(X, params, step.table, self.act_params, step.acts, step.work)

    def backward(self, step: _Step, X: np.ndarray, params: np.ndarray, grads: np.ndarray,
                 d_out: np.ndarray) -> None:
        """Overwrite every gradient in ``grads`` from ``d_out`` (d(loss)/d(output)) after
        :meth:`forward` on the same ``X``."""
        k.stack_backward(X, params, grads, step.table, self.act_params, step.acts,
                         step.work, step.partials, d_out)
