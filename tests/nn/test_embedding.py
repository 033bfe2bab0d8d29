"""Embedding: PyTorch parity, padding, deterministic scatter-add, integer input checks."""

from __future__ import annotations

import numpy as np
import pytest

import numbanet as nbn
from numbanet import io as nio
from numbanet.kernels import embedding as K
from numbanet.testing import check_layer

RTOL = {"float64": 1e-10, "float32": 1e-4}


def embedding_model(vocab, dim, length, dtype="float64", padding_idx=None, seed=0):
    return nbn.Sequential([nbn.Embedding(vocab, dim, padding_idx=padding_idx)], seed=seed,
                          dtype=dtype, input_shape=(length,))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("vocab", "dim", "shape", "padding_idx"), [
    (10, 4, (6, 5), None),
    (10, 4, (6, 5), 0),
    (7, 3, (1, 1), None),        # batch 1, one index
    (5, 33, (9, 13), -1),        # odd sizes, the last row pads
    (300, 40, (64, 50), 7),      # parallel gather and scatter (many repeats)
])
def test_embedding_matches_torch(vocab, dim, shape, padding_idx, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(vocab + dim)
    model = embedding_model(vocab, dim, shape[1], dtype, padding_idx)
    layer = model.layers[0]
    idx = rng.integers(0, vocab, size=shape)
    idx[0, 0] = idx[-1, -1] = idx[0, -1]  # repeats for sure
    if padding_idx is not None:
        idx[:, 0] = padding_idx % vocab
    dy = rng.normal(size=(*shape, dim)).astype(dtype)
    out = model.forward(idx, training=True)
    assert model.backward(dy) is None  # indices have no gradient

    ref = torch.nn.Embedding(vocab, dim, padding_idx=padding_idx).to(getattr(torch, dtype))
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(layer.weight.value))
    t_out = ref(torch.tensor(idx))
    t_out.backward(torch.tensor(dy))
    rtol = RTOL[dtype]
    np.testing.assert_array_equal(out, t_out.detach().numpy())  # a gather is exact
    grad = ref.weight.grad.numpy()
    np.testing.assert_allclose(layer.weight.grad, grad, rtol=rtol,
                               atol=rtol * np.abs(grad).max())
    if padding_idx is not None:
        np.testing.assert_array_equal(layer.weight.value[padding_idx], 0)
        np.testing.assert_array_equal(layer.weight.grad[padding_idx], 0)


def test_one_index_per_sample_gives_rows_at_the_layer():
    """``(N,)`` indices give ``(N, dim)`` (the layer; see the model-level test below)."""
    model = embedding_model(6, 3, 2)
    layer = model.layers[0]
    idx = np.array([5, 0, 5, 2], dtype=np.int64)
    np.testing.assert_array_equal(layer.forward(idx, True), layer.weight.value[idx])
    dy = np.arange(12.0).reshape(4, 3)
    assert layer.backward(dy, need_input_grad=False) is None
    expected = np.zeros((6, 3))
    np.add.at(expected, idx, dy)
    np.testing.assert_array_equal(layer.weight.grad, expected)
    assert layer.output_shape(()) == (3,) and layer.output_shape((4,)) == (4, 3)


def test_one_index_per_sample_through_a_model():
    model = nbn.Sequential([nbn.Embedding(6, 3), nbn.Dense(3, 2)], seed=0, input_shape=())
    assert model.input_shape == ()
    assert model.forward(np.array([1, 2, 3])).shape == (3, 2)
    resolved_later = nbn.Sequential([nbn.Embedding(6, 3), nbn.Dense(3, 2)], seed=0)
    assert resolved_later.predict(np.array([4, 0])).shape == (2, 2)
    assert resolved_later.input_shape == ()


