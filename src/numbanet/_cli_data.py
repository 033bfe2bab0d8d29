"""The data of ``numbanet train | evaluate | predict``: bundled datasets, your own files,
targets and the train/test split.

A *data spec* (a JSON-able dict) names the data: a bundled dataset (``digits``,
``spirals``, ``blobs``, ``idx`` files) or your own files (``--data X.npy|.csv`` with
``--targets y.npy|.csv`` or ``--target-column COL`` of the CSV), plus the test fraction
and the split seed. ``numbanet train --save`` stores it in the model file, so
``evaluate`` and ``predict`` find the same held-out samples again.

Targets decide the task. Integer targets (or text labels in a CSV) are class labels:
classification, with the classes sorted and numbered ``0..k-1`` (their original values
are kept in the spec as ``classes``, so predictions print them back). Real-valued
targets, or several target columns, are regression targets. ``--task`` overrides the
guess for integer targets that are really quantities.

Flat rows or images: an MLP takes one flat row of features per sample; a CNN
(``--model cnn``) takes channels-last images ``(n, height, width, channels)``. The spec's
``images`` flag picks which: the digits become ``(1797, 8, 8, 1)``, a 3-D IDX image file
``(n, height, width, 1)`` (a 4-D one is kept), and ``--data`` a 4-D array as it is, a
3-D one with a channel axis added, and flat rows only with ``image_shape``
(``--image-shape H,W,C``) to reshape them by (:func:`as_images`). ``evaluate`` and
``predict`` take the flag and the shape from the saved model's input shape, so a model
always gets its data in the shape it was trained on.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any

import numpy as np

__all__ = [
    "DATASETS",
    "CliError",
    "Data",
    "as_images",
    "data_spec",
    "describe",
    "encode_targets",
    "load",
    "read_inputs",
    "split",
    "validation_count",
]

DATASETS = ("digits", "spirals", "blobs", "idx")


class CliError(Exception):
    """A user-facing error: printed as one line, without a traceback.

    Args:
        message: what is wrong and what to do.
        code: the exit code: 2 for bad options or input (argparse's), 1 for a file
            that cannot be read or written.
    """

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class Data:
    """Samples and targets as the command line loaded them.

    Attributes:
        X: float samples: ``(n, features)`` rows, or ``(n, height, width, channels)``
            images when the spec asks for images.
        y: int64 class indices ``(n,)`` (classification) or float targets ``(n, m)``
            (regression).
        task: ``"classification"`` or ``"regression"``.
        classes: the original class labels, index ``i`` for class ``i`` (``None`` for the
            bundled datasets, whose labels are ``0..k-1`` already).
        name: what the messages call the data (``"digits"``, ``"iris.csv"``).
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, task: str, classes: list[Any] | None,
                 name: str) -> None:
        self.X, self.y, self.task, self.classes, self.name = X, y, task, classes, name

    @property
    def n_classes(self) -> int:
        if self.classes is not None:
            return len(self.classes)
        return int(self.y.max()) + 1 if self.y.size else 0


# ------------------------------------------------------------------------------ spec


def data_spec(args: Any, saved: dict[str, Any] | None, seed: int) -> dict[str, Any]:
    """The data and split of a command: options given on the command line win over what
    the model file recorded (``saved``); ``seed`` is the split seed when neither gives
    one. Raises :class:`CliError` when the options contradict each other."""
    saved = dict(saved or {})
    data = getattr(args, "data", None)
    if data is not None and args.dataset is not None:
        raise CliError("give either --dataset or --data, not both")
    if getattr(args, "targets", None) is not None and getattr(args, "target_column", None):
        raise CliError("give either --targets or --target-column, not both")
    if data is not None or args.dataset is not None:
        # Other data than the model's: only the split settings carry over, and for your
        # own files the model's classes and task (its labels must be numbered the same).
        keep = ("test_size", "split_seed") + (("classes", "task") if data is not None else ())
        saved = {key: value for key, value in saved.items() if key in keep}
    spec: dict[str, Any] = {
        "dataset": "file" if data is not None else (
            args.dataset or saved.get("dataset") or "digits"),
        "data": data or saved.get("data"),
        "targets": getattr(args, "targets", None) or saved.get("targets"),
        "target_column": getattr(args, "target_column", None) or saved.get("target_column"),
        "idx_images": args.idx_images or saved.get("idx_images"),
        "idx_labels": args.idx_labels or saved.get("idx_labels"),
        "test_size": args.test_size if args.test_size is not None
        else saved.get("test_size", 0.2),
        "split_seed": args.split_seed if args.split_seed is not None
        else saved.get("split_seed", seed),
        "task": getattr(args, "task", None) or saved.get("task"),
        "classes": saved.get("classes"),
        # Images for a CNN: the flag, and the sample shape to reshape flat rows by.
        "images": getattr(args, "images", None) or saved.get("images"),
        "image_shape": getattr(args, "image_shape", None) or saved.get("image_shape"),
    }
    if spec["dataset"] == "file" and not spec["data"]:
        raise CliError("the model file names no data file: pass --data PATH")
    for key in ("idx_images", "idx_labels", "data", "targets"):
        if spec[key]:
            spec[key] = os.path.abspath(spec[key])
    return spec


