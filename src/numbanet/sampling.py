"""Batching for the fit loop: which samples form each batch, and gathering them.

Two small objects split the work:

* :class:`BatchSampler` decides *which* samples each step uses. Every epoch it draws one
  permutation of the sample indices from the model's generator (``rng.shuffle`` of an
  index array reset to ``0..n-1``, so the order depends only on the generator's state,
  which ``save``/``load`` restores); step ``k`` takes positions
  ``[k * batch_size, min((k + 1) * batch_size, n))`` of that order. Without shuffling
  the positions are the sample indices themselves.
* :class:`BatchLoader` gathers those samples of ``X`` and the targets into buffers
  allocated once per distinct batch size (a Numba row gather,
  :mod:`numbanet.kernels.gather`, or ``np.take(..., out=...)`` for dtypes it does not
  take), or hands out views when the batch is a contiguous range (no shuffling). A step
  allocates nothing.

A sampler describes a batch as a *range of positions* in the epoch's order
(:meth:`BatchSampler.positions`); everything else follows from it. A subclass that
returns a sub-range of each global batch splits every batch between processes without
touching the loader or the fit loop: this is the seam a data-parallel (MPI) sampler uses
(:class:`ShardedBatchSampler`, and :class:`LocalShardSampler` when each process holds
its own rows).

Data that does not fit in memory: :class:`LazyRows` wraps an array that stays on disk
(a read-only ``numpy.memmap``) and converts and checks only the rows a batch needs;
:class:`LazyBatchLoader` serves batches from it. :class:`StreamLoader` serves batches
from an iterable of ``(X_batch, y_batch)`` pairs.

Examples:
    >>> import numpy as np
    >>> from numbanet.sampling import BatchLoader, BatchSampler
    >>> X, y = np.arange(10.0).reshape(5, 2), np.arange(5)
    >>> loader = BatchLoader(X, y, BatchSampler(5, batch_size=2, shuffle=False))
    >>> loader.new_epoch(np.random.default_rng(0))
    >>> [loader.get(step)[1].tolist() for step in range(len(loader))]
    [[0, 1], [2, 3], [4]]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from numbanet._aligned import aligned_empty
from numbanet._validation import check_positive_int
from numbanet.kernels.gather import as_rows, gather_row_pairs

__all__ = [
    "BatchLoader",
    "BatchSampler",
    "LazyBatchLoader",
    "LazyRows",
    "LocalShardSampler",
    "ShardedBatchSampler",
    "StreamLoader",
]


class BatchSampler:
    """The sample indices of each step of an epoch.

    Args:
        n: number of samples.
        batch_size: samples per step; the last step of an epoch holds the rest.
        shuffle: draw a new order every epoch (:meth:`new_epoch`); otherwise samples go
            in their stored order.
        drop_last: leave out the last, short batch of each epoch (PyTorch's
            ``DataLoader(drop_last=True)``): every step then has ``batch_size`` samples,
            and with shuffling each sample still takes part in most epochs. What batch
            normalization needs when ``n % batch_size == 1``.

    Attributes:
        n, batch_size, shuffle, drop_last: as given.
        steps: steps per epoch, ``ceil(n / batch_size)``, or ``n // batch_size`` with
            ``drop_last`` (at least 1: with fewer than ``batch_size`` samples the one
            batch holds them all).
        order: the epoch's permutation of ``0..n-1`` (reused, never reallocated).
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True,
                 drop_last: bool = False) -> None:
        self.n = check_positive_int("n", n)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        full, rest = divmod(self.n, self.batch_size)
        self.steps = max(full, 1) if self.drop_last else full + (rest > 0)
        self.order = np.arange(self.n, dtype=np.intp)
        self._identity = self.order.copy()

    def __len__(self) -> int:
        return self.steps

    def new_epoch(self, rng: np.random.Generator) -> None:
        """Draw the epoch's order from ``rng`` (nothing is drawn without shuffling)."""
        if self.shuffle:
            # Reset, then shuffle in place: the permutation depends only on the
            # generator's state, which save/load restores, and nothing is allocated.
            np.copyto(self.order, self._identity)
            rng.shuffle(self.order)

    def global_positions(self, step: int) -> tuple[int, int]:
        """``(start, stop)``: the positions of step ``step``'s global batch in the order."""
        start = step * self.batch_size
        return start, min(start + self.batch_size, self.n)

    def positions(self, step: int) -> tuple[int, int]:
        """``(start, stop)``: the positions this process reads at step ``step``.

        The whole global batch here; a sharded sampler returns its rank's sub-range
        (every rank must return a range for every step, possibly empty).
        """
        return self.global_positions(step)

    def indices(self, step: int) -> slice | np.ndarray:
        """Step ``step``'s sample indices: a ``slice`` when they are a contiguous range
        (no shuffling), else a view into :attr:`order` (valid until :meth:`new_epoch`)."""
        start, stop = self.positions(step)
        if not self.shuffle:
            return slice(start, stop)
        return self.order[start:stop]

    def batch_sizes(self) -> set[int]:
        """Every batch size :meth:`indices` can return (for preallocating buffers)."""
        sizes = set()
        for step in range(self.steps):
            start, stop = self.positions(step)
            sizes.add(stop - start)
        return sizes

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.n}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last})")