def test_initialisation_is_standard_normal_with_a_zero_padding_row():
    a = embedding_model(400, 50, 3, "float64", padding_idx=-2, seed=1)
    b = embedding_model(400, 50, 3, "float32", padding_idx=-2, seed=1)
    weight = a.layers[0].weight.value
    assert a.layers[0].padding_idx == 398 and a.layers[0].weight.role == "weight"
    np.testing.assert_array_equal(weight[398], 0)
    rest = np.delete(weight, 398, axis=0)
    assert abs(rest.mean()) < 0.02 and abs(rest.std() - 1) < 0.02
    np.testing.assert_array_equal(b.layers[0].weight.value, weight.astype(np.float32))


@pytest.mark.skipif(nbn.threads.max_threads() < 2, reason="needs 2 threads")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scatter_add_is_bit_identical_for_one_and_two_threads_and_in_index_order(dtype):
    rng = np.random.default_rng(2)
    # Many repeats: every row of the gradient sums about 17 rows of dy.
    idx = rng.integers(0, 300, size=(128, 40))
    dy = rng.normal(size=(128, 40, 64)).astype(dtype)
    assert 300 > K.ROW_BLOCK and (300 + idx.size) * 64 >= K.PARALLEL_MIN  # parallel path
    grads = []
    for threads in (1, 2):
        nbn.set_num_threads(threads)
        try:
            model = embedding_model(300, 64, 40, dtype, padding_idx=3)
            out = model.forward(idx)
            model.backward(dy)
            grads.append((out, model.layers[0].weight.grad.copy()))
        finally:
            nbn.set_num_threads(nbn.threads.max_threads())
    np.testing.assert_array_equal(grads[0][0], grads[1][0])
    np.testing.assert_array_equal(grads[0][1], grads[1][1])
    # The same additions as a sequential scatter in index order (numpy's add.at).
    expected = np.zeros((300, 64), dtype=dtype)
    np.add.at(expected, idx.reshape(-1), dy.reshape(-1, 64))
    expected[3] = 0
    np.testing.assert_array_equal(grads[0][1], expected)


def test_serial_and_parallel_twins_are_bit_identical():
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 150, size=5000)
    weight = rng.normal(size=(150, 48)).astype(np.float32)
    dy = rng.normal(size=(5000, 48)).astype(np.float32)
    counts = K.gather_counts(idx.shape[0])
    outs = [np.empty((5000, 48), np.float32) for _ in range(2)]
    grads = [np.full((150, 48), np.nan, np.float32) for _ in range(2)]
    assert K._gather_serial(idx, weight, outs[0], counts) == 0
    assert K._gather_parallel(idx, weight, outs[1], counts) == 0
    K._scatter_serial(idx, dy, 4, *K.scatter_workspace(150, 5000), grads[0])
    K._scatter_parallel(idx, dy, 4, *K.scatter_workspace(150, 5000), grads[1])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(grads[0], grads[1])
    np.testing.assert_array_equal(outs[0], weight[idx])


def test_gather_reports_out_of_range_indices_without_writing_them():
    weight = np.ones((4, 2))
    out = np.zeros((3, 2))
    bad = K.embedding_forward(np.array([0, 4, -1]), weight, out, K.gather_counts(3))
    assert bad == 2
    np.testing.assert_array_equal(out, [[1, 1], [0, 0], [0, 0]])


