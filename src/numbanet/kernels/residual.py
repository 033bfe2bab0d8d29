"""The sums of a residual block: ``y = x + f(x)`` forward (rectified when a ReLU layer
follows the block) and ``dx = dy + df`` backward, over flat arrays.

``numpy.add`` computed them before, on one thread: the small ResNet of ``numbanet
bench`` makes two such sums of up to 4 MiB per block and step. Here the arrays are cut
into fixed chunks of :data:`CHUNK` elements; from :data:`PARALLEL_MIN` elements on, a
``prange`` spreads the chunks over the threads. Each element is one addition rounded to
the dtype, so the result is NumPy's bit for bit, on any thread count.

With ``relu``, each sum ``v`` is written as ``0 if v < 0 else v`` (the ReLU layer's own
rule: NaN passes through), what an ``Activation("relu")`` after the block computes in a
pass of its own (:func:`numbanet.nn.module.fuse_output_relus`).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from numbanet._jit import ELEMENTWISE_FASTMATH, kernel, parallel_kernel
from numbanet.kernels._simd import vadd, vlanes, vload, vrelu, vstore

__all__ = ["CHUNK", "PARALLEL_MIN", "add_into"]

#: Elements per chunk (64 KiB of float32): long enough to vectorize and stream.
CHUNK = 16384
#: From this many elements the chunks run in parallel: below it, a parallel region's
#: start (a few microseconds) costs more than the sum of a 256 KiB float32 array.
PARALLEL_MIN = 1 << 16


@kernel(inline="always", fastmath=set(ELEMENTWISE_FASTMATH))
def _add_chunk(a, b, out, lo, hi, relu):
    """``out[i] = a[i] + b[i]`` (rectified with ``relu``) for ``i`` in ``lo:hi``.

    Explicit vectors, one loop per case: with the ``relu`` test inside one scalar loop
    LLVM kept it scalar, 10x slower than ``numpy.add`` (1.5 ms against 0.14 ms for
    4 MiB of float32 on one thread).
    """
    lanes = vlanes(out)
    whole = lo + (hi - lo) // lanes * lanes
    if relu:
        for i in range(lo, whole, lanes):
            vstore(out, i, vrelu(vadd(vload(a, i), vload(b, i))))
    else:
        for i in range(lo, whole, lanes):
            vstore(out, i, vadd(vload(a, i), vload(b, i)))
    zero = out.dtype.type(0)
    for i in range(whole, hi):
        v = a[i] + b[i]
        out[i] = zero if relu and v < zero else v


@parallel_kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _add_parallel(a, b, out, relu):
    """``prange`` over the chunks; chunk ``c`` writes only its slice of ``out``."""
    n = out.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        _add_chunk(a, b, out, c * CHUNK, min((c + 1) * CHUNK, n), relu)


@kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _add_serial(a, b, out, relu):
    """Serial twin of :func:`_add_parallel` (the same values)."""
    _add_chunk(a, b, out, 0, out.shape[0], relu)


def add_into(a: np.ndarray, b: np.ndarray, out: np.ndarray, relu: bool = False) -> None:
    """``out = a + b``, or ``relu(a + b)`` with ``relu``; unchecked.

    Args:
        a, b, out: C-contiguous arrays of one float dtype and shape; ``out`` may be ``a``
            or ``b``.
        relu: rectify each sum (``0 if v < 0 else v``).
    """
    af, bf, of = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    if of.shape[0] >= PARALLEL_MIN:
        _add_parallel(af, bf, of, relu)
    else:
        _add_serial(af, bf, of, relu)