class ShardedBatchSampler(BatchSampler):
    """One process's slice of every global batch, for data-parallel training.

    Every process holds the same ``n`` samples and draws the same order (from generators
    in the same state); step ``k``'s global batch, :meth:`global_positions`, is cut into
    ``size`` contiguous slices whose lengths differ by at most one, and slice ``rank`` is
    this process's (empty when the batch has fewer rows than processes).

    Args:
        n: number of samples (the same on every process).
        batch_size: the **global** batch: samples per step over all processes.
        rank: this process's index, ``0 <= rank < size``.
        size: the number of processes.
        shuffle, drop_last: as for :class:`BatchSampler` (``drop_last`` leaves out the
            short last *global* batch).

    Example:
        >>> s = ShardedBatchSampler(10, batch_size=4, rank=1, size=2, shuffle=False)
        >>> [s.positions(k) for k in range(len(s))]
        [(2, 4), (6, 8), (9, 10)]
    """

    def __init__(self, n: int, batch_size: int, *, rank: int, size: int,
                 shuffle: bool = True, drop_last: bool = False) -> None:
        super().__init__(n, batch_size, shuffle=shuffle, drop_last=drop_last)
        self.size = check_positive_int("size", size)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not (
                0 <= rank < self.size):
            raise ValueError(f"ShardedBatchSampler: rank must be an int in [0, {self.size}), "
                             f"got {rank!r}")
        self.rank = int(rank)

    def positions(self, step: int) -> tuple[int, int]:
        start, stop = self.global_positions(step)
        length = stop - start
        return (start + length * self.rank // self.size,
                start + length * (self.rank + 1) // self.size)


class LocalShardSampler(BatchSampler):
    """A process's own rows when each process holds different ones (``fit(shard="local")``).

    Step ``k`` reads positions ``[k * batch_size, (k + 1) * batch_size)`` of this process's
    order, clipped to its ``n`` rows; the epoch lasts ``steps`` steps (the longest
    process's), so a process whose rows run out first returns empty ranges.

    Args:
        n: this process's number of samples.
        batch_size: this process's rows per step.
        steps: steps per epoch, at least ``ceil(n / batch_size)``.
        shuffle: as for :class:`BatchSampler`.
    """

    def __init__(self, n: int, batch_size: int, steps: int, *, shuffle: bool = True) -> None:
        super().__init__(n, batch_size, shuffle=shuffle)
        steps = check_positive_int("steps", steps)
        if steps < self.steps:
            raise ValueError(f"LocalShardSampler: steps={steps} cannot cover {n} samples in "
                             f"batches of {batch_size}")
        self.steps = steps

    def positions(self, step: int) -> tuple[int, int]:
        start, stop = self.global_positions(step)
        return min(start, self.n), min(stop, self.n)


class LazyRows:
    """Samples that stay where they are (a read-only ``numpy.memmap``) until a batch
    needs them: only that batch's rows are read, converted to ``dtype`` and checked, so
    the whole array is never copied into memory.

    Args:
        source: the samples ``(n, ...)`` in any real dtype, e.g.
            ``np.load(path, mmap_mode="r")``.
        dtype: the dtype batches are converted to (the model's).
        check: ``check(batch, name)`` validates a converted batch (``model.validate_input``)
            and raises ``TypeError``/``ValueError`` naming ``name``.
        name: the argument's name in errors (``"X"``).
        offset: the index of ``source[0]`` in the array the user passed (slices keep
            naming rows as the user counts them).

    A batch that fails ``check`` is searched row by row, and the error names the first
    bad row as ``X[row]``. The arrays :meth:`take` returns are buffers reused for the next
    batch with as many rows.
    """

    def __init__(self, source: np.ndarray, dtype: Any, check: Callable[[np.ndarray, str], Any],
                 name: str = "X", offset: int = 0) -> None:
        self.source, self.dtype, self.check = source, np.dtype(dtype), check
        self.name, self.offset = name, int(offset)
        self.shape: tuple[int, ...] = tuple(source.shape)
        self.ndim = len(self.shape)
        self._raw: dict[int, np.ndarray] = {}
        self._converted: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> LazyRows:
        """A contiguous range of rows, still on disk."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("LazyRows: only contiguous slices such as rows[a:b]")
        start, stop, _ = key.indices(self.shape[0])
        stop = max(start, stop)
        return LazyRows(self.source[start:stop], self.dtype, self.check, self.name,
                        self.offset + start)

    def _buffer(self, cache: dict[int, np.ndarray], rows: int, dtype: Any) -> np.ndarray:
        buf = cache.get(rows)
        if buf is None or buf.dtype != dtype:
            if len(cache) >= 8:
                cache.clear()
            buf = cache[rows] = aligned_empty((rows, *self.shape[1:]), dtype)
        return buf

    def take(self, index: slice | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``index`` (a slice, or positions in this view), converted and checked;
        written into ``out`` when given, else into a buffer kept here."""
        if isinstance(index, slice):
            raw = self.source[index]
        else:
            rows = index.shape[0]
            if out is not None and self.source.dtype == out.dtype:
                raw = out
            else:
                raw = self._buffer(self._raw, rows, self.source.dtype)
            # The indices are positions in range; mode="clip" avoids np.take's temporary.
            np.take(self.source, index, axis=0, out=raw, mode="clip")
        if out is None:
            out = self._buffer(self._converted, raw.shape[0], self.dtype)
        if raw is not out:
            with np.errstate(over="ignore", invalid="ignore"):
                np.copyto(out, raw, casting="unsafe")
        if out.shape[0]:
            self._check(out, raw, index)
        return out

    def _check(self, batch: np.ndarray, raw: np.ndarray, index: slice | np.ndarray) -> None:
        try:
            self.check(batch, self.name)
        except (TypeError, ValueError):
            # Find the row to name: check the rows as they are on disk, one at a time
            # (so a float64 value too large for float32 is named as such).
            contiguous = isinstance(index, slice)
            first = (index.start or 0) if contiguous else 0
            for j in range(raw.shape[0]):
                row = self.offset + (first + j if contiguous else int(index[j]))
                self.check(np.ascontiguousarray(raw[j:j + 1]), f"{self.name}[{row}]")
            raise

    def __repr__(self) -> str:
        return f"LazyRows(shape={self.shape}, {self.source.dtype} -> {self.dtype})"


class StreamLoader:
    """Batches from an iterable of ``(X_batch, y_batch)`` pairs, one pass per epoch.

    Args:
        batches: the pairs. A list, or any object whose ``iter()`` starts over, serves
            every epoch; an iterator (a generator) serves one epoch only.
        prepare: ``prepare(X_batch, y_batch, step) -> (X, targets)`` checks and converts
            one batch (its errors name the step).

    Attributes:
        steps: ``len(batches)`` when the iterable has a length, else ``None``.
    """

    weights = None

    def __init__(self, batches: Iterable[Any],
                 prepare: Callable[[Any, Any, int], tuple[np.ndarray, Any]]) -> None:
        self.batches, self.prepare = batches, prepare
        try:
            self.steps: int | None = len(batches)  # type: ignore[arg-type]
        except TypeError:
            self.steps = None
        self._epochs = 0
        self._iterator: Iterator[Any] = iter(())

    def new_epoch(self, rng: np.random.Generator) -> None:
        """Start a pass over the batches (the generator is not used: the stream decides
        the order)."""
        iterator = iter(self.batches)
        if iterator is self.batches and self._epochs:
            raise ValueError(
                f"the training batches are an iterator (a generator?), which can be read "
                f"once, and this is epoch {self._epochs + 1} of this fit call: pass epochs=1 "
                f"and call fit once per pass, or pass an object whose iter() starts over "
                f"(a list, or a class with an __iter__ method)")
        self._iterator = iterator
        self._epochs += 1

    def __iter__(self) -> Iterator[tuple[np.ndarray, Any]]:
        for step, item in enumerate(self._iterator):
            try:
                xb, yb = item
            except (TypeError, ValueError):
                raise TypeError(f"batch {step} of the training stream must be a pair "
                                f"(X_batch, y_batch), got {type(item).__name__}") from None
            yield self.prepare(xb, yb, step)


class BatchLoader:
    """Serves ``(X_batch, targets_batch)`` for each step of a :class:`BatchSampler`.

    Shuffled batches are gathered into buffers allocated here, one pair per distinct
    batch size; contiguous batches are views of ``X`` and ``targets``. Either way the
    arrays are valid until the next :meth:`get` with the same batch size.

    Args:
        X: samples ``(n, ...)``, already validated (C-contiguous, the model's dtype).
        targets: prepared targets ``(n, ...)``.
        sampler: which samples each step uses; ``sampler.n`` must be ``len(X)``.
        weights: optional float64 ``(n,)`` sample weights, served by :meth:`get_weights`
            for the same rows as :meth:`get`.
    """

    def __init__(self, X: np.ndarray, targets: np.ndarray, sampler: BatchSampler,
                 weights: np.ndarray | None = None) -> None:
        if sampler.n != X.shape[0] or targets.shape[0] != X.shape[0]:
            raise ValueError(f"BatchLoader: the sampler covers {sampler.n} samples, X has "
                             f"{X.shape[0]} and targets {targets.shape[0]}")
        if weights is not None and weights.shape != (X.shape[0],):
            raise ValueError(f"BatchLoader: weights must have shape ({X.shape[0]},), got "
                             f"{weights.shape}")
        self.X, self.targets, self.sampler = X, targets, sampler
        self.weights = weights
        # 2-D views for the gather kernels (None where they do not take the array), made
        # once: a reshape per step costs about as much as the kernel saves over np.take.
        # _row_sources records which arrays they view, in case X or targets are replaced.
        self._row_sources = (X, targets)
        self._x_rows, self._target_rows = as_rows(X), as_rows(targets)
        self._weight_buffers: dict[int, np.ndarray] = {}
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._row_buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if sampler.shuffle:
            for rows in sampler.batch_sizes():
                if rows:
                    xb = aligned_empty((rows,) + X.shape[1:], X.dtype)
                    tb = aligned_empty((rows,) + targets.shape[1:], targets.dtype)
                    self._buffers[rows] = xb, tb
                    if self._x_rows is not None and self._target_rows is not None:
                        self._row_buffers[rows] = as_rows(xb), as_rows(tb)

    def __len__(self) -> int:
        return self.sampler.steps

    @property
    def steps(self) -> int:
        """Steps per epoch (the sampler's)."""
        return self.sampler.steps

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``get(step)`` for every step of the epoch, in order."""
        for step in range(self.sampler.steps):
            yield self.get(step)

    def new_epoch(self, rng: np.random.Generator) -> None:
        """Start an epoch: the sampler draws its order."""
        self.sampler.new_epoch(rng)

    def get(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The inputs and targets of step ``step`` of the current epoch."""
        idx = self.sampler.indices(step)
        if isinstance(idx, slice):
            return self.X[idx], self.targets[idx]
        rows = idx.shape[0]
        if rows == 0:
            return self.X[:0], self.targets[:0]
        xb, tb = self._buffers[rows]
        x_rows, target_rows = self._x_rows, self._target_rows
        sources = self._row_sources
        # The row gather returns how many indices it skipped for being out of range: 0
        # for a permutation's; anything else is redone by np.take, which clips them.
        if (x_rows is None or target_rows is None or sources[0] is not self.X
                or sources[1] is not self.targets
                or gather_row_pairs(x_rows, target_rows, idx, *self._row_buffers[rows])):
            # mode="clip" skips the temporary copy np.take makes for mode="raise" when
            # `out` is given; a sampler's indices are a permutation, so always in range.
            np.take(self.X, idx, axis=0, out=xb, mode="clip")
            np.take(self.targets, idx, axis=0, out=tb, mode="clip")
        return xb, tb

    def get_weights(self, step: int) -> np.ndarray:
        """The sample weights of step ``step``'s rows (same rows as :meth:`get`; a view or
        a buffer reused per batch size). Only for a loader built with ``weights``."""
        if self.weights is None:
            raise ValueError("BatchLoader: built without weights")
        idx = self.sampler.indices(step)
        if isinstance(idx, slice):
            return self.weights[idx]
        rows = idx.shape[0]
        wb = self._weight_buffers.get(rows)
        if wb is None:
            wb = self._weight_buffers[rows] = np.empty(rows, dtype=self.weights.dtype)
        np.take(self.weights, idx, out=wb, mode="clip")
        return wb


class LazyBatchLoader(BatchLoader):
    """A :class:`BatchLoader` over :class:`LazyRows`: each batch is read from disk,
    converted and checked on its own (``fit`` on a ``numpy.memmap``)."""

    X: LazyRows

    def get(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.sampler.indices(step)
        if isinstance(idx, slice):
            return self.X.take(idx), self.targets[idx]
        rows = idx.shape[0]
        if rows == 0:
            return self.X.take(slice(0, 0)), self.targets[:0]
        xb, tb = self._buffers[rows]
        self.X.take(idx, out=xb)
        np.take(self.targets, idx, axis=0, out=tb, mode="clip")
        return xb, tb
