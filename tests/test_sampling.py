"""BatchSampler / BatchLoader: the shuffling the fit loop has always used, views without
shuffling, no allocation per step, and a sharding subclass splitting each global batch."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from numbanet.sampling import BatchLoader, BatchSampler


def arrays(n=23, width=3):
    X = np.arange(n * width, dtype=np.float32).reshape(n, width)
    return X, np.arange(n, dtype=np.int64)


def reference_epochs(n, batch_size, epochs, seed):
    """The fit loop's shuffling before BatchSampler existed: per epoch, an index array
    reset to 0..n-1 and shuffled in place by the generator; consecutive slices of it."""
    rng = np.random.default_rng(seed)
    order = np.arange(n, dtype=np.intp)
    out = []
    for _ in range(epochs):
        np.copyto(order, np.arange(n, dtype=np.intp))
        rng.shuffle(order)
        out.append([order[s:s + batch_size].copy() for s in range(0, n, batch_size)])
    return out, rng.random()


def test_shuffled_batches_match_the_reference_permutations():
    X, y = arrays(23)
    rng = np.random.default_rng(5)
    loader = BatchLoader(X, y, BatchSampler(23, 5, shuffle=True))
    expected, next_draw = reference_epochs(23, 5, epochs=3, seed=5)
    for epoch in expected:
        loader.new_epoch(rng)
        got = [loader.get(step)[1].copy() for step in range(len(loader))]
        assert [g.tolist() for g in got] == [e.tolist() for e in epoch]
        for step, idx in enumerate(epoch):
            np.testing.assert_array_equal(loader.get(step)[0], X[idx])
    # The generator advanced exactly as before (dropout draws from the same one).
    assert rng.random() == next_draw


def test_every_sample_once_per_epoch_and_the_last_batch_holds_the_rest():
    sampler = BatchSampler(23, 5)
    assert len(sampler) == sampler.steps == 5
    sampler.new_epoch(np.random.default_rng(0))
    batches = [sampler.indices(step) for step in range(5)]
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(np.concatenate(batches).tolist()) == list(range(23))
    assert sampler.batch_sizes() == {5, 3}


def test_without_shuffling_batches_are_views_in_order_and_draw_nothing():
    X, y = arrays(7)
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    loader = BatchLoader(X, y, BatchSampler(7, 3, shuffle=False))
    loader.new_epoch(rng)
    assert rng.bit_generator.state == state
    xb, yb = loader.get(2)
    assert yb.tolist() == [6] and np.shares_memory(xb, X)
    assert [loader.get(s)[1].tolist() for s in range(3)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_shuffled_batches_reuse_their_buffers():
    X, y = arrays(10)
    loader = BatchLoader(X, y, BatchSampler(10, 4))
    loader.new_epoch(np.random.default_rng(0))
    first = loader.get(0)[0]
    loader.new_epoch(np.random.default_rng(1))
    assert loader.get(1)[0] is first  # same size, same buffer
    assert loader.get(2)[0].shape == (2, 3)


def test_a_step_allocates_nothing():
    X = np.random.default_rng(0).normal(size=(500, 64)).astype(np.float32)
    y = np.arange(500)
    loader = BatchLoader(X, y, BatchSampler(500, 32))
    rng = np.random.default_rng(0)

    def epoch():
        loader.new_epoch(rng)
        for step in range(len(loader)):
            loader.get(step)

    for _ in range(50):
        epoch()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        epoch()
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One 32 x 64 float32 batch is 8 KiB.
    assert peak - before < 2048 and now - before < 512


class RankSampler(BatchSampler):
    """Rank ``rank`` of ``size`` reads its contiguous share of every global batch (what
    a data-parallel sampler does; the fit loop and the loader need nothing else)."""

    def __init__(self, n, batch_size, rank, size, shuffle=True):
        super().__init__(n, batch_size, shuffle=shuffle)
        self.rank, self.size = rank, size

    def positions(self, step):
        start, stop = self.global_positions(step)
        rows = stop - start
        lo = start + rows * self.rank // self.size
        hi = start + rows * (self.rank + 1) // self.size
        return lo, hi


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_sharding_subclass_splits_each_global_batch_between_ranks(shuffle):
    X, y = arrays(23)
    size = 3
    loaders = [BatchLoader(X, y, RankSampler(23, 8, rank, size, shuffle=shuffle))
               for rank in range(size)]
    whole = BatchLoader(X, y, BatchSampler(23, 8, shuffle=shuffle))
    for loader in [*loaders, whole]:
        loader.new_epoch(np.random.default_rng(4))  # every rank draws the same order
    for step in range(len(whole)):
        parts = [loader.get(step)[1].tolist() for loader in loaders]
        assert sum(parts, []) == whole.get(step)[1].tolist()
    assert [loader.sampler.batch_sizes() for loader in loaders] == [{2}, {2, 3}, {3}]


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda: BatchSampler(0, 4), ValueError, "n"),
    (lambda: BatchSampler(4, 0), ValueError, "batch_size"),
    (lambda: BatchSampler(4, 2.0), TypeError, "batch_size"),
    (lambda: BatchLoader(*arrays(5), BatchSampler(6, 2)), ValueError, "6 samples"),
])
def test_bad_arguments_are_named(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("n,batch_size,steps,sizes", [
    (23, 5, 4, {5}),      # 3 samples left out
    (21, 7, 3, {7}),      # nothing to drop
    (4, 8, 1, {4}),       # fewer samples than a batch: one batch of all of them
])
def test_drop_last_leaves_out_the_short_batch_only(n, batch_size, steps, sizes):
    sampler = BatchSampler(n, batch_size, shuffle=True, drop_last=True)
    sampler.new_epoch(np.random.default_rng(0))
    assert len(sampler) == steps and sampler.batch_sizes() == sizes
    seen = np.concatenate([sampler.indices(k) for k in range(steps)])
    assert len(np.unique(seen)) == len(seen) == min(n, steps * batch_size)
    assert not BatchSampler(n, batch_size).drop_last


def test_fit_with_drop_last_trains_batchnorm_when_a_batch_of_one_is_left():
    import numbanet as nbn

    rng = np.random.default_rng(0)
    X = rng.standard_normal((33, 4)).astype(np.float32)
    y = rng.integers(0, 3, 33)

    def model():
        m = nbn.Sequential([nbn.Dense(4, 8), nbn.BatchNorm(8), nbn.Activation("relu"),
                            nbn.Dense(8, 3)], seed=0)
        m.compile(loss="cross_entropy", optimizer="adam")
        return m

    with pytest.raises(ValueError, match="drop_last=True"):
        model().fit(X, y, epochs=1, batch_size=32, verbose=0)
    m = model()
    history = m.fit(X, y, epochs=3, batch_size=32, drop_last=True, verbose=0)
    assert len(history.history["loss"]) == 3
    assert m.optimizer.step_count == 3  # one full batch per epoch, the 33rd sample left out
    with pytest.raises(TypeError, match="drop_last must be a bool"):
        m.fit(X, y, drop_last="yes", verbose=0)


# ------------------------------------------------------------------ the row gather kernels


def random_rows(rng, shape, dtype):
    """Every bit pattern, NaN payloads included, for float dtypes: a copy must keep them."""
    dtype = np.dtype(dtype)
    bits = rng.integers(0, 2**63, size=shape, dtype=np.int64).astype(f"u{dtype.itemsize}")
    return bits.view(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
@pytest.mark.parametrize("row_shape", [(), (1,), (5,), (37,), (2, 3), (0,)])
def test_gather_kernels_copy_what_np_take_does(dtype, row_shape):
    from numbanet.kernels.gather import as_rows, gather_row_pairs

    rng = np.random.default_rng(3)
    source = random_rows(rng, (41, *row_shape), dtype)
    labels = np.arange(41, dtype=np.int64)[::-1].copy()
    for index in (rng.permutation(41), rng.permutation(41)[:13].astype(np.int32),
                  np.array([], dtype=np.intp)):
        out = np.zeros((len(index), *row_shape), dtype=dtype)
        out_labels = np.empty(len(index), dtype=np.int64)
        assert gather_row_pairs(as_rows(source), as_rows(labels), index, as_rows(out),
                                as_rows(out_labels)) == 0
        assert out.tobytes() == np.take(source, index, axis=0).tobytes()
        assert np.array_equal(out_labels, labels[index])


def test_gather_kernels_skip_and_count_indices_out_of_range():
    from numbanet.kernels.gather import as_rows, gather_row_pairs

    source = np.arange(12.0).reshape(6, 2)
    labels = np.arange(6, dtype=np.int64).reshape(6, 1)
    out, out_labels = np.full((4, 2), -1.0), np.full((4, 1), -1)
    assert gather_row_pairs(source, labels, np.array([5, 6, -1, 0]), out, out_labels) == 2
    assert out.tolist() == [[10.0, 11.0], [-1.0, -1.0], [-1.0, -1.0], [0.0, 1.0]]
    assert out_labels.ravel().tolist() == [5, -1, -1, 0]
    # Arrays the kernels do not take: np.take serves them.
    assert as_rows(np.zeros(3, dtype=object)) is None
    assert as_rows(np.zeros((3, 2)).T) is None
    assert as_rows(np.zeros(3, dtype=">f8")) is None
    assert as_rows(np.zeros(3, dtype=np.float16)) is None
    assert as_rows(np.zeros((3, 2, 0))).shape == (3, 0)


def take_reference(loader, step):
    """What BatchLoader.get served before the gather kernel: np.take of the step's rows."""
    idx = loader.sampler.indices(step)
    return (np.take(loader.X, idx, axis=0, mode="clip"),
            np.take(loader.targets, idx, axis=0, mode="clip"))


