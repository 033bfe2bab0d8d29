"""save/load: bit-for-bit resume, atomic writes, no pickle, clear errors for bad files."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import numbanet as nbn
import numbanet.io as nio
import numbanet.plugins as plugins
from numbanet.nn import Dense, Dropout, Sequential


def make_model(optimizer="adam", dtype="float32", seed=3, **opt_kwargs):
    model = Sequential([Dense(8, 16, activation="relu"), Dropout(0.2), Dense(16, 3)],
                       seed=seed, dtype=dtype)
    opt_kwargs.setdefault("lr", 1e-2)
    model.compile("cross_entropy", plugins.get_optimizer(optimizer, **opt_kwargs),
                  ["accuracy", "top2_accuracy"])
    return model


def data(n=120):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    return X, y


@pytest.mark.parametrize(("optimizer", "kwargs"), [
    ("adam", {}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("rmsprop", {"lr": 1e-3, "centered": True}),
])
def test_ten_epochs_equal_five_plus_save_load_plus_five(tmp_path, optimizer, kwargs):
    X, y = data()
    straight = make_model(optimizer, **kwargs)
    straight.fit(X, y, epochs=10, batch_size=16, validation_split=0.1, verbose=0)

    first = make_model(optimizer, **kwargs)
    first.fit(X, y, epochs=5, batch_size=16, validation_split=0.1, verbose=0)
    path = tmp_path / "half.npz"
    first.save(path)
    resumed = nio.load(path)
    history = resumed.fit(X, y, epochs=5, batch_size=16, validation_split=0.1, verbose=0)

    np.testing.assert_array_equal(resumed.flat_parameters, straight.flat_parameters)
    assert resumed.optimizer.step_count == straight.optimizer.step_count
    assert resumed.epochs_completed == 10 and history.epoch == [5, 6, 7, 8, 9]
    for name, buf in straight.optimizer.slots.items():
        np.testing.assert_array_equal(resumed.optimizer.slots[name], buf)


def test_round_trip_restores_everything(tmp_path):
    X, y = data()
    model = make_model(betas=(0.8, 0.99))
    model.fit(X, y, epochs=2, batch_size=32, verbose=0)
    path = tmp_path / "m.npz"
    nio.save(model, path, metadata={"dataset": "toy", "n": 3})
    loaded = nio.load(str(path))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.get_config() == model.get_config()
    assert loaded.optimizer.qualified_id == "numbanet:adam"
    assert loaded.optimizer.hyperparams == model.optimizer.hyperparams
    assert loaded.optimizer.hyperparams["betas"] == (0.8, 0.99)
    assert loaded.loss.qualified_id == model.loss.qualified_id
    assert [m.name for m in loaded.metrics] == ["accuracy", "top2_accuracy"]
    assert loaded.rng.bit_generator.state == model.rng.bit_generator.state
    assert loaded.layers[1].rng is loaded.rng  # dropout still draws from the saved stream
    assert loaded.metadata == {"dataset": "toy", "n": 3}
    assert loaded.evaluate(X, y) == model.evaluate(X, y)


def test_uncompiled_model_round_trips(tmp_path):
    model = Sequential([Dense(4, 2, activation="sigmoid")], seed=1, dtype="float64")
    model.save(tmp_path / "u.npz")
    loaded = nio.load(tmp_path / "u.npz")
    assert loaded.loss is None and loaded.optimizer is None
    np.testing.assert_array_equal(loaded.flat_parameters, model.flat_parameters)
    assert loaded.dtype == np.float64


def test_file_is_plain_npz_readable_without_pickle(tmp_path):
    model = make_model()
    model.fit(*data(), epochs=1, verbose=0)
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as archive:
        values = {key: archive[key] for key in archive.files}
    assert str(values["format"]) == "numbanet-model"
    assert int(values["format_version"]) == nio.FORMAT_VERSION
    assert all(v.dtype != object for v in values.values())
    meta = json.loads(str(values["meta"]))
    assert meta["optimizer"]["id"] == "numbanet:adam" and meta["optimizer"]["step_count"] == 4
    np.testing.assert_array_equal(values["param/0.weight"], model.layers[0].weight.value)


def test_save_is_atomic_and_leaves_the_old_file_on_failure(tmp_path, monkeypatch):
    model = make_model()
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", explode)
    model.fit(*data(), epochs=1, verbose=0)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]  # no temporary file left behind


def test_save_refuses_nan_weights(tmp_path):
    model = make_model()
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    model.layers[0].weight.value[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.save(path)
    assert path.read_bytes() == before
    nio.save(model, tmp_path / "nan.npz", allow_nonfinite=True)
    with pytest.warns(RuntimeWarning, match="NaN"):
        loaded = nio.load(tmp_path / "nan.npz")
    assert np.isnan(loaded.layers[0].weight.value[0, 0])


def test_load_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file"):
        nio.load(tmp_path / "absent.npz")
    with pytest.raises(IsADirectoryError):
        nio.load(tmp_path)
    with pytest.raises(TypeError, match="path"):
        nio.load(42)


def test_load_rejects_foreign_and_corrupt_files(tmp_path):
    good = tmp_path / "good.npz"
    make_model().save(good)

    text = tmp_path / "notes.txt"
    text.write_text("hello, not a model\n")
    npy = tmp_path / "array.npy"
    np.save(npy, np.arange(3))
    other_npz = tmp_path / "other.npz"
    np.savez(other_npz, weights=np.arange(3))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")

    for path in (text, npy, other_npz, truncated, empty):
        with pytest.raises(ValueError, match="not a readable numbanet model file"):
            nio.load(path)


def test_load_rejects_newer_format_and_unknown_optimizer(tmp_path):
    good = tmp_path / "good.npz"
    make_model().save(good)
    with np.load(good, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}

    newer = dict(arrays, format_version=np.array(nio.FORMAT_VERSION + 1))
    np.savez(tmp_path / "newer.npz", **newer)
    with pytest.raises(ValueError, match="newer"):
        nio.load(tmp_path / "newer.npz")

    meta = json.loads(str(arrays["meta"]))
    meta["optimizer"]["id"] = "numbanet-nonexistent:zzz"
    np.savez(tmp_path / "plugin.npz", **dict(arrays, meta=np.array(json.dumps(meta))))
    with pytest.raises(ValueError, match="numbanet-nonexistent:zzz"):
        nio.load(tmp_path / "plugin.npz")

    meta = json.loads(str(arrays["meta"]))
    del arrays["param/0.weight"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(ValueError, match="not a readable numbanet model file"):
        nio.load(tmp_path / "missing.npz")


def test_zip_member_corruption_is_a_clear_error(tmp_path):
    good = tmp_path / "good.npz"
    make_model().save(good)
    with zipfile.ZipFile(good) as zf:
        names = zf.namelist()
    raw = bytearray(good.read_bytes())
    # Damage the bytes of the first weight array (stored uncompressed): the CRC fails.
    offset = raw.find(b"\x93NUMPY", raw.find(b"param/0.weight"))
    raw[offset + 200: offset + 216] = b"\xff" * 16
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(raw))
    assert "param/0.weight.npy" in names
    with pytest.raises(ValueError, match="not a readable numbanet model file"):
        nio.load(bad)


def test_loss_hyperparameters_and_class_weights_round_trip(tmp_path):
    model = Sequential([Dense(8, 3)], seed=0, dtype="float64")
    model.compile(plugins.get_loss("cross_entropy", weight=[1.0, 2.0, 0.5],
                                   label_smoothing=0.1, reduction="sum"),
                  plugins.get_optimizer("sgd", lr=0.05, momentum=0.5))
    X, y = data(30)
    model.fit(X, y, epochs=1, verbose=0)
    model.save(tmp_path / "w.npz")
    loaded = nio.load(tmp_path / "w.npz")
    hp = loaded.loss.hyperparams
    np.testing.assert_array_equal(hp.pop("weight"), [1.0, 2.0, 0.5])
    assert hp == {"label_smoothing": 0.1, "reduction": "sum"}
    assert loaded.evaluate(X, y) == model.evaluate(X, y)


def test_load_without_compile_serves_a_model_whose_optimizer_plugin_is_gone(tmp_path):
    """numbanet.load(path, compile=False): inference without the training plugins."""
    import numbanet.plugins as nbp
    from numbanet._jit import kernel

    @kernel
    def plain_step(i, p, g, gs, slots, hp, sc):
        p[i] -= hp[0] * g[i] * gs

    class Temporary:
        @staticmethod
        @nbn.hookimpl
        def numbanet_register_optimizers():
            return [nbn.OptimizerSpec("plainstep", plain_step, {"lr": 0.1})]

    nbp.register_plugin(Temporary, "temporary-optim")
    try:
        model = nbn.Sequential([nbn.Dense(4, 3, activation="tanh"), nbn.Dense(3, 2)], seed=0)
        model.compile("cross_entropy", "plainstep", metrics=["accuracy"])
        X = np.random.default_rng(0).standard_normal((10, 4))
        model.fit(X, np.arange(10) % 2, epochs=2, verbose=0)
        path = tmp_path / "m.npz"
        model.save(path)
    finally:
        nbp.unregister_plugin("temporary-optim")
    with pytest.raises(ValueError, match="needs the optimizer 'temporary-optim:plainstep'"):
        nbn.load(path)
    served = nbn.load(path, compile=False)
    assert served.loss is None and served.optimizer is None
    np.testing.assert_array_equal(served.predict(X), model.predict(X))
    assert served.training_config["optimizer"]["id"] == "temporary-optim:plainstep"
    assert served.training_config["loss"]["id"] == "numbanet:cross_entropy"
    assert served.epochs_completed == 2
