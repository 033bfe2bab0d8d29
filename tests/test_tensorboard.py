"""numbanet.TensorBoard: what it writes, read back with TensorBoard's own event
accumulator."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

import numbanet as nbn  # noqa: E402


def read(path):
    """``{tag: [(step, value), ...]}`` for scalars and ``{tag: [(step, histo)]}``."""
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    histograms = {t: [(e.step, e.histogram_value) for e in acc.Histograms(t)]
                  for t in tags["histograms"]}
    return scalars, histograms


@pytest.fixture
def data():
    return nbn.datasets.make_blobs(120, n_features=4, centers=3, seed=0)


def model_for(dtype="float32"):
    model = nbn.Sequential([nbn.Dense(4, 8, activation="relu"), nbn.Dense(8, 3)], seed=0,
                           dtype=dtype)
    return model.compile("cross_entropy", nbn.get_optimizer("adam", lr=1e-2),
                         metrics=["accuracy"])


def test_epoch_logs_match_history_for_train_and_validation(tmp_path, data):
    X, y = data
    model = model_for()
    history = model.fit(X, y, epochs=4, batch_size=32, validation_split=0.25, verbose=0,
                        callbacks=[nbn.TensorBoard(tmp_path)])
    train, _ = read(tmp_path / "train")
    validation, _ = read(tmp_path / "validation")
    assert set(train) == {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"}
    assert set(validation) == {"epoch_loss", "epoch_accuracy"}
    assert [s for s, _ in train["epoch_loss"]] == [0, 1, 2, 3]
    np.testing.assert_allclose([v for _, v in train["epoch_loss"]], history["loss"],
                               rtol=1e-6)
    np.testing.assert_allclose([v for _, v in validation["epoch_loss"]], history["val_loss"],
                               rtol=1e-6)
    np.testing.assert_allclose([v for _, v in train["epoch_learning_rate"]], history["lr"])


def test_per_step_loss_and_learning_rate(tmp_path, data):
    X, y = data
    model = model_for()
    losses = []

    class Record(nbn.Callback):
        def on_train_batch_end(self, step, logs=None):
            losses.append(logs["loss"])

    schedule = nbn.LearningRateScheduler(lambda t: 0.01 / (1 + t), per="step")
    model.fit(X, y, epochs=2, batch_size=40, verbose=0,
              callbacks=[schedule, nbn.TensorBoard(tmp_path, update_freq="batch"), Record()])
    train, _ = read(tmp_path / "train")
    steps = [s for s, _ in train["batch_loss"]]
    assert steps == list(range(1, 7))  # the optimizer's step count after each step
    np.testing.assert_allclose([v for _, v in train["batch_loss"]], losses, rtol=1e-6)
    np.testing.assert_allclose([v for _, v in train["batch_learning_rate"]],
                               [0.01 / (1 + t) for t in range(6)], rtol=1e-6)


def test_every_nth_step(tmp_path, data):
    X, y = data
    model_for().fit(X, y, epochs=3, batch_size=20, verbose=0,
                    callbacks=[nbn.TensorBoard(tmp_path, update_freq=4)])
    train, _ = read(tmp_path / "train")
    assert [s for s, _ in train["batch_loss"]] == [4, 8, 12, 16]


def test_histograms_and_gradient_norm(tmp_path, data):
    X, y = data
    model = model_for("float64")
    norms = []

    class Norm(nbn.Callback):
        def on_train_batch_end(self, step, logs=None):
            norms.append(math.sqrt(float(np.sum(model.flat_gradients ** 2))))

    tb = nbn.TensorBoard(tmp_path, histogram_freq=2, write_grads=True, gradient_norm=True)
    model.fit(X, y, epochs=4, batch_size=60, verbose=0, callbacks=[tb, Norm()])
    train, histograms = read(tmp_path / "train")
    names = [p.name for p in model.parameters()]
    assert set(histograms) == {f"{kind}/{n}" for kind in ("weights", "gradients")
                               for n in names}
    # Written at the end of epochs 2 and 4 (steps 1 and 3); the last one describes the
    # final weights exactly.
    weights = histograms["weights/0.weight"]
    assert [s for s, _ in weights] == [1, 3]
    final = weights[-1][1]
    value = model.parameters()[0].value
    assert final.num == value.size and final.sum == pytest.approx(value.sum())
    assert final.min == pytest.approx(value.min()) and final.max == pytest.approx(value.max())
    assert sum(final.bucket) == value.size
    # The epoch's gradient norm is the mean of its steps' norms (2 steps per epoch).
    expected = [np.mean(norms[i:i + 2]) for i in range(0, 8, 2)]
    np.testing.assert_allclose([v for _, v in train["epoch_gradient_norm"]], expected,
                               rtol=1e-6)


def test_a_resumed_model_continues_its_curves(tmp_path, data):
    X, y = data
    model = model_for()
    model.fit(X, y, epochs=2, verbose=0, callbacks=[nbn.TensorBoard(tmp_path)])
    model.fit(X, y, epochs=2, verbose=0, callbacks=[nbn.TensorBoard(tmp_path)])
    train, _ = read(tmp_path / "train")
    assert [s for s, _ in train["epoch_loss"]] == [0, 1, 2, 3]


def test_only_rank_zero_writes(tmp_path, data, monkeypatch):
    import sys

    # An earlier test may have initialised numbanet.distributed in this process (a world
    # of one, rank 0), which takes precedence over the launcher's variables.
    distributed = sys.modules.get("numbanet.distributed")
    if distributed is not None:
        monkeypatch.setattr(distributed, "_comm", None)
    X, y = data
    model_for().fit(X, y, epochs=1, verbose=0,
                    callbacks=[nbn.TensorBoard(tmp_path / "explicit", rank=1)])
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "2")
    model_for().fit(X, y, epochs=1, verbose=0,
                    callbacks=[nbn.TensorBoard(tmp_path / "launcher")])
    assert not (tmp_path / "explicit").exists() and not (tmp_path / "launcher").exists()
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    assert nbn.TensorBoard(tmp_path).writes


def test_epoch_only_logging_adds_no_per_step_hook():
    from numbanet.callbacks import CallbackList

    quiet = CallbackList([nbn.TensorBoard("unused")], model=None, params={})
    busy = CallbackList([nbn.TensorBoard("unused", update_freq=10)], model=None, params={})
    assert not quiet.per_batch and busy.per_batch


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"update_freq": "step"}, "update_freq"),
    ({"update_freq": 0}, "update_freq"),
    ({"histogram_freq": -1}, "histogram_freq"),
    ({"flush_secs": 0}, "flush_secs"),
    ({"log_dir": 3}, "log_dir"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        nbn.TensorBoard(**{"log_dir": "logs", **kwargs})


def test_without_tensorboard_training_start_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['tensorboard'] = None\n"
            "import numbanet as nbn, numpy as np\n"
            "m = nbn.Sequential([nbn.Dense(2, 2)]).compile('mse', 'sgd')\n"
            "try:\n"
            f"    m.fit(np.ones((4, 2)), np.ones((4, 2)), verbose=0, "
            f"callbacks=[nbn.TensorBoard({str(tmp_path)!r})])\n"
            "except ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert 'pip install "numbanet[tensorboard]"' in out


def test_numbanet_train_tensorboard_flag(tmp_path, capsys):
    from numbanet.cli import main

    logs = tmp_path / "runs"
    assert main(["train", "--dataset", "blobs", "--epochs", "2", "--hidden", "8", "--quiet",
                 "--tensorboard", str(logs)]) == 0
    train, _ = read(logs / "train")
    validation, _ = read(logs / "validation")
    assert [s for s, _ in train["epoch_loss"]] == [0, 1]
    assert {"epoch_accuracy", "epoch_learning_rate"} <= set(train)
    assert "epoch_loss" in validation


def test_rank_comes_from_numbanet_distributed_once_initialised(monkeypatch):
    import numbanet.distributed as dist

    monkeypatch.setattr(dist, "initialized", lambda: True)
    monkeypatch.setattr(dist, "rank", lambda: 3)
    assert not nbn.TensorBoard("unused").writes
    monkeypatch.setattr(dist, "initialized", lambda: False)
    monkeypatch.delenv("OMPI_COMM_WORLD_RANK", raising=False)
    assert nbn.TensorBoard("unused").writes  # MPI never initialised: a single process
