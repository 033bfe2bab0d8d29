"""fit / evaluate / predict_proba against NumPy references, determinism, and bad input."""

from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest

import numbanet.plugins as plugins
from numbanet.datasets import load_digits, train_test_split
from numbanet.nn import Dense, Dropout, Sequential
from numbanet.optim import make_pipeline
from numbanet.sampling import BatchLoader, BatchSampler
from numbanet.threads import get_num_threads, max_threads, set_num_threads
from numbanet.train import History, StopReason, _Progress

# One small architecture per dtype keeps the number of compiled variants low.


def small_model(seed=0, dtype="float64", optimizer="sgd", loss="cross_entropy", out=3,
                metrics=("accuracy",), dropout=False, **opt_kwargs):
    layers = [Dense(5, 8, activation="tanh")]
    if dropout:
        layers.append(Dropout(0.25))
    layers.append(Dense(8, out))
    model = Sequential(layers, seed=seed, dtype=dtype)
    opt_kwargs.setdefault("lr", 0.1)
    model.compile(loss=loss, optimizer=plugins.get_optimizer(optimizer, **opt_kwargs),
                  metrics=list(metrics))
    return model


def small_data(n=40, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1.0)
    return X, np.minimum(y, classes - 1)


def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_grads(model, X, y):
    """Gradient of mean softmax cross-entropy w.r.t. the flat parameters, via model.backward
    fed with a NumPy-computed d(loss)/d(outputs)."""
    out = model.forward(X)
    p = np.exp(np_log_softmax(out))
    p[np.arange(len(y)), y] -= 1.0
    model.backward(p / len(y))
    return model.flat_gradients.copy()


# ------------------------------------------------------------------------ learning


def test_fit_learns_digits_to_97_percent_on_held_out_split():
    X, y = load_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=1, stratify=True)
    model = Sequential([Dense(64, 128, activation="relu"), Dense(128, 64, activation="relu"),
                        Dense(64, 10)], seed=1)
    model.compile("cross_entropy", plugins.get_optimizer("adam", lr=2e-3), ["accuracy"])
    history = model.fit(X_tr, y_tr, epochs=25, batch_size=32, verbose=0)
    assert history["loss"][-1] < history["loss"][0] / 10
    result = model.evaluate(X_te, y_te)
    assert result["accuracy"] >= 0.97


def test_history_keys_and_validation_split_uses_last_samples():
    X, y = small_data(50)
    model = small_model()
    history = model.fit(X, y, epochs=3, batch_size=8, validation_split=0.2, verbose=0)
    assert isinstance(history, History)
    assert set(history.keys()) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert history.epoch == [0, 1, 2] and all(len(v) == 3 for v in history.history.values())
    # val_* equals an independent evaluation of the last 20% of the samples.
    last = model.evaluate(X[40:], y[40:])
    assert history["val_loss"][-1] == pytest.approx(last["loss"], rel=1e-12)
    assert history["val_accuracy"][-1] == last["accuracy"]
    # A second fit continues the epoch count.
    again = model.fit(X, y, epochs=1, verbose=0)
    assert again.epoch == [3]


def test_evaluate_matches_numpy_cross_entropy_and_accuracy():
    X, y = small_data(30)
    model = small_model()
    result = model.evaluate(X, y)
    out = model.predict(X)
    expected_loss = -np.mean(np_log_softmax(out)[np.arange(len(y)), y])
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-12)
    assert result["accuracy"] == np.mean(np.argmax(out, axis=1) == y)


def test_predict_proba_is_softmax_of_outputs():
    X, _ = small_data(10)
    model = small_model()
    probs = model.predict_proba(X)
    np.testing.assert_allclose(probs, np.exp(np_log_softmax(model.predict(X))), rtol=1e-12)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)


def test_predict_proba_refuses_regression_loss():
    model = small_model(loss="mse", metrics=())
    with pytest.raises(ValueError, match="predict_proba"):
        model.predict_proba(np.zeros((2, 5)))


