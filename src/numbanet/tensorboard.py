"""The :class:`TensorBoard` callback: training curves, learning rate, weight and gradient
histograms and the gradient norm, written as TensorBoard event files.

Files are written by the ``tensorboard`` package's own event-file writer
(``tensorboard.summary.writer.event_file_writer.EventFileWriter``, the one PyTorch's
``SummaryWriter`` uses) with its summary protocol buffers; numbanet encodes nothing by
hand. Needs ``pip install "numbanet[tensorboard]"``; view with ``tensorboard --logdir
LOG_DIR``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import numpy as np

from numbanet._validation import AnyOf, Boolean, Integer, OneOf, Optional, check_arg
from numbanet.callbacks import Callback

__all__ = ["TensorBoard"]

_EXTRA = 'pip install "numbanet[tensorboard]"'

# Environment variables in which MPI launchers (Open MPI, MPICH/Intel MPI, PMIx,
# MVAPICH) give each process its rank.
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


def _tensorboard() -> tuple[Any, Any, Any]:
    """``(EventFileWriter, summary_pb2, Event)``, or an ImportError naming the extra."""
    try:
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError as exc:
        raise ImportError(f"numbanet.TensorBoard needs the tensorboard package, which could "
                          f"not be imported ({exc}): {_EXTRA}") from exc
    return EventFileWriter, summary_pb2, Event


def _process_rank() -> int:
    """This process's rank in a distributed run (0 when there is none)."""
    # numbanet.distributed when the run initialised it (never initialising MPI here),
    # else the launcher's variables.
    distributed = sys.modules.get("numbanet.distributed")
    if distributed is not None and distributed.initialized():
        return int(distributed.rank())
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


