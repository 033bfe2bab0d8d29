"""Tests for numbanet.datasets against hand-made files, known counts and scikit-learn."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numbanet import datasets

# --------------------------------------------------------------------------- digits

# Class counts of the UCI optdigits test set (optdigits.names, "Class distribution").
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
# SHA-256 of the 0..16 pixel counts (uint8, C order) and labels (uint8) of scikit-learn's
# copy, computed from sklearn.datasets.load_digits(); guards the bundled file when
# scikit-learn is not installed.
DIGITS_PIXELS_SHA256 = "8f26b2bd9d135c256808f68f14fdabddde6d9c7f869ae419704b051f0f14b3b3"
DIGITS_LABELS_SHA256 = "8ba4f891220f5e4c9c819638d1602d74b83618f167043c6da52a2a247841ddf0"


def test_load_digits_shapes_dtypes_and_range():
    X, y = datasets.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    # Scaled from integer counts 0..16, so X * 16 is integral.
    np.testing.assert_array_equal(X * 16, np.round(X * 16))


def test_load_digits_label_counts_match_uci():
    _, y = datasets.load_digits()
    assert np.bincount(y).tolist() == DIGITS_CLASS_COUNTS


def test_load_digits_content_matches_recorded_checksums():
    X, y = datasets.load_digits()
    counts = np.round(X * 16).astype(np.uint8)
    assert hashlib.sha256(counts.tobytes()).hexdigest() == DIGITS_PIXELS_SHA256
    assert hashlib.sha256(y.astype(np.uint8).tobytes()).hexdigest() == DIGITS_LABELS_SHA256


def test_load_digits_equals_sklearn_copy():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    ref = sklearn_datasets.load_digits()
    X, y = datasets.load_digits(dtype="float64")
    np.testing.assert_array_equal(X * 16, ref.data)
    np.testing.assert_array_equal(y, ref.target)
    images, _ = datasets.load_digits(as_images=True)
    np.testing.assert_array_equal(images * 16, ref.images.astype(np.float32))


def test_load_digits_as_images_is_row_major_reshape():
    X, _ = datasets.load_digits()
    images, _ = datasets.load_digits(as_images=True)
    assert images.shape == (1797, 8, 8) and images.dtype == np.float32
    np.testing.assert_array_equal(images.reshape(1797, 64), X)


def test_load_digits_returns_fresh_arrays():
    X, y = datasets.load_digits()
    X[:] = -1.0
    y[:] = -1
    X2, y2 = datasets.load_digits()
    assert X2.min() == 0.0 and y2.min() == 0


def test_load_digits_rejects_integer_dtype():
    with pytest.raises(TypeError, match="dtype"):
        datasets.load_digits(dtype="int32")


# --------------------------------------------------------------------------- spirals


def test_make_spirals_shapes_dtypes_and_balanced_classes():
    X, y = datasets.make_spirals(301, 3, seed=0)
    assert X.shape == (301, 2) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.shape == (301,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [101, 100, 100]


def test_make_spirals_without_noise_lies_on_the_arms():
    n_classes, per_class, turns = 4, 25, 1.5
    X, y = datasets.make_spirals(
        n_classes * per_class, n_classes, noise=0.0, turns=turns, shuffle=False, dtype="float64"
    )
    np.testing.assert_array_equal(y, np.repeat(np.arange(n_classes), per_class))
    r = np.hypot(X[:, 0], X[:, 1])
    expected_r = np.tile(np.arange(1, per_class + 1) / per_class, n_classes)
    np.testing.assert_allclose(r, expected_r, atol=1e-12)
    # Undo the winding: what is left is each arm's starting angle 2*pi*c/n_classes.
    start = np.arctan2(X[:, 1], X[:, 0]) - 2 * np.pi * turns * r
    offset = np.angle(np.exp(1j * (start - 2 * np.pi * y / n_classes)))
    np.testing.assert_allclose(offset, 0.0, atol=1e-9)


def test_make_spirals_noise_has_requested_std():
    clean, _ = datasets.make_spirals(4000, 2, noise=0.0, shuffle=False, dtype="float64")
    noisy, _ = datasets.make_spirals(4000, 2, noise=0.1, seed=3, shuffle=False, dtype="float64")
    residual = noisy - clean
    assert abs(residual.std() - 0.1) < 0.005 and abs(residual.mean()) < 0.005


def test_make_spirals_is_deterministic_for_a_seed():
    a = datasets.make_spirals(50, 2, seed=7)
    b = datasets.make_spirals(50, 2, seed=7)
    c = datasets.make_spirals(50, 2, seed=8)
    d = datasets.make_spirals(50, 2, seed=np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], d[0])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_samples": 0}, ValueError, "n_samples"),
        ({"n_samples": -5}, ValueError, "n_samples"),
        ({"n_samples": 2.5}, TypeError, "n_samples"),
        ({"n_classes": 0}, ValueError, "n_classes"),
        ({"n_samples": 2, "n_classes": 3}, ValueError, "n_classes"),
        ({"noise": -0.1}, ValueError, "noise"),
        ({"noise": float("nan")}, ValueError, "noise"),
        ({"noise": "high"}, TypeError, "noise"),
        ({"turns": 0}, ValueError, "turns"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": "zero"}, TypeError, "seed"),
        ({"dtype": "int8"}, TypeError, "dtype"),
    ],
)
def test_make_spirals_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        datasets.make_spirals(**kwargs)


# --------------------------------------------------------------------------- blobs


def test_make_blobs_clusters_have_requested_centers_and_std():
    centers = np.array([[0.0, 0.0, 0.0], [5.0, -5.0, 2.0]])
    std = [0.5, 2.0]
    X, y = datasets.make_blobs(4000, centers=centers, cluster_std=std, seed=0, dtype="float64")
    assert X.shape == (4000, 3) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [2000, 2000]
    for c in range(2):
        members = X[y == c]
        # Standard error of the mean is std / sqrt(2000); allow 5 of them.
        np.testing.assert_allclose(members.mean(axis=0), centers[c], atol=5 * std[c] / 44)
        np.testing.assert_allclose(members.std(axis=0), std[c], rtol=0.06)


def test_make_blobs_random_centers_lie_in_the_box():
    X, y = datasets.make_blobs(
        300, n_features=4, centers=5, cluster_std=0.0, center_box=(-2.0, 3.0), seed=1
    )
    assert X.shape == (300, 4) and X.dtype == np.float32
    assert np.bincount(y).tolist() == [60] * 5
    assert X.min() >= -2.0 and X.max() <= 3.0
    # cluster_std=0 puts every sample exactly on its centre.
    for c in range(5):
        assert len(np.unique(X[y == c], axis=0)) == 1


def test_make_blobs_defaults_and_determinism():
    X, y = datasets.make_blobs(seed=4)
    assert X.shape == (100, 2) and np.bincount(y).tolist() == [34, 33, 33]
    X2, y2 = datasets.make_blobs(seed=4)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_samples": 0}, ValueError, "n_samples"),
        ({"n_features": 0}, ValueError, "n_features"),
        ({"centers": 0}, ValueError, "centers"),
        ({"n_samples": 2, "centers": 3}, ValueError, "centers"),
        ({"centers": [1.0, 2.0]}, ValueError, "centers"),
        ({"centers": [[0.0, np.inf]]}, ValueError, "centers"),
        ({"centers": "abc"}, TypeError, "centers"),
        ({"centers": [[0.0, 0.0]], "n_features": 3}, ValueError, "n_features"),
        ({"cluster_std": -1.0}, ValueError, "cluster_std"),
        ({"cluster_std": [1.0, 1.0]}, ValueError, "cluster_std"),
        ({"cluster_std": [1.0, -1.0, 1.0]}, ValueError, "cluster_std"),
        ({"center_box": (1.0, 1.0)}, ValueError, "center_box"),
        ({"center_box": 5}, TypeError, "center_box"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_make_blobs_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        datasets.make_blobs(**kwargs)


# --------------------------------------------------------------------------- IDX

# Written independently of numbanet: the IDX layout from the MNIST page, by hand.
_IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def _idx_bytes(array: np.ndarray) -> bytes:
    kind = array.dtype.str[1:]
    header = bytes([0, 0, _IDX_CODES[kind], array.ndim])
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(">" + kind).tobytes()


def _write(path, data: bytes, *, compress: bool = False):
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_load_idx_reads_hand_written_mnist_labels(tmp_path):
    # Header: 00 00 08 01, one dimension of size 3, then three uint8 labels.
    path = _write(tmp_path / "labels-idx1-ubyte", b"\x00\x00\x08\x01\x00\x00\x00\x03\x07\x02\x01")
    out = datasets.load_idx(path)
    assert out.dtype == np.uint8 and out.tolist() == [7, 2, 1]


def test_load_idx_reads_big_endian_int16(tmp_path):
    path = _write(tmp_path / "x.idx", b"\x00\x00\x0b\x01\x00\x00\x00\x02\x01\x00\xff\xfe")
    out = datasets.load_idx(str(path))
    assert out.dtype == np.int16 and out.tolist() == [256, -2]


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("kind", list(_IDX_CODES))
def test_load_idx_round_trips_every_type_code(tmp_path, kind, compress):
    rng = np.random.default_rng(0)
    info = np.iinfo(kind) if kind[0] in "ui" else None
    shape = (3, 4, 5)
    if info is not None:
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(kind)
    else:
        array = rng.standard_normal(shape).astype(kind)
    path = _write(tmp_path / f"a-{kind}.idx", _idx_bytes(array), compress=compress)
    out = datasets.load_idx(path)
    assert out.dtype == np.dtype(kind) and out.dtype.isnative
    assert out.shape == shape and out.flags.writeable and out.flags.c_contiguous
    np.testing.assert_array_equal(out, array)


def test_load_idx_detects_gzip_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = _write(tmp_path / "images.idx", _idx_bytes(array), compress=True)
    np.testing.assert_array_equal(datasets.load_idx(path), array)


def test_load_idx_handles_zero_length_dimension(tmp_path):
    path = _write(tmp_path / "empty.idx", _idx_bytes(np.zeros((0, 28, 28), dtype=np.uint8)))
    assert datasets.load_idx(path).shape == (0, 28, 28)


_GOOD = _idx_bytes(np.arange(24, dtype=">i4").reshape(2, 3, 4))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (b"\x00\x00\x08", "truncated"),
        (_GOOD[:10], "truncated"),  # dimension sizes cut short
        (_GOOD[:-1], "truncated"),  # one data byte missing
        (_GOOD + b"\x00", "size mismatch"),
        (b"\x01\x02" + _GOOD[2:], "not an IDX file"),
        (b"\x00\x00\x0a" + _GOOD[3:], "type code"),
    ],
    ids=["empty", "short-magic", "short-dims", "short-data", "extra-data", "magic", "code"],
)
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_load_idx_rejects_malformed_files(tmp_path, data, match, compress):
    path = _write(tmp_path / "bad.idx", data, compress=compress)
    with pytest.raises(ValueError, match=match):
        datasets.load_idx(path)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_load_idx_rejects_absurd_header_without_allocating(tmp_path, compress):
    # A damaged header announcing 10**15 bytes must fail cleanly, not exhaust memory.
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 100_000, 100_000, 100_000)
    path = _write(tmp_path / "huge.idx", header + b"\x00" * 10, compress=compress)
    with pytest.raises(ValueError, match=r"100000, 100000, 100000"):
        datasets.load_idx(path)


def test_load_idx_rejects_damaged_gzip(tmp_path):
    compressed = gzip.compress(_GOOD)
    path = _write(tmp_path / "cut.idx.gz", compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match="gzip"):
        datasets.load_idx(path)


def test_load_idx_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        datasets.load_idx(tmp_path / "missing.idx")
    with pytest.raises(TypeError, match="path"):
        datasets.load_idx(3)


# --------------------------------------------------------------------------- splitting


def _labelled(n: int, n_classes: int = 3):
    X = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n) % n_classes
    return X, y


@pytest.mark.parametrize(("test_size", "n_test"), [(0.2, 20), (0.25, 25), (0.111, 12), (7, 7)])
def test_train_test_split_sizes_and_partition(test_size, n_test):
    X, y = _labelled(100)
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, test_size, seed=0)
    assert len(X_test) == len(y_test) == n_test
    assert len(X_train) == len(y_train) == 100 - n_test
    # Row i of X is [2i, 2i+1], so the sample index can be read back.
    idx_train, idx_test = X_train[:, 0] // 2, X_test[:, 0] // 2
    assert sorted(np.concatenate([idx_train, idx_test]).tolist()) == list(range(100))
    np.testing.assert_array_equal(y_train, idx_train.astype(np.int64) % 3)
    np.testing.assert_array_equal(y_test, idx_test.astype(np.int64) % 3)
    assert X_train.dtype == X.dtype and y_train.dtype == y.dtype


def test_train_test_split_is_deterministic_and_shuffles():
    X, y = _labelled(50)
    a = datasets.train_test_split(X, y, seed=1)
    b = datasets.train_test_split(X, y, seed=1)
    c = datasets.train_test_split(X, y, seed=2)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])
    assert not np.array_equal(a[0][:, 0], np.sort(a[0][:, 0]))


def test_train_test_split_keeps_extra_axes():
    X = np.arange(10 * 8 * 8).reshape(10, 8, 8)
    y = np.eye(10)[np.arange(10) % 4]
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, 3, seed=0)
    assert X_train.shape == (7, 8, 8) and X_test.shape == (3, 8, 8)
    assert y_train.shape == (7, 10) and y_test.shape == (3, 10)


def test_train_test_split_stratified_digits_keeps_proportions():
    X, y = datasets.load_digits()
    _, _, y_train, y_test = datasets.train_test_split(X, y, 0.25, seed=0, stratify=True)
    assert len(y_test) == math.ceil(0.25 * 1797)
    share = np.array(DIGITS_CLASS_COUNTS) * len(y_test) / 1797
    assert np.all(np.abs(np.bincount(y_test) - share) < 1)
    np.testing.assert_array_equal(np.bincount(y_train) + np.bincount(y_test), DIGITS_CLASS_COUNTS)


def test_train_test_split_stratified_small_class_appears_on_both_sides():
    y = np.array([0] * 96 + [1] * 2 + [2] * 2)
    X = np.arange(100.0)
    _, _, y_train, y_test = datasets.train_test_split(X, y, 0.1, seed=0, stratify=True)
    assert len(y_test) == 10
    assert set(y_test.tolist()) == {0, 1, 2} and set(y_train.tolist()) == {0, 1, 2}


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(2, 30), min_size=1, max_size=6),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_train_test_split_stratified_invariants(counts, fraction, seed):
    y = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(seed)
    y = rng.permutation(y)
    X = np.arange(len(y))
    n, k = len(y), len(counts)
    n_test = math.ceil(fraction * n)
    if not (1 <= n_test <= n - 1 and k <= n_test <= n - k):
        with pytest.raises(ValueError, match="test"):
            datasets.train_test_split(X, y, fraction, seed=seed, stratify=True)
        return
    X_train, X_test, y_train, y_test = datasets.train_test_split(
        X, y, fraction, seed=seed, stratify=True
    )
    assert len(y_test) == n_test
    assert sorted(np.concatenate([X_train, X_test]).tolist()) == list(range(n))
    np.testing.assert_array_equal(y[X_test], y_test)
    test_counts = np.bincount(y_test, minlength=k)
    assert np.all(test_counts >= 1) and np.all(test_counts <= np.array(counts) - 1)
    share = np.array(counts) * n_test / n
    if np.all(np.floor(share) >= 1) and np.all(np.ceil(share) <= np.array(counts) - 1):
        # No class needed nudging, so each is within one sample of its exact share.
        assert np.all(np.abs(test_counts - share) < 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"test_size": 0.0}, ValueError, "test_size"),
        ({"test_size": 1.0}, ValueError, "test_size"),
        ({"test_size": -0.2}, ValueError, "test_size"),
        ({"test_size": 0}, ValueError, "test_size"),
        ({"test_size": 10}, ValueError, "test_size"),
        ({"test_size": True}, TypeError, "test_size"),
        ({"test_size": "20%"}, TypeError, "test_size"),
        ({"seed": -3}, ValueError, "seed"),
        ({"stratify": "yes"}, TypeError, "stratify"),
    ],
)
def test_train_test_split_rejects_bad_arguments(kwargs, error, match):
    X, y = _labelled(10, 2)
    with pytest.raises(error, match=match):
        datasets.train_test_split(X, y, **kwargs)


def test_train_test_split_rejects_bad_arrays():
    X, y = _labelled(10, 2)
    with pytest.raises(ValueError, match="same number of samples"):
        datasets.train_test_split(X, y[:-1])
    with pytest.raises(TypeError, match="X"):
        datasets.train_test_split(X.tolist(), y)
    with pytest.raises(ValueError, match="at least 2 samples"):
        datasets.train_test_split(X[:1], y[:1], 0.5)
    with pytest.raises(TypeError, match="integer class labels"):
        datasets.train_test_split(X, y.astype(np.float32), stratify=True)
    with pytest.raises(ValueError, match="at least 2 samples per class"):
        datasets.train_test_split(X, np.array([0] * 9 + [1]), 0.5, stratify=True)
