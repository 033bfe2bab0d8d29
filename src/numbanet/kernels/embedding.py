"""Embedding lookup (a row gather) and its deterministic scatter-add gradient.

Forward: ``out[i] = weight[idx[i]]`` for a flat ``idx`` of ``int64`` row numbers.

Backward: ``dweight = 0``, then ``dweight[idx[i]] += dy[i]`` for every ``i`` in order,
skipping ``idx[i] == padding_idx`` (that row's gradient stays zero). A repeated index
sums several rows of ``dy`` into one row of ``dweight``; done in parallel over ``i``, the
order of those additions, and so the rounding, would follow the thread schedule.
Here the parallel loop runs over blocks of :data:`COL_BLOCK` *columns* instead: each task
owns a vertical strip of ``dweight``, zeroes it and adds every ``dy[i]``'s strip in the
order ``i = 0, 1, 2, ...``. Every element of ``dweight`` is then the same sequence of
additions whatever the thread count, and the serial twin (one strip holding every column)
performs the very same additions: bit-identical results on every path.

Unchecked entries (the layer checks the indices once, before any kernel):
:func:`embedding_forward`, :func:`embedding_backward`.
"""

from __future__ import annotations

import numba
import numpy as np

from numbanet._jit import kernel, parallel_kernel

__all__ = ["COL_BLOCK", "PARALLEL_MIN", "ROW_CHUNK", "embedding_backward",
           "embedding_forward", "gather_counts"]

#: Rows of the output per parallel task in the gather.
ROW_CHUNK = 256
#: Columns per parallel task of the scatter-add (64 bytes of float32: whole cache lines).
COL_BLOCK = 16
#: Below this many elements touched the serial twins run.
PARALLEL_MIN = 1 << 16


@kernel
def _gather_rows(idx, weight, lo, hi, out):
    """``out[i] = weight[idx[i]]`` for ``i`` in ``lo:hi``; returns how many indices were out
    of range (those rows are left unwritten: a safety net, the layer checks first)."""
    vocab = weight.shape[0]
    bad = 0
    for i in range(lo, hi):
        k = idx[i]
        if k < 0 or k >= vocab:
            bad += 1
            continue
        src = weight[k]
        dst = out[i]
        for j in range(src.shape[0]):
            dst[j] = src[j]
    return bad


@parallel_kernel
def _gather_parallel(idx, weight, out, bad):
    """``prange`` over chunks of :data:`ROW_CHUNK` output rows; chunk ``c`` writes its own
    rows and ``bad[c]`` (a count per chunk: a ``prange`` reduction variable would make
    Numba allocate an array per call)."""
    n = idx.shape[0]
    nchunks = (n + ROW_CHUNK - 1) // ROW_CHUNK
    for c in numba.prange(nchunks):
        lo = c * ROW_CHUNK
        bad[c] = _gather_rows(idx, weight, lo, min(lo + ROW_CHUNK, n), out)
    total = 0
    for c in range(nchunks):
        total += bad[c]
    return total


@kernel
def _gather_serial(idx, weight, out, bad):
    return _gather_rows(idx, weight, 0, idx.shape[0], out)


@kernel
def _scatter_strip(idx, dy, padding_idx, clo, chi, dweight):
    """Columns ``clo:chi`` of ``dweight``: zero, then add ``dy[i, clo:chi]`` into row
    ``idx[i]`` for ``i = 0, 1, ...`` in order (``padding_idx`` rows skipped)."""
    w = chi - clo
    zero = dweight.dtype.type(0)
    for r in range(dweight.shape[0]):
        row = dweight[r, clo:chi]
        for j in range(w):
            row[j] = zero
    for i in range(idx.shape[0]):
        k = idx[i]
        if k == padding_idx:
            continue
        dst = dweight[k, clo:chi]
        src = dy[i, clo:chi]
        for j in range(w):
            dst[j] += src[j]


@parallel_kernel
def _scatter_parallel(idx, dy, padding_idx, dweight):
    """``prange`` over strips of :data:`COL_BLOCK` columns: strip ``b`` writes only its
    columns of ``dweight`` (race-free), adding rows in index order (deterministic)."""
    dim = dweight.shape[1]
    for b in numba.prange((dim + COL_BLOCK - 1) // COL_BLOCK):
        clo = b * COL_BLOCK
        _scatter_strip(idx, dy, padding_idx, clo, min(clo + COL_BLOCK, dim), dweight)


@kernel
def _scatter_serial(idx, dy, padding_idx, dweight):
    _scatter_strip(idx, dy, padding_idx, 0, dweight.shape[1], dweight)


def gather_counts(n: int) -> np.ndarray:
    """The ``int64`` workspace :func:`embedding_forward` needs for ``n`` indices."""
    return np.zeros(max(1, -(-n // ROW_CHUNK)), dtype=np.int64)


def embedding_forward(idx: np.ndarray, weight: np.ndarray, out: np.ndarray,
                      counts: np.ndarray) -> int:
    """Gather rows of ``weight``; unchecked.

    Args:
        idx: 1-D C-contiguous ``int64`` row numbers, each in ``[0, weight.shape[0])``.
        weight: ``(num_embeddings, dim)`` C-contiguous float32/float64.
        out: ``(idx.shape[0], dim)`` of ``weight``'s dtype; receives the rows.
        counts: at least ``gather_counts(idx.shape[0]).shape[0]`` ``int64``; overwritten.

    Returns:
        The number of indices out of range (their rows of ``out`` are left unwritten);
        0 when the caller checked the indices.
    """
    run = _gather_parallel if out.size >= PARALLEL_MIN else _gather_serial
    return int(run(idx, weight, out, counts))


def embedding_backward(idx: np.ndarray, dy: np.ndarray, padding_idx: int,
                       dweight: np.ndarray) -> None:
    """``dweight = 0; dweight[idx[i]] += dy[i]`` in index order; unchecked.

    Args:
        idx: 1-D ``int64`` row numbers in range (as given to :func:`embedding_forward`).
        dy: ``(idx.shape[0], dim)``, d(loss)/d(out).
        padding_idx: a row whose gradient stays zero, or ``-1`` for none.
        dweight: ``(num_embeddings, dim)``; overwritten with the gradient.

    Parallel over column strips when there are at least two and the work (the zeroed
    table plus the added rows) reaches :data:`PARALLEL_MIN` elements; the same result
    bit for bit on either path and for any thread count.
    """
    vocab, dim = dweight.shape
    work = (vocab + idx.shape[0]) * dim
    if dim > COL_BLOCK and work >= PARALLEL_MIN:
        _scatter_parallel(idx, dy, padding_idx, dweight)
    else:
        _scatter_serial(idx, dy, padding_idx, dweight)