@pytest.mark.parametrize(("X", "error", "match"), [
    (np.array([[0, 1], [10, 2]]), ValueError,
     r"X holds index 10 at position \(1, 0\), but Embedding\(10, 4\) takes indices in "
     r"\[0, 9\] \(1 of 4 out of range\)"),
    (np.array([[0, -1], [3, -7]]), ValueError, r"index -1 at position \(0, 1\).*2 of 4"),
    (np.array([[0.0, 1.0], [2.0, 3.0]]), TypeError,
     "X must hold integer indices for Embedding, got dtype float64; convert with "
     r"X.astype\(numpy.int64\)"),
    (np.array([[True, False]]), TypeError, "must hold integer indices"),
])
def test_bad_indices_are_refused_before_any_kernel(X, error, match):
    model = nbn.Sequential([nbn.Embedding(10, 4), nbn.Flatten(), nbn.Dense(8, 2)], seed=0,
                           input_shape=(2,))
    model.compile(loss="cross_entropy", optimizer="sgd")
    before = model.flat_parameters.copy()
    with pytest.raises(error, match=match):
        model.forward(X)
    with pytest.raises(error, match=match):
        model.predict(X)
    with pytest.raises(error, match=match):
        model.fit(X, np.zeros(len(X), dtype=np.int64), epochs=1, verbose=0)
    with pytest.raises(error, match=match):
        model.train_step(X, np.zeros(len(X), dtype=np.int64))
    np.testing.assert_array_equal(model.flat_parameters, before)


def test_layer_forward_refuses_real_input_and_out_of_range_indices():
    model = nbn.Sequential([nbn.Dense(3, 3), nbn.Embedding(5, 2)], seed=0)
    with pytest.raises(TypeError, match=r"Embedding\(5, 2\) received float32 input; it takes "
                                        "integer indices, so it must be the model's first"):
        model.forward(np.ones((2, 3)))
    layer = embedding_model(5, 2, 3).layers[0]
    with pytest.raises(ValueError, match=r"the input holds index 5 at position \(0, 2\)"):
        layer.forward(np.array([[0, 1, 5]]), True)
    with pytest.raises(ValueError, match=r"flatten the index array to \(batch, length\)"):
        nbn.Sequential([nbn.Embedding(5, 2)], input_shape=(2, 3))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"num_embeddings": 0, "embedding_dim": 3}, ValueError, "num_embeddings must be >= 1"),
    ({"num_embeddings": 4, "embedding_dim": 2.0}, TypeError, "embedding_dim must be an int"),
    ({"num_embeddings": 4, "embedding_dim": 2, "padding_idx": 4}, ValueError,
     r"padding_idx must be in \[-4, 3\]"),
    ({"num_embeddings": 4, "embedding_dim": 2, "padding_idx": -5}, ValueError,
     r"padding_idx must be in \[-4, 3\]"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        nbn.Embedding(**kwargs)


def test_an_embedding_model_trains_saves_and_loads(tmp_path):
    rng = np.random.default_rng(4)
    X = rng.integers(0, 12, size=(200, 3))
    y = (X.sum(axis=1) % 2).astype(np.int64)  # parity of a sum: needs the embeddings
    model = nbn.Sequential([nbn.Embedding(12, 8), nbn.Flatten(),
                            nbn.Dense(24, 32, activation="relu"), nbn.Dense(32, 2)], seed=0)
    model.compile(loss="cross_entropy", optimizer=nbn.get_optimizer("adam", lr=1e-2),
                  metrics=["accuracy"])
    history = model.fit(X, y, epochs=60, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] > 0.95
    path = tmp_path / "embedding.npz"
    model.save(path)
    loaded = nio.load(path)
    assert loaded.layers[0].get_config() == model.layers[0].get_config()
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert [p.name for p in loaded.parameters()][0] == "0.weight"


CHECK_CASES = [
    ("sequences-parallel", lambda: nbn.Embedding(50, 32), (7,),
     {"batch": 512, "sample": lambda rng, shape: rng.integers(0, 50, shape)}),
    # The padding row's gradient is zero by design, while a finite difference of it is
    # not: draw indices that leave it out (padding is compared with torch above).
    ("padding", lambda: nbn.Embedding(9, 5, padding_idx=2), (4,),
     {"batch": 8, "sample": lambda rng, shape: rng.choice([0, 1, 3, 4, 5, 6, 7, 8], shape)}),
]


@pytest.mark.parametrize(("factory", "shape", "options"), [c[1:] for c in CHECK_CASES],
                         ids=[c[0] for c in CHECK_CASES])
def test_check_layer(factory, shape, options):
    check_layer(factory, shape, **options)
