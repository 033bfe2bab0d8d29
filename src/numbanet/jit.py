"""Compile your own kernels the way numbanet compiles its own (for plugin authors).

An optimizer, loss or layer plugin writes its per-element, per-row or per-batch kernels
as plain Python functions and decorates them here, so they get numbanet's Numba flags
(the fastmath set that keeps NaN checks, ``error_model='numpy'``, ``nogil``) and its
disk cache, whose index also notices edits to the modules a kernel imports::

    from numbanet.jit import kernel, parallel_kernel

    @kernel
    def lion_update(i, p, g, gs, slots, hp, sc):
        ...

    @parallel_kernel
    def rms_rows(x, out):          # prange loops run on numbanet's threads
        ...

Define kernels at module top level: closures built by factories miss the disk cache in
every new process. ``@kernel(inline="always")`` and other ``numba.njit`` options are
passed through.

Attributes:
    FASTMATH: the fastmath flags every kernel gets by default.
    ELEMENTWISE_FASTMATH: the narrower set for elementwise kernels whose serial and
        parallel twins must agree bit for bit (``@kernel(fastmath=set(ELEMENTWISE_FASTMATH))``).
    EXACT_MATH: no flag at all, for optimizer kernels (``@kernel(fastmath=set(EXACT_MATH))``):
        every operation rounds as written, so the update's serial and parallel drivers
        agree bit for bit, and numbanet may then run the update in parallel on buffers
        of :data:`numbanet.kernels.updates.EXACT_PARALLEL_MIN` elements and more when it
        has more than one thread. A kernel with fastmath flags runs in parallel only from
        :data:`numbanet.kernels.updates.SERIAL_THRESHOLD` elements, whatever the thread
        count, so that its results never depend on it.
"""

from __future__ import annotations

from numbanet._jit import ELEMENTWISE_FASTMATH, EXACT_MATH, FASTMATH, kernel, parallel_kernel

__all__ = ["ELEMENTWISE_FASTMATH", "EXACT_MATH", "FASTMATH", "kernel", "parallel_kernel"]