def test_full_batch_sgd_epoch_matches_numpy_gradient_step():
    X, y = small_data(24)
    model = small_model()
    w0 = model.flat_parameters.copy()
    g = np_grads(model, X, y)
    model.fit(X, y, epochs=1, batch_size=100, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.flat_parameters, w0 - 0.1 * g, rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------ sample and class weights


def test_full_batch_sgd_with_sample_weights_matches_a_weighted_numpy_step():
    """One full-batch step follows the gradient of Σ w_i l_i / Σ w_i (PyTorch's mean)."""
    X, y = small_data(24)
    w = np.random.default_rng(1).uniform(0.0, 3.0, 24)
    model = small_model()
    w0 = model.flat_parameters.copy()
    out = model.forward(X)
    p = np.exp(np_log_softmax(out))
    p[np.arange(24), y] -= 1.0
    model.backward(p * (w / w.sum())[:, None])
    g = model.flat_gradients.copy()
    model.fit(X, y, sample_weight=w, epochs=1, batch_size=100, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.flat_parameters, w0 - 0.1 * g, rtol=1e-10, atol=1e-13)


def test_equal_sample_weights_train_exactly_as_none():
    X, y = small_data(40)
    plain, weighted = small_model(), small_model()
    plain.fit(X, y, epochs=2, batch_size=8, verbose=0)
    weighted.fit(X, y, sample_weight=np.full(40, 3.0), epochs=2, batch_size=8, verbose=0)
    np.testing.assert_allclose(weighted.flat_parameters, plain.flat_parameters, rtol=1e-12)


def test_class_weight_equals_the_matching_sample_weights_and_torch_weighted_ce():
    X, y = small_data(40)
    class_weight = {0: 0.5, 2: 4.0}  # class 1 unlisted: weight 1
    per_class = np.array([0.5, 1.0, 4.0])
    a, b = small_model(), small_model()
    a.fit(X, y, class_weight=class_weight, epochs=2, batch_size=8, verbose=0)
    b.fit(X, y, sample_weight=per_class[y], epochs=2, batch_size=8, verbose=0)
    np.testing.assert_array_equal(a.flat_parameters, b.flat_parameters)
    # ...and the full-batch loss it minimises is F.cross_entropy(weight=per_class)
    torch = pytest.importorskip("torch")
    c = small_model()
    history = c.fit(X, y, class_weight=class_weight, epochs=1, batch_size=100, verbose=0)
    ref = torch.nn.functional.cross_entropy(
        torch.tensor(small_model().predict(X)), torch.tensor(y), weight=torch.tensor(per_class))
    assert history["loss"][0] == pytest.approx(ref.item(), rel=1e-10)


def test_balanced_class_weight_is_scikit_learns_formula():
    from numbanet.train import _class_weights

    y = np.array([0, 0, 0, 0, 1, 1, 2, 0])
    weights = _class_weights("balanced", y, 4)  # class 3 absent
    per_class = {0: 8 / (3 * 5), 1: 8 / (3 * 2), 2: 8 / (3 * 1)}
    np.testing.assert_allclose(weights, [per_class[v] for v in y])


def test_evaluate_and_val_loss_weigh_the_loss_only():
    X, y = small_data(40)
    w = np.random.default_rng(2).uniform(0.1, 2.0, 40)
    model = small_model()
    result = model.evaluate(X, y, sample_weight=w)
    rows = -np_log_softmax(model.predict(X))[np.arange(40), y]
    assert result["loss"] == pytest.approx(np.sum(w * rows) / np.sum(w), rel=1e-12)
    assert result["accuracy"] == model.evaluate(X, y)["accuracy"]
    history = small_model().fit(X, y, sample_weight=w, validation_split=0.25, epochs=1,
                                verbose=0, shuffle=False, batch_size=100)
    with_data = small_model().fit(X[:30], y[:30], sample_weight=w[:30], epochs=1, verbose=0,
                                  validation_data=(X[30:], y[30:], w[30:]), shuffle=False,
                                  batch_size=100)
    assert history["val_loss"] == with_data["val_loss"]
    unweighted_val = small_model().fit(X[:30], y[:30], sample_weight=w[:30], epochs=1,
                                       verbose=0, validation_data=(X[30:], y[30:]),
                                       shuffle=False, batch_size=100)
    assert history["val_loss"] != unweighted_val["val_loss"]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sample_weight": np.ones(39)}, ValueError, r"sample_weight must have shape \(40,\)"),
    ({"sample_weight": -np.ones(40)}, ValueError, ">= 0"),
    ({"sample_weight": np.zeros(40)}, ValueError, "zero for every sample"),
    ({"class_weight": {5: 1.0}}, ValueError, r"label 5, outside \[0, 3\)"),
    ({"class_weight": {"a": 1.0}}, TypeError, "integer class labels"),
    ({"class_weight": {0: -1.0}}, ValueError, "class_weight"),
    ({"class_weight": "even"}, ValueError, "'balanced'"),
    ({"class_weight": [1.0, 2.0]}, TypeError, "dict"),
])
def test_bad_weights_are_refused_before_training(kwargs, error, match):
    X, y = small_data(40)
    model = small_model()
    before = model.flat_parameters.copy()
    with pytest.raises(error, match=match):
        model.fit(X, y, epochs=1, verbose=0, **kwargs)
    np.testing.assert_array_equal(model.flat_parameters, before)


