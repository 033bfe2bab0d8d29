"""``numbanet train | evaluate | predict`` end to end, in subprocesses."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest


def run(*args, cwd=None, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "numbanet", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def test_train_with_no_arguments_reaches_97_percent_on_digits(tmp_path):
    result = run("train", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # the 1437 training samples: 1293 to train on, 144 (10%) for validation
    assert lines[0].startswith(
        "numbanet train: digits, 10 classes (1293 train / 144 validation / 360 test samples)")
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 30 and "val_accuracy" in epochs[0] and "samples/s" in epochs[0]
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", result.stdout).group(1))
    assert accuracy >= 0.97


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model.npz"
    result = run("train", "--hidden", "32", "--activation", "tanh", "--optimizer", "sgd",
                 "--lr", "0.1", "--epochs", "3", "--batch-size", "64", "--threads", "1",
                 "--seed", "5", "--save", str(path), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "epoch" not in result.stdout and f"saved model to {path}" in result.stdout
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", result.stdout).group(1))
    return path, accuracy


def test_evaluate_scores_the_same_held_out_split(saved_model):
    path, accuracy = saved_model
    result = run("evaluate", str(path))
    assert result.returncode == 0, result.stderr
    assert "digits test split (360 samples)" in result.stdout
    assert f"accuracy {accuracy:.4f}" in result.stdout


def test_predict_prints_classes_matching_the_model(saved_model, tmp_path):
    import numbanet.io as nio
    from numbanet.datasets import load_digits

    path, _ = saved_model
    X, _ = load_digits()
    np.save(tmp_path / "x.npy", X[:5])
    np.savetxt(tmp_path / "x.csv", X[5:8], delimiter=",")
    expected = np.argmax(nio.load(path).predict(X[:8]), axis=1)

    result = run("predict", str(path), str(tmp_path / "x.npy"))
    assert result.returncode == 0, result.stderr
    assert [int(v) for v in result.stdout.split()] == list(expected[:5])
    result = run("predict", str(path), str(tmp_path / "x.csv"), "--proba",
                 "--output", str(tmp_path / "p.csv"))
    assert result.returncode == 0, result.stderr
    probs = np.loadtxt(tmp_path / "p.csv", delimiter=",")
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert list(np.argmax(probs, axis=1)) == list(expected[5:8])


def test_same_seed_same_model_file_weights_across_thread_counts(tmp_path):
    import numbanet.io as nio

    common = ("train", "--hidden", "16", "--epochs", "2", "--quiet", "--seed", "2",
              "--validation-split", "0")
    paths = []
    for threads in ("1", "2"):
        path = tmp_path / f"t{threads}.npz"
        result = run(*common, "--threads", threads, "--save", str(path))
        assert result.returncode == 0, result.stderr
        paths.append(path)
    np.testing.assert_array_equal(nio.load(paths[0]).flat_parameters,
                                  nio.load(paths[1]).flat_parameters)


def test_bad_options_exit_2_with_a_message():
    result = run("train", "--hidden", "12,abc")
    assert result.returncode == 2 and "--hidden" in result.stderr
    result = run("train", "--batch-size", "0")
    assert result.returncode == 2 and "positive" in result.stderr
    result = run("train", "--epochs", "1", "--optimizer", "nosuchopt")
    assert result.returncode == 2 and "nosuchopt" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_evaluate_foreign_file_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.npz"
    bogus.write_text("not a model")
    result = run("evaluate", str(bogus))
    assert result.returncode == 1
    assert "not a readable numbanet model file" in result.stderr
    assert "Traceback" not in result.stderr
    result = run("predict", str(tmp_path / "absent.npz"))
    assert result.returncode == 1 and "no model file" in result.stderr


def test_plot_needs_matplotlib_or_writes_png(tmp_path):
    png = tmp_path / "curves.png"
    result = run("train", "--epochs", "2", "--hidden", "16", "--quiet", "--plot", str(png))
    if importlib.util.find_spec("matplotlib") is None:
        # A user error: one line, exit status 2, like every other (docs/guide.md).
        assert result.returncode == 2 and "pip install matplotlib" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
        assert not png.exists()
    else:
        assert result.returncode == 0, result.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nan_loss_stops_with_epoch_and_step_and_saves_nothing(tmp_path):
    path = tmp_path / "m.npz"
    result = run("train", "--dataset", "blobs", "--hidden", "16", "--optimizer", "sgd",
                 "--lr", "1e30", "--epochs", "3", "--quiet", "--save", str(path))
    assert result.returncode == 1
    assert re.search(r"at epoch \d+, step \d+", result.stderr)
    assert not path.exists()
