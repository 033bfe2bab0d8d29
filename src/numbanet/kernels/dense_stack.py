"""A stack of Dense layers' training pass in one native call: the forward pass, the loss
rows and the backward pass with the fused ReLU derivatives, without Python between
layers, the batch split in row shards that run in parallel.

Why: on a small model each kernel call costs about as much as its arithmetic. A
64-32-10 MLP at batch 32 does 0.2 MFLOP per step; a layer-by-layer step makes ten
kernel calls (3-5 us of dispatch each: Numba unboxes every array argument) and as many
Python method calls between them, and none of its products is large enough to pay for
a parallel region of its own. :class:`numbanet.nn.dense_stack.DenseStack` makes one
call of a :class:`StepDriver` instead, for any depth; the optimizer's update follows.

Shards. The batch's rows are cut into ``n_shards`` contiguous shards (a function of the
batch size only, never of the thread count; see ``DenseStack``), and one ``prange`` over
the shards runs each shard's forward pass, its rows of the loss and its backward pass,
serially: one parallel region per step instead of one per product (and the thread that
computed a shard's outputs computes their loss gradient and backward pass: its rows
never move to another core's cache). Within a shard every kernel is the
layers' own serial kernel (:func:`~numbanet.kernels.matmul._gemm_serial`,
:func:`~numbanet.kernels.matmul._narrow_gemm` for outputs of at most ``NARROW_N``
columns, or :func:`~numbanet.kernels.matmul._small_k_gemm` for products of at most
``SMALL_K`` steps, with the same plans and epilogues; the same activation passes; the
same fixed-order bias sums).

Results. The forward pass computes each output row from its input row alone, so its
values do not depend on the sharding. In the backward pass shard ``s`` computes its own
``dW_s = x_s.T @ dz_s`` and ``db_s``; after the shards' loop they are added in shard
order, ``dW = ((dW_0 + dW_1) + dW_2) + ...``, in a second ``prange`` over as many blocks
of the flat gradient as there are shards. With one shard per thread, thread ``k`` sums
the block that the optimizer's ``prange`` (the same even split) then updates on the
same thread, so those gradients stay in its core's cache (the digits MLP's training
step at 2 threads: p10 175-317 -> 143-175 us over four alternating runs, against one
thread adding all of them before). The result depends on the shard count
(rounding), which depends on the batch size alone: the same on 1 thread or 64. With one
shard (the host's choice wherever a product is large enough to be run in parallel by the
layers instead) the results equal the layer-by-layer path's bit for bit.

Layout. ``table`` is int64 ``(n_shards, layers, N_COLUMNS)``: for each shard and Dense
layer, its widths, the offsets of its weight ``(in, out)`` and bias ``(out,)`` in the
model's flat parameter (and gradient) buffer, the offsets of its ``z``, ``y``, ``dz``
and ``dx`` arrays (whole batch, rows in order) in one flat activation buffer ``acts``,
the shard's rows, its slot of ``work``, its partial sums and, for shards past the first,
where its ``dW_s`` and ``db_s`` go in ``parts``; and the shard's three GEMM plans
(forward, dW, dx). ``act_params`` (float64, one per layer) holds each activation's
parameter. Offsets are in elements; every view is C-contiguous.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from numba import prange

from numbanet._jit import kernel, parallel_kernel
from numbanet.kernels.activations import IDENTITY, RELU, _backward_serial, _forward_serial
from numbanet.kernels.losses import run_reraising, scale_row_range
from numbanet.kernels.matmul import _gemm_serial, _narrow_gemm, _small_k_gemm
from numbanet.kernels.reductions import ROW_CHUNK, _column_sum_serial
from numbanet.kernels.updates import as_kernel, driver_module

__all__ = [
    "N_COLUMNS",
    "StepDriver",
    "loss_rows",
    "output_view",
    "step_driver",
    "train_shard",
]

# Columns of the layer table.
IN = 0  # input width
OUT = 1  # output width
W = 2  # weight offset in the flat parameter/gradient buffers
B = 3  # bias offset
ACT = 4  # activation id (ACTIVATION_IDS)
Z = 5  # offsets in acts of the whole batch's arrays: pre-activation z (rows, out)
Y = 6  # activation y (rows, out); equal to Z when y overwrites z
DZ = 7  # dz (rows, out), when the activation's derivative takes its own pass
DX = 8  # the input gradient (rows, in), for layers above the first
FUSE_BELOW = 9  # 1: the dx product applies the ReLU derivative of the layer below
R0 = 10  # the shard's rows: [R0, R1)
R1 = 11
WORK = 12  # the shard's slot of work: [WORK, WORK_END)
WORK_END = 13
PARTIALS = 14  # offset of the shard's float64 bias partial sums (column_sum_partials)
PART = 15  # shards past the first: offset of dW_s (in * out), then db_s (out), in parts
# Three products, each described by PLAN_WIDTH columns: forward z = x @ W, dW = x.T @ dz,
# dx = dz @ W.T. Every flag the GEMM takes is read from the table at run time: a literal
# True or False passed from here would make Numba compile another specialization of the
# whole GEMM for it (measured: a first step without cached kernels took 36 s, not 14).
PLAN_FORWARD = 16
PLAN_DW = PLAN_FORWARD + 9
PLAN_DX = PLAN_DW + 9
# within a plan
MB, NB, SWAP, ROUTE = 0, 1, 2, 3  # the GemmPlan
# ROUTE: which kernel computes the product (GemmPlan.narrow, GemmPlan.small_k, or neither)
ROUTE_PACKED, ROUTE_NARROW, ROUTE_SMALL_K = 0, 1, 2
TRANSPOSE_A, TRANSPOSE_B = 4, 5
HAS_BIAS = 6
EPILOGUE_ACT = 7  # the activation id of the epilogue, or -1
DERIVATIVE = 8  # 1: the epilogue multiplies by that activation's derivative
PLAN_WIDTH = 9
N_COLUMNS = PLAN_DX + PLAN_WIDTH


@kernel(inline="always")
def _product(a, b, out, work, plan, bias, y, z_saved):
    """``out = op(a) @ op(b)`` with the epilogue, as ``plan`` (a table row's
    ``PLAN_WIDTH`` columns) says: the arguments and the kernel
    :func:`~numbanet.kernels.matmul.gemm_into` would use."""
    transpose_a, transpose_b = plan[TRANSPOSE_A] != 0, plan[TRANSPOSE_B] != 0
    has_bias, derivative = plan[HAS_BIAS] != 0, plan[DERIVATIVE] != 0
    if plan[ROUTE] == ROUTE_NARROW:
        _narrow_gemm(a, b, out, transpose_a, transpose_b, work, bias, has_bias, y,
                     z_saved, plan[EPILOGUE_ACT], derivative)
    elif plan[ROUTE] == ROUTE_SMALL_K:
        _small_k_gemm(a, b, out, transpose_a, transpose_b, work, bias, has_bias, y,
                      z_saved, plan[EPILOGUE_ACT], derivative)
    else:
        _gemm_serial(a, b, out, transpose_a, transpose_b, work, plan[MB], plan[NB],
                     plan[SWAP] != 0, bias, has_bias, y, z_saved, plan[EPILOGUE_ACT],
                     derivative)


@kernel(inline="always")
def _plan(layer, start):
    """The ``PLAN_WIDTH`` columns of ``layer`` from ``start``."""
    return layer[start : start + PLAN_WIDTH]


@kernel(inline="always")
def _view(flat, offset, rows, cols):
    """``flat[offset : offset + rows * cols]`` as a C-contiguous ``(rows, cols)`` array."""
    return flat[offset : offset + rows * cols].reshape((rows, cols))


@kernel(inline="always")
def _forward_shard(x, params, shard, act_params, acts, work):
    """Rows ``[R0, R1)`` of every layer's forward pass (``shard`` is ``table[s]``).

    Layer ``i``: ``z = x_i @ W + b`` with ReLU or the identity applied in the GEMM
    epilogue (``y`` may be ``z``), any other activation in its own pass
    ``y = act(z)``; ``x_{i+1} = y``. Writes only the shard's rows of each ``z`` and
    ``y`` and its own slot of ``work``.
    """
    for i in range(shard.shape[0]):
        layer = shard[i]
        r0, r1 = layer[R0], layer[R1]
        rows = r1 - r0
        n_in, n_out = layer[IN], layer[OUT]
        slot = work[layer[WORK] : layer[WORK_END]]
        h = x[r0:r1] if i == 0 else _view(acts, shard[i - 1, Y] + r0 * n_in, rows, n_in)
        w = _view(params, layer[W], n_in, n_out)
        b = params[layer[B] : layer[B] + n_out]
        z = _view(acts, layer[Z] + r0 * n_out, rows, n_out)
        y = _view(acts, layer[Y] + r0 * n_out, rows, n_out)
        _product(h, w, z, slot, _plan(layer, PLAN_FORWARD), b, y, z)
        if layer[ACT] != RELU and layer[ACT] != IDENTITY:  # not in the epilogue
            _forward_serial(layer[ACT], act_params[i], z.reshape(rows * n_out),
                            y.reshape(rows * n_out))


@kernel(inline="always")
def _backward_shard(x, params, grads, shard, act_params, acts, work, partials, d_out, parts):
    """Rows ``[R0, R1)`` of the backward pass from their rows of ``d_out``
    (d(loss)/d(output)), after :func:`_forward_shard` on the same shard.

    Layer ``i``, last to first: ``dz = act'(z) * grad`` (skipped for the identity, or
    when the layer above already applied the derivative), ``dW_s = x_i.T @ dz``,
    ``db_s = sum(dz, axis=0)`` (rows added in fixed chunks, into the shard's block of
    ``partials``), then, above the first layer, ``grad = dz @ W.T``, times the ReLU
    derivative of layer ``i - 1`` in the GEMM epilogue when ``FUSE_BELOW``. No input
    gradient for the first layer. ``dW_s``/``db_s`` go to ``grads`` (the first shard)
    or to the shard's place in ``parts`` (the others); :func:`_add_shard_gradients`
    adds them up.
    """
    first = shard[0, R0] == 0
    grad = d_out[shard[0, R0] : shard[0, R1]]
    grad_is_dz = False
    for i in range(shard.shape[0] - 1, -1, -1):
        layer = shard[i]
        r0, r1 = layer[R0], layer[R1]
        rows = r1 - r0
        n_in, n_out = layer[IN], layer[OUT]
        slot = work[layer[WORK] : layer[WORK_END]]
        below = shard[max(i - 1, 0)]
        h = x[r0:r1] if i == 0 else _view(acts, below[Y] + r0 * n_in, rows, n_in)
        if grad_is_dz or layer[ACT] == IDENTITY:
            dz = grad
        else:
            size = rows * n_out
            dz = _view(acts, layer[DZ] + r0 * n_out, rows, n_out)
            z = acts[layer[Z] + r0 * n_out : layer[Z] + r0 * n_out + size]
            y = acts[layer[Y] + r0 * n_out : layer[Y] + r0 * n_out + size]
            _backward_serial(layer[ACT], act_params[i], z, y, grad.reshape(size),
                             dz.reshape(size))
        if first:
            dw = _view(grads, layer[W], n_in, n_out)
            db = grads[layer[B] : layer[B] + n_out]
        else:
            dw = _view(parts, layer[PART], n_in, n_out)
            db = parts[layer[PART] + n_in * n_out : layer[PART] + n_in * n_out + n_out]
        _product(h, dz, dw, slot, _plan(layer, PLAN_DW), db, dw, dw)
        n_chunks = max(1, (rows + ROW_CHUNK - 1) // ROW_CHUNK)
        _column_sum_serial(dz, db, _view(partials, layer[PARTIALS], n_chunks, n_out))
        if i > 0:
            w = _view(params, layer[W], n_in, n_out)
            dx = _view(acts, layer[DX] + r0 * n_in, rows, n_in)
            # With FUSE_BELOW the plan's epilogue multiplies by ReLU' of the layer below,
            # read from its saved z: the layer below then receives its dz directly.
            z_below = _view(acts, below[Z] + r0 * n_in, rows, n_in)
            _product(dz, w, dx, slot, _plan(layer, PLAN_DX), db, dx, z_below)
            grad_is_dz = layer[FUSE_BELOW] != 0
            grad = dx


@kernel(inline="always")
def _add_in_range(dst, start, src, src_start, count, lo, hi):
    """``dst[j] += src[src_start + j - start]`` for the ``j`` of ``[start, start + count)``
    that lie in ``[lo, hi)``."""
    first, end = max(lo, start), min(hi, start + count)
    if end <= first:
        return
    # Views from zero: a loop over range(first, end) keeps a wraparound check per access
    # and does not vectorize (as in numbanet.kernels.penalty).
    target = dst[first:end]
    source = src[src_start + first - start : src_start + end - start]
    for j in range(end - first):
        target[j] += source[j]


@kernel
def _add_shard_gradients(grads, table, parts, block, n_blocks):
    """``grads += dW_s, db_s`` for shards ``s = 1, 2, ...``, in that order, on block
    ``block`` of ``n_blocks`` equal blocks of ``grads`` (flat indices): each element
    adds the same terms in the same order whatever the blocks."""
    n = grads.shape[0]
    lo, hi = block * n // n_blocks, (block + 1) * n // n_blocks
    for s in range(1, table.shape[0]):
        for i in range(table.shape[1]):
            layer = table[s, i]
            size = layer[IN] * layer[OUT]
            _add_in_range(grads, layer[W], parts, layer[PART], size, lo, hi)
            _add_in_range(grads, layer[B], parts, layer[PART] + size, layer[OUT], lo, hi)


# ---------------------------------------------------------------------------------------
# The whole training pass in one call: forward, loss rows and backward of each shard
# ---------------------------------------------------------------------------------------


@kernel(inline="always")
def output_view(acts, table, rows):
    """The last layer's output ``(rows, out)``, a view of ``acts``."""
    last = table[0, table.shape[1] - 1]
    return _view(acts, last[Y], rows, last[OUT])