def test_class_weight_needs_labels_and_weights_need_a_weighing_loss():
    X, _ = small_data(40)
    model = small_model(loss="mse", metrics=())
    with pytest.raises(ValueError, match="class_weight needs integer class labels"):
        model.fit(X, np.zeros((40, 3)), class_weight="balanced", verbose=0)

    class PlainLoss:
        def __init__(self):
            self.inner = plugins.get_loss("cross_entropy")

        def prepare_targets(self, y, k, dtype):
            return self.inner.prepare_targets(y, k, dtype)

        def forward_backward(self, out, t, grad):
            return self.inner.forward_backward(out, t, grad)

        def forward(self, out, t):
            return self.inner.forward(out, t)

    model = small_model()
    model.compile(loss=PlainLoss(), optimizer=model.optimizer)
    X, y = small_data(40)
    with pytest.raises(TypeError, match="sample_weight needs a loss that applies sample"):
        model.fit(X, y, sample_weight=np.ones(40), verbose=0)


# ------------------------------------------------------------- clipping / weight decay


def test_clip_value_clips_each_gradient_element():
    X, y = small_data(24)
    model = small_model()
    w0 = model.flat_parameters.copy()
    g = np_grads(model, X, y)
    assert np.abs(g).max() > 0.05
    model.fit(X, y, epochs=1, batch_size=100, shuffle=False, verbose=0, clip_value=0.05)
    np.testing.assert_allclose(model.flat_parameters, w0 - 0.1 * np.clip(g, -0.05, 0.05),
                               rtol=1e-10, atol=1e-13)


def test_clip_norm_scales_to_the_global_norm():
    X, y = small_data(24)
    model = small_model()
    w0 = model.flat_parameters.copy()
    g = np_grads(model, X, y)
    norm = np.linalg.norm(g)
    assert norm > 0.01
    model.fit(X, y, epochs=1, batch_size=100, shuffle=False, verbose=0, clip_norm=0.01)
    expected = w0 - 0.1 * g * (0.01 / (norm + 1e-6))
    np.testing.assert_allclose(model.flat_parameters, expected, rtol=1e-10, atol=1e-13)


