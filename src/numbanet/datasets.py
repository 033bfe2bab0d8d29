"""Datasets: the bundled 8x8 digits, synthetic generators, an IDX reader and a splitter.

Everything here returns plain NumPy arrays: features ``X`` as float32 (or float64 on
request) with samples on the first axis, labels ``y`` as int64 class indices ``0..C-1``,
which is what :class:`numbanet.Sequential` and its losses take. Nothing here is a hot
path, so it is vectorised NumPy rather than Numba.

Randomness comes from one ``numpy.random.Generator`` per call, built from ``seed``:
the same seed gives the same arrays on every platform and thread count, and ``seed=None``
draws fresh entropy.

Example:
    >>> from numbanet import datasets
    >>> X, y = datasets.load_digits()
    >>> X.shape, X.dtype, y.dtype
    ((1797, 64), dtype('float32'), dtype('int64'))
    >>> X_train, X_test, y_train, y_test = datasets.train_test_split(
    ...     X, y, test_size=0.25, seed=0, stratify=True)
    >>> X_train.shape, X_test.shape
    ((1347, 64), (450, 64))
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Sequence
from importlib import resources
from typing import BinaryIO

import numpy as np

from numbanet._validation import (
    AnyOf,
    Boolean,
    FloatDtype,
    InstanceOf,
    Integer,
    Optional,
    Real,
    check_arg,
    validate_args,
)

__all__ = [
    "load_digits",
    "load_idx",
    "make_blobs",
    "make_spirals",
    "train_test_split",
]

SeedLike = int | np.integer | np.random.Generator | None

_DIGITS_FILE = "digits.npz"
_DIGITS_MAX_COUNT = 16  # each pixel counts the ink pixels in a 4x4 block


# --------------------------------------------------------------------------- helpers

# The arguments several functions share, declared once.
_SEED = Optional(
    AnyOf(Integer(min=0), InstanceOf(np.random.Generator, what="a numpy.random.Generator"))
)
_COUNT = Integer(min=1)
_DTYPE = FloatDtype()
_NON_NEGATIVE = Real(min=0)


def _counts_per_class(n_samples: int, n_classes: int) -> np.ndarray:
    """Split ``n_samples`` over classes as evenly as possible; the first classes get the rest."""
    counts = np.full(n_classes, n_samples // n_classes, dtype=np.int64)
    counts[: n_samples % n_classes] += 1
    return counts


# --------------------------------------------------------------------------- digits


@validate_args({"dtype": _DTYPE})
def load_digits(
    *, as_images: bool = False, dtype: str | np.dtype = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """Load the 8x8 handwritten digits bundled with numbanet (no download).

    The 1,797 images of the UCI "Optical Recognition of Handwritten Digits" test set
    (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0; DOI 10.24432/C50P49; see
    ``numbanet/data/README.md``). Each pixel originally counts the ink pixels, 0..16, in
    a 4x4 block of a 32x32 bitmap; it is returned divided by 16, so exactly in ``[0, 1]``
    (``X * 16`` recovers the integer counts exactly). Every class has 174 to 183 images.

    Args:
        as_images: return ``X`` with shape ``(1797, 8, 8)`` (row-major pixels) instead of
            flattened ``(1797, 64)``.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Returns:
        ``(X, y)``: ``X`` of the requested dtype, shape ``(1797, 64)`` or
        ``(1797, 8, 8)``, values in ``[0, 1]``; ``y`` int64 of shape ``(1797,)``, the
        digit ``0..9``. Both are fresh arrays the caller may modify.

    Raises:
        TypeError: ``dtype`` is not float32/float64.
    """
    source = resources.files("numbanet").joinpath("data").joinpath(_DIGITS_FILE)
    with source.open("rb") as fh, np.load(fh, allow_pickle=False) as archive:
        images = archive["images"]
        labels = archive["labels"]
    X = images.astype(dtype)
    X /= dtype.type(_DIGITS_MAX_COUNT)  # a power of two: the scaling is exact
    if not as_images:
        X = X.reshape(len(X), -1)
    return X, labels.astype(np.int64)


# --------------------------------------------------------------------------- synthetic


@validate_args({"n_samples": _COUNT, "n_classes": _COUNT, "noise": _NON_NEGATIVE,
                "seed": _SEED, "turns": Real(min=0, closed="neither"), "dtype": _DTYPE})
def make_spirals(
    n_samples: int = 300,
    n_classes: int = 3,
    noise: float = 0.05,
    seed: SeedLike = None,
    *,
    turns: float = 1.0,
    shuffle: bool = True,
    dtype: str | np.dtype = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved 2-D spiral arms, one per class: a small problem no linear model solves.

    Arm ``c`` holds points at radius ``r`` evenly spaced in ``(0, 1]`` and angle
    ``2*pi*(c / n_classes + turns * r)``; independent Gaussian noise with standard
    deviation ``noise`` is then added to both coordinates. Neighbouring arms are
    ``1 / (n_classes * turns)`` apart along a ray, so ``noise`` well below that keeps the
    classes separable away from the centre.

    Args:
        n_samples: total number of points, split over the classes as evenly as possible
            (the first ``n_samples % n_classes`` classes get one more).
        n_classes: number of arms (classes), at least 1 and at most ``n_samples``.
        noise: standard deviation of the Gaussian noise added to each coordinate, >= 0.
        seed: None (fresh entropy), a non-negative int, or a ``numpy.random.Generator``.
        turns: how many full turns each arm makes from the centre to radius 1, > 0.
        shuffle: shuffle the samples; otherwise they are ordered by class.
        dtype: dtype of ``X``, ``"float32"`` (default) or ``"float64"``.

    Returns:
        ``(X, y)``: ``X`` of shape ``(n_samples, 2)``, ``y`` int64 of shape
        ``(n_samples,)`` with values ``0..n_classes-1``.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: a size is not positive, ``n_classes > n_samples``, ``noise < 0`` or
            ``turns <= 0``.
    """
    if n_classes > n_samples:
        raise ValueError(
            f"n_classes ({n_classes}) must not exceed n_samples ({n_samples}): "
            "every class needs at least one point"
        )
    rng = np.random.default_rng(seed)

    counts = _counts_per_class(n_samples, n_classes)
    y = np.repeat(np.arange(n_classes, dtype=np.int64), counts)
    # Radius index within each class: 1..count, so no point sits exactly on the shared
    # centre where all arms meet.
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    position = np.arange(n_samples) - starts + 1
    r = position / counts[y]
    theta = 2.0 * np.pi * (y / n_classes + turns * r)
    X = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    X += noise * rng.standard_normal(X.shape)
    if shuffle:
        order = rng.permutation(n_samples)
        X, y = X[order], y[order]
    return np.ascontiguousarray(X, dtype=dtype), y


