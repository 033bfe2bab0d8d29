"""64-byte alignment of the arrays numbanet allocates for its kernels (numbanet._aligned).

A fresh NumPy array of 128 KiB or more starts 16 bytes into a page (memory the heap
reuses can start anywhere), so plain ``np.empty``/``np.zeros`` would fail these checks
whenever they return fresh memory.
"""

from __future__ import annotations

import numpy as np
import pytest

import numbanet as nbn
from numbanet._aligned import ALIGN_BYTES, aligned_empty, aligned_zeros, is_aligned
from numbanet.kernels.norm import norm_partials, norm_partials_shape
from numbanet.nn.module import Workspace
from numbanet.sampling import BatchLoader, BatchSampler

BIG = (256, 1024)  # 1 MiB of float32: NumPy gives this its own mmap, 16 bytes in


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("shape", [0, 1, 7, (3, 5), (0, 4), BIG, (2, 3, 4, 5)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
def test_aligned_arrays_start_on_a_cache_line_and_behave_like_numpys(shape, dtype):
    a = aligned_empty(shape, dtype)
    expected_shape = (shape,) if isinstance(shape, int) else shape
    assert a.shape == expected_shape and a.dtype == np.dtype(dtype)
    assert a.flags.c_contiguous and a.flags.writeable
    if a.size:  # an empty array has no element to place
        assert _address(a) % ALIGN_BYTES == 0 and is_aligned(a)
    a[...] = 3
    assert np.all(a == 3)
    z = aligned_zeros(shape, dtype)
    assert z.size == 0 or _address(z) % ALIGN_BYTES == 0
    np.testing.assert_array_equal(z, np.zeros(expected_shape, dtype))


def test_object_arrays_are_plain_numpy_arrays():
    a = aligned_empty((3, 2), object)
    assert a.shape == (3, 2) and a.dtype == object
    a[0, 0] = "label"
    assert a[0, 0] == "label"


def test_workspace_buffers_and_scratch_are_aligned():
    ws = Workspace(np.dtype(np.float32))
    assert is_aligned(ws.get("y", BIG))
    assert is_aligned(ws.get("idx", BIG, dtype=np.int64))
    assert is_aligned(ws.get("partials", (8, 2, 1024), dtype=np.float64, rows=256))
    assert is_aligned(ws.scratch(300_000))


def test_norm_partials_are_aligned():
    assert is_aligned(norm_partials(*BIG))
    p = norm_partials(*BIG, dtype=np.float32)
    assert is_aligned(p) and p.shape == norm_partials_shape(*BIG)


def test_model_parameters_gradients_optimizer_state_and_activations_are_aligned():
    model = nbn.Sequential([nbn.Dense(1024, 512, activation="relu"), nbn.LayerNorm(512),
                            nbn.Dense(512, 10)], seed=0)
    model.compile(loss="cross_entropy", optimizer="adam")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 1024)).astype(np.float32)
    y = rng.integers(0, 10, 600)
    model.train_step(X, y)
    for flat in (model.flat_parameters, model.flat_gradients):
        assert flat.nbytes > 128 * 1024 and is_aligned(flat)
    slots = model.optimizer.slots
    assert slots and all(is_aligned(s) for s in slots.values())
    # Each parameter starts on a 64-byte boundary of the flat buffer, so in memory too.
    for p in model.parameters():
        assert is_aligned(p.value) and is_aligned(p.grad)
    # The layer norm's output is a workspace buffer (600 x 512 float32 = 1.2 MiB).
    out = model.layers[1].forward(model.layers[0].forward(X, True), True)
    assert is_aligned(out)


def test_shuffled_training_batches_are_aligned():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 512)).astype(np.float32)
    y = rng.integers(0, 10, 2000)
    loader = BatchLoader(X, y, BatchSampler(2000, 600, shuffle=True))
    loader.new_epoch(np.random.default_rng(1))
    xb, yb = loader.get(0)
    assert xb.nbytes > 128 * 1024 and is_aligned(xb)
    np.testing.assert_array_equal(xb, X[loader.sampler.order[:600]])
    np.testing.assert_array_equal(yb, y[loader.sampler.order[:600]])