def test_clip_norm_matches_torch_clip_grad_norm():
    torch = pytest.importorskip("torch")
    X, y = small_data(24)
    model = small_model()
    w0 = model.flat_parameters.copy()
    g = np_grads(model, X, y)
    tg = torch.tensor(g.copy(), requires_grad=False)
    param = torch.nn.Parameter(torch.tensor(w0.copy()))
    param.grad = tg
    torch.nn.utils.clip_grad_norm_([param], max_norm=0.01)
    with torch.no_grad():
        param -= 0.1 * param.grad
    model.fit(X, y, epochs=1, batch_size=100, shuffle=False, verbose=0, clip_norm=0.01)
    np.testing.assert_allclose(model.flat_parameters, param.detach().numpy(), rtol=1e-9,
                               atol=1e-13)


@pytest.mark.parametrize("decay_biases", [False, True])
def test_decoupled_weight_decay_skips_biases_by_default(decay_biases):
    X, y = small_data(24)
    model = small_model()
    w0 = model.flat_parameters.copy()
    g = np_grads(model, X, y)
    decayed = np.zeros_like(w0)
    for name, start, stop, _ in model.parameter_layout():
        if decay_biases or not name.endswith("bias"):
            decayed[start:stop] = 1.0
    model.fit(X, y, epochs=1, batch_size=100, shuffle=False, verbose=0, weight_decay=0.5,
              decay_biases=decay_biases)
    expected = w0 * (1.0 - 0.1 * 0.5 * decayed) - 0.1 * g
    np.testing.assert_allclose(model.flat_parameters, expected, rtol=1e-10, atol=1e-13)


# -------------------------------------------------------------------- determinism


def _train_digits_subset(threads, seed=3):
    X, y = load_digits()
    model = Sequential([Dense(64, 32, activation="relu"), Dropout(0.1), Dense(32, 10)], seed=7)
    model.compile("cross_entropy", plugins.get_optimizer("adam", lr=1e-3), ["accuracy"])
    old = get_num_threads()
    set_num_threads(threads)
    try:
        model.fit(X[:600], y[:600], epochs=2, batch_size=64, seed=seed, verbose=0)
    finally:
        set_num_threads(old)
    return model.flat_parameters.copy()


def test_same_seed_gives_bit_identical_weights_run_to_run_and_across_threads():
    first = _train_digits_subset(threads=1)
    again = _train_digits_subset(threads=1)
    np.testing.assert_array_equal(first, again)
    if max_threads() >= 2:
        np.testing.assert_array_equal(first, _train_digits_subset(threads=2))
    other = _train_digits_subset(threads=1, seed=4)
    assert not np.array_equal(first, other)


def test_fit_seed_reseeds_the_generator_dropout_uses():
    X, y = small_data(40)
    a = small_model(dropout=True)
    b = small_model(dropout=True)
    b.rng.random(5)  # move b's stream; seed= must make the calls agree anyway
    a.fit(X, y, epochs=2, batch_size=8, seed=11, verbose=0)
    b.fit(X, y, epochs=2, batch_size=8, seed=11, verbose=0)
    np.testing.assert_array_equal(a.flat_parameters, b.flat_parameters)
    assert a.layers[1].rng is a.rng


def test_steady_state_step_allocates_no_arrays():
    X, y = load_digits()
    model = Sequential([Dense(64, 32, activation="relu"), Dense(32, 10)], seed=0)
    model.compile("cross_entropy", plugins.get_optimizer("adam", lr=1e-3))
    X32 = model.validate_input(X[:200])
    targets = model.loss.prepare_targets(y[:200], 10, model.dtype)
    batches = BatchLoader(X32, targets, BatchSampler(200, 32, shuffle=True))
    pipeline = make_pipeline(clip_norm=1.0, clip_value=1.0, weight_decay=1e-4).setup(model)

    def epoch():
        batches.new_epoch(model.rng)
        for i in range(len(batches)):
            model.train_batch(*batches.get(i), pipeline)
            model.train_batch(*batches.get(i))

    # Steady state: besides compiling and creating workspaces, warm-up fills CPython's
    # free lists (tuples of each size keep up to 2000 freed objects, which tracemalloc
    # still counts as allocated); until they are full they grow ~160 bytes a step.
    for _ in range(300):
        epoch()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        epoch()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # One 32x64 float32 batch is 8 KiB; any per-step array would show up here.
    assert peak - base < 4096


