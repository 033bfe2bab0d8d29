"""Batching for the fit loop: which samples form each batch, and gathering them.

Two small objects split the work:

* :class:`BatchSampler` decides *which* samples each step uses. Every epoch it draws one
  permutation of the sample indices from the model's generator (``rng.shuffle`` of an
  index array reset to ``0..n-1``, so the order depends only on the generator's state,
  which ``save``/``load`` restores); step ``k`` takes positions
  ``[k * batch_size, min((k + 1) * batch_size, n))`` of that order. Without shuffling
  the positions are the sample indices themselves.
* :class:`BatchLoader` gathers those samples of ``X`` and the targets into buffers
  allocated once per distinct batch size (``np.take(..., out=...)``), or hands out views
  when the batch is a contiguous range (no shuffling). A step allocates nothing.

A sampler describes a batch as a *range of positions* in the epoch's order
(:meth:`BatchSampler.positions`); everything else follows from it. A subclass that
returns a sub-range of each global batch splits every batch between processes without
touching the loader or the fit loop: this is the seam a data-parallel (MPI) sampler uses.

Example:
    >>> import numpy as np
    >>> from numbanet.sampling import BatchLoader, BatchSampler
    >>> X, y = np.arange(10.0).reshape(5, 2), np.arange(5)
    >>> loader = BatchLoader(X, y, BatchSampler(5, batch_size=2, shuffle=False))
    >>> loader.new_epoch(np.random.default_rng(0))
    >>> [loader.get(step)[1].tolist() for step in range(len(loader))]
    [[0, 1], [2, 3], [4]]
"""

from __future__ import annotations

import numpy as np

from numbanet._validation import check_positive_int

__all__ = ["BatchLoader", "BatchSampler"]


class BatchSampler:
    """The sample indices of each step of an epoch.

    Args:
        n: number of samples.
        batch_size: samples per step; the last step of an epoch holds the rest.
        shuffle: draw a new order every epoch (:meth:`new_epoch`); otherwise samples go
            in their stored order.

    Attributes:
        n, batch_size, shuffle: as given.
        steps: steps per epoch, ``ceil(n / batch_size)``.
        order: the epoch's permutation of ``0..n-1`` (reused, never reallocated).
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True) -> None:
        self.n = check_positive_int("n", n)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.shuffle = bool(shuffle)
        self.steps = -(-self.n // self.batch_size)
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
                f"shuffle={self.shuffle})")


class BatchLoader:
    """Serves ``(X_batch, targets_batch)`` for each step of a :class:`BatchSampler`.

    Shuffled batches are gathered into buffers allocated here, one pair per distinct
    batch size; contiguous batches are views of ``X`` and ``targets``. Either way the
    arrays are valid until the next :meth:`get` with the same batch size.

    Args:
        X: samples ``(n, ...)``, already validated (C-contiguous, the model's dtype).
        targets: prepared targets ``(n, ...)``.
        sampler: which samples each step uses; ``sampler.n`` must be ``len(X)``.
    """

    def __init__(self, X: np.ndarray, targets: np.ndarray, sampler: BatchSampler) -> None:
        if sampler.n != X.shape[0] or targets.shape[0] != X.shape[0]:
            raise ValueError(f"BatchLoader: the sampler covers {sampler.n} samples, X has "
                             f"{X.shape[0]} and targets {targets.shape[0]}")
        self.X, self.targets, self.sampler = X, targets, sampler
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if sampler.shuffle:
            for rows in sampler.batch_sizes():
                if rows:
                    self._buffers[rows] = (
                        np.empty((rows,) + X.shape[1:], dtype=X.dtype),
                        np.empty((rows,) + targets.shape[1:], dtype=targets.dtype),
                    )

    def __len__(self) -> int:
        return self.sampler.steps

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
        # mode="clip" skips the temporary copy np.take makes for mode="raise" when `out`
        # is given; the indices are a permutation, so they are always in range.
        np.take(self.X, idx, axis=0, out=xb, mode="clip")
        np.take(self.targets, idx, axis=0, out=tb, mode="clip")
        return xb, tb
