"""``numbanet train | evaluate | predict``: training from the command line.

``numbanet train`` with no options trains a 64-128-64-10 ReLU MLP with Adam on the
bundled 8x8 digits, holds out a stratified 20% test split, prints one line per epoch (a
bar for the steps first, on a terminal) and the final test accuracy (about 98%; a few
seconds on two cores once compiled). ``--model cnn`` trains a small convolutional network
on the digits as 8x8x1 images instead (:func:`_cnn_layers`; about 99%, a few seconds
more). ``--data``/``--targets`` train on your own files
(:mod:`numbanet._cli_data`), for classification or regression; ``--loss`` takes any
loss, and the output layer and target encoding follow it (:func:`_task`).

The model file written by ``--save`` remembers the data, the split and the task, so
``numbanet evaluate model.npz`` scores the same held-out samples, and
``numbanet predict model.npz`` predicts them (or any ``.npy``/``.csv`` of inputs): classes
for a classifier, values for a regression model. Both load the model for inference only,
so the optimizer's plugin is not needed.

Exit codes: 0 success, 1 a file that cannot be read or written, or a run stopped by a
NaN loss, 2 bad options or input (one line, never a traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from numbanet import _cli_data
from numbanet._cli_data import DATASETS as _DATASETS
from numbanet._cli_data import CliError as _CliError

__all__ = ["main"]

#: Without ``--lr`` an optimizer runs at its own default, except these built-ins, whose
#: PyTorch defaults (which the library keeps) fall short of or trail the others on the
#: digits with the command line's other defaults (``sgd`` at 1e-3 reaches 83%; ``radam``
#: at 1e-3 96.9% with seed 0). With these every built-in reaches >= 97% test accuracy
#: for seeds 0-2 (the table is in docs/guide.md).
_DEFAULT_LR = {"adam": 2e-3, "adamw": 2e-3, "adamax": 4e-3, "radam": 2e-3, "sgd": 0.2}

#: The defaults that differ between ``--model mlp`` and ``--model cnn``. The CNN's were
#: picked on the digits: conv+BN blocks 32-64-pool-64-pool with a 128 dense head, at
#: adam's 2e-3, reach 98.3-100% test accuracy at 20 epochs over seeds 0-19 (mean 99.2,
#: seed 0 98.9; the figures are in docs/guide.md).
_MODEL_DEFAULTS = {
    "mlp": {"hidden": [128, 64], "epochs": 30},
    "cnn": {"hidden": [128], "epochs": 20, "channels": [32, 64, 64]},
}


# --------------------------------------------------------------------------- parsing


def _hidden_sizes(text: str) -> list[int]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    sizes = []
    for part in text.split(","):
        try:
            size = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--hidden takes comma-separated positive ints like 128,64, got {text!r}"
            ) from None
        if size <= 0:
            raise argparse.ArgumentTypeError(
                f"--hidden sizes must be positive, got {size} (for a linear model with no "
                f"hidden layer: --hidden none)")
        sizes.append(size)
    return sizes


def _sizes(option: str, example: str):
    """An argparse ``type=`` for comma-separated positive ints such as ``16,32``."""

    def parse(text: str) -> list[int]:
        try:
            sizes = [int(part) for part in text.split(",")]
        except ValueError:
            sizes = []
        if not sizes or min(sizes) <= 0:
            raise argparse.ArgumentTypeError(
                f"{option} takes comma-separated positive ints like {example}, got {text!r}")
        return sizes

    return parse


def _number_type(convert, accept, expected: str):
    """An argparse ``type=`` that converts with ``convert`` and keeps values ``accept``
    returns true for; ``expected`` describes them in the error message."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):  # comparisons with nan are false: nan is rejected too
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


