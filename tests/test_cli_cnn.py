"""``numbanet train --model cnn`` (issue 13): a small CNN on images from the digits, IDX
files and ``.npy`` arrays, a saved CNN evaluated and used for predictions, and the
options that do not apply refused in one line with exit code 2. Runs in-process
(``numbanet.cli.main``) as tests/test_cli_tasks.py does, except one subprocess that
checks for tracebacks."""

from __future__ import annotations

import gzip
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

import numbanet as nbn
from numbanet import cli

# A CNN just big enough to learn the synthetic images below, trained briefly.
TINY = ("--channels", "4", "--hidden", "8", "--epochs", "3", "--quiet")


def numbanet(capsys, *argv):
    """Run ``numbanet ARGV`` in-process: ``(exit code, stdout, stderr)``."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_idx(path, array):
    """An IDX file as MNIST's: ``00 00 08 <ndim>``, big-endian uint32 sizes, uint8 values."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def stripes(n, height, width, seed=0):
    """``n`` uint8 images: class 0 a bright row, class 1 a bright column, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.integers(0, 40, size=(n, height, width)).astype(np.uint8)
    for i, label in enumerate(y):
        if label == 0:
            X[i, rng.integers(height), :] = 255
        else:
            X[i, :, rng.integers(width)] = 255
    return X, y


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory):
    """``numbanet train --model cnn`` with every other option at its default, saved."""
    path = tmp_path_factory.mktemp("cnn") / "cnn.npz"
    code = cli.main(["train", "--model", "cnn", "--save", str(path)])
    assert code == 0
    return path


def test_cnn_on_the_digits_reaches_98_5_percent_with_the_defaults(digits_cnn, capsys):
    model = nbn.load(digits_cnn)
    assert model.input_shape == (8, 8, 1)
    assert [type(layer).__name__ for layer in model.layers] == [
        "Conv2D", "BatchNorm", "Activation", "Conv2D", "BatchNorm", "Activation", "MaxPool2D",
        "Conv2D", "BatchNorm", "Activation", "MaxPool2D", "Flatten", "Dense", "Dense"]
    assert not any(layer.bias_enabled for layer in model.layers if type(layer).__name__ == "Conv2D")
    # The held-out score, as evaluate reports it on the split the file records.
    code, out, err = numbanet(capsys, "evaluate", digits_cnn)
    assert code == 0, err
    assert "digits test split (360 samples)" in out
    accuracy = float(re.search(r"accuracy (\d\.\d+)", out).group(1))
    assert accuracy >= 0.985


def test_a_saved_cnn_predicts_from_images_and_from_flat_rows(digits_cnn, capsys, tmp_path):
    model = nbn.load(digits_cnn)
    meta = model.metadata
    assert meta["images"] is True and meta["image_shape"] == [8, 8, 1]
    X, _ = nbn.datasets.load_digits()
    expected = np.argmax(model.predict(X[:6].reshape(-1, 8, 8, 1)), axis=1).tolist()
    np.save(tmp_path / "images.npy", X[:6].reshape(-1, 8, 8, 1))
    np.save(tmp_path / "plain.npy", X[:6].reshape(-1, 8, 8))   # no channel axis
    np.savetxt(tmp_path / "flat.csv", X[:6], delimiter=",")  # rows of the model's 64 pixels
    for name in ("images.npy", "plain.npy", "flat.csv"):
        code, out, err = numbanet(capsys, "predict", digits_cnn, tmp_path / name)
        assert code == 0, (name, err)
        assert [int(v) for v in out.split()] == expected, name
    # Without INPUT: the held-out split, as images again.
    code, out, err = numbanet(capsys, "predict", digits_cnn)
    assert code == 0, err
    assert len(out.split()) == 360
    np.savetxt(tmp_path / "wrong.csv", X[:2, :60], delimiter=",")
    code, out, err = numbanet(capsys, "predict", digits_cnn, tmp_path / "wrong.csv")
    assert code == 2 and "flat rows of 60 values" in err and "(8, 8, 1)" in err


def test_idx_images_train_a_cnn_on_their_own_height_and_width(capsys, tmp_path):
    images, labels = tmp_path / "images-idx3-ubyte.gz", tmp_path / "labels-idx1-ubyte.gz"
    X, y = stripes(60, 7, 5)
    write_idx(images, X)
    write_idx(labels, y)
    path = tmp_path / "idx.npz"
    data = ("--dataset", "idx", "--idx-images", images, "--idx-labels", labels)
    code, out, err = numbanet(capsys, "train", "--model", "cnn", *data, *TINY, "--save", path)
    assert code == 0, err
    model = nbn.load(path)
    assert model.input_shape == (7, 5, 1)
    code, out, err = numbanet(capsys, "evaluate", path)
    assert code == 0, err
    assert "idx test split (12 samples)" in out
    code, out, err = numbanet(capsys, "predict", path)
    assert code == 0 and len(out.split()) == 12
    # The MLP keeps getting flat rows from the same files.
    code, out, err = numbanet(capsys, "train", *data, "--hidden", "8", "--epochs", "1",
                              "--save", tmp_path / "mlp.npz")
    assert code == 0, err
    assert "MLP 35-8-2 relu" in out
    assert nbn.load(tmp_path / "mlp.npz").input_shape == (35,)


def test_npy_images_train_a_cnn_and_flat_rows_need_an_image_shape(capsys, tmp_path):
    X, y = stripes(40, 6, 6, seed=1)
    np.save(tmp_path / "images.npy", X.reshape(40, 6, 6, 1) / 255.0)
    np.save(tmp_path / "flat.npy", X.reshape(40, 36) / 255.0)
    np.save(tmp_path / "y.npy", y)
    targets = ("--targets", tmp_path / "y.npy")
    code, out, err = numbanet(capsys, "train", "--model", "cnn", "--data",
                              tmp_path / "images.npy", *targets, *TINY, "--save",
                              tmp_path / "a.npz")
    assert code == 0, err
    assert nbn.load(tmp_path / "a.npz").input_shape == (6, 6, 1)
    code, out, err = numbanet(capsys, "evaluate", tmp_path / "a.npz")
    assert code == 0 and "images.npy test split (8 samples)" in out, err

    code, out, err = numbanet(capsys, "train", "--model", "cnn", "--data",
                              tmp_path / "flat.npy", *targets, *TINY)
    assert code == 2
    assert "flat rows of 36 values" in err and "--image-shape 6,6,1" in err
    code, out, err = numbanet(capsys, "train", "--model", "cnn", "--data",
                              tmp_path / "flat.npy", *targets, *TINY, "--image-shape", "6,6",
                              "--save", tmp_path / "b.npz")
    assert code == 0, err
    assert nbn.load(tmp_path / "b.npz").input_shape == (6, 6, 1)
    # evaluate reshapes the flat file again, by the model's input shape.
    code, out, err = numbanet(capsys, "evaluate", tmp_path / "b.npz")
    assert code == 0 and "flat.npy test split (8 samples)" in out, err


@pytest.mark.parametrize(("argv", "message"), [
    (("--channels", "8"), "--channels applies to --model cnn only"),
    (("--image-shape", "8,8,1"), "--image-shape applies to --model cnn only"),
    (("--model", "cnn", "--dataset", "blobs"), "use --model mlp"),
    (("--model", "cnn", "--image-shape", "8"), "--image-shape takes height,width"),
    (("--model", "cnn", "--image-shape", "4,4,1"), "images of shape (4, 4, 1)"),
])
def test_options_that_do_not_apply_are_one_line_and_exit_2(capsys, argv, message):
    code, out, err = numbanet(capsys, "train", "--epochs", "1", *argv)
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in err


def test_flat_data_to_a_cnn_in_a_subprocess_prints_no_traceback(tmp_path):
    np.save(tmp_path / "X.npy", np.zeros((20, 10)))
    np.save(tmp_path / "y.npy", np.arange(20) % 2)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, "-m", "numbanet", "train", "--model", "cnn", "--data",
         str(tmp_path / "X.npy"), "--targets", str(tmp_path / "y.npy")],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "flat rows of 10 values" in result.stderr and "--image-shape H,W,C" in result.stderr
