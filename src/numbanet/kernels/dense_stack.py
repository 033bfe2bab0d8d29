"""A stack of Dense layers in one native call: the forward pass, and the backward pass
with the fused ReLU derivatives, without Python between layers.

Why: on a small model each kernel call costs about as much as its arithmetic. A
64-32-10 MLP at batch 32 does 0.2 MFLOP per step; before this module a step made ten
kernel calls (3-5 us of dispatch each: Numba unboxes every array argument) and as many
Python method calls between them. :class:`numbanet.nn.dense_stack.DenseStack` calls
:func:`stack_forward` and :func:`stack_backward` instead: one call each, for any depth.

What they compute is exactly what the layers' own methods compute, kernel for kernel:
the same serial GEMM (:func:`~numbanet.kernels.matmul._gemm_serial`, or
:func:`~numbanet.kernels.matmul._narrow_gemm` for outputs of at most ``NARROW_N``
columns) with the same plan and epilogue, the same activation passes and the same
fixed-order bias-gradient sums. Every parallel kernel here has a serial twin that gives
the same bits (the project's rule), so the results equal the layer-by-layer path's bit
for bit at any thread count. Only serial twins run: the host takes this path only when
every product of the step runs serially anyway (one thread, or products below
``SERIAL_WORK``), so nothing parallel is given up.

Layout. Each Dense layer is one row of ``table`` (int64, columns named below): its
widths, the offsets of its weight ``(in, out)`` and bias ``(out,)`` in the model's flat
parameter (and gradient) buffer, the offsets of its ``z``, ``y``, ``dz`` and ``dx``
arrays in one flat activation buffer ``acts``, and its three GEMM plans (forward, dW,
dx). ``act_params`` (float64, one per layer) holds each activation's parameter.
Every offset is in elements; every view is C-contiguous.
"""

from __future__ import annotations

from numbanet._jit import kernel
from numbanet.kernels.activations import IDENTITY, RELU, _backward_serial, _forward_serial
from numbanet.kernels.matmul import _gemm_serial, _narrow_gemm
from numbanet.kernels.reductions import ROW_CHUNK, _column_sum_serial

__all__ = [
    "N_COLUMNS",
    "stack_backward",
    "stack_forward",
]

# Columns of the layer table.
IN = 0  # input width
OUT = 1  # output width
W = 2  # weight offset in the flat parameter/gradient buffers
B = 3  # bias offset
ACT = 4  # activation id (ACTIVATION_IDS)
TILE_ACT = 5  # what the forward GEMM epilogue applies: RELU for ReLU, else -1 (none)
Z = 6  # offsets in acts: pre-activation z (rows, out)
Y = 7  # activation y (rows, out); equal to Z when y overwrites z
DZ = 8  # dz (rows, out), when the activation's derivative takes its own pass
DX = 9  # the input gradient (rows, in), for layers above the first
FUSE_BELOW = 10  # 1: the dx product applies the ReLU derivative of the layer below
PARTIALS = 11  # offset of this layer's float64 partial sums (column_sum_partials)
# Three plans of four columns each: forward z = x @ W, dW = x.T @ dz, dx = dz @ W.T.
PLAN_FORWARD = 12
PLAN_DW = 16
PLAN_DX = 20
MB, NB, SWAP, NARROW = 0, 1, 2, 3  # within a plan
N_COLUMNS = 24


@kernel
def _product(a, b, out, transpose_a, transpose_b, work, layer, plan,
             bias, has_bias, y, z_saved, act_id, derivative):
    """``out = op(a) @ op(b)`` with the epilogue, by the plan in ``layer[plan:plan+4]``:
    the arguments and the kernel :func:`~numbanet.kernels.matmul.gemm_into` would use."""
    if layer[plan + NARROW] != 0:
        _narrow_gemm(a, b, out, transpose_a, transpose_b, work, bias, has_bias, y,
                     z_saved, act_id, derivative)
    else:
        _gemm_serial(a, b, out, transpose_a, transpose_b, work, layer[plan + MB],
                     layer[plan + NB], layer[plan + SWAP] != 0, bias, has_bias, y,
                     z_saved, act_id, derivative)


@kernel
def _view(flat, offset, rows, cols):
    """``flat[offset : offset + rows * cols]`` as a C-contiguous ``(rows, cols)`` array."""
    return flat[offset : offset + rows * cols].reshape((rows, cols))


