"""Embedding lookup (a row gather) and its deterministic scatter-add gradient.

Forward: ``out[i] = weight[idx[i]]`` for a flat ``idx`` of ``int64`` row numbers.

Backward: ``dweight = 0``, then ``dweight[idx[i]] += dy[i]`` for every ``i`` in order,
skipping ``idx[i] == padding_idx`` (that row's gradient stays zero). A repeated index
sums several rows of ``dy`` into one row of ``dweight``; done in parallel over ``i``, the
order of those additions, and so the rounding, would follow the thread schedule.

Here the indices are first grouped by row with a stable counting sort (serial, integer
work of ``O(len(idx) + num_embeddings)``): ``order[starts[k]:starts[k + 1]]`` lists, in
increasing order, the positions ``i`` with ``idx[i] == k``. The parallel loop then runs
over fixed blocks of :data:`ROW_BLOCK` rows of ``dweight``: a task zeroes its rows and
adds each row's ``dy`` rows in that increasing order. Every element of ``dweight`` is
thus the same sequence of additions as a sequential scatter in index order
(``numpy.add.at``), whatever the thread count; the serial twin runs the same loops.
Rows are written whole and in address order (zeroing a large table streams), and the
gradient of a row that no index names is just its zeros.

Rows are indexed directly (``out[i, j]``, ``dweight[k, j]``), not through a view per
row: a view's NRT reference counting costs as much as ~100 elements of work.

Unchecked entries (the layer checks the indices once, before any kernel):
:func:`embedding_forward`, :func:`embedding_backward`.
"""

from __future__ import annotations

import numba
import numpy as np

from numbanet._jit import kernel, parallel_kernel

__all__ = ["PARALLEL_MIN", "ROW_BLOCK", "ROW_CHUNK", "embedding_backward",
           "embedding_forward", "gather_counts", "scatter_workspace"]

#: Rows of the output per parallel task in the gather.
ROW_CHUNK = 256
#: Rows of the gradient table per parallel task in the scatter-add.
ROW_BLOCK = 64
#: Below this many elements touched the serial twins run.
PARALLEL_MIN = 1 << 16


@kernel
def _gather_rows(idx, weight, lo, hi, out):
    """``out[i] = weight[idx[i]]`` for ``i`` in ``lo:hi``; returns how many indices were out
    of range (those rows are left unwritten: a safety net, the layer checks first)."""
    vocab, dim = weight.shape
    bad = 0
    for i in range(lo, hi):
        k = idx[i]
        if k < 0 or k >= vocab:
            bad += 1
            continue
        for j in range(dim):
            out[i, j] = weight[k, j]
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
def _group_by_row(idx, starts, cursor, order):
    """Stable counting sort: ``order[starts[k]:starts[k + 1]]`` are the ``i`` with
    ``idx[i] == k``, increasing. ``starts`` has ``num_embeddings + 1`` entries,
    ``cursor`` ``num_embeddings``, ``order`` ``len(idx)``; all overwritten."""
    vocab = cursor.shape[0]
    for k in range(vocab + 1):
        starts[k] = 0
    for i in range(idx.shape[0]):
        starts[idx[i] + 1] += 1
    for k in range(vocab):
        starts[k + 1] += starts[k]
        cursor[k] = starts[k]
    for i in range(idx.shape[0]):
        k = idx[i]
        order[cursor[k]] = i
        cursor[k] += 1


@kernel
def _scatter_rows(dy, padding_idx, starts, order, lo, hi, dweight):
    """Rows ``lo:hi`` of ``dweight``: zero, then add the ``dy`` rows grouped under each."""
    dim = dweight.shape[1]
    zero = dweight.dtype.type(0)
    for k in range(lo, hi):
        for j in range(dim):
            dweight[k, j] = zero
        if k == padding_idx:
            continue
        for p in range(starts[k], starts[k + 1]):
            i = order[p]
            for j in range(dim):
                dweight[k, j] += dy[i, j]


@parallel_kernel
def _scatter_parallel(idx, dy, padding_idx, starts, cursor, order, dweight):
    """Group the indices by row (serial), then ``prange`` over blocks of
    :data:`ROW_BLOCK` rows: block ``b`` writes only its rows of ``dweight`` (race-free),
    each row adding its ``dy`` rows in index order (deterministic)."""
    _group_by_row(idx, starts, cursor, order)
    vocab = dweight.shape[0]
    for b in numba.prange((vocab + ROW_BLOCK - 1) // ROW_BLOCK):
        lo = b * ROW_BLOCK
        _scatter_rows(dy, padding_idx, starts, order, lo, min(lo + ROW_BLOCK, vocab),
                      dweight)


@kernel
def _scatter_serial(idx, dy, padding_idx, starts, cursor, order, dweight):
    _group_by_row(idx, starts, cursor, order)
    _scatter_rows(dy, padding_idx, starts, order, 0, dweight.shape[0], dweight)


def gather_counts(n: int) -> np.ndarray:
    """The ``int64`` workspace :func:`embedding_forward` needs for ``n`` indices."""
    return np.zeros(max(1, -(-n // ROW_CHUNK)), dtype=np.int64)


def scatter_workspace(num_embeddings: int, n: int) -> tuple[np.ndarray, np.ndarray,
                                                            np.ndarray]:
    """``(starts, cursor, order)``, the ``int64`` workspaces :func:`embedding_backward`
    needs for a table of ``num_embeddings`` rows and ``n`` indices."""
    return (np.zeros(num_embeddings + 1, dtype=np.int64),
            np.zeros(num_embeddings, dtype=np.int64), np.zeros(n, dtype=np.int64))


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
                       dweight: np.ndarray, starts: np.ndarray, cursor: np.ndarray,
                       order: np.ndarray) -> None:
    """``dweight = 0; dweight[idx[i]] += dy[i]`` in index order; unchecked.

    Args:
        idx: 1-D ``int64`` row numbers in range (as given to :func:`embedding_forward`).
        dy: ``(idx.shape[0], dim)``, d(loss)/d(out).
        padding_idx: a row whose gradient stays zero, or ``-1`` for none.
        dweight: ``(num_embeddings, dim)``; overwritten with the gradient.
        starts, cursor, order: from ``scatter_workspace(num_embeddings, len(idx))``.

    Parallel over blocks of rows when the work (the zeroed table plus the added rows)
    reaches :data:`PARALLEL_MIN` elements; the same result bit for bit on either path
    and for any thread count.
    """
    vocab, dim = dweight.shape
    run = (_scatter_parallel if vocab > ROW_BLOCK and (vocab + idx.shape[0]) * dim
           >= PARALLEL_MIN else _scatter_serial)
    run(idx, dy, padding_idx, starts, cursor, order, dweight)