class TensorBoard(Callback):
    """Write training logs that TensorBoard displays (Keras's callback of the same name).

    Layout, as Keras writes it (so training and validation curves share a chart)::

        log_dir/train/       epoch_loss, epoch_<metric>, epoch_learning_rate,
                             epoch_gradient_norm; batch_loss, batch_learning_rate,
                             batch_gradient_norm; weights/<param>, gradients/<param>
        log_dir/validation/  epoch_loss, epoch_<metric>

    Epoch summaries are indexed by the epoch (counted over the model's lifetime, so a
    resumed model continues its curves), batch summaries by the optimizer's step count.

    Args:
        log_dir: the directory of the event files (created if missing).
        update_freq: ``"epoch"`` writes once per epoch; ``"batch"`` also writes the step
            loss and learning rate after every step; an int ``N`` after every ``N``-th
            step (of the optimizer's count).
        histogram_freq: every this many epochs write a histogram of every parameter
            (``weights/0.weight``, ...); 0 writes none.
        write_grads: with ``histogram_freq``, also a histogram of every parameter's
            gradient from the last step of the epoch (``gradients/0.weight``).
        gradient_norm: log the global L2 norm of the gradient backward produced
            (before ``clip_norm`` scales it; after ``clip_value``, which edits it):
            ``epoch_gradient_norm`` is the mean over the epoch's steps, and with a
            per-batch ``update_freq`` ``batch_gradient_norm`` each logged step. Costs
            one pass over the gradients per step.
        histogram_bins: buckets per histogram.
        flush_secs: how often the writer flushes pending events (it also flushes at the
            end of every epoch and of training).
        rank: this process's rank in a distributed run; only rank 0 writes. ``None``
            detects it: :func:`numbanet.distributed.rank` once
            :func:`numbanet.distributed.init` ran, else the MPI launcher's environment
            variables (Open MPI, MPICH, PMIx, MVAPICH); 0 in a single process.

    Example:
        >>> import numbanet as nbn
        >>> X, y = nbn.datasets.make_blobs(200, n_features=4, centers=3, seed=0)
        >>> model = nbn.Sequential([nbn.Dense(4, 16, activation="relu"), nbn.Dense(16, 3)])
        >>> _ = model.compile("cross_entropy", "adam", metrics=["accuracy"])
        >>> tb = nbn.TensorBoard("runs/blobs", update_freq=10, histogram_freq=1)
        >>> history = model.fit(X, y, epochs=3, validation_split=0.2, verbose=0,
        ...                     callbacks=[tb])  # doctest: +SKIP

    Raises:
        ImportError: at the start of training, when ``tensorboard`` is not installed.
    """

    def __init__(self, log_dir: str | os.PathLike[str] = "logs",
                 update_freq: str | int = "epoch", histogram_freq: int = 0,
                 write_grads: bool = False, gradient_norm: bool = False,
                 histogram_bins: int = 30, flush_secs: float = 30.0,
                 rank: int | None = None) -> None:
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"TensorBoard: log_dir must be a path, got {type(log_dir).__name__}")
        where = "TensorBoard"
        self.log_dir = os.fspath(log_dir)
        self.update_freq = check_arg("update_freq", update_freq,
                                     AnyOf(OneOf("epoch", "batch"), Integer(min=1)),
                                     where=where)
        self.histogram_freq = check_arg("histogram_freq", histogram_freq, Integer(min=0),
                                        where=where)
        self.write_grads = check_arg("write_grads", write_grads, Boolean(), where=where)
        self.gradient_norm = check_arg("gradient_norm", gradient_norm, Boolean(), where=where)
        self.histogram_bins = check_arg("histogram_bins", histogram_bins, Integer(min=1),
                                        where=where)
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)) or not (
            0 < flush_secs < math.inf
        ):
            raise ValueError(f"TensorBoard: flush_secs must be a positive number of seconds, "
                             f"got {flush_secs!r}")
        self.flush_secs = float(flush_secs)
        self.rank = check_arg("rank", rank, Optional(Integer(min=0)), where=where)
        self._every = 1 if self.update_freq == "batch" else (
            None if self.update_freq == "epoch" else int(self.update_freq))
        self._writers: dict[str, Any] = {}
        self._proto: tuple[Any, Any, Any] | None = None
        self._norms: list[float] = []
        self._partials: np.ndarray | None = None
        self._size = 0
        self._active = False
        if self._every is not None or self.gradient_norm:
            # Bound per instance: fit calls per-step hooks only for callbacks that use
            # them, so an epoch-only TensorBoard costs a step nothing.
            self.on_train_batch_end = self._on_step  # type: ignore[method-assign]

    # -- writing -------------------------------------------------------------------------
    @property
    def writes(self) -> bool:
        """Whether this process writes (rank 0 only)."""
        return (_process_rank() if self.rank is None else self.rank) == 0

    def _writer(self, run: str) -> Any:
        writer = self._writers.get(run)
        if writer is None:
            EventFileWriter, _, _ = self._proto or _tensorboard()
            path = os.path.join(self.log_dir, run)
            os.makedirs(path, exist_ok=True)
            writer = self._writers[run] = EventFileWriter(path, flush_secs=self.flush_secs)
        return writer

    def _emit(self, run: str, step: int, values: list[Any]) -> None:
        if not values:
            return
        assert self._proto is not None
        _, summary_pb2, Event = self._proto
        self._writer(run).add_event(Event(wall_time=time.time(), step=int(step),
                                          summary=summary_pb2.Summary(value=values)))

    def _scalar(self, tag: str, value: float) -> Any:
        assert self._proto is not None
        return self._proto[1].Summary.Value(tag=tag, simple_value=float(value))

    def _histogram(self, tag: str, values: np.ndarray) -> Any:
        """A histogram summary of the finite entries of ``values``."""
        assert self._proto is not None
        summary_pb2 = self._proto[1]
        flat = np.asarray(values, dtype=np.float64).ravel()
        finite = flat[np.isfinite(flat)]
        if finite.size == 0:
            finite = np.zeros(1)
        counts, edges = np.histogram(finite, bins=self.histogram_bins)
        histo = summary_pb2.HistogramProto(
            min=float(finite.min()), max=float(finite.max()), num=float(finite.size),
            sum=float(finite.sum()), sum_squares=float(np.dot(finite, finite)),
            bucket_limit=edges[1:].tolist(), bucket=counts.astype(np.float64).tolist())
        return summary_pb2.Summary.Value(tag=tag, histo=histo)

    def _flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    # -- hooks ---------------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._active = self.writes
        if self._active:
            self._proto = _tensorboard()
            self._writer("train")
        self._norms = []

    def _grad_norm(self) -> float:
        from numbanet.kernels.reductions import sum_of_squares, sum_partials

        grads = self.model.flat_gradients
        if self._partials is None or self._size != grads.shape[0]:
            self._partials, self._size = sum_partials(grads.shape[0]), grads.shape[0]
        return math.sqrt(sum_of_squares(grads, self._partials))

    def _on_step(self, step: int, logs: dict[str, Any] | None = None) -> None:
        if not self._active:
            return
        norm = self._grad_norm() if self.gradient_norm else None
        if norm is not None:
            self._norms.append(norm)
        every = self._every
        count = int(self.model.optimizer.step_count)
        if every is None or count % every:
            return
        values = [self._scalar("batch_loss", (logs or {}).get("loss", math.nan)),
                  self._scalar("batch_learning_rate", self.model.optimizer.lr)]
        if norm is not None:
            values.append(self._scalar("batch_gradient_norm", norm))
        self._emit("train", count, values)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._active:
            return
        logs = logs or {}
        train, validation = [], []
        for key, value in logs.items():
            if key == "lr":
                train.append(self._scalar("epoch_learning_rate", value))
            elif key.startswith("val_"):
                validation.append(self._scalar(f"epoch_{key[4:]}", value))
            else:
                train.append(self._scalar(f"epoch_{key}", value))
        if self._norms:
            train.append(self._scalar("epoch_gradient_norm", float(np.mean(self._norms))))
            self._norms = []
        if self.histogram_freq and (epoch + 1) % self.histogram_freq == 0:
            for param in self.model.parameters():
                train.append(self._histogram(f"weights/{param.name}", param.value))
                if self.write_grads:
                    train.append(self._histogram(f"gradients/{param.name}", param.grad))
        self._emit("train", epoch, train)
        self._emit("validation", epoch, validation)
        self._flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def __repr__(self) -> str:
        return (f"TensorBoard({self.log_dir!r}, update_freq={self.update_freq!r}, "
                f"histogram_freq={self.histogram_freq})")
