"""Each callback's effect on a real fit, checked against an independent expectation."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

import numbanet.io as nio
import numbanet.plugins as plugins
from numbanet import schedules
from numbanet.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TerminateOnNaN,
)
from numbanet.nn import Dense, Sequential


def model_and_data(seed=0, lr=0.1, dtype="float64", loss="cross_entropy", out=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(48, 5))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    model = Sequential([Dense(5, 8, activation="tanh"), Dense(8, out)], seed=seed, dtype=dtype)
    model.compile(loss, plugins.get_optimizer("sgd", lr=lr),
                  ["accuracy"] if loss == "cross_entropy" else [])
    return model, X, y


class Recorder(Callback):
    """Records the learning rate in force at each step and each epoch end."""

    def __init__(self):
        self.step_lrs, self.epoch_logs, self.calls = [], [], []

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_train_batch_begin(self, step, logs=None):
        self.step_lrs.append(self.model.optimizer.lr)

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_logs.append(dict(logs))

    def on_train_end(self, logs=None):
        self.calls.append("train_end")


def test_callback_receives_model_params_and_hooks():
    model, X, y = model_and_data()
    rec = Recorder()
    model.fit(X, y, epochs=2, batch_size=16, callbacks=[rec], verbose=0)
    assert rec.model is model and rec.params["steps"] == 3 and rec.params["epochs"] == 2
    assert rec.calls == ["train_begin", "train_end"]
    assert len(rec.step_lrs) == 6 and [set(d) for d in rec.epoch_logs] == [
        {"loss", "accuracy", "lr"}] * 2


def test_early_stopping_stops_and_restores_best_weights():
    # mode="max" on a falling loss: epoch 1 is the best, so patience=2 stops after
    # epoch 3 and the weights after epoch 1 come back.
    model, X, y = model_and_data()
    stopper = EarlyStopping(monitor="loss", mode="max", patience=2, restore_best_weights=True)
    history = model.fit(X, y, epochs=10, batch_size=16, shuffle=False, callbacks=[stopper],
                        verbose=0)
    assert history.epoch == [0, 1, 2] and stopper.stopped_epoch == 2
    assert "early stopping at epoch 3" in history.stop_reason
    assert (history.stop_reason.kind, history.stop_reason.epoch) == ("early_stopping", 2)

    reference, _, _ = model_and_data()
    reference.fit(X, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    np.testing.assert_array_equal(model.flat_parameters, reference.flat_parameters)


def test_early_stopping_patience_counts_epochs_without_improvement():
    stopper = EarlyStopping(monitor="val_loss", patience=2, min_delta=0.01)
    model, _, _ = model_and_data()
    stopper.set_model(model)
    stopper.set_params({"metrics": ["loss", "val_loss"]})
    stopper.on_train_begin()
    model.stop_training = False
    for epoch, value in enumerate([1.0, 0.5, 0.495, 0.6]):
        stopper.on_epoch_end(epoch, {"val_loss": value})
        assert model.stop_training == (epoch == 3)
    assert stopper.best == 0.5 and stopper.best_epoch == 1


def test_monitor_must_be_logged():
    model, X, y = model_and_data()
    with pytest.raises(ValueError, match="val_loss.*validation"):
        model.fit(X, y, epochs=1, callbacks=[EarlyStopping()], verbose=0)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")


def test_model_checkpoint_saves_each_epoch_with_formatted_names(tmp_path):
    model, X, y = model_and_data()
    ckpt = ModelCheckpoint(tmp_path / "ckpt-{epoch:02d}-{loss:.2f}.npz", save_best_only=False)
    history = model.fit(X, y, epochs=3, batch_size=16, callbacks=[ckpt], verbose=0)
    assert len(ckpt.saved) == 3
    expected = tmp_path / f"ckpt-03-{history['loss'][-1]:.2f}.npz"
    assert ckpt.saved[-1] == str(expected)
    np.testing.assert_array_equal(nio.load(expected).flat_parameters, model.flat_parameters)


def test_model_checkpoint_best_only_keeps_the_best_epoch(tmp_path):
    model, X, y = model_and_data()
    path = tmp_path / "best.npz"
    rec = Recorder()
    # mode="max" on a falling loss: only epoch 1 is ever "best".
    ckpt = ModelCheckpoint(path, monitor="loss", mode="max", save_best_only=True)
    snapshots = []

    class Snapshot(Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(self.model.flat_parameters.copy())

    model.fit(X, y, epochs=3, batch_size=16, callbacks=[ckpt, rec, Snapshot()], verbose=0)
    assert len(ckpt.saved) == 1
    np.testing.assert_array_equal(nio.load(path).flat_parameters, snapshots[0])


def test_model_checkpoint_never_writes_nan_weights(tmp_path):
    model, X, y = model_and_data(lr=1e30, dtype="float32", loss="mse", out=1)
    Y = np.repeat(y[:, None].astype(np.float64), 1, axis=1) * 100
    path = tmp_path / "last.npz"
    ckpt = ModelCheckpoint(path, save_best_only=False)
    with pytest.warns(RuntimeWarning):
        model.fit(X * 100, Y, epochs=4, batch_size=8, callbacks=[ckpt], verbose=0,
                  on_nan="continue")
    assert all(np.isfinite(nio.load(p).flat_parameters).all() for p in set(ckpt.saved))


def test_learning_rate_scheduler_per_epoch_sets_history_lr():
    model, X, y = model_and_data()
    schedule = schedules.step_decay(0.1, step_size=2, gamma=0.5)
    history = model.fit(X, y, epochs=5, batch_size=16,
                        callbacks=[LearningRateScheduler(schedule)], verbose=0)
    assert history["lr"] == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert model.optimizer.lr == 0.025


def test_learning_rate_scheduler_per_step_follows_the_optimizer_step_count():
    model, X, y = model_and_data()
    schedule = schedules.cosine_decay(0.1, total=12, warmup=3)
    rec = Recorder()
    model.fit(X, y, epochs=2, batch_size=16, verbose=0,
              callbacks=[LearningRateScheduler(schedule, per="step"), rec])
    assert rec.step_lrs == [schedule(t) for t in range(6)]
    # A second fit continues the curve where the first stopped.
    rec2 = Recorder()
    model.fit(X, y, epochs=1, batch_size=16, verbose=0,
              callbacks=[LearningRateScheduler(schedule, per="step"), rec2])
    assert rec2.step_lrs == [schedule(t) for t in range(6, 9)]


def test_per_step_scheduler_alone_runs_every_step():
    model, X, y = model_and_data()
    schedule = schedules.exponential_decay(0.1, gamma=0.5)
    model.fit(X, y, epochs=1, batch_size=16, verbose=0,
              callbacks=[LearningRateScheduler(schedule, per="step")])
    # 3 steps ran with the rates for t = 0, 1, 2.
    assert model.optimizer.lr == schedule(2)


def test_learning_rate_scheduler_accepts_keras_two_argument_schedules():
    model, X, y = model_and_data()
    history = model.fit(X, y, epochs=3, verbose=0,
                        callbacks=[LearningRateScheduler(lambda epoch, lr: lr * 0.5)])
    assert history["lr"] == [0.05, 0.025, 0.0125]


def test_learning_rate_scheduler_rejects_bad_rates():
    model, X, y = model_and_data()
    with pytest.raises(ValueError, match="finite"):
        model.fit(X, y, epochs=1, verbose=0,
                  callbacks=[LearningRateScheduler(lambda epoch: float("nan"))])
    with pytest.raises(TypeError, match="callable"):
        LearningRateScheduler(0.1)


def test_reduce_lr_on_plateau_multiplies_by_factor_with_cooldown():
    model, X, y = model_and_data()
    # mode="max" on a falling loss never improves after epoch 1: reduce every
    # (patience=1) epoch, except during the one-epoch cooldown after each reduction.
    plateau = ReduceLROnPlateau(monitor="loss", mode="max", factor=0.5, patience=1,
                                cooldown=1, min_lr=0.02)
    history = model.fit(X, y, epochs=7, batch_size=16, callbacks=[plateau], verbose=0)
    assert history["lr"] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02]


def test_csv_logger_writes_history(tmp_path):
    model, X, y = model_and_data()
    path = tmp_path / "log.csv"
    history = model.fit(X, y, epochs=3, batch_size=16, validation_split=0.25,
                        callbacks=[CSVLogger(path)], verbose=0)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert [float(r[key]) for r in rows] == history[key]
    model.fit(X, y, epochs=1, callbacks=[CSVLogger(path, append=True)], verbose=0,
              validation_split=0.25)
    with open(path, newline="") as fh:
        lines = fh.read().strip().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("4,")


def test_terminate_on_nan_stops_when_fit_continues_on_nan(capsys):
    model, X, y = model_and_data(lr=1e30, dtype="float32", loss="mse", out=1)
    Y = y[:, None].astype(np.float64) * 100
    history = model.fit(X * 100, Y, epochs=5, batch_size=8, verbose=0, on_nan="continue",
                        callbacks=[TerminateOnNaN()])
    assert len(history.epoch) == 1
    assert "TerminateOnNaN" in history.stop_reason and "step" in history.stop_reason
    reason = history.stop_reason
    assert reason.kind == "terminate_on_nan" and reason.epoch == 0
    assert f"step {reason.step + 1}" in reason
    assert not math.isfinite(history["loss"][0])
    assert "TerminateOnNaN" in capsys.readouterr().out


def test_callbacks_must_be_instances():
    model, X, y = model_and_data()
    with pytest.raises(TypeError, match="instance"):
        model.fit(X, y, callbacks=[EarlyStopping], verbose=0)
    with pytest.raises(TypeError, match="hooks"):
        model.fit(X, y, callbacks=[object()], verbose=0)