@kernel(inline="always")
def loss_rows(loss_row, shard, out, t, aux, hp, gs, weight, d_out, rowloss):
    """The loss of the shard's rows ``[R0, R1)``: ``rowloss[r]`` and ``d_out[r, :]``
    from the row kernel ``loss_row`` (the contract of :mod:`numbanet.kernels.losses`),
    then times the sample weights when ``weight`` is not empty: what the loss host's
    driver and ``scale_rows`` compute for those rows, bit for bit."""
    r0, r1 = shard[0, R0], shard[0, R1]
    for r in range(r0, r1):
        rowloss[r] = loss_row(r, out, t, aux, hp, gs, d_out)
    if weight.shape[0] != 0:
        scale_row_range(weight, d_out, rowloss, r0, r1)


@kernel(inline="always")
def train_shard(loss_row, shard, x, params, grads, act_params, acts, work, partials, parts,
                t, aux, hp, gs, weight, d_out, rowloss, out):
    """One shard's forward pass, loss rows (``loss_row``, see :func:`loss_rows`) and
    backward pass: the body of a :class:`StepDriver`'s loop over shards."""
    _forward_shard(x, params, shard, act_params, acts, work)
    loss_rows(loss_row, shard, out, t, aux, hp, gs, weight, d_out, rowloss)
    _backward_shard(x, params, grads, shard, act_params, acts, work, partials, d_out, parts)


