"""fit on data larger than memory: a read-only numpy.memmap (never copied whole; each
batch converted and checked, errors naming the row) and a stream of (X_batch, y_batch)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import numbanet as nbn


def _model(dtype: str = "float32") -> nbn.Sequential:
    model = nbn.Sequential([nbn.Dense(6, 12, activation="relu"), nbn.Dense(12, 3)], seed=0,
                           dtype=dtype)
    model.compile("cross_entropy", nbn.get_optimizer("adam", lr=1e-2), metrics=["accuracy"])
    return model


def _data(n: int = 300, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 6)).astype(dtype)
    return X, (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 1)


def _memmap(tmp_path: Path, X: np.ndarray) -> np.ndarray:
    np.save(tmp_path / "X.npy", X)
    return np.load(tmp_path / "X.npy", mmap_mode="r")


@pytest.mark.parametrize("source", ["float32", "float64"])
def test_a_memmap_trains_to_the_weights_of_the_array(tmp_path: Path, source: str) -> None:
    X, y = _data(dtype=source)
    kwargs = {"epochs": 3, "batch_size": 32, "validation_split": 0.2, "seed": 4,
              "verbose": 0}
    in_memory = _model()
    expected = in_memory.fit(X, y, **kwargs)
    on_disk = _model()
    history = on_disk.fit(_memmap(tmp_path, X), y, **kwargs)
    assert np.array_equal(on_disk.flat_parameters, in_memory.flat_parameters)
    assert history.history == expected.history
    assert on_disk.evaluate(_memmap(tmp_path, X), y) == in_memory.evaluate(X, y)


def test_a_bad_row_of_a_memmap_is_named(tmp_path: Path) -> None:
    X, y = _data(dtype="float64")
    X[217, 2] = np.nan
    with pytest.raises(ValueError, match=r"X\[217\] contains NaN or infinity"):
        _model().fit(_memmap(tmp_path, X), y, epochs=1, verbose=0)
    X[217, 2] = 1e300  # finite, but not in float32
    with pytest.raises(ValueError, match=r"X\[217\] holds values beyond the range of float32"):
        _model().fit(_memmap(tmp_path, X), y, epochs=1, verbose=0, shuffle=False)


def test_a_memmap_with_the_wrong_shape_fails_before_training(tmp_path: Path) -> None:
    X, y = _data()
    with pytest.raises(ValueError, match="X has 5 features per sample but the model expects 6"):
        _model().fit(_memmap(tmp_path, X[:, :5]), y, verbose=0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc")
def test_a_memmap_four_times_the_memory_limit_trains_like_the_array(tmp_path: Path,
                                                                     command) -> None:
    limit_mb = 32
    rows = 4 * limit_mb * 2**20 // (64 * 4)  # float32 rows of 64 features: 4x the limit
    rng = np.random.default_rng(1)
    X = rng.normal(size=(rows, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=rows)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    script = Path(__file__).parent / "scripts" / "memory_limit.py"
    run = command([sys.executable, str(script), str(tmp_path / "X.npy"),
                   str(tmp_path / "y.npy"), str(limit_mb), str(tmp_path / "w.npy")],
                  timeout=300)
    assert run.returncode == 0, run
    assert "a copy of X is refused" in run.stdout, run  # the limit is real
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory_limit", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = module.train(X, y)
    assert np.array_equal(np.load(tmp_path / "w.npy"), reference.flat_parameters)


# ----------------------------------------------------------------------------- streams


def _batches(X: np.ndarray, y: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(X[i:i + size], y[i:i + size]) for i in range(0, len(X), size)]


def test_a_list_of_batches_trains_like_unshuffled_arrays() -> None:
    X, y = _data()
    arrays = _model()
    expected = arrays.fit(X[:240], y[:240], epochs=3, batch_size=40, shuffle=False,
                          validation_data=(X[240:], y[240:]), verbose=0)
    streamed = _model()
    history = streamed.fit(_batches(X[:240], y[:240], 40), None, epochs=3,
                           validation_data=(X[240:], y[240:]), verbose=0)
    assert np.array_equal(streamed.flat_parameters, arrays.flat_parameters)
    assert history.history["loss"] == expected.history["loss"]
    assert history.history["val_accuracy"] == expected.history["val_accuracy"]
    assert "accuracy" not in history.history  # a stream is not read again for metrics
    assert history.params["steps"] == 6 and history.params["samples"] is None


def test_a_generator_serves_one_epoch() -> None:
    X, y = _data()
    model = _model()
    model.fit((pair for pair in _batches(X, y, 50)), None, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="iterator .* can be read once, and this is epoch 2"):
        model.fit((pair for pair in _batches(X, y, 50)), None, epochs=2, verbose=0)
    with pytest.raises(ValueError, match="held no samples"):
        model.fit(iter([]), None, verbose=0)


def test_a_bad_batch_of_a_stream_is_named() -> None:
    X, y = _data()
    X[130, 0] = np.inf
    with pytest.raises(ValueError, match="X batch 2 contains NaN or infinity"):
        _model().fit(_batches(X, y, 50), None, verbose=0)
    with pytest.raises(TypeError, match=r"batch 0 of the training stream must be a pair"):
        _model().fit([X[:10]], None, verbose=0)
    with pytest.raises(ValueError, match="validation_split needs X and y arrays"):
        _model().fit(_batches(X, y, 50), None, validation_split=0.1, verbose=0)