_positive_int = _number_type(int, lambda v: v > 0, "a positive int")
_nonnegative_int = _number_type(int, lambda v: v >= 0, "an int >= 0")
_positive_float = _number_type(
    float, lambda v: 0.0 < v < float("inf"), "a positive finite number"
)
_nonnegative_float = _number_type(
    float, lambda v: 0.0 <= v < float("inf"), "a finite number >= 0"
)
_fraction = _number_type(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
# The test split must hold samples and leave some to train on: (0, 1), as the library.
_open_fraction = _number_type(float, lambda v: 0.0 < v < 1.0, "a number in (0, 1)")


def _add_data_options(parser: argparse.ArgumentParser, training: bool) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=_DATASETS, default=None,
                       help="bundled digits, synthetic spirals/blobs, or MNIST-format IDX "
                            "files (--idx-images/--idx-labels)"
                            + ("; default digits" if training else
                               "; default: the data the model was trained on"))
    group.add_argument("--idx-images", metavar="PATH", help="IDX images file (.gz or raw)")
    group.add_argument("--idx-labels", metavar="PATH", help="IDX labels file (.gz or raw)")
    group.add_argument("--data", metavar="PATH",
                       help="your own samples instead: .npy, or .csv with one sample per row "
                            "(a header row is allowed)")
    group.add_argument("--targets", metavar="PATH",
                       help="the targets of --data, one per row (.npy or .csv): integers or "
                            "text are class labels, real numbers regression targets")
    group.add_argument("--target-column", metavar="COL",
                       help="or: the column of --data's CSV that holds the targets (its "
                            "header name, or an index; -1 is the last)")
    group.add_argument("--test-size", type=_open_fraction, default=None,
                       help="fraction held out for testing, in (0, 1)"
                            + (" (default 0.2)" if training else
                               " (default: the model's, else 0.2)"))
    group.add_argument("--split-seed", type=_nonnegative_int, default=None,
                       help="seed of the train/test split and synthetic data "
                            + ("(default: --seed)" if training else
                               "(default: the one the model was trained with)"))


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numbanet train",
        description="Train an MLP (or a CNN) and report its accuracy (or error, for "
                    "regression) on a held-out test split. With no options: digits, MLP "
                    "with hidden 128,64, relu, cross_entropy, adam at lr 2e-3, 30 epochs. "
                    "--model cnn: the digits as 8x8x1 images, conv+BatchNorm 32,64,64, dense 128, "
                    "20 epochs (about 99% test accuracy).",
    )
    _add_data_options(parser, training=True)
    model = parser.add_argument_group("model and training")
    model.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                       help="mlp (default): dense layers on flat rows. cnn: on channels-last "
                            "images (n, height, width, channels), a 3x3 'same' convolution "
                            "+ BatchNorm + activation per --channels size, a 2x2 max-pool "
                            "after every second one and after the last, then Flatten and "
                            "the dense head --hidden")
    model.add_argument("--hidden", type=_hidden_sizes, default=None,
                       help="hidden layer sizes, comma separated (default 128,64; 'none' "
                            "for a linear model); with --model cnn the dense head after the "
                            "convolutions (default 128)")
    model.add_argument("--channels", type=_sizes("--channels", "32,64,64"), default=None,
                       help="--model cnn only: output channels of its 3x3 convolutions, "
                            "comma separated (default 32,64,64)")
    model.add_argument("--image-shape", type=_sizes("--image-shape", "28,28,1"),
                       default=None, metavar="H,W,C",
                       help="--model cnn only: reshape flat --data rows to images of this "
                            "shape (4-D .npy data, IDX images and the digits need none)")
    model.add_argument("--activation", default="relu",
                       help="hidden activation, of the convolutions too with --model cnn "
                            "(default relu)")
    model.add_argument("--dropout", type=_fraction, default=0.0,
                       help="dropout rate after each hidden dense layer (default 0)")
    model.add_argument("--task", choices=("auto", "classification", "regression"),
                       default="auto",
                       help="what the targets are (default auto: integers and text are class "
                            "labels, real numbers regression targets)")
    model.add_argument("--loss", default=None,
                       help="loss name (default cross_entropy for classification, mse for "
                            "regression); losses that need one-hot targets or a log-softmax "
                            "output get them")
    model.add_argument("--optimizer", default="adam", help="optimizer name (default adam)")
    model.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate (default: the optimizer's own, except "
                            + ", ".join(f"{name} {lr:g}" for name, lr in _DEFAULT_LR.items())
                            + ", tuned on the digits)")
    model.add_argument("--weight-decay", type=_nonnegative_float, default=None,
                       help="decoupled weight decay on weights, not biases")
    model.add_argument("--clip-norm", type=_positive_float, default=None,
                       help="clip the global gradient norm to this")
    model.add_argument("--epochs", type=_nonnegative_int, default=None,
                       help="passes over the training data (default 30; 20 with --model cnn)")
    model.add_argument("--batch-size", type=_positive_int, default=32,
                       help="samples per step (default 32)")
    model.add_argument("--validation-split", type=_fraction, default=0.1,
                       help="fraction of the training split used for per-epoch validation "
                            "(default 0.1; 0 for none)")
    model.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    model.add_argument("--seed", type=_nonnegative_int, default=0,
                       help="seeds weights, shuffling, dropout and the split (default 0)")
    model.add_argument("--threads", type=_positive_int, default=None,
                       help="number of threads (default: all cores; under mpiexec each "
                            "rank's share of them)")
    model.add_argument("--distributed", action="store_true",
                       help="data-parallel training over MPI, --batch-size being the global "
                            "batch (implied when mpiexec or srun started more than one "
                            "process; needs pip install \"numbanet[mpi]\")")
    model.add_argument("--on-nan", choices=("stop", "continue"), default="stop",
                       help="what a NaN loss does (default stop)")
    out = parser.add_argument_group("output")
    out.add_argument("--save", metavar="PATH", help="write the trained model (.npz)")
    out.add_argument("--plot", metavar="PNG",
                     help="write loss/accuracy curves (needs matplotlib)")
    out.add_argument("--tensorboard", metavar="DIR",
                     help="write TensorBoard logs (loss, accuracy, learning rate per epoch) "
                          "to DIR (needs numbanet[tensorboard])")
    out.add_argument("--quiet", action="store_true", help="print only the final result")
    return parser