_STEP_TEMPLATE = '''\
"""Generated by numbanet.kernels.dense_stack for {target}; do not edit."""
from numba import prange

from numbanet._jit import kernel as _serial_jit
from numbanet._jit import parallel_kernel as _parallel_jit
from numbanet.kernels.dense_stack import _add_shard_gradients, output_view, train_shard
from numbanet.kernels.updates import as_kernel as _as_kernel
from {module} import {attr} as _plugin_kernel

_k = _as_kernel(_plugin_kernel)


@_parallel_jit
def run_parallel(x, params, grads, table, act_params, acts, work, partials, parts,
                 t, aux, hp, gs, weight, d_out, rowloss):
    out = output_view(acts, table, x.shape[0])
    for s in prange(table.shape[0]):
        train_shard(_k, table[s], x, params, grads, act_params, acts, work, partials,
                    parts, t, aux, hp, gs, weight, d_out, rowloss, out)
    for b in prange(table.shape[0]):
        _add_shard_gradients(grads, table, parts, b, table.shape[0])


@_serial_jit
def run_serial(x, params, grads, table, act_params, acts, work, partials, parts,
               t, aux, hp, gs, weight, d_out, rowloss):
    out = output_view(acts, table, x.shape[0])
    for s in range(table.shape[0]):
        train_shard(_k, table[s], x, params, grads, act_params, acts, work, partials,
                    parts, t, aux, hp, gs, weight, d_out, rowloss, out)
    _add_shard_gradients(grads, table, parts, 0, 1)
'''