@kernel
def stack_forward(x, params, table, act_params, acts, work):
    """Forward pass of the Dense stack; returns the last layer's output (a view of ``acts``).

    Shapes: ``x`` ``(rows, table[0, IN])``; ``params`` the flat parameter buffer;
    ``table`` ``(layers, N_COLUMNS)`` int64; ``act_params`` ``(layers,)`` float64;
    ``acts`` 1-D, every ``z``/``y`` of the table inside it; ``work`` 1-D, at least the
    largest plan's workspace. All float arrays of one dtype but ``act_params``.

    Layer ``i``: ``z = x_i @ W + b`` with ReLU or the identity applied in the GEMM
    epilogue (``y`` may be ``z``), any other activation in its own pass
    ``y = act(z)``; ``x_{i+1} = y``. Serial: see the module docstring.
    """
    rows = x.shape[0]
    h = x
    for i in range(table.shape[0]):
        layer = table[i]
        n_in, n_out = layer[IN], layer[OUT]
        w = _view(params, layer[W], n_in, n_out)
        b = params[layer[B] : layer[B] + n_out]
        z = _view(acts, layer[Z], rows, n_out)
        y = _view(acts, layer[Y], rows, n_out)
        _product(h, w, z, False, False, work, layer, PLAN_FORWARD, b, True, y, z,
                 layer[TILE_ACT], False)
        if layer[ACT] != RELU and layer[ACT] != IDENTITY:  # not in the epilogue
            size = rows * n_out
            _forward_serial(layer[ACT], act_params[i], acts[layer[Z] : layer[Z] + size],
                            acts[layer[Y] : layer[Y] + size])
        h = y
    return h


@kernel
def stack_backward(x, params, grads, table, act_params, acts, work, partials, d_out):
    """Backward pass of the Dense stack after :func:`stack_forward` on the same ``x``.

    Overwrites every weight and bias gradient in ``grads`` (the flat gradient buffer,
    laid out like ``params``) from ``d_out`` ``(rows, table[-1, OUT])``, d(loss)/d(output).
    No input gradient is computed for the first layer. ``partials`` is float64, each
    layer's ``(ceil(rows / ROW_CHUNK), out)`` block at its ``PARTIALS`` offset; other
    arguments as :func:`stack_forward`.

    Layer ``i``, last to first: ``dz = act'(z) * grad`` (skipped for the identity, or
    when the layer above already applied the derivative), ``dW = x_i.T @ dz``,
    ``db = sum(dz, axis=0)`` (rows added in fixed chunks), then, above the first layer,
    ``grad = dz @ W.T``, times the ReLU derivative of layer ``i - 1`` in the GEMM
    epilogue when ``FUSE_BELOW``. Serial: see the module docstring.
    """
    rows = x.shape[0]
    n_chunks = max(1, (rows + ROW_CHUNK - 1) // ROW_CHUNK)
    grad = d_out
    grad_is_dz = False
    for i in range(table.shape[0] - 1, -1, -1):
        layer = table[i]
        n_in, n_out = layer[IN], layer[OUT]
        below = table[max(i - 1, 0)]
        h = x if i == 0 else _view(acts, below[Y], rows, n_in)
        if grad_is_dz or layer[ACT] == IDENTITY:
            dz = grad
        else:
            size = rows * n_out
            dz = _view(acts, layer[DZ], rows, n_out)
            _backward_serial(layer[ACT], act_params[i], acts[layer[Z] : layer[Z] + size],
                             acts[layer[Y] : layer[Y] + size], grad.reshape(size),
                             acts[layer[DZ] : layer[DZ] + size])
        dw = _view(grads, layer[W], n_in, n_out)
        db = grads[layer[B] : layer[B] + n_out]
        _product(h, dz, dw, True, False, work, layer, PLAN_DW, db, False, dw, dw,
                 -1, False)
        _column_sum_serial(dz, db, _view(partials, layer[PARTIALS], n_chunks, n_out))
        if i > 0:
            w = _view(params, layer[W], n_in, n_out)
            dx = _view(acts, layer[DX], rows, n_in)
            if layer[FUSE_BELOW] != 0:
                z_below = _view(acts, below[Z], rows, n_in)
                _product(dz, w, dx, False, True, work, layer, PLAN_DX, db, False, dx,
                         z_below, RELU, True)
                grad_is_dz = True
            else:
                _product(dz, w, dx, False, True, work, layer, PLAN_DX, db, False, dx, dx,
                         -1, False)
                grad_is_dz = False
            grad = dx