def _evaluate_parser(command: str) -> argparse.ArgumentParser:
    if command == "evaluate":
        parser = argparse.ArgumentParser(
            prog="numbanet evaluate",
            description="Score a saved model on a dataset (default: the held-out split of "
                        "the dataset it was trained on).")
    else:
        parser = argparse.ArgumentParser(
            prog="numbanet predict",
            description="Predict with a saved model: INPUT is a .npy or .csv of samples "
                        "(one per row); without INPUT, the held-out split of the model's "
                        "data. Prints one line per sample: the predicted class for a "
                        "classifier, the predicted values for a regression model.")
    parser.add_argument("model", help="a model file written by 'numbanet train --save' or "
                                      "numbanet.save")
    if command == "predict":
        parser.add_argument("input", nargs="?", help=".npy or .csv of inputs")
        parser.add_argument("--proba", action="store_true",
                            help="print class probabilities instead of classes (classifiers "
                                 "whose outputs are logits or probabilities)")
        parser.add_argument("--output", metavar="PATH",
                            help="write predictions to PATH (.npy or .csv) instead")
    _add_data_options(parser, training=False)
    parser.add_argument("--split", choices=("test", "train", "all"), default="test",
                        help="which part of the dataset (default test)")
    parser.add_argument("--threads", type=_positive_int, default=None)
    return parser


# ------------------------------------------------------------------------------ data


class _Task(NamedTuple):
    """How a loss meets the data: the output layer and the targets it is trained on."""

    loss: Any  # the numbanet Loss
    n_out: int  # outputs of the last layer
    head: str | None  # activation of the last layer (log_softmax for nll / kl_div)
    encoding: str  # targets: "labels", "one_hot", "binary" (one 0/1 column), "values"
    metrics: list[str]

    def targets(self, y: np.ndarray) -> np.ndarray:
        """The data's targets (class indices or values) in the form the loss takes."""
        if self.encoding == "one_hot":
            return np.eye(self.n_out)[y]
        if self.encoding == "binary":
            return y.astype(np.float64).reshape(-1, 1)
        return y


# Losses whose inputs are log-probabilities: the command line ends the network in a
# log-softmax for them (otherwise nll is unbounded below and diverges).
_LOG_PROBABILITY_LOSSES = ("numbanet:nll", "numbanet:kl_div")
_REGRESSION_LOSSES = "mse, mae, huber or smooth_l1"


def _build_loss(name: str | None, task: str) -> Any:
    from numbanet.plugins import get_loss, list_losses

    name = name or ("cross_entropy" if task == "classification" else "mse")
    try:
        return get_loss(name)
    except (TypeError, ValueError) as exc:
        raise _CliError(f"--loss {name}: {exc} (installed: {', '.join(list_losses())})"
                        ) from None


def _task(loss: Any, task: str, n_classes: int, n_targets: int,
          n_out: int | None = None) -> _Task:
    """The output layer and target encoding ``loss`` needs for the data's task, or a
    :class:`_CliError` saying why the loss does not fit. ``n_out``: a saved model's
    outputs (evaluate), else chosen here."""
    spec = loss.spec
    log_probabilities = loss.qualified_id in _LOG_PROBABILITY_LOSSES
    head = "log_softmax" if log_probabilities else None
    if task == "regression":
        if spec.target == "labels" or spec.output_activation == "softmax" or log_probabilities:
            raise _CliError(
                f"--loss {loss.name} is a classification loss, but the targets are real "
                f"numbers (regression): use --loss {_REGRESSION_LOSSES}, or --task "
                f"classification if they are class labels")
        return _Task(loss, n_out or n_targets, None, "values", ["mae"])
    if n_classes < 2:
        raise _CliError("the targets hold a single class: classification needs at least "
                        "2 (for real-valued targets use --task regression)")
    if spec.target in ("labels", "labels_or_dense"):
        encoding = "labels"
        out = n_classes
    elif spec.output_activation == "sigmoid" and n_classes == 2 and n_out in (None, 1):
        encoding, out = "binary", 1  # one logit: P(class 1), as MLPClassifier does
    else:
        encoding, out = "one_hot", n_classes  # dense losses learn one-hot targets
    if n_out is not None and out != n_out:
        raise _CliError(f"the model has {n_out} outputs, but the data has {n_classes} "
                        f"classes")
    return _Task(loss, out, head, encoding, ["accuracy"])