@validate_args({"n_samples": _COUNT, "n_features": Optional(_COUNT), "seed": _SEED,
                "dtype": _DTYPE})
def make_blobs(
    n_samples: int = 100,
    n_features: int | None = None,
    centers: int | Sequence[Sequence[float]] | np.ndarray = 3,
    cluster_std: float | Sequence[float] = 1.0,
    seed: SeedLike = None,
    *,
    center_box: tuple[float, float] = (-10.0, 10.0),
    shuffle: bool = True,
    dtype: str | np.dtype = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic Gaussian clusters, one class per cluster.

    Args:
        n_samples: total number of points, split over the clusters as evenly as possible
            (the first ``n_samples % n_centers`` clusters get one more).
        n_features: dimension of each point. Defaults to 2 when ``centers`` is an int;
            when ``centers`` is an array it is taken from ``centers.shape[1]`` and, if
            given, must agree with it.
        centers: the number of clusters, whose centres are then drawn uniformly from
            ``center_box`` in every dimension, or an array ``(n_centers, n_features)``
            of fixed centres.
        cluster_std: standard deviation of every cluster, or one per cluster; >= 0.
        seed: None (fresh entropy), a non-negative int, or a ``numpy.random.Generator``.
        center_box: ``(low, high)`` bounds for random centres, ``low < high``.
        shuffle: shuffle the samples; otherwise they are ordered by cluster.
        dtype: dtype of ``X``, ``"float32"`` (default) or ``"float64"``.

    Returns:
        ``(X, y)``: ``X`` of shape ``(n_samples, n_features)``, ``y`` int64 of shape
        ``(n_samples,)``, the cluster index ``0..n_centers-1``.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: a size is not positive, ``n_centers > n_samples``, the centres or
            standard deviations have the wrong shape or are not finite, a standard
            deviation is negative, or ``center_box`` is empty.
    """
    rng = np.random.default_rng(seed)

    if _COUNT.matches_type(centers):
        n_centers = check_arg("centers", centers, _COUNT)
        n_features = 2 if n_features is None else n_features
        if not isinstance(center_box, (tuple, list)) or len(center_box) != 2:
            raise TypeError(f"center_box must be a (low, high) pair, got {center_box!r}")
        low = check_arg("center_box[0]", center_box[0], Real())
        high = check_arg("center_box[1]", center_box[1], Real())
        if not low < high:
            raise ValueError(f"center_box must have low < high, got {tuple(center_box)}")
        center_array = rng.uniform(low, high, size=(n_centers, n_features))
    else:
        try:
            center_array = np.asarray(centers, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                "centers must be an int or an array of shape (n_centers, n_features), "
                f"got {type(centers).__name__}"
            ) from None
        if center_array.ndim != 2 or center_array.size == 0:
            raise ValueError(
                "centers must be an int or a non-empty 2-D array (n_centers, n_features), "
                f"got shape {center_array.shape}"
            )
        if not np.isfinite(center_array).all():
            raise ValueError("centers contains NaN or infinity")
        n_centers = center_array.shape[0]
        if n_features is not None and n_features != center_array.shape[1]:
            raise ValueError(
                f"n_features ({n_features}) does not match centers.shape[1] "
                f"({center_array.shape[1]}); leave n_features=None to take it from centers"
            )
        n_features = center_array.shape[1]
    if n_centers > n_samples:
        raise ValueError(
            f"the number of centers ({n_centers}) must not exceed n_samples ({n_samples})"
        )

    if _NON_NEGATIVE.matches_type(cluster_std):
        std = np.full(n_centers, check_arg("cluster_std", cluster_std, _NON_NEGATIVE))
    else:
        try:
            std = np.asarray(cluster_std, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                "cluster_std must be a number or a sequence with one per center, "
                f"got {type(cluster_std).__name__}"
            ) from None
        if std.shape != (n_centers,):
            raise ValueError(
                f"cluster_std must be a number or have shape ({n_centers},), got {std.shape}"
            )
        if not (np.isfinite(std).all() and (std >= 0).all()):
            raise ValueError("cluster_std values must be finite and >= 0")

    y = np.repeat(np.arange(n_centers, dtype=np.int64), _counts_per_class(n_samples, n_centers))
    X = center_array[y] + std[y, None] * rng.standard_normal((n_samples, n_features))
    if shuffle:
        order = rng.permutation(n_samples)
        X, y = X[order], y[order]
    return np.ascontiguousarray(X, dtype=dtype), y


# --------------------------------------------------------------------------- IDX files

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); multi-byte
# values are big-endian, so the dtypes say so explicitly.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


@validate_args({"path": InstanceOf(str, os.PathLike, what="a str or os.PathLike")})
def load_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, the format MNIST and Fashion-MNIST are distributed in.

    The file may be raw or gzip-compressed (``train-images-idx3-ubyte.gz`` as
    downloaded); gzip is recognised by its magic bytes, not by the file name. The layout
    is a 4-byte magic number ``00 00 <type code> <ndim>``, then ``ndim`` big-endian
    uint32 dimension sizes, then the values in C order, big-endian. Type codes:
    ``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32,
    ``0x0E`` float64.

    Args:
        path: the file to read.

    Returns:
        A fresh, writeable, C-contiguous array in native byte order with the stored
        dtype and shape, e.g. uint8 ``(60000, 28, 28)`` for MNIST training images and
        uint8 ``(60000,)`` for its labels. Convert it yourself, e.g.
        ``X = images.reshape(len(images), -1).astype(np.float32) / 255``.

    Raises:
        TypeError: ``path`` is not a str or path-like.
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not an IDX file (bad magic number or type code), is
            truncated, is a damaged gzip stream, or holds more bytes than its header
            announces.
    """
    where = repr(os.fspath(path))
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        # Stream straight into the result array instead of reading the whole file and
        # copying it: one pass, and no second copy of a 47 MB MNIST file in memory.
        fh = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            return _read_idx(fh, where, None if compressed else os.fstat(raw.fileno()).st_size)
        except (OSError, EOFError, zlib.error) as exc:
            if not compressed:
                raise
            raise ValueError(f"{where}: damaged gzip stream ({exc})") from None


def _read_exactly(fh: BinaryIO, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``fh``; return the number of bytes read (short only at EOF)."""
    filled = 0
    while filled < len(buffer):
        got = fh.readinto(buffer[filled:])
        if not got:
            break
        filled += got
    return filled


def _read_idx(fh: BinaryIO, where: str, file_size: int | None) -> np.ndarray:
    """Parse an IDX stream; ``file_size`` (uncompressed files) rejects bad sizes early."""
    magic = fh.read(4)
    if len(magic) < 4:
        raise ValueError(
            f"{where} is truncated: {len(magic)} bytes, shorter than the 4-byte IDX magic number"
        )
    zero0, zero1, type_code, ndim = magic
    if zero0 != 0 or zero1 != 0:
        raise ValueError(
            f"{where} is not an IDX file: magic number {magic.hex()} does not start "
            "with two zero bytes"
        )
    if type_code not in _IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in _IDX_DTYPES)
        raise ValueError(f"{where}: unknown IDX type code 0x{type_code:02X} (known: {known})")
    dims = fh.read(4 * ndim)
    header_size = 4 + 4 * ndim
    if len(dims) < 4 * ndim:
        raise ValueError(
            f"{where} is truncated: the header announces {ndim} dimensions "
            f"({header_size} bytes) but the file has {4 + len(dims)} bytes"
        )
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize

    def size_error(payload: int) -> ValueError:
        if payload < expected:
            return ValueError(
                f"{where} is truncated: shape {shape} of {dtype.name} needs {expected} data "
                f"bytes, the file has {payload}"
            )
        return ValueError(
            f"{where}: size mismatch, shape {shape} of {dtype.name} needs {expected} data "
            f"bytes but the file has {payload} ({payload - expected} extra)"
        )

    # Check before allocating, so a damaged header cannot ask for terabytes.
    if file_size is not None and file_size - header_size != expected:
        raise size_error(file_size - header_size)
    try:
        values = np.empty(shape, dtype=dtype)
    except (MemoryError, ValueError):
        raise ValueError(
            f"{where}: the header announces shape {shape} of {dtype.name} ({expected} bytes), "
            "too large to allocate; is the file damaged?"
        ) from None
    got = _read_exactly(fh, memoryview(values.reshape(-1).view(np.uint8)))
    if got < expected:
        raise size_error(got)
    extra = 0
    while chunk := fh.read(1 << 20):
        extra += len(chunk)
    if extra:
        raise size_error(expected + extra)
    # The file is big-endian; swap in place so the result is native and not copied again.
    if not dtype.isnative:
        values = values.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return values


# --------------------------------------------------------------------------- splitting


def _n_test(test_size: int | float, n: int) -> int:
    """Number of test samples for ``test_size`` (a checked fraction or count) out of ``n``."""
    if isinstance(test_size, int):
        n_test = test_size
        if not 1 <= n_test <= n - 1:
            raise ValueError(
                f"test_size={n_test} must leave at least one sample on each side: "
                f"use 1..{n - 1} for {n} samples"
            )
        return n_test
    fraction = test_size
    # Round the test side up, as scikit-learn does, so a small test_size still gets a sample.
    n_test = math.ceil(fraction * n)
    if not 1 <= n_test <= n - 1:
        raise ValueError(
            f"test_size={fraction} gives {n_test} test samples out of {n}; "
            "both sides need at least one"
        )
    return n_test


def _stratified_test_counts(
    class_counts: np.ndarray, n_test: int, rng: np.random.Generator
) -> np.ndarray:
    """Per-class test counts summing to ``n_test``, proportional to ``class_counts``.

    Largest-remainder allocation: every class gets the floor of its share, and the
    samples left over go to the classes with the largest fractional parts (ties broken
    at random, so no class is favoured by its label).
    """
    n = class_counts.sum()
    share = class_counts * n_test / n
    counts = np.floor(share).astype(np.int64)
    left = n_test - counts.sum()
    if left:
        remainder = share - counts
        tie_break = rng.random(len(class_counts))
        order = np.lexsort((tie_break, -remainder))
        counts[order[:left]] += 1
    return counts


@validate_args({
    "test_size": AnyOf(Integer(), Real(min=0, max=1, closed="neither"),
                       what="a float in (0, 1) or an int count"),
    "seed": _SEED,
    "stratify": Boolean(),
})
def train_test_split(
    X: np.ndarray,
    y: np.ndarray,
    test_size: float | int = 0.2,
    seed: SeedLike = None,
    stratify: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split samples into a random training set and test set.

    Args:
        X: array whose first axis indexes samples, any dtype and rank >= 1.
        y: array with the same first-axis length (labels, or targets of any shape).
        test_size: a float in ``(0, 1)``, the fraction of samples for the test set
            (rounded up), or an int, their number; either way both sides keep at least
            one sample.
        seed: None (fresh entropy), a non-negative int, or a ``numpy.random.Generator``.
        stratify: keep the class proportions of ``y`` in both sets (``y`` must then be
            1-D integer labels, every class with at least 2 samples). Per-class test
            counts are the class's share of the test set, rounded so that they add up to
            the requested test size; each class keeps at least one training sample.

    Returns:
        ``(X_train, X_test, y_train, y_test)``: fresh arrays (copies) in shuffled order,
        with the dtypes of ``X`` and ``y``.

    Raises:
        TypeError: ``X``/``y`` are not arrays, ``test_size`` is not a number, or
            ``stratify`` is given non-integer labels.
        ValueError: lengths differ, there are fewer than 2 samples, ``test_size`` is out
            of range, or a class is too small to stratify.
    """
    for name, arr in (("X", X), ("y", y)):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
        if arr.ndim == 0:
            raise ValueError(f"{name} must have a samples axis, got a 0-d array")
    n = X.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"X and y must have the same number of samples, got {n} and {y.shape[0]}")
    if n < 2:
        raise ValueError(f"train_test_split needs at least 2 samples, got {n}")
    n_test = _n_test(test_size, n)
    rng = np.random.default_rng(seed)

    if not stratify:
        order = rng.permutation(n)
        test_idx, train_idx = order[:n_test], order[n_test:]
    else:
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise TypeError(
                "stratify=True needs y as 1-D integer class labels, "
                f"got dtype {y.dtype} with shape {y.shape}"
            )
        classes, inverse, class_counts = np.unique(y, return_inverse=True, return_counts=True)
        if class_counts.min() < 2:
            smallest = classes[np.argmin(class_counts)]
            raise ValueError(
                f"stratify=True needs at least 2 samples per class; class {smallest} has 1"
            )
        if not len(classes) <= n_test <= n - len(classes):
            raise ValueError(
                f"stratify=True with {len(classes)} classes needs between {len(classes)} and "
                f"{n - len(classes)} test samples, test_size gives {n_test}"
            )
        per_class = _stratified_test_counts(class_counts, n_test, rng)
        # Proportional counts can round a small class to all-test or no-test; move one
        # sample across so each class appears on both sides, keeping the total.
        per_class = _keep_both_sides(per_class, class_counts)
        test_parts, train_parts = [], []
        for c in range(len(classes)):
            members = rng.permutation(np.flatnonzero(inverse == c))
            test_parts.append(members[: per_class[c]])
            train_parts.append(members[per_class[c] :])
        # Shuffle again so the sets are not ordered by class.
        test_idx = rng.permutation(np.concatenate(test_parts))
        train_idx = rng.permutation(np.concatenate(train_parts))
    return X[train_idx], X[test_idx], y[train_idx], y[test_idx]


def _keep_both_sides(per_class: np.ndarray, class_counts: np.ndarray) -> np.ndarray:
    """Adjust per-class test counts to lie in ``1..count-1`` without changing their sum.

    Callers guarantee ``n_classes <= sum(per_class) <= n - n_classes`` and counts >= 2,
    so a donor or receiver with room always exists.
    """
    per_class = per_class.copy()
    while True:
        low = np.flatnonzero(per_class < 1)
        high = np.flatnonzero(per_class > class_counts - 1)
        if low.size:
            # Take one test sample from the class with the most room above its minimum.
            donor = np.argmax(np.where(per_class >= 2, per_class / class_counts, -np.inf))
            per_class[low[0]] += 1
            per_class[donor] -= 1
        elif high.size:
            room = class_counts - 1 - per_class
            receiver = np.argmax(np.where(room >= 1, room / class_counts, -np.inf))
            per_class[high[0]] -= 1
            per_class[receiver] += 1
        else:
            return per_class