# ------------------------------------------------------------------------- NaN loss


def _diverging():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(32, 5)) * 100
    y = rng.normal(size=(32, 1)) * 100
    model = small_model(loss="mse", out=1, metrics=(), lr=1e30, dtype="float32")
    return model, X, y


def test_nan_loss_stops_with_message_naming_epoch_and_step():
    model, X, y = _diverging()
    with pytest.warns(RuntimeWarning, match=r"at epoch 1, step \d+ of 4"):
        history = model.fit(X, y, epochs=5, batch_size=8, verbose=0)
    assert history.stop_reason is not None and "training stopped" in history.stop_reason
    assert len(history.epoch) == 1 and not math.isfinite(history["loss"][0])


def test_nan_stop_reason_is_structured():
    model, X, y = _diverging()
    with pytest.warns(RuntimeWarning):
        history = model.fit(X, y, epochs=5, batch_size=8, verbose=0)
    reason = history.stop_reason
    assert isinstance(reason, StopReason) and isinstance(reason, str)
    assert reason.kind == "nan_loss" and reason.epoch == 0
    assert reason.step is not None and f"step {reason.step + 1} of 4" in reason


def test_nan_stop_warning_points_at_the_caller():
    model, X, y = _diverging()
    with pytest.warns(RuntimeWarning) as record:
        model.fit(X, y, epochs=5, batch_size=8, verbose=0)
    assert record[0].filename == __file__


def test_a_callbacks_text_reason_becomes_a_structured_one():
    from numbanet.callbacks import Callback

    class StopAfterTwo(Callback):
        def __init__(self, reason):
            self.reason, self.epochs = reason, 0

        def on_epoch_end(self, epoch, logs=None):
            self.epochs += 1
            if self.epochs == 2:
                self.model.stop_training = True
                self.model.stop_reason = self.reason

    X, y = small_data(20)
    model = small_model()
    history = model.fit(X, y, epochs=5, verbose=0, callbacks=[StopAfterTwo("enough")])
    assert history.stop_reason == "enough"
    assert (history.stop_reason.kind, history.stop_reason.epoch) == ("callback", 1)
    # No reason given: a generic one; and a second fit does not inherit the first's.
    history = model.fit(X, y, epochs=5, verbose=0, callbacks=[StopAfterTwo(None)])
    assert history.stop_reason == "stopped by a callback"
    assert history.stop_reason.epoch == 3  # the model's lifetime count continues


def test_stop_reason_keeps_its_fields_through_copy_and_pickle():
    import copy
    import pickle

    reason = StopReason("early stopping at epoch 3", "early_stopping", epoch=2)
    for clone in (pickle.loads(pickle.dumps(reason)), copy.deepcopy(reason)):
        assert clone == reason and clone.kind == "early_stopping" and clone.epoch == 2
        assert clone.step is None
    assert "kind='early_stopping'" in repr(reason)
    with pytest.raises(TypeError, match="kind"):
        StopReason("x", kind="")


def test_nan_loss_raise_and_continue():
    model, X, y = _diverging()
    with pytest.raises(FloatingPointError, match=r"epoch 1, step \d+"):
        model.fit(X, y, epochs=5, batch_size=8, verbose=0, on_nan="raise")
    model, X, y = _diverging()
    history = model.fit(X, y, epochs=3, batch_size=8, verbose=0, on_nan="continue")
    assert len(history.epoch) == 3 and history.stop_reason is None


# ------------------------------------------------------------------------ output


