"""The training step of a model made only of Dense layers, in one native call.

A :class:`~numbanet.nn.Sequential` whose layers are all :class:`~numbanet.nn.Dense` with
elementwise activations (an MLP) trains through :class:`DenseStack`: one call of a
:class:`~numbanet.kernels.dense_stack.StepDriver` replaces the layers' ``forward``
methods, the loss's driver and the layers' backward chain; the loss host prepares the
reduction and reduces the rows' losses (``Loss.forward_backward_fused``), and the
optimizer is called as before. Measured (float32, Adam, one thread): 64-32-10 @ 32 went
from 38 to 23 us a step with the forward and backward passes as one call each (the
Python and kernel dispatch between layers gone, and a vectorized Adam); with the loss
rows inside the shards' parallel region, scikit-learn's digits MLP (64-100-10 @ 200,
float64, 2 threads, 200 epochs) fit in 0.24-0.31 s against 0.29-0.34 s before (six
alternating runs each, best of three fits per run).

Two regimes, chosen from the model's shapes and the batch size alone:

* A *small* model, where no product of the whole batch reaches ``SERIAL_WORK`` (the
  layers' methods would run every product on one thread): the batch is cut into
  :func:`shard_count` row shards that run in parallel, one parallel region per step
  (the digits MLP of scikit-learn, 64-100-10 @ 200 in float64 on 2 threads: forward and
  backward 198 -> 119 us with a region per pass). The shards' weight gradients are
  added in shard order, so results depend on the batch size, not on the thread count.
* A larger model: one shard, and only at one thread; with more threads the layers' own
  methods run, with their parallel GEMMs. Both give the same results bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numba
import numpy as np

from numbanet._aligned import aligned_empty, aligned_zeros
from numbanet.kernels import dense_stack as k
from numbanet.kernels.activations import IDENTITY, RELU
from numbanet.kernels.matmul import MR, SERIAL_WORK, GemmPlan, gemm_plan
from numbanet.kernels.reductions import ROW_CHUNK
from numbanet.nn.dense import Dense
from numbanet.nn.module import Module

# Batch sizes whose tables and buffers are kept (the training batch, its remainder, and
# a few more); the least recently used is dropped beyond this.
_MAX_BATCH_SIZES = 4


class _Step(NamedTuple):
    """Everything a step on ``rows`` samples needs, allocated once per batch size."""

    table: np.ndarray  # (n_shards, layers, N_COLUMNS) int64
    acts: np.ndarray  # every z, y, dz, dx
    work: np.ndarray  # GEMM packing space, a slot per shard
    partials: np.ndarray  # float64 partial sums of the bias gradients
    parts: np.ndarray  # dW_s and db_s of the shards past the first
    serial: bool  # no product reaches SERIAL_WORK: the stack may run at any thread count

    def parallel(self) -> bool:
        """Whether the shards should run on the thread pool (else the serial twins:
        same results, no parallel region to launch)."""
        return self.table.shape[0] > 1 and numba.get_num_threads() > 1


#: Fewest rows per shard: smaller shards lose more to the GEMMs' edges and the
#: shard sums than a second thread gains.
MIN_SHARD_ROWS = 64
#: Fewest multiply-adds per shard (forward and backward together): below this a shard's
#: work (~5 us) is no longer large next to the two parallel regions a step launches.
#: 2 threads: scikit-learn's diabetes MLP (10-100-1 at 200 rows, 0.46 M per step) fit
#: in 0.055 s with 2 shards, 0.036 s with 1; make_classification's (20-100-4, 1.04 M)
#: stepped in 117 us with 2 shards, 146 us with 1.
MIN_SHARD_WORK = 1 << 18
#: Most shards: 8 keeps up to 8 threads busy; each shard adds a pass over dW.
MAX_SHARDS = 8


def shard_count(rows: int, work_per_row: int) -> int:
    """Row shards of a batch of ``rows`` samples that cost ``work_per_row``
    multiply-adds each: the largest power of two, at most ``MAX_SHARDS``, that leaves
    every shard ``MIN_SHARD_ROWS`` rows and ``MIN_SHARD_WORK`` multiply-adds.

    A function of the model's shapes and the batch size alone, never of the thread
    count, so that results do not depend on the thread count (the shards' gradients
    are added in order). A power of two splits evenly over 1, 2, 4 or 8 threads.
    """
    shards = 1
    while (shards < MAX_SHARDS and rows >= 2 * shards * MIN_SHARD_ROWS
           and rows * work_per_row >= 2 * shards * MIN_SHARD_WORK):
        shards *= 2
    return shards


def _boundary(s: int, n_shards: int, rows: int) -> int:
    """First row of shard ``s`` (``rows`` for ``s == n_shards``): an even split rounded
    down to a multiple of the GEMM's register-tile height ``MR``, so that a shard's
    products waste fewer rows of padded tiles (200 rows: 96 + 104, not 100 + 100)."""
    if s >= n_shards:
        return rows
    return s * rows // n_shards // MR * MR


def _route(plan: GemmPlan) -> int:
    """The table's code for the kernel that computes ``plan``'s product."""
    if plan.narrow:
        return k.ROUTE_NARROW
    return k.ROUTE_SMALL_K if plan.small_k else k.ROUTE_PACKED


def _plan_columns(plan: GemmPlan, transpose_a: bool, transpose_b: bool, has_bias: bool,
                  epilogue_act: int, derivative: bool) -> list[int]:
    """A product's ``PLAN_WIDTH`` table columns (see numbanet.kernels.dense_stack)."""
    return [plan.mb, plan.nb, int(plan.swap), _route(plan), int(transpose_a),
            int(transpose_b), int(has_bias), epilogue_act, int(derivative)]


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
        self.out_features = self.layers[-1].out_features
        self.act_params = np.array([layer._act.default_param for layer in self.layers],
                                   dtype=np.float64)
        self._steps: dict[int, _Step] = {}
        # Multiply-adds per sample of a training step: z = x @ W and dW = x.T @ dz for
        # every layer, dx = dz @ W.T for all but the first.
        self.work_per_row = sum((3 if i else 2) * layer.in_features * layer.out_features
                                for i, layer in enumerate(self.layers))

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
        # Serial-sized: no product of the whole batch reaches SERIAL_WORK, so the layers'
        # own methods would run every product serially. Decided from the shapes, not
        # from the plans, whose parallel flag also depends on the pool's size: the shard
        # count must not depend on the machine's core count either.
        serial = all(rows * layer.in_features * layer.out_features < SERIAL_WORK
                     for layer in self.layers)
        n_shards = shard_count(rows, self.work_per_row) if serial else 1
        n_layers = len(self.layers)
        table = np.zeros((n_shards, n_layers, k.N_COLUMNS), dtype=np.int64)
        sizes = {"acts": 0, "work": 0, "partials": 0, "parts": 0}

        def take(buffer: str, size: int) -> int:
            offset = sizes[buffer]
            sizes[buffer] += size
            return offset

        # The whole batch's arrays, shared by the shards (each owns its rows).
        for i, layer in enumerate(self.layers):
            n_in, n_out, act = layer.in_features, layer.out_features, layer._act
            row = table[:, i]
            row[:, k.IN], row[:, k.OUT] = n_in, n_out
            row[:, k.W], row[:, k.B] = self.offsets[i]
            row[:, k.ACT] = act.id
            row[:, k.Z] = take("acts", rows * n_out)
            # As Dense.forward: y overwrites z when backward needs only the output.
            in_place = act.id == IDENTITY or act.derivative_from_output
            row[:, k.Y] = row[0, k.Z] if in_place else take("acts", rows * n_out)
            row[:, k.DZ] = take("acts", rows * n_out) if act.id != IDENTITY else 0
            row[:, k.DX] = take("acts", rows * n_in) if i > 0 else 0
            below = self.layers[i - 1] if i > 0 else None
            row[:, k.FUSE_BELOW] = int(below is not None and below._act.id == RELU)
        # Each shard's rows, plans, packing slot, partial sums and dW_s/db_s.
        for s in range(n_shards):
            r0, r1 = _boundary(s, n_shards, rows), _boundary(s + 1, n_shards, rows)
            plans = [self._plans(r1 - r0, layer) for layer in self.layers]
            slot = max(plan.workspace for layer_plans in plans for plan in layer_plans)
            work = take("work", slot)
            n_chunks = max(1, -(-(r1 - r0) // ROW_CHUNK))
            for i, layer in enumerate(self.layers):
                row = table[s, i]
                row[k.R0], row[k.R1] = r0, r1
                row[k.WORK], row[k.WORK_END] = work, work + slot
                row[k.PARTIALS] = take("partials", n_chunks * layer.out_features)
                row[k.PART] = (take("parts", (layer.in_features + 1) * layer.out_features)
                               if s > 0 else 0)
                forward, dw, dx = plans[i]
                relu_below = bool(row[k.FUSE_BELOW])
                row[k.PLAN_FORWARD : k.PLAN_DW] = _plan_columns(  # z = x @ W + b, ReLU
                    forward, False, False, True, RELU if layer._act.id == RELU else -1, False)
                row[k.PLAN_DW : k.PLAN_DX] = _plan_columns(dw, True, False, False, -1, False)
                row[k.PLAN_DX : k.N_COLUMNS] = _plan_columns(  # dx = dz @ W.T, * ReLU' below
                    dx, False, True, False, RELU if relu_below else -1, relu_below)
        return _Step(table, aligned_zeros(sizes["acts"], self.dtype),
                     aligned_empty(sizes["work"], self.dtype),
                     aligned_empty(sizes["partials"], np.float64),
                     aligned_zeros(max(sizes["parts"], 1), self.dtype), serial)

    def _plans(self, rows: int, layer: Dense) -> tuple[GemmPlan, GemmPlan, GemmPlan]:
        n_in, n_out = layer.in_features, layer.out_features
        return (gemm_plan(rows, n_out, n_in, self.dtype),  # z = x @ W
                gemm_plan(n_in, n_out, rows, self.dtype),  # dW = x.T @ dz
                gemm_plan(rows, n_in, n_out, self.dtype))  # dx = dz @ W.T

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

    def train(self, step: _Step, X: np.ndarray, params: np.ndarray, grads: np.ndarray,
              d_out: np.ndarray, loss: Any, targets: Any) -> float:
        """The model's training pass on ``X`` ``(rows, in)`` in one native call: the
        forward pass, ``loss``'s value and gradient ``d_out`` ``(rows, out)``, and every
        gradient in ``grads`` (overwritten); returns the loss value.

        Args:
            step: :meth:`step_for` ``(rows)``.
            X: the inputs, validated.
            params, grads: the model's flat parameter and gradient buffers.
            d_out: the model's buffer for d(loss)/d(output).
            loss: a :class:`numbanet.losses.Loss` (it prepares the reduction and calls
                back with its row kernel, see ``Loss.forward_backward_fused``).
            targets: prepared targets, or ``WeightedTargets``.
        """
        parallel = step.parallel()

        def run(row_kernel: Any, t: np.ndarray, aux: np.ndarray, hp: tuple, gs: float,
                weight: np.ndarray, rowloss: np.ndarray) -> None:
            k.step_driver(row_kernel)(
                parallel, X, params, grads, step.table, self.act_params, step.acts,
                step.work, step.partials, step.parts, t, aux, hp, gs, weight, d_out, rowloss)

        return loss.forward_backward_fused(d_out.shape, self.dtype, targets, run)

    def output(self, step: _Step) -> np.ndarray:
        """The last layer's output ``(rows, out)`` of the last :meth:`train` pass on
        ``step`` (a view of its buffer, overwritten by the next pass)."""
        last = step.table[0, -1]
        rows = step.table[-1, 0, k.R1]
        return step.acts[last[k.Y] : last[k.Y] + rows * last[k.OUT]].reshape(rows, -1)