def _default_lr(name: str) -> dict[str, float]:
    """``{"lr": ...}`` from :data:`_DEFAULT_LR` for a built-in optimizer, else ``{}``."""
    from numbanet.plugins import resolve_optimizer

    try:
        qualified_id, _ = resolve_optimizer(name)
    except (TypeError, ValueError):
        return {}  # get_optimizer reports the unknown name
    distribution, _, short = qualified_id.partition(":")
    if distribution == "numbanet" and short in _DEFAULT_LR:
        return {"lr": _DEFAULT_LR[short]}
    return {}


# ----------------------------------------------------------------------------- train


def _check_plotting(path: str | None) -> None:
    if path is None:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise _CliError("--plot needs matplotlib, which is not installed: "
                        "pip install matplotlib (or drop --plot)") from None


def _tensorboard_callbacks(log_dir: str | None) -> list[Any]:
    """``[TensorBoard(log_dir)]`` for ``--tensorboard``, checked before training."""
    if log_dir is None:
        return []
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise _CliError('--tensorboard needs the tensorboard package, which is not '
                        'installed: pip install "numbanet[tensorboard]" (or drop '
                        '--tensorboard)') from None
    from numbanet.tensorboard import TensorBoard

    return [TensorBoard(log_dir)]


def _curves(history: Any) -> Any:
    """The ``--plot`` figure: the loss panel and, with metrics, a panel of them, each
    with its title and axis labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = history.history
    epochs = [e + 1 for e in history.epoch]
    metric_keys = [k for k in h if k not in ("loss", "val_loss", "lr") and not k.startswith("val_")]
    ncols = 1 + bool(metric_keys)
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.6), squeeze=False)
    ax = axes[0][0]
    for key, label in (("loss", "loss (running mean)"), ("val_loss", "val_loss")):
        if key in h:
            ax.plot(epochs, h[key], label=label, marker=".")
    ax.set_title("loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    if metric_keys:
        ax = axes[0][1]
        for key in metric_keys:
            ax.plot(epochs, h[key], label=key, marker=".")
            if f"val_{key}" in h:
                ax.plot(epochs, h[f"val_{key}"], label=f"val_{key}", marker=".")
        names = ", ".join(metric_keys)
        ax.set_title(f"{names} (end of epoch)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(names)
        ax.legend()
    fig.tight_layout()
    return fig


def _plot(history: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    fig = _curves(history)
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def _check_writable(path: str, option: str) -> None:
    # Fail before a long training run, not after it, when the output cannot be written.
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise _CliError(f"{option} {path!r}: the directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK):
        raise _CliError(f"{option} {path!r}: the directory {directory!r} is not writable")
    if os.path.isdir(path):
        raise _CliError(f"{option} {path!r} is a directory")


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    from numbanet.threads import max_threads, set_num_threads

    if threads > max_threads():
        raise _CliError(f"--threads {threads} is more than the {max_threads()} available "
                        f"(NUMBA_NUM_THREADS)")
    set_num_threads(threads)


def _distributed(requested: bool) -> Any:
    """:mod:`numbanet.distributed`, initialised, when training runs on several MPI ranks
    (``--distributed``, or a launcher that started more than one process), else None."""
    from numbanet import distributed

    if not requested and distributed.launcher_size() <= 1:
        return None
    try:
        distributed.init()
    except ImportError as exc:
        raise _CliError(str(exc)) from None
    return distributed


def _model_options(args: argparse.Namespace) -> None:
    """Fill in the defaults that depend on ``--model`` and refuse the options that do
    not apply to it, before any data is read."""
    defaults = _MODEL_DEFAULTS[args.model]
    if args.model == "mlp":
        for option, value in (("--channels", args.channels),
                              ("--image-shape", args.image_shape)):
            if value is not None:
                raise _CliError(f"{option} applies to --model cnn only; the MLP has no "
                                f"convolutions and takes flat rows (add --model cnn, or "
                                f"drop {option})")
    else:
        shape = args.image_shape
        if shape is not None and len(shape) not in (2, 3):
            raise _CliError(f"--image-shape takes height,width or height,width,channels, "
                            f"got {','.join(map(str, shape))}")
        if shape is not None and len(shape) == 2:
            args.image_shape = [*shape, 1]
        args.channels = args.channels if args.channels is not None else defaults["channels"]
    args.images = args.model == "cnn"
    args.hidden = args.hidden if args.hidden is not None else defaults["hidden"]
    args.epochs = args.epochs if args.epochs is not None else defaults["epochs"]


def _cnn_layers(image_shape: Sequence[int], channels: Sequence[int], args: argparse.Namespace,
                n_out: int, head: str | None) -> tuple[list[Any], str]:
    """The layers of ``--model cnn`` and their description for the first line.

    Per entry of ``channels`` a block: a 3x3 convolution with ``'same'`` padding and no
    bias, BatchNorm, ``--activation``; a 2x2 max-pool after every second block and after
    the last (skipped once the image is smaller than 2x2); then Flatten and the dense
    head: ``--hidden`` layers (each followed by ``--dropout``) and the output layer. With
    the defaults, on the digits: 8x8x1 -> 32, 64 -> pool 4x4x64 -> 64 -> pool 2x2x64 ->
    256 -> 128 -> 10, 90k parameters. Without BatchNorm the same trunk's test accuracy
    over seeds 0-7 ranged as widely (98.3-99.4%) but its seed 0 fell below 98.5%; smaller
    trunks trailed (seeds 0-19, lowest: 16,32,64 98.3%, 32,32 98.1%, 16,32 97.8%), as
    did a pool after each convolution, dropout in the head and a cosine decay.
    """
    from numbanet.nn import Activation, BatchNorm, Conv2D, Flatten, MaxPool2D

    height, width, depth = image_shape
    layers: list[Any] = []
    parts: list[str] = []
    for i, size in enumerate(channels):
        layers += [Conv2D(depth, size, 3, padding="same", bias=False), BatchNorm(size),
                   Activation(args.activation)]
        parts.append(str(size))
        depth = size
        if (i % 2 == 1 or i == len(channels) - 1) and min(height, width) >= 2:
            layers.append(MaxPool2D(2))
            parts.append("pool")
            height, width = height // 2, width // 2
    layers.append(Flatten())
    dense = _dense_layers(height * width * depth, args, n_out, head)
    sizes = "-".join(str(s) for s in [height * width * depth, *args.hidden, n_out])
    shape = "x".join(map(str, image_shape))
    return layers + dense, f"CNN {shape} conv3x3+BN {'-'.join(parts)}, dense {sizes}"


def _dense_layers(width: int, args: argparse.Namespace, n_out: int,
                  head: str | None) -> list[Any]:
    """``--hidden`` dense layers with ``--activation`` (each followed by ``--dropout``)
    from ``width`` inputs, and the output layer."""
    from numbanet.nn import Dense, Dropout

    layers: list[Any] = []
    for size in args.hidden:
        layers.append(Dense(width, size, activation=args.activation))
        if args.dropout:
            layers.append(Dropout(args.dropout))
        width = size
    layers.append(Dense(width, n_out, activation=head))
    return layers


def _train(argv: Sequence[str]) -> int:
    args = _train_parser().parse_args(argv)
    _model_options(args)
    _check_plotting(args.plot)
    callbacks = _tensorboard_callbacks(args.tensorboard)
    if args.save:
        _check_writable(args.save, "--save")
    _set_threads(args.threads)
    from numbanet.nn import Sequential
    from numbanet.plugins import get_optimizer
    from numbanet.train import fit

    dist = _distributed(args.distributed)
    main = dist is None or dist.is_main()  # rank 0 prints, evaluates and writes files

    spec = _cli_data.data_spec(args, None, args.seed)
    data = _cli_data.load(spec)
    X_train, y_train = _cli_data.split(spec, data, "train")
    X_test, y_test = _cli_data.split(spec, data, "test")
    task = _task(_build_loss(args.loss, data.task), data.task, data.n_classes,
                 data.y.shape[1] if data.y.ndim == 2 else 1)
    loss = task.loss
    try:
        optimizer = get_optimizer(args.optimizer, **(
            _default_lr(args.optimizer) if args.lr is None else {"lr": args.lr}))
    except (TypeError, ValueError) as exc:
        raise _CliError(f"--optimizer {args.optimizer}: {exc}") from None
    try:
        if args.images:
            # The file records the image shape, so evaluate and predict reshape alike.
            spec["image_shape"] = list(X_train.shape[1:])
            layers, kind = _cnn_layers(X_train.shape[1:], args.channels, args, task.n_out,
                                       task.head)
            kind += f" {args.activation}"
            model = Sequential(layers, seed=args.seed, dtype=args.dtype,
                               input_shape=X_train.shape[1:])
        else:
            layers = _dense_layers(X_train.shape[1], args, task.n_out, task.head)
            sizes = "-".join(str(s) for s in [X_train.shape[1], *args.hidden, task.n_out])
            kind = (f"MLP {sizes} {args.activation}" if args.hidden
                    else f"linear model {sizes}")
            model = Sequential(layers, seed=args.seed, dtype=args.dtype)
    except (TypeError, ValueError) as exc:
        raise _CliError(str(exc)) from None
    model.compile(loss=loss, optimizer=optimizer, metrics=task.metrics)

    verbose = 0 if args.quiet or not main else 1
    n_val = _cli_data.validation_count(len(X_train), args.validation_split)
    if task.head:
        kind += f" + {task.head}"
    what = (f"{data.n_classes} classes" if data.task == "classification"
            else f"regression, {y_train.shape[1]} target(s)")
    if verbose:
        print(f"numbanet train: {data.name}, {what} ({len(X_train) - n_val} train / {n_val} "
              f"validation / {len(X_test)} test samples), {kind}, {loss.name}"
              f"{' on one-hot targets' if task.encoding == 'one_hot' else ''}, "
              f"{optimizer.name} lr {optimizer.lr:g}, {args.epochs} epochs of batch "
              f"{args.batch_size}", flush=True)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # A NaN stop is reported below, once; numpy's overflow warnings add nothing.
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            history = fit(model, X_train, task.targets(y_train), epochs=args.epochs,
                          batch_size=args.batch_size, validation_split=args.validation_split,
                          # BatchNorm's batch statistics need two samples: leave out a
                          # last batch of one (your own data can leave one).
                          drop_last=args.images and (len(X_train) - n_val) % args.batch_size == 1,
                          verbose=verbose, clip_norm=args.clip_norm,
                          weight_decay=args.weight_decay, on_nan=args.on_nan,
                          distributed=dist is not None,
                          callbacks=callbacks)
        except (TypeError, ValueError) as exc:  # the data or a setting, checked up front
            raise _CliError(f"cannot train on {data.name}: {exc}") from None
    seconds = time.perf_counter() - started
    nan_stop = getattr(history.stop_reason, "kind", None) in ("nan_loss", "terminate_on_nan")
    if not main:  # every rank holds the same model; rank 0 reports and saves it
        return 1 if nan_stop else 0
    if nan_stop:
        print(f"numbanet train: error: {history.stop_reason}", file=sys.stderr)
    else:
        result = model.evaluate(X_test, task.targets(y_test))
        shown = ", ".join(f"test {k} {v:.4f}" for k, v in result.items())
        print(f"{shown} ({len(X_test)} held-out samples; trained in {seconds:.1f} s)",
              flush=True)
    if args.save:
        if nan_stop:
            print(f"numbanet train: not saving {args.save}: the weights diverged",
                  file=sys.stderr)
        else:
            from numbanet.io import save

            # What evaluate and predict need to find the held-out samples and to read
            # the outputs: the data, the split, the task and the class labels.
            spec.update(task=data.task, classes=data.classes, n_classes=data.n_classes
                        if data.task == "classification" else None)
            metadata = {k: v for k, v in spec.items() if v is not None}
            try:
                save(model, args.save, metadata=metadata)
            except OSError as exc:
                raise _CliError(f"cannot write {args.save!r}: {exc}", code=1) from None
            print(f"saved model to {args.save}", flush=True)
    if args.plot and history.epoch:
        _plot(history, args.plot)
        print(f"wrote curves to {args.plot}", flush=True)
    return 1 if nan_stop else 0


# ------------------------------------------------------------------- evaluate/predict


def _load_model(path: str) -> Any:
    """The model for inference only (``compile=False``): a model trained with a plugin
    optimizer or loss is served without that plugin."""
    from numbanet.io import load

    try:
        return load(path, compile=False)
    except (OSError, ValueError, TypeError) as exc:
        raise _CliError(str(exc), code=1) from None


def _saved_spec(args: argparse.Namespace, model: Any, path: str) -> dict[str, Any]:
    """The data to use: the options, else what the model file recorded; a model saved
    from Python records none, and guessing (the digits) only fails later on a shape."""
    saved = dict(getattr(model, "metadata", None) or {})
    if args.dataset is None and args.data is None and "dataset" not in saved:
        raise _CliError(
            f"{path!r} does not say which data it was trained on (saved from Python?): "
            f"pass --data X.npy|.csv with --targets or --target-column, or --dataset NAME")
    spec = _cli_data.data_spec(args, saved, 0)
    # The model's input shape says whether it takes images (a CNN) and which.
    shape = _image_shape(model)
    spec.update(images=shape is not None, image_shape=shape)
    return spec


def _image_shape(model: Any) -> list[int] | None:
    """``[height, width, channels]`` of a model that takes images, else ``None``."""
    shape = model.input_shape
    return list(shape) if shape is not None and len(shape) == 3 else None


def _check_features(model: Any, X: np.ndarray, where: str) -> None:
    shape = model.input_shape
    if shape is not None and len(shape) != 1:
        if tuple(X.shape[1:]) != tuple(shape):
            raise _CliError(f"the model takes samples of shape {tuple(shape)}, but {where} "
                            f"has {tuple(X.shape[1:])}: pass the data it was trained on "
                            f"(--data/--dataset)")
        return
    expected = model.in_features
    if expected is not None and (X.ndim != 2 or X.shape[1] != expected):
        got = X.shape[1] if X.ndim == 2 else f"shape {X.shape}"
        raise _CliError(f"the model takes {expected} features per sample, but {where} has "
                        f"{got}: pass the data it was trained on (--data/--dataset)")


def _training_loss(model: Any, path: str) -> tuple[Any, list[Any]]:
    """The loss and metrics the model was compiled with, built from
    ``model.training_config``: only the loss's plugin is needed, not the optimizer's."""
    from numbanet.metrics import get_metric
    from numbanet.plugins import get_loss

    config = getattr(model, "training_config", None)
    if config is None:
        raise _CliError(f"{path!r} was saved before compile(): it has no loss to evaluate "
                        f"(compile the model and save it again)")
    meta = config["loss"]
    # JSON has no tuples; hyperparameters such as betas are tuples of floats.
    hyperparams = {k: tuple(v) if isinstance(v, list) else v
                   for k, v in meta["hyperparams"].items()}
    if meta.get("has_weight"):
        with np.load(path, allow_pickle=False) as archive:
            hyperparams["weight"] = archive["loss/weight"]
    try:
        loss = get_loss(meta["id"], **hyperparams)
    except (TypeError, ValueError) as exc:
        raise _CliError(f"{path!r} was trained with the loss {meta['id']!r}, which cannot "
                        f"be built here (is its plugin installed?): {exc}") from None
    metrics = [get_metric(entry["builtin"], **entry.get("kwargs", {}))
               for entry in config.get("metrics", []) if entry.get("builtin")]
    return loss, metrics


def _evaluate(argv: Sequence[str]) -> int:
    args = _evaluate_parser("evaluate").parse_args(argv)
    _set_threads(args.threads)
    model = _load_model(args.model)
    loss, metrics = _training_loss(model, args.model)
    spec = _saved_spec(args, model, args.model)
    data = _cli_data.load(spec)
    X, y = _cli_data.split(spec, data, args.split)
    _check_features(model, X, f"the {data.name} data")
    task = _task(loss, data.task, data.n_classes, y.shape[1] if y.ndim == 2 else 1,
                 n_out=model.out_features)
    # evaluate needs a compiled model; the optimizer is never used here, so the built-in
    # sgd stands in for one that may come from a plugin that is not installed.
    model.compile(loss=loss, optimizer="sgd", metrics=metrics)
    try:
        result = model.evaluate(X, task.targets(y))
    except (TypeError, ValueError) as exc:
        raise _CliError(f"the model does not fit the {data.name} data: {exc}") from None
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items())
    print(f"{data.name} {args.split} split ({len(X)} samples): {shown}")
    return 0


class _Reading(NamedTuple):
    """How ``predict`` reads a model's outputs."""

    kind: str  # "classes" (argmax), "binary" (one logit), "multilabel", "values"
    proba: str | None  # "softmax", "sigmoid", "exp" (log-probabilities), "identity"
    why_no_proba: str  # when proba is None: why, for the error message