def test_verbose_levels(capsys):
    X, y = small_data(20)
    model = small_model()
    model.fit(X, y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""
    model.fit(X, y, epochs=2, verbose=2, validation_split=0.25)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 3/4 - loss")
    assert "val_accuracy" in lines[0] and "samples/s" in lines[0]


def test_history_and_log_line_say_how_each_figure_was_measured(capsys):
    """Issue 16, item 13: the loss is a running mean over the steps, the rest is measured
    at the end of the epoch; both the line and History say so."""
    from numbanet.train import END_OF_EPOCH, RUNNING_MEAN

    X, y = small_data(40)
    history = small_model().fit(X, y, epochs=1, verbose=2, validation_split=0.25)
    assert history.measured == {"loss": RUNNING_MEAN, "accuracy": END_OF_EPOCH,
                                "val_loss": END_OF_EPOCH, "val_accuracy": END_OF_EPOCH}
    line = capsys.readouterr().out
    assert " - loss " in line and "(running mean) - accuracy " in line


class FakeTerminal:
    """A stream that says it is a terminal; ``screen()`` replays carriage returns the way
    a terminal does, so the test sees what stays on screen."""

    def __init__(self, tty=True):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def screen(self):
        lines = []
        for raw in self.text.split("\n"):
            shown = ""
            for part in raw.split("\r"):
                shown = part + shown[len(part):]
            lines.append(shown.rstrip())
        return lines


def run_progress(stream, columns, epochs=2, steps=30):
    progress = _Progress(1, epochs=epochs, steps=steps, stream=stream, columns=columns)
    progress.REDRAW_SECONDS = 0.0  # draw every step
    logs = {"loss": 1.4263, "accuracy": 0.8786, "val_loss": 0.5859, "val_accuracy": 0.8681,
            "lr": 0.002}
    for epoch in range(1, epochs + 1):
        progress.epoch_begin(epoch)
        for step in range(1, steps + 1):
            if progress.bar is not None:
                progress.step(step, 0.5)
        progress.epoch_end(epoch, logs, 0.1, 1293, warmup=2.5 if epoch == 1 else 0.0)
    progress.close()
    return progress


def test_progress_bar_then_a_full_summary_line_per_epoch_at_80_columns():
    """Issue 16, item 2: the summary line is never cut to the terminal's width."""
    tty = FakeTerminal()
    run_progress(tty, columns=80)
    drawn = [part for part in tty.text.replace("\n", "\r").split("\r") if "[" in part]
    assert drawn and all(len(part) < 80 for part in drawn)  # the bar fits the terminal
    assert "30/30" in drawn[-1] and "=" in drawn[-1]
    screen = [line for line in tty.screen() if line]
    assert len(screen) == 2  # the bars are gone, one summary line per epoch stays
    assert screen[0].startswith("epoch 1/2 - loss 1.4263 (running mean) - accuracy 0.8786")
    assert "val_loss 0.5859 - val_accuracy 0.8681 - lr 0.002" in screen[0]
    assert len(screen[0]) > 80 and screen[0].endswith("s (+2.5s compiling or loading kernels)")
    assert "compiling" not in screen[1] and "12,930 samples/s" in screen[1]


@pytest.mark.parametrize("columns", [0, 20])
def test_progress_in_a_terminal_without_room_prints_summary_lines_only(columns):
    """A 0x0 terminal (or a tiny one): no bar, no blank lines, full summaries."""
    tty = FakeTerminal()
    run_progress(tty, columns=columns)
    lines = tty.text.splitlines()
    assert "\r" not in tty.text and len(lines) == 2 and all(lines)
    assert "val_accuracy 0.8681" in lines[0] and "val_accuracy 0.8681" in lines[1]


def test_progress_draws_no_bar_into_a_pipe_or_at_verbose_2():
    pipe = FakeTerminal(tty=False)
    run_progress(pipe, columns=80)
    assert "\r" not in pipe.text and pipe.text.startswith("epoch 1/2 - loss 1.4263")
    tty = FakeTerminal()
    progress = _Progress(2, epochs=1, steps=3, stream=tty, columns=80)
    progress.epoch_begin(1)
    assert progress.bar is None


def test_fit_on_a_terminal_shows_the_bar_and_every_summary(monkeypatch):
    import numbanet.train as train_module

    tty = FakeTerminal()
    monkeypatch.setattr(train_module.sys, "stdout", tty)
    monkeypatch.setattr(_Progress, "REDRAW_SECONDS", 0.0)
    monkeypatch.setattr(_Progress, "_width", lambda self: 80)
    X, y = small_data(40)
    small_model().fit(X, y, epochs=2, batch_size=8, validation_split=0.25, verbose=1)
    assert "[" in tty.text and "4/4" in tty.text  # 30 training samples, batches of 8
    # (a cold kernel cache adds the "compiling kernels" line before the first epoch)
    screen = [line for line in tty.screen() if line and not line.startswith("compiling")]
    assert [line[:10] for line in screen] == ["epoch 1/2 ", "epoch 2/2 "]
    assert all("val_accuracy" in line and "samples/s" in line for line in screen)


def test_compile_watch_sees_compiling_and_not_a_warm_call():
    import numba

    from numbanet._compilation import CompileWatch

    @numba.njit(cache=False)
    def fresh(a):
        return a * 2.0 + 1.0

    calls = []
    with CompileWatch(on_compile=lambda: calls.append(1)) as watch:
        fresh(1.0)
        fresh(2.0)
    assert watch.compiled and watch.seconds > 0 and calls == [1]
    with CompileWatch(on_compile=lambda: calls.append(2)) as warm:
        fresh(3.0)
    assert not warm.compiled and warm.seconds == 0.0 and calls == [1]


def test_fit_says_once_that_it_compiles_and_keeps_it_out_of_samples_per_s(capsys):
    """Issue 16, item 12: a compilation during fit prints the message once, and its time
    is reported apart from the epoch's training time."""
    import numba

    from numbanet.callbacks import Callback

    class CompileInStepOne(Callback):
        def on_train_batch_begin(self, step, logs=None):
            if step == 0 and not hasattr(self, "done"):
                self.done = True
                numba.njit(cache=False)(lambda a: a + 1.0)(1.0)  # a real compilation

    X, y = small_data(40)
    small_model().fit(X, y, epochs=2, batch_size=8, verbose=2, callbacks=[CompileInStepOne()])
    out = capsys.readouterr().out.splitlines()
    assert out.count("compiling kernels (first run only, cached afterwards)...") == 1
    assert out[0].startswith("compiling kernels") and out[1].startswith("epoch 1/2")


def test_time_in_the_compiler_is_not_training_time(capsys):
    from numbanet.train import _Data, _FitLoop, _NanPolicy

    class SlowCompiler:  # a CompileWatch that sees 0.5 s of compiling in step 1
        seconds = 0.0

    watch = SlowCompiler()
    model = small_model()
    X, y = small_data(40)
    targets = model.loss.prepare_targets(y, 3, model.dtype)
    loader = BatchLoader(X, targets, BatchSampler(40, 8))

    class Callbacks:
        per_batch = True

        def on_train_batch_begin(self, step, logs):
            if step == 0:
                time.sleep(0.5)
                watch.seconds += 0.5

        def on_train_batch_end(self, step, logs):
            pass

    loop = _FitLoop(model, _Data(X, targets, None, None), loader, make_pipeline(),
                    Callbacks(), _Progress(0, 1, 5), _NanPolicy("stop"), History(), watch)
    steps = loop.train_epoch(0)
    assert steps.warmup == 0.5 and 0 < steps.seconds < 0.4
    progress = _Progress(2, epochs=1, steps=5)
    progress.epoch_end(1, {"loss": 0.5}, 0.01, 40, warmup=5.0)
    assert capsys.readouterr().out.rstrip().endswith(
        "4,000 samples/s - 0.01s (+5.0s compiling or loading kernels)")


# ----------------------------------------------------------------------- bad input


def test_fit_requires_compile():
    model = Sequential([Dense(5, 3)], seed=0)
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(np.zeros((4, 5)), np.zeros(4, dtype=int))


BAD_FIT = [
    ({"y": np.array([0, 1, 3, 0])}, ValueError, "y"),
    ({"y": np.array([0.5, 1.0, 2.0, 0.0])}, (TypeError, ValueError), "y"),
    ({"y": np.array([0, 1, 2])}, ValueError, "4 samples but y has 3"),
    ({"X": np.zeros((0, 5)), "y": np.zeros(0, dtype=int)}, ValueError, "empty"),
    ({"X": np.array([[np.nan] * 5] * 4)}, ValueError, "NaN"),
    ({"X": np.zeros((4, 6))}, ValueError, "features"),
    ({"X": "abc"}, (TypeError, ValueError), "X"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": 2.5}, TypeError, "batch_size"),
    ({"epochs": -1}, ValueError, "epochs"),
    ({"validation_split": 1.0}, ValueError, "validation_split"),
    ({"validation_split": -0.1}, ValueError, "validation_split"),
    ({"validation_split": 0.9}, ValueError, "validation_split"),
    ({"validation_data": (np.zeros((2, 5)), np.array([0, 5]))}, ValueError,
     "validation_data"),
    ({"validation_data": np.zeros((2, 5))}, TypeError, "validation_data"),
    ({"clip_norm": -1.0}, ValueError, "clip_norm"),
    ({"weight_decay": -0.1}, ValueError, "weight_decay"),
    ({"on_nan": "ignore"}, ValueError, "on_nan"),
    ({"verbose": 5}, ValueError, "verbose"),
    ({"callbacks": "EarlyStopping"}, TypeError, "callbacks"),
]


@pytest.mark.parametrize(("change", "error", "match"), BAD_FIT)
def test_fit_rejects_bad_input_naming_the_argument(change, error, match):
    model = small_model()
    kwargs = {"X": np.zeros((4, 5)), "y": np.array([0, 1, 2, 0]), "verbose": 0, **change}
    X, y = kwargs.pop("X"), kwargs.pop("y")
    with pytest.raises(error, match=match):
        model.fit(X, y, **kwargs)


def test_nan_in_regression_targets_is_rejected():
    model = small_model(loss="mse", out=1, metrics=())
    y = np.zeros((4, 1))
    y[2, 0] = np.nan
    with pytest.raises(ValueError, match="y"):
        model.fit(np.zeros((4, 5)), y, verbose=0)


def test_epochs_zero_trains_nothing():
    X, y = small_data(10)
    model = small_model()
    w0 = model.flat_parameters.copy()
    history = model.fit(X, y, epochs=0)
    assert history.epoch == []
    np.testing.assert_array_equal(model.flat_parameters, w0)


def test_predict_proba_is_sigmoid_for_binary_cross_entropy():
    X, y = small_data(16, classes=2)
    model = small_model(loss="binary_cross_entropy", out=1, metrics=())
    model.fit(X, y[:, None].astype(np.float64), epochs=1, verbose=0)
    probs = model.predict_proba(X)
    np.testing.assert_allclose(probs, 1.0 / (1.0 + np.exp(-model.predict(X))), rtol=1e-12)


def test_fit_seed_must_be_a_non_negative_int():
    X, y = small_data(8)
    model = small_model()
    with pytest.raises(ValueError, match="seed"):
        model.fit(X, y, seed=-1, verbose=0)
    with pytest.raises(TypeError, match="seed"):
        model.fit(X, y, seed=1.5, verbose=0)