def describe(spec: dict[str, Any]) -> str:
    """``digits`` or the data file's name, for messages."""
    if spec["dataset"] == "file":
        return os.path.basename(spec["data"])
    return str(spec["dataset"])


# ------------------------------------------------------------------------------ load


def load(spec: dict[str, Any]) -> Data:
    """The whole dataset the spec names (before the split)."""
    from numbanet import datasets

    name = spec["dataset"]
    images = bool(spec.get("images"))
    if name == "file":
        return _load_files(spec)
    if images and name in ("spirals", "blobs"):
        raise CliError(f"--model cnn trains on images, but the {name} samples are points "
                       f"with a few coordinates: use --model mlp, or images (--dataset "
                       f"digits or idx, or --data with a 4-D .npy)")
    if name == "digits":
        X, y = datasets.load_digits(as_images=images)
        if images:
            X = as_images(X, spec.get("image_shape"), "the digits")
    elif name == "spirals":
        X, y = datasets.make_spirals(n_samples=600, n_classes=3, seed=spec["split_seed"])
    elif name == "blobs":
        X, y = datasets.make_blobs(n_samples=600, centers=4, seed=spec["split_seed"])
    else:
        X, y = _load_idx(spec)
    if spec.get("task") == "regression":
        raise CliError(f"the {name} data holds class labels: --task regression needs your "
                       f"own targets (--data/--targets)")
    return Data(X, np.asarray(y, dtype=np.int64), "classification", None, name)