def _step_fallback(func: Any) -> Any:
    """The step for a row kernel that cannot be imported by name (defined in a
    function or ``__main__``): the template's code, compiled without a disk cache."""
    k = as_kernel(func)

    @parallel_kernel(cache=False)
    def run_parallel(x, params, grads, table, act_params, acts, work, partials, parts,
                     t, aux, hp, gs, weight, d_out, rowloss):  # pragma: no cover - compiled
        out = output_view(acts, table, x.shape[0])
        for s in prange(table.shape[0]):
            train_shard(k, table[s], x, params, grads, act_params, acts, work, partials,
                        parts, t, aux, hp, gs, weight, d_out, rowloss, out)
        for b in prange(table.shape[0]):
            _add_shard_gradients(grads, table, parts, b, table.shape[0])

    @kernel(cache=False)
    def run_serial(x, params, grads, table, act_params, acts, work, partials, parts,
                   t, aux, hp, gs, weight, d_out, rowloss):  # pragma: no cover - compiled
        out = output_view(acts, table, x.shape[0])
        for s in range(table.shape[0]):
            train_shard(k, table[s], x, params, grads, act_params, acts, work, partials,
                        parts, t, aux, hp, gs, weight, d_out, rowloss, out)
        _add_shard_gradients(grads, table, parts, 0, 1)

    return SimpleNamespace(run_parallel=run_parallel, run_serial=run_serial)


