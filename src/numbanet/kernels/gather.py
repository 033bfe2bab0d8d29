"""Row gathers for shuffled mini-batches: ``out[i] = source[index[i]]``.

The fit loop copies each shuffled batch's rows of ``X`` and of the targets into buffers
it reuses (:class:`numbanet.sampling.BatchLoader`). ``np.take(..., axis=0, out=...)``
does that, but on scikit-learn-size batches, where a whole training step takes about
150 us, its costs show:

* a fixed cost of about 1 us per call, paid twice per step (``X`` and the targets);
  :func:`gather_row_pairs` copies both in one call;
* cache misses: a shuffled batch reads rows scattered over ``X``, and when ``X`` is not
  in cache every row waits for memory. The kernels prefetch the row
  :data:`PREFETCH_DISTANCE` indices ahead, so those waits overlap.

Measured on one thread of a shared 2-core AMD EPYC VM (a throwaway timing script cycling
through an epoch's shuffled batches, medians of 15 runs): 200 rows of a 75000 x 20
float64 ``X`` and its int64 labels, 7.0 us with two ``np.take`` calls against 4.0 us
here (7.2 us without the prefetch; 1.7 us with every row in cache); 32 rows of a
1797 x 64 float32 ``X``, 2.5 us against 0.8 us.

The kernels take 2-D C-contiguous arrays: callers view an ``(n, ...)`` array as
``(n, prod(...))`` (a free reshape of a C-contiguous array) and 1-D targets as
``(n, 1)``; :func:`as_rows` makes that view, or says the kernels do not take the array.
Each dtype is its own compiled specialization, so only the dtypes of
:data:`GATHER_DTYPES` are taken; callers use ``np.take`` for any other.

An index outside ``[0, n)`` is skipped: its output row is left as it was and the kernel
returns how many there were, so the caller can redo the batch with ``np.take`` (which
never reads out of bounds either). Otherwise ``out`` equals ``np.take(source, index,
axis=0)`` bit for bit: the kernels copy elements, they compute nothing. ``out`` must have
``len(index)`` rows of ``source``'s width and dtype (unchecked).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from numbanet._jit import kernel

__all__ = ["GATHER_DTYPES", "PREFETCH_DISTANCE", "as_rows", "gather_row_pairs"]

#: Dtypes the gather kernels take (others use ``np.take``): each one compiles a
#: specialization on first use, so this is limited to the dtypes training sees.
GATHER_DTYPES = frozenset(np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64))

#: How many indices ahead the kernels prefetch the row (its first cache line: for rows of
#: a few lines the hardware fetches the rest in time, for long rows it streams them). On
#: the 75000 x 20 float64 batch above, 8 did better than 4 and 16 (4.0, 4.7 and 8.1 us).
PREFETCH_DISTANCE = 8


def as_rows(array: np.ndarray) -> np.ndarray | None:
    """``array`` viewed as a 2-D C-contiguous ``(n, row size)`` array, without copying.

    Returns:
        The view, or ``None`` when the gather kernels do not take ``array`` (not a
        C-contiguous ndarray of at least one dimension with a dtype of
        :data:`GATHER_DTYPES`: object, structured and byte-swapped arrays among them);
        the caller then uses ``np.take``.
    """
    if (not isinstance(array, np.ndarray) or array.ndim == 0
            or not array.flags.c_contiguous or array.dtype not in GATHER_DTYPES):
        return None
    # The row size is spelled out: reshape(n, -1) cannot infer it for zero-width rows.
    return array.reshape(array.shape[0], math.prod(array.shape[1:]))


@intrinsic
def _prefetch(typingctx, source, row, col):
    """Hint that ``source[row, col]`` (2-D C-contiguous, any dtype) is read soon.

    A hint only (``prefetcht0``): it never faults and changes no result. numbanet's
    SIMD prefetch (:mod:`numbanet.kernels._simd`) takes float arrays only; labels are
    int64.
    """
    if not (isinstance(source, types.Array) and source.ndim == 2 and source.layout == "C"
            and isinstance(row, types.Integer) and isinstance(col, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        array = context.make_array(sig.args[0])(context, builder, args[0])
        width = builder.extract_value(array.shape, 1)
        offset = builder.add(builder.mul(args[1], width), args[2])
        pointer = builder.gep(array.data, [offset])
        i8_pointer, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8_pointer, i32, i32, i32]),
            "llvm.prefetch.p0")
        # (address, read=0, locality=3: into L1, data cache=1)
        builder.call(function, [builder.bitcast(pointer, i8_pointer), ir.Constant(i32, 0),
                                ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(source, types.intp, types.intp), codegen


@kernel(inline="always")
def _copy_row(source, row, out, i):
    """``out[i, :] = source[row, :]``."""
    for j in range(source.shape[1]):
        out[i, j] = source[row, j]


@kernel
def gather_row_pairs(source_a, source_b, index, out_a, out_b):
    """``out_a[i, :] = source_a[index[i], :]`` and ``out_b[i, :] = source_b[index[i], :]``
    for every ``i``: two arrays with the same rows (``X`` and its targets) in one call,
    which saves a dispatch; serial.

    Args:
        source_a: ``(n, m)`` C-contiguous.
        source_b: ``(n, p)`` C-contiguous, any dtype of its own.
        index: ``(k,)`` integer row numbers.
        out_a: ``(k, m)`` C-contiguous, ``source_a``'s dtype; written, except the rows
            whose index is outside ``[0, n)``.
        out_b: ``(k, p)`` C-contiguous, ``source_b``'s dtype; written likewise.

    Returns:
        How many indices were outside ``[0, n)`` (0 for a batch of a permutation).
    """
    n = min(source_a.shape[0], source_b.shape[0])
    k = index.shape[0]
    outside = 0
    for i in range(k):
        if i + PREFETCH_DISTANCE < k:
            ahead = index[i + PREFETCH_DISTANCE]
            if 0 <= ahead < n:
                _prefetch(source_a, ahead, 0)
                _prefetch(source_b, ahead, 0)
        row = index[i]
        if 0 <= row < n:
            _copy_row(source_a, row, out_a, i)
            _copy_row(source_b, row, out_b, i)
        else:
            outside += 1
    return outside
