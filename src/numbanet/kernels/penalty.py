"""The L2 penalty's gradient step over the flat buffers: ``grads += factor * params`` on
the ranges the weight parameters occupy.

:class:`numbanet.sklearn.L2Penalty` adds ``factor * W`` to the gradient of every weight
matrix ``W`` each training step. Done with NumPy that is two calls per matrix
(``np.multiply(W, factor, out=tmp); grad += tmp``), about 5 us per step for a two-layer
MLP, a few percent of a scikit-learn-size step (~150 us). The parameters and gradients
of a :class:`numbanet.Sequential` are views into two flat buffers at the same offsets, so
one kernel call given the weights' ``(start, stop)`` ranges does it all.

The arithmetic is NumPy's, bit for bit: ``factor`` is first rounded to the buffers' dtype
(NumPy casts a Python float to a float32 array's dtype the same way), each product is
rounded to the dtype, then added. The kernel is compiled without ``fastmath``: its
``contract`` flag would let LLVM fuse the multiply and the add into one FMA, rounded
once, and the results would no longer match the NumPy code this replaced.
"""

from __future__ import annotations

from numbanet._jit import kernel

__all__ = ["add_scaled_ranges"]


@kernel(fastmath=False)
def add_scaled_ranges(values, ranges, factor, out):
    """``out[start:stop] += values[start:stop] * factor`` for every ``(start, stop)`` row of
    ``ranges``; unchecked, serial.

    Args:
        values: 1-D float32 or float64 array (the flat parameters).
        ranges: ``(k, 2)`` int64 array of ``(start, stop)`` pairs, each within both
            ``values`` and ``out``.
        factor: a float, rounded to ``values``' dtype before multiplying.
        out: 1-D array of ``values``' dtype, not overlapping it (the flat gradients);
            updated in place.
    """
    scale = values.dtype.type(factor)
    for r in range(ranges.shape[0]):
        start, stop = ranges[r, 0], ranges[r, 1]
        # Views from zero: a loop over range(start, stop) keeps a wraparound check per
        # access and does not vectorize.
        source = values[start:stop]
        target = out[start:stop]
        for i in range(stop - start):
            scaled = source[i] * scale
            target[i] += scaled