class StepDriver:
    """The Dense stack's whole training pass for one loss row kernel.

    ``run_parallel`` / ``run_serial`` ``(x, params, grads, table, act_params, acts,
    work, partials, parts, t, aux, hp, gs, weight, d_out, rowloss)``:

    * ``x`` ``(rows, table[0, 0, IN])``; ``params`` and ``grads`` the model's flat
      parameter and gradient buffers (every weight and bias gradient is overwritten);
      ``table`` ``(n_shards, layers, N_COLUMNS)`` int64; ``act_params`` ``(layers,)``
      float64; ``acts`` 1-D, holding every ``z``/``y``/``dz``/``dx`` of the table;
      ``work`` 1-D, every shard's GEMM slot; ``partials`` float64, each shard's and
      layer's ``(ceil(shard rows / ROW_CHUNK), out)`` block; ``parts`` the ``dW_s`` and
      ``db_s`` of every shard past the first. Float arrays share the model's dtype.
    * the loss row kernel's arguments (:mod:`numbanet.kernels.losses`): targets ``t``,
      ``aux``, ``hp``, the gradient scale ``gs``; ``weight`` float64 sample weights of
      the rows, empty when the batch is unweighted; ``d_out`` ``(rows, out)`` receives
      d(loss)/d(output); ``rowloss`` float64 ``(rows,)`` each row's loss (the host
      reduces it).

    Per shard, in one ``prange`` (a plain loop in the serial twin): the forward pass,
    the shard's loss rows (:func:`loss_rows`) and the backward pass; after the loop,
    serially, ``grads += dW_s, db_s`` for ``s = 1, 2, ...`` in order.

    Parallel contract: shard ``s`` reads its rows of ``x`` and the parameters, and
    writes only its rows of ``d_out``, ``rowloss`` and every activation array, its own
    slot of ``work``, block of ``partials`` and ``dW_s``/``db_s`` (in ``grads`` for the
    first shard, in ``parts`` for the others): race-free. Results equal the layer path
    (the layers' methods, the loss host's driver) bit for bit with one shard, and to
    rounding with several (the shards' gradients are added in another order).

    One generated, disk-cached module per row kernel, as the loss and update drivers
    (:func:`numbanet.kernels.updates.driver_module`).
    """

    def __init__(self, func: Any) -> None:
        module = driver_module(func, "stack", _STEP_TEMPLATE, _step_fallback)
        self.run_parallel = module.run_parallel
        self.run_serial = module.run_serial

    def __call__(self, parallel: bool, *args: Any) -> None:
        """``run_parallel(*args)`` or ``run_serial(*args)``; a row kernel's exception
        raised in the parallel region is raised again by the serial twin
        (:func:`~numbanet.kernels.losses.run_reraising`)."""
        if parallel:
            run_reraising(self.run_parallel, self.run_serial, *args)
        else:
            self.run_serial(*args)


_drivers: dict[Any, StepDriver] = {}


def step_driver(func: Any) -> StepDriver:
    """The shared :class:`StepDriver` for loss row kernel ``func``."""
    drv = _drivers.get(func)
    if drv is None:
        drv = _drivers[func] = StepDriver(func)
    return drv