def _load_idx(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from numbanet import datasets

    images, labels = spec.get("idx_images"), spec.get("idx_labels")
    if not images or not labels:
        raise CliError("--dataset idx needs --idx-images PATH and --idx-labels PATH")
    try:
        X = datasets.load_idx(images)
        y = datasets.load_idx(labels)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the IDX files: {exc}", code=1) from None
    if spec.get("images"):
        if X.ndim not in (3, 4):
            raise CliError(f"--model cnn needs images, but {os.path.basename(images)!r} "
                           f"holds an array of shape {X.shape}, not (n, height, width) or "
                           f"(n, height, width, channels): use --model mlp")
        X = as_images(X, spec.get("image_shape"), repr(os.path.basename(images)))
    else:
        X = X.reshape(X.shape[0], -1)
    X = X.astype(np.float32)
    if X.size and X.max() > 1.0:
        X /= np.float32(255.0)
    return X, y.astype(np.int64).reshape(-1)


def _load_files(spec: dict[str, Any]) -> Data:
    path = spec["data"]
    column = spec.get("target_column")
    if spec.get("targets") is None and column is None:
        raise CliError("--data needs its targets: --targets y.npy|y.csv, or "
                       "--target-column COL for a CSV that holds them")
    if column is not None:
        if not path.endswith(".csv"):
            raise CliError(f"--target-column picks a column of a CSV file; {path!r} is not "
                           f".csv (use --targets for .npy data)")
        header, columns = _read_csv(path)
        index = _column_index(column, header, len(columns), path)
        raw_y = columns.pop(index)
        X = _numeric(columns, path, header[:index] + header[index + 1:] if header else None)
    else:
        X = _read_array(path, "--data")
        raw_y = _read_targets(spec["targets"])
    if spec.get("images"):
        X = as_images(X, spec.get("image_shape"), f"--data {os.path.basename(path)!r}")
    elif X.ndim == 1:
        X = X.reshape(-1, 1)
    elif X.ndim != 2:
        raise CliError(f"--data {path!r} must hold one sample per row (2-D), got shape "
                       f"{X.shape}; for images (n, height, width[, channels]) train a CNN: "
                       f"--model cnn")
    n_y = len(raw_y) if isinstance(raw_y, list) else raw_y.shape[0]
    if n_y != X.shape[0]:
        raise CliError(f"--data has {X.shape[0]} samples but the targets have {n_y}: give "
                       f"one target per sample")
    if not np.isfinite(X).all():
        raise CliError(f"--data {path!r} contains NaN or infinity (missing values?): fill "
                       f"or drop those rows first")
    y, task, classes = encode_targets(raw_y, spec.get("task"), spec.get("classes"))
    return Data(X, y, task, classes, os.path.basename(path))


def as_images(X: np.ndarray, shape: Any, where: str) -> np.ndarray:
    """``X`` as channels-last images ``(n, height, width, channels)`` for a CNN.

    A 4-D array is kept, a 3-D ``(n, height, width)`` one gets a channel axis, and flat
    rows are reshaped to ``shape`` (``(height, width, channels)``, from ``--image-shape``
    or the model). With ``shape`` given, the result must have it. Raises
    :class:`CliError` naming the fix otherwise; ``where`` names the data in it.
    """
    want = None if shape is None else tuple(int(v) for v in shape)
    if X.ndim == 3:
        X = X[..., np.newaxis]
    elif X.ndim == 2 and want is not None and X.shape[1] == math.prod(want):
        X = X.reshape(X.shape[0], *want)
    elif X.ndim == 2:
        side = math.isqrt(X.shape[1])
        example = f"{side},{side},1" if side * side == X.shape[1] else "H,W,C"
        size = (f", not the {math.prod(want)} of images of shape {want}"
                if want is not None else "")
        raise CliError(f"{where} holds flat rows of {X.shape[1]} values{size}, but --model "
                       f"cnn needs images (n, height, width, channels): pass "
                       f"--image-shape {example} to reshape each row, or save the samples "
                       f"as a 4-D .npy")
    elif X.ndim != 4:
        raise CliError(f"{where} has shape {X.shape}; --model cnn needs images (n, height, "
                       f"width, channels), (n, height, width) or flat rows with "
                       f"--image-shape H,W,C")
    if want is not None and tuple(X.shape[1:]) != want:
        raise CliError(f"{where} holds images of shape {tuple(X.shape[1:])}, but images "
                       f"of shape {want} (height, width, channels) are expected: pass the "
                       f"images the model was trained on, or the --image-shape they have")
    return X


def _read_csv(path: str) -> tuple[list[str] | None, list[list[str]]]:
    """A CSV file as its header (when the first row is not all numbers) and its columns."""
    if not os.path.exists(path):
        raise CliError(f"no file at {path!r}", code=1)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [row for row in csv.reader(fh) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CliError(f"cannot read {path!r}: {exc}", code=1) from None
    if not rows:
        raise CliError(f"{path!r} holds no rows")
    header = None
    if not all(_is_number(cell) for cell in rows[0]):
        header, rows = [cell.strip() for cell in rows[0]], rows[1:]
    if not rows:
        raise CliError(f"{path!r} holds a header and no samples")
    width = len(header) if header else len(rows[0])
    for number, row in enumerate(rows, start=2 if header else 1):
        if len(row) != width:
            raise CliError(f"{path!r} line {number} has {len(row)} columns, expected {width}")
    return header, [[row[j].strip() for row in rows] for j in range(width)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _column_index(column: str, header: list[str] | None, width: int, path: str) -> int:
    if header is not None and column in header:
        return header.index(column)
    try:
        index = int(column)
    except ValueError:
        names = ", ".join(header) if header else f"0..{width - 1} (the file has no header)"
        raise CliError(f"--target-column {column!r} is not a column of {path!r}: "
                       f"{names}") from None
    if not -width <= index < width:
        raise CliError(f"--target-column {index} is out of range for the {width} columns "
                       f"of {path!r}")
    return index % width


def _numeric(columns: list[list[str]], path: str, names: list[str] | None) -> np.ndarray:
    X = np.empty((len(columns[0]), len(columns)))
    for j, values in enumerate(columns):
        try:
            X[:, j] = np.array(values, dtype=np.float64)
        except ValueError:
            bad = next(v for v in values if not _is_number(v))
            name = repr(names[j]) if names else str(j)
            raise CliError(f"{path!r}: column {name} holds {bad!r}, not a number; the "
                           f"samples must be numbers (encode text columns first)") from None
    return X


def _require_file(path: str, option: str) -> None:
    if not os.path.exists(path):
        raise CliError(f"{option}: no file at {path!r}", code=1)


def _load_npy(path: str, option: str) -> np.ndarray:
    """The array in a .npy file (no pickles); a clean error naming ``option`` otherwise."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CliError(f"{option}: cannot read {path!r} as .npy: {exc}", code=1) from None


def _read_array(path: str, option: str) -> np.ndarray:
    """A .npy array or a CSV of numbers (a header row is skipped)."""
    _require_file(path, option)
    if path.endswith(".npy"):
        arr = _load_npy(path, option)
        if arr.dtype.kind not in "biuf":
            raise CliError(f"{option} {path!r} holds {arr.dtype} values, not numbers")
        return arr.astype(np.float64, copy=False)
    header, columns = _read_csv(path)
    return _numeric(columns, path, header)


def _read_targets(path: str) -> np.ndarray | list[str]:
    """Targets from .npy (numbers or text) or a CSV (numbers, or one column of text)."""
    _require_file(path, "--targets")
    if path.endswith(".npy"):
        arr = _load_npy(path, "--targets")
        if arr.dtype.kind in "US":
            return [str(v) for v in arr.reshape(-1)]
        if arr.dtype.kind not in "biuf":
            raise CliError(f"--targets {path!r} holds {arr.dtype} values")
        return arr
    header, columns = _read_csv(path)
    if len(columns) == 1:
        return columns[0]
    return _numeric(columns, path, header)


def encode_targets(raw: np.ndarray | list[str], task: str | None,
                   classes: list[Any] | None = None) -> tuple[np.ndarray, str, list[Any] | None]:
    """``(y, task, classes)`` for raw targets: class indices and the class list, or
    float regression targets ``(n, m)``.

    Args:
        raw: a numeric array, or strings (one CSV column).
        task: ``"classification"``, ``"regression"`` or ``None``/``"auto"`` (integer
            values and text are class labels, real values regression targets).
        classes: the classes a model was trained with: labels are numbered by this list
            (a label it does not hold is an error) instead of by the sorted labels.
    """
    if task == "auto":
        task = None
    if isinstance(raw, list):
        if all(_is_number(v) for v in raw):
            raw = np.array(raw, dtype=np.float64)
        else:
            if task == "regression":
                bad = next(v for v in raw if not _is_number(v))
                raise CliError(f"--task regression needs numeric targets, got {bad!r}")
            return _as_classes(np.array(raw), classes)
    values = np.asarray(raw)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values.reshape(-1)
    integral = values.ndim == 1 and bool(np.all(np.isfinite(values))) and bool(
        np.all(values == np.round(values)))
    if task is None:
        task = "classification" if integral else "regression"
    if task == "classification":
        if not integral:
            raise CliError("--task classification needs one integer class label per "
                           "sample; these targets are real numbers or several columns")
        return _as_classes(values.astype(np.int64), classes)
    y = values.astype(np.float64).reshape(values.shape[0], -1)
    if not np.isfinite(y).all():
        raise CliError("the targets contain NaN or infinity")
    return y, "regression", None


def _as_classes(labels: np.ndarray, classes: list[Any] | None) -> tuple[np.ndarray, str,
                                                                         list[Any]]:
    if classes is None:
        found, y = np.unique(labels, return_inverse=True)
        return y.astype(np.int64).reshape(-1), "classification", [_plain(v) for v in found]
    index = {str(c): i for i, c in enumerate(classes)}
    y = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels.tolist()):
        key = str(label)
        if key not in index:
            raise CliError(f"label {label!r} is not one of the model's classes "
                           f"({', '.join(map(str, classes))})")
        y[i] = index[key]
    return y, "classification", list(classes)


def _plain(value: Any) -> Any:
    """A numpy scalar as the JSON-able Python value (``3``, ``'setosa'``)."""
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


# ----------------------------------------------------------------------------- split


def split(spec: dict[str, Any], data: Data, which: str) -> tuple[np.ndarray, np.ndarray]:
    """``which`` of ``"train"``, ``"test"`` or ``"all"``: the same samples every time
    for the same spec (stratified by class for classification)."""
    from numbanet.datasets import train_test_split

    if which == "all":
        return data.X, data.y
    try:
        X_train, X_test, y_train, y_test = train_test_split(
            data.X, data.y, test_size=spec["test_size"], seed=spec["split_seed"],
            stratify=data.task == "classification")
    except (TypeError, ValueError) as exc:
        raise CliError(f"cannot split {data.name} into train and test sets: {exc}") from None
    return (X_test, y_test) if which == "test" else (X_train, y_train)


def validation_count(n_train: int, validation_split: float) -> int:
    """How many of ``n_train`` samples ``fit(validation_split=...)`` holds out."""
    return int(math.ceil(n_train * validation_split)) if validation_split else 0


def read_inputs(path: str) -> np.ndarray:
    """``numbanet predict``'s INPUT: a .npy or a CSV of samples (header row skipped)."""
    if not os.path.exists(path):
        raise CliError(f"no input file at {path!r}", code=1)
    try:
        if path.endswith(".npy"):
            X = np.load(path, allow_pickle=False)
            if X.dtype.kind not in "biuf":
                raise ValueError(f"it holds {X.dtype} values, not numbers")
        else:
            header, columns = _read_csv(path)
            X = _numeric(columns, path, header)
    except (OSError, ValueError, CliError) as exc:
        raise CliError(f"cannot read inputs from {path!r} (.npy, or a CSV of numbers with "
                       f"one sample per row): {exc}", code=1) from None
    X = X.astype(np.float64, copy=False)
    return X.reshape(1, -1) if X.ndim == 1 else X