def _reading(model: Any) -> _Reading:
    """What the outputs mean, from the model's loss and (for command-line models) the
    task recorded in the file: predictions follow the loss, not the output width."""
    from numbanet.plugins import resolve_loss

    meta = getattr(model, "metadata", None) or {}
    config = getattr(model, "training_config", None)
    task = meta.get("task")
    spec = name = None
    if config is not None:
        name = config["loss"]["id"]
        try:
            _, spec = resolve_loss(name)
        except (TypeError, ValueError):
            spec = None  # a loss plugin that is not installed here
    head = getattr(model.layers[-1], "output_activation", None)
    regression = f"a regression model ({name}) predicts values"
    if task == "regression" or (task is None and spec is None):
        why = regression if spec is not None else "the model's loss is unknown here"
        return _Reading("values", None, why)
    if head == "log_softmax" or (spec is not None and spec.name == "nll"):
        return _Reading("classes", "exp", "")
    if head == "softmax":
        return _Reading("classes", "identity", "")
    activation = spec.output_activation if spec is not None else None
    n_out = model.out_features
    if activation == "softmax":
        return _Reading("classes", "softmax", "")
    if activation == "sigmoid":
        if n_out == 1:
            return _Reading("binary", "sigmoid", "")
        return _Reading("classes" if task == "classification" else "multilabel", "sigmoid", "")
    scores = (f"the outputs of a model trained with {name} are class scores, not "
              f"probabilities")
    if spec is not None and spec.target in ("labels", "labels_or_dense"):
        return _Reading("classes", None, scores)
    if task == "classification":
        return _Reading("classes", None, scores)
    return _Reading("values", None, regression)


