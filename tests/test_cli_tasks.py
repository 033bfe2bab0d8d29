"""``numbanet train | evaluate | predict`` beyond the digits default (issue 16): every loss,
your own data, regression, inference without the training plugins, and errors that are
one line and exit 2. Most run in-process (``numbanet.cli.main``) to spare an interpreter
start per case; the ones about plugins and tracebacks run in subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import numbanet as nbn
from numbanet import cli


def numbanet(capsys, *argv):
    """Run ``numbanet ARGV`` in-process: ``(exit code, stdout, stderr)``."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def subprocess_run(*argv, env=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "numbanet", *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=300)


QUICK = ("--hidden", "16", "--epochs", "2", "--quiet")


@pytest.fixture(scope="module")
def regression_files(tmp_path_factory):
    """200 samples of y = x0 - 2 x1 + 0.5 x2 + noise, as .npy and as a CSV with a header."""
    folder = tmp_path_factory.mktemp("regression")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.05 * rng.normal(size=200)
    np.save(folder / "X.npy", X)
    np.save(folder / "y.npy", y)
    return folder


@pytest.fixture(scope="module")
def iris_like_csv(tmp_path_factory):
    """A CSV with a header and a text label column, as iris.csv is."""
    path = tmp_path_factory.mktemp("csv") / "flowers.csv"
    rng = np.random.default_rng(1)
    names = ["setosa", "versicolor", "virginica"]
    lines = ["sepal,species,petal"]
    for i in range(120):
        c = i % 3
        lines.append(f"{rng.normal(2.0 * c, 0.3):.4f},{names[c]},{rng.normal(-c, 0.3):.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------- item 3/4: every loss


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy", "kl_div", "nll", "hinge"])
def test_every_builtin_classification_loss_trains_and_reports_accuracy(capsys, loss, tmp_path):
    """mse and binary_cross_entropy get one-hot targets, nll and kl_div a log-softmax
    head; all of them learn the digits and print the test accuracy."""
    path = tmp_path / "m.npz"
    code, out, err = numbanet(capsys, "train", "--loss", loss, "--hidden", "32", "--epochs",
                              "5", "--quiet", "--save", path)
    assert code == 0, err
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", out).group(1))
    loss_value = float(re.search(r"test loss (-?\d+\.\d+)", out).group(1))
    # chance is 0.1; nll diverged to a loss of -4379 before it got a log-softmax head
    assert accuracy > 0.6 and loss_value >= 0.0, out
    model = nbn.load(path)
    head = model.layers[-1].output_activation
    assert head == ("log_softmax" if loss in ("nll", "kl_div") else None)


def test_binary_cross_entropy_on_two_classes_has_one_logit(capsys, regression_files):
    folder = regression_files
    X = np.load(folder / "X.npy")
    np.save(folder / "two.npy", (X[:, 0] > 0).astype(np.int64))
    code, out, err = numbanet(capsys, "train", "--data", folder / "X.npy", "--targets",
                              folder / "two.npy", "--loss", "binary_cross_entropy", "--epochs",
                              "3", "--hidden", "8")
    assert code == 0, err
    assert "MLP 3-8-1 relu, binary_cross_entropy," in out and "test accuracy" in out


# ------------------------------------------------------------ item 1: predict by loss


def test_predict_prints_values_for_a_regression_model_saved_from_python(capsys, tmp_path):
    """The issue's case: one output trained with mse predicts values, not 0/1 classes."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4))
    model = nbn.Sequential([nbn.Dense(4, 8, activation="tanh"), nbn.Dense(8, 1)], seed=0)
    model.compile(loss="mse", optimizer="adam")
    model.fit(X, X[:, :1] - X[:, 1:2], epochs=2, verbose=0)
    model.save(tmp_path / "reg.npz")
    np.save(tmp_path / "x.npy", X[:3])
    code, out, err = numbanet(capsys, "predict", tmp_path / "reg.npz", tmp_path / "x.npy")
    assert code == 0, err
    np.testing.assert_allclose([float(v) for v in out.split()], model.predict(X[:3])[:, 0],
                               rtol=1e-5)
    code, out, err = numbanet(capsys, "predict", tmp_path / "reg.npz", tmp_path / "x.npy",
                              "--proba")
    assert code == 2 and "regression model" in err and "drop --proba" in err


def test_regression_from_your_own_files_end_to_end(capsys, regression_files, tmp_path):
    """Item 9: --data/--targets; real targets mean regression with mse; the model file
    lets evaluate and predict find the same test split."""
    folder, path = regression_files, tmp_path / "reg.npz"
    code, out, err = numbanet(capsys, "train", "--data", folder / "X.npy", "--targets",
                              folder / "y.npy", "--hidden", "32", "--epochs", "40",
                              "--save", path)
    assert code == 0, err
    assert out.startswith("numbanet train: X.npy, regression, 1 target(s) (144 train / 16 "
                          "validation / 40 test samples), MLP 3-32-1 relu, mse,")
    mae = float(re.search(r"test mae (\d+\.\d+)", out).group(1))
    assert mae < 0.5  # the targets' standard deviation is about 2.3
    code, out, err = numbanet(capsys, "evaluate", path)
    assert code == 0 and f"mae {mae:.4f}" in out and "X.npy test split (40 samples)" in out
    code, out, err = numbanet(capsys, "predict", path)
    values = [float(v) for v in out.split()]
    assert code == 0 and len(values) == 40 and len(set(values)) == 40


def test_a_csv_with_a_text_label_column(capsys, iris_like_csv, tmp_path):
    path = tmp_path / "flowers.npz"
    code, out, err = numbanet(capsys, "train", "--data", iris_like_csv, "--target-column",
                              "species", "--hidden", "16", "--epochs", "30", "--batch-size",
                              "8", "--lr", "0.01", "--save", path, "--quiet")
    assert code == 0, err
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", out).group(1))
    assert accuracy > 0.9
    code, out, err = numbanet(capsys, "predict", path)
    assert code == 0 and set(out.split()) <= {"setosa", "versicolor", "virginica"}
    assert len(out.split()) == 24  # 20% of 120
    code, out, err = numbanet(capsys, "evaluate", path)
    assert code == 0 and f"accuracy {accuracy:.4f}" in out
    code, out, err = numbanet(capsys, "predict", path, "--proba")
    rows = [[float(v) for v in line.split(",")] for line in out.split()]
    np.testing.assert_allclose(np.sum(rows, axis=1), 1.0, atol=1e-5)


def test_a_label_column_by_index_and_integer_targets_in_a_csv(capsys, tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 2))
    y = (X[:, 0] > 0).astype(int) * 5 + 3  # labels 3 and 8: classes keep their values
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",", fmt="%.5g")
    path = tmp_path / "m.npz"
    code, out, err = numbanet(capsys, "train", "--data", tmp_path / "d.csv",
                              "--target-column", "-1", *QUICK, "--save", path)
    assert code == 0 and "test accuracy" in out, err
    code, out, err = numbanet(capsys, "predict", path)
    assert code == 0 and set(out.split()) <= {"3", "8"}


# ------------------------------------------------ item 8 and 11: evaluate/predict


def test_evaluate_a_python_model_without_dataset_information(capsys, tmp_path,
                                                             regression_files):
    """Item 8: no silent fallback to the digits; the user's own data works."""
    model = nbn.Sequential([nbn.Dense(3, 4, activation="relu"), nbn.Dense(4, 1)], seed=0)
    model.compile(loss="mse", optimizer="sgd")
    model.save(tmp_path / "py.npz")
    code, out, err = numbanet(capsys, "evaluate", tmp_path / "py.npz")
    assert code == 2 and "does not say which data" in err and "--data" in err
    assert len(err.splitlines()) == 1
    folder = regression_files
    code, out, err = numbanet(capsys, "evaluate", tmp_path / "py.npz", "--data",
                              folder / "X.npy", "--targets", folder / "y.npy", "--split", "all")
    assert code == 0, err
    assert out.startswith("X.npy all split (200 samples): loss ")
    code, out, err = numbanet(capsys, "evaluate", tmp_path / "py.npz", "--dataset", "digits")
    assert code == 2 and "takes 3 features per sample" in err and "64" in err


def test_a_model_trained_with_a_plugin_optimizer_is_served_without_the_plugin(tmp_path):
    """Item 11: predict and evaluate load with compile=False; evaluate needs only the
    loss, built from model.training_config."""
    pytest.importorskip("numbanet_lion")
    path = tmp_path / "lion.npz"
    result = subprocess_run("train", "--optimizer", "lion", *QUICK, "--save", path)
    assert result.returncode == 0, result.stderr
    no_plugins = {"NUMBANET_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess_run("train", "--optimizer", "lion", *QUICK, env=no_plugins)
    assert result.returncode == 2 and "lion" in result.stderr  # the plugin is really gone
    result = subprocess_run("evaluate", path, env=no_plugins)
    assert result.returncode == 0 and "digits test split (360 samples)" in result.stdout, \
        result.stderr
    result = subprocess_run("predict", path, env=no_plugins)
    assert result.returncode == 0 and len(result.stdout.split()) == 360, result.stderr


# ------------------------------------------------------------------ items 3, 5, 7


def test_each_optimizer_gets_its_own_default_learning_rate(capsys):
    """Item 5: no 2e-3 for everyone: the optimizer's own default, or for a built-in whose
    own default falls short on the digits, the rate tuned for them."""
    from numbanet._train_cli import _DEFAULT_LR

    own = nbn.get_optimizer("adagrad").lr
    for name, lr in (("sgd", _DEFAULT_LR["sgd"]), ("adagrad", own)):
        code, out, _ = numbanet(capsys, "train", "--optimizer", name, "--epochs", "0")
        assert code == 0 and f", {name} lr {lr:g}," in out.splitlines()[0]
    code, out, _ = numbanet(capsys, "train", "--optimizer", "sgd", "--lr", "0.3",
                            "--epochs", "0")
    assert ", sgd lr 0.3," in out
    if "lion" in nbn.list_optimizers():
        own = nbn.get_optimizer("lion").lr
        code, out, _ = numbanet(capsys, "train", "--optimizer", "lion", "--epochs", "0")
        assert f", lion lr {own:g}," in out


def test_the_header_names_a_linear_model_and_hidden_0_is_refused(capsys):
    """Item 7: 'MLP 64-10 relu' for a model with no hidden layer was wrong."""
    code, out, _ = numbanet(capsys, "train", "--hidden", "none", "--epochs", "0")
    assert code == 0 and ", linear model 64-10, cross_entropy," in out
    code, _, err = numbanet(capsys, "train", "--hidden", "0")
    assert code == 2 and "--hidden none" in err


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_help_do_not_point_at_a_missing_seed_option(capsys, command):
    code, out, _ = numbanet(capsys, command, "--help")
    assert code == 0 and "--seed)" not in out
    assert "the one the model was trained with" in " ".join(out.split())


@pytest.mark.parametrize("argv, says", [
    (("train", "--test-size", "0"), "(0, 1)"),
    (("train", "--test-size", "1"), "(0, 1)"),
    (("train", "--loss", "nosuchloss"), "nosuchloss"),
    (("train", "--task", "regression"), "--task regression needs your own targets"),
    (("train", "--dataset", "digits", "--data", "x.npy"), "either --dataset or --data"),
    (("train", "--data", "{X}"), "--targets"),
    (("train", "--data", "{X}", "--targets", "{y}", "--loss", "cross_entropy"),
     "classification loss, but the targets are real numbers"),
    (("train", "--data", "{X}", "--targets", "{y}", "--loss", "nll"),
     "classification loss"),
    (("train", "--data", "{csv}", "--target-column", "colour"), "not a column"),
    (("train", "--data", "{X}", "--targets", "{short}"), "one target per sample"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, regression_files, iris_like_csv, argv,
                                             says):
    """Item 3: no traceback for user input; what is wrong and what to do; exit 2."""
    folder = regression_files
    np.save(folder / "short.npy", np.zeros(10))
    paths = {"X": folder / "X.npy", "y": folder / "y.npy", "csv": iris_like_csv,
             "short": folder / "short.npy"}
    code, out, err = numbanet(capsys, *(a.format(**paths) for a in argv))
    assert code == 2 and says in err, err
    assert "Traceback" not in err
    if "--test-size" not in argv:  # argparse prints its usage line too
        assert len(err.splitlines()) == 1 and err.startswith("numbanet train: error: ")


def test_a_user_error_in_a_subprocess_prints_no_traceback(regression_files):
    result = subprocess_run("train", "--loss", "mse", "--data", regression_files / "X.npy",
                            "--targets", regression_files / "y.npy", "--loss", "hinge")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("numbanet train: error: --loss hinge is a classification")


# ------------------------------------------------------------------------ item 20


def test_plot_panels_have_titles_and_axis_labels():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from numbanet._train_cli import _curves
    from numbanet.train import History

    history = History()
    for epoch in range(3):
        history._append(epoch, {"loss": 1.0 / (epoch + 1), "accuracy": 0.5 + 0.1 * epoch,
                                "val_loss": 1.1, "val_accuracy": 0.5, "lr": 0.001})
    fig = _curves(history)
    try:
        loss_ax, metric_ax = fig.axes
        assert (loss_ax.get_ylabel(), loss_ax.get_xlabel()) == ("loss", "epoch")
        assert metric_ax.get_ylabel() == "accuracy" and metric_ax.get_xlabel() == "epoch"
        assert metric_ax.get_title() == "accuracy (end of epoch)"
        assert loss_ax.get_title() == "loss"
    finally:
        plt.close(fig)