@pytest.mark.parametrize(("X", "targets", "kernel"), [
    (np.arange(23 * 3, dtype=np.float64).reshape(23, 3), np.arange(23, dtype=np.int64), True),
    (random_rows(np.random.default_rng(0), (23, 2, 2, 3), np.float32),  # images
     random_rows(np.random.default_rng(1), (23, 4), np.float32), True),  # dense targets
    (np.arange(23, dtype=np.int32), np.arange(46.0).reshape(23, 2), True),
    (np.arange(23 * 2, dtype=np.float32).reshape(23, 2),
     np.array([f"label {i}" for i in range(23)], dtype=object), False),
    (np.asfortranarray(np.arange(23 * 3, dtype=np.float64).reshape(23, 3)),
     np.arange(23, dtype=np.int64), False),  # not C-contiguous
])
def test_shuffled_batches_equal_np_take_of_their_rows(X, targets, kernel):
    weights = np.linspace(0.5, 2.0, 23)
    loader = BatchLoader(X, targets, BatchSampler(23, 5), weights=weights)
    # Which path serves the batches: the row gather kernel, or np.take for the rest.
    assert (loader._x_rows is not None and loader._target_rows is not None) == kernel
    rng = np.random.default_rng(2)
    for _ in range(2):
        loader.new_epoch(rng)
        for step in range(len(loader)):
            xb, tb = loader.get(step)
            want_x, want_t = take_reference(loader, step)
            assert xb.dtype == X.dtype and tb.dtype == targets.dtype
            assert xb.tobytes() == want_x.tobytes()
            if tb.dtype == object:
                assert tb.tolist() == want_t.tolist()
            else:
                assert tb.tobytes() == want_t.tobytes()
            idx = loader.sampler.indices(step)
            assert loader.get_weights(step).tolist() == weights[idx].tolist()


class OutOfRangeSampler(BatchSampler):
    """Indices outside the data: the loader serves what np.take(mode="clip") does."""

    def indices(self, step):
        return np.array([1, 9, -3, 0])


def test_indices_out_of_range_are_clipped_like_np_take():
    X, y = arrays(5)
    loader = BatchLoader(X, y, OutOfRangeSampler(5, 4), weights=np.arange(5.0))
    loader.new_epoch(np.random.default_rng(0))
    xb, yb = loader.get(0)
    assert yb.tolist() == [1, 4, 0, 0]
    assert np.array_equal(xb, X[[1, 4, 0, 0]])
    assert loader.get_weights(0).tolist() == [1.0, 4.0, 0.0, 0.0]


def test_replacing_X_or_targets_serves_the_new_arrays():
    X, y = arrays(10)
    loader = BatchLoader(X, y, BatchSampler(10, 4))
    loader.new_epoch(np.random.default_rng(0))
    loader.X, loader.targets = X * 2, y + 100
    xb, yb = loader.get(0)
    idx = loader.sampler.indices(0)
    assert np.array_equal(xb, 2 * X[idx]) and yb.tolist() == (y[idx] + 100).tolist()