def _predict(argv: Sequence[str]) -> int:
    args = _evaluate_parser("predict").parse_args(argv)
    _set_threads(args.threads)
    model = _load_model(args.model)
    reading = _reading(model)
    if args.proba and reading.proba is None:
        raise _CliError(f"--proba: {reading.why_no_proba}; drop --proba")
    if args.input is not None:
        X = _cli_data.read_inputs(args.input)
        where = repr(args.input)
        shape = _image_shape(model)
        if shape is not None:
            X = _cli_data.as_images(X, shape, where)
    else:
        spec = _saved_spec(args, model, args.model)
        data = _cli_data.load(spec)
        X, _ = _cli_data.split(spec, data, args.split)
        where = f"the {data.name} data"
    _check_features(model, X, where)
    try:
        outputs = model.predict(X).astype(np.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise _CliError(str(exc)) from None
    classes = (getattr(model, "metadata", None) or {}).get("classes")
    if args.proba:
        result = _probabilities(outputs, reading)
    elif reading.kind == "classes":
        result = np.argmax(outputs, axis=1)
    elif reading.kind == "binary":
        result = (outputs[:, 0] > 0).astype(np.int64)
    elif reading.kind == "multilabel":
        result = (outputs > 0).astype(np.int64)
    else:
        result = outputs
    if result.ndim == 1 and classes is not None:
        result = np.array([classes[i] for i in result])  # the labels the data used
    if args.output:
        try:
            if args.output.endswith(".npy"):
                np.save(args.output, result)
            else:
                fmt = "%.6g" if result.dtype.kind == "f" else (
                    "%d" if result.dtype.kind in "iu" else "%s")
                np.savetxt(args.output, result.reshape(len(result), -1), fmt=fmt,
                           delimiter=",")
        except OSError as exc:
            raise _CliError(f"cannot write {args.output!r}: {exc}", code=1) from None
        print(f"wrote {len(result)} predictions to {args.output}")
        return 0
    if result.ndim == 1:
        sys.stdout.write("\n".join(str(v) for v in result.tolist()) + "\n")
    elif result.dtype.kind in "iu":
        sys.stdout.write("\n".join(",".join(map(str, row)) for row in result.tolist()) + "\n")
    else:
        sys.stdout.write("\n".join(",".join(f"{v:.6g}" for v in row) for row in result) + "\n")
    return 0


def _probabilities(outputs: np.ndarray, reading: _Reading) -> np.ndarray:
    """Class probabilities from the outputs, one column per class."""
    if reading.proba == "exp":
        return np.exp(outputs)
    if reading.proba == "identity":
        return outputs
    if reading.proba == "sigmoid":
        p = 1.0 / (1.0 + np.exp(-outputs))
        return np.hstack([1.0 - p, p]) if reading.kind == "binary" else p
    z = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------ main


def main(argv: Sequence[str]) -> int:
    """Run ``numbanet train|evaluate|predict``; ``argv[0]`` names the subcommand.

    Returns:
        the exit code: 0 success, 1 an error or a NaN stop, 2 bad options.
    """
    argv = list(argv)
    if not argv or argv[0] not in ("train", "evaluate", "predict"):
        print("usage: numbanet {train,evaluate,predict} ...", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    handler = {"train": _train, "evaluate": _evaluate, "predict": _predict}[command]
    try:
        return handler(rest)
    except _CliError as exc:
        print(f"numbanet {command}: error: {exc}", file=sys.stderr)
        return exc.code
    except SystemExit as exc:  # argparse: --help (0) or bad options (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    except OSError as exc:  # an unreadable input or unwritable output, named by the OS
        print(f"numbanet {command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"numbanet {command}: interrupted", file=sys.stderr)
        return 130
