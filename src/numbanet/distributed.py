"""Data-parallel training over MPI: each process trains on its slice of every batch.

Start the same script on several processes with an MPI launcher (``mpiexec -n 4 python
train.py``, Slurm's ``srun``) and pass ``distributed=True`` to ``fit``::

    model.fit(X, y, epochs=10, batch_size=256, distributed=True)

Every process (*rank*) holds the whole model. ``batch_size`` is the **global** batch: at
each step every rank runs forward and backward on its own slice of the same global batch,
one MPI all-reduce sums the flat gradient buffer (the :class:`~numbanet.optim.AllReduce`
slot of the gradient pipeline, before clipping and weight decay), and every rank then
makes the same optimizer update. Parameters, buffers, optimizer state and the generator
start from rank 0 (broadcast), the shuffled order is drawn from rank 0's generator, so
all ranks keep identical weights and they equal one process's ``fit`` with the same seed
and ``batch_size`` up to the order of floating-point additions. Step losses, metrics and
validation are reduced over the ranks, so every rank logs the numbers one process would;
only rank 0 prints and writes files. Layers and kernels never know about MPI.

Which rows each rank reads (``fit(shard=...)``):

* ``"global"`` (default): every rank passes the same ``X, y``; step ``k``'s global batch
  (positions ``[k * batch_size, (k + 1) * batch_size)`` of the epoch's order) is cut into
  ``size()`` contiguous slices, one per rank (:class:`numbanet.sampling.ShardedBatchSampler`).
* ``"local"``: each rank passes its own rows (data that never fits on one machine). Rank
  ``r`` takes ``batch_size // size()`` of its rows per step (the first ``batch_size %
  size()`` ranks one more) in its own shuffled order; an epoch ends when every rank has
  seen all its rows (a rank that runs out first contributes nothing to the last steps).

Faults: after :func:`init`, an uncaught exception on any rank prints its traceback and
ends every rank (``MPI_Abort``) instead of leaving the others waiting in a collective
forever; ``fit(distributed=True)`` does the same for an exception inside training, even
when the caller catches it, except for errors every rank raises at the same point (a NaN
loss with ``on_nan="raise"``, bad arguments). Resuming: rank 0's
:class:`~numbanet.ModelCheckpoint` file holds everything; load it on every rank (any
number of them) and call ``fit`` again.

Threads: :func:`init` gives each rank its share of the machine's cores
(:func:`numbanet.threads.use_process_share`) unless ``NUMBANET_NUM_THREADS`` or
:func:`numbanet.set_num_threads` chose.

mpi4py is imported on first use; without it every function here raises an
``ImportError`` that names the extra to install (``pip install "numbanet[mpi]"``).

Example:
    >>> from numbanet import distributed
    >>> distributed.launcher_size()     # 1 unless started by mpiexec/srun
    1
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import numpy as np

from numbanet.optim.pipeline import AllReduce, GradientPipeline
from numbanet.sampling import BatchSampler, LocalShardSampler, ShardedBatchSampler
from numbanet.threads import use_process_share

__all__ = [
    "EXTRA",
    "DataParallel",
    "abort",
    "allreduce_",
    "barrier",
    "broadcast_",
    "init",
    "initialized",
    "is_main",
    "launcher_size",
    "rank",
    "size",
]

#: What to install for this module.
EXTRA = 'pip install "numbanet[mpi]"'

# Environment variables in which MPI launchers (Open MPI, MPICH/Intel MPI/Slurm PMI,
# MVAPICH) give the number of processes they started.
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")

_comm: Any = None  # MPI.COMM_WORLD once init() ran
_MPI: Any = None


def _mpi() -> Any:
    """The ``mpi4py.MPI`` module (importing it initialises MPI), or an ImportError naming
    the extra."""
    global _MPI
    if _MPI is None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise ImportError(
                f"numbanet.distributed needs mpi4py and an MPI library, which could not be "
                f"imported ({exc}): {EXTRA} (or pip install mpi4py against your system's "
                f"MPI)") from exc
        _MPI = MPI
    return _MPI


# ------------------------------------------------------------------------ the world


def launcher_size() -> int:
    """How many processes the MPI launcher that started this one started (1 without a
    launcher). Reads the launcher's environment variables; imports nothing, starts
    nothing, so it is safe to call to decide whether to use MPI at all."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return max(1, int(value))
    return 1


def init() -> None:
    """Initialise MPI (``COMM_WORLD``) once; later calls do nothing.

    Works in a plain ``python`` process too (a world of one rank). In a world of more
    than one rank it also:

    * installs a ``sys.excepthook`` that prints an uncaught exception's traceback, then
      ends every rank (``MPI_Abort``), so one failing rank never leaves the others hanging;
    * gives this process ``cores / ranks on this machine`` threads, unless
      ``NUMBANET_NUM_THREADS`` or :func:`numbanet.set_num_threads` chose.

    Raises:
        ImportError: mpi4py (or the MPI library) is missing; the message names the extra.
    """
    global _comm
    if _comm is not None:
        return
    MPI = _mpi()
    if not MPI.Is_initialized():  # mpi4py.rc.initialize was turned off by the user
        MPI.Init_thread()
    comm = MPI.COMM_WORLD
    _comm = comm
    if comm.Get_size() > 1:
        _install_excepthook()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            use_process_share(node.Get_size())
        finally:
            node.Free()


def initialized() -> bool:
    """Whether :func:`init` ran in this process (never initialises anything)."""
    return _comm is not None


def _world() -> Any:
    init()
    return _comm


def rank() -> int:
    """This process's rank in ``COMM_WORLD`` (0 in a single process); calls :func:`init`."""
    return int(_world().Get_rank())


def size() -> int:
    """The number of processes in ``COMM_WORLD``; calls :func:`init`."""
    return int(_world().Get_size())


def is_main() -> bool:
    """Whether this is rank 0, the rank that prints and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here."""
    _world().Barrier()


def _check_buffer(where: str, array: Any) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{where}: array must be a numpy.ndarray, got {type(array).__name__}")
    if array.dtype.kind not in "iufc":
        raise TypeError(f"{where}: array must hold numbers, got dtype {array.dtype}")
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError(f"{where}: array must be C-contiguous and writeable (it is "
                         f"changed in place); pass numpy.ascontiguousarray(array)")
    return array


def allreduce_(array: np.ndarray) -> np.ndarray:
    """Replace ``array`` on every rank by its elementwise sum over all ranks, in place.

    Every rank must call it with an array of the same shape and dtype. Returns ``array``.

    Example:
        >>> import numpy as np
        >>> from numbanet import distributed
        >>> g = np.ones(3)
        >>> distributed.allreduce_(g) / distributed.size()   # doctest: +SKIP
        array([1., 1., 1.])
    """
    array = _check_buffer("allreduce_", array)
    comm = _world()
    if comm.Get_size() > 1:
        comm.Allreduce(_MPI.IN_PLACE, array)
    return array


def broadcast_(array: np.ndarray, root: int = 0) -> np.ndarray:
    """Overwrite ``array`` on every rank with rank ``root``'s, in place; returns it."""
    array = _check_buffer("broadcast_", array)
    comm = _world()
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)):
        raise TypeError(f"broadcast_: root must be an int rank, got {type(root).__name__}")
    if not 0 <= root < comm.Get_size():
        raise ValueError(f"broadcast_: root must be a rank in [0, {comm.Get_size()}), got {root}")
    if comm.Get_size() > 1:
        comm.Bcast(array, root=int(root))
    return array


def abort(exc: BaseException | None = None, code: int = 1) -> NoReturn:
    """Print ``exc``'s traceback (if given) naming this rank, then end every rank now.

    For errors that only some ranks see: the others may be waiting in a collective, and
    MPI offers no way to reach them but ``MPI_Abort``. The launcher reports ``code``.
    """
    comm = _world()
    where = f"rank {comm.Get_rank()} of {comm.Get_size()}"
    if exc is not None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        text += (f"numbanet.distributed: {where} failed with {type(exc).__name__}: {exc}; "
                 f"ending every rank\n")
    else:
        text = f"numbanet.distributed: {where} ended the run\n"
    # One write, then a moment for the launcher to forward it: MPI_Abort tears the job
    # down at once, and under load mpiexec dropped the last line of a two-part message.
    sys.stderr.write(text)
    sys.stderr.flush()
    sys.stdout.flush()
    time.sleep(0.25)
    comm.Abort(code)
    raise SystemExit(code)  # pragma: no cover - Abort does not return


_previous_excepthook: Callable[..., Any] | None = None


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    if exc is None or issubclass(exc_type, SystemExit):
        return (_previous_excepthook or sys.__excepthook__)(exc_type, exc, tb)
    exc.__traceback__ = tb
    abort(exc)


def _install_excepthook() -> None:
    global _previous_excepthook
    if sys.excepthook is not _excepthook:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _excepthook


# ------------------------------------------------------------------ batch samplers


def _share_generator(comm: Any, rng: np.random.Generator) -> None:
    """Give every rank rank 0's generator state (the epoch's order comes from it)."""
    rng.bit_generator.state = comm.bcast(rng.bit_generator.state, root=0)


def _split_generator(rng: np.random.Generator, rank: int) -> None:
    """Move rank ``rank``'s generator to its own stream (jumped ``rank`` times), so that
    dropout masks differ between ranks; rank 0 stays on the shared stream, which is what
    a checkpoint saves."""
    jumped = getattr(rng.bit_generator, "jumped", None)
    if rank and jumped is not None:
        rng.bit_generator.state = jumped(rank).state


class _GlobalShard(ShardedBatchSampler):
    """The rank's slice of every global batch, in rank 0's shuffled order."""

    def __init__(self, comm: Any, n: int, batch_size: int, shuffle: bool,
                 drop_last: bool = False) -> None:
        super().__init__(n, batch_size, rank=comm.Get_rank(), size=comm.Get_size(),
                         shuffle=shuffle, drop_last=drop_last)
        self.comm = comm

    def new_epoch(self, rng: np.random.Generator) -> None:
        _share_generator(self.comm, rng)
        super().new_epoch(rng)  # the same order on every rank
        _split_generator(rng, self.rank)


class _LocalShard(LocalShardSampler):
    """The rank's own rows, in its own shuffled order."""

    def __init__(self, comm: Any, n: int, batch_size: int, steps: int, shuffle: bool) -> None:
        super().__init__(n, batch_size, steps, shuffle=shuffle)
        self.comm, self.rank = comm, comm.Get_rank()

    def new_epoch(self, rng: np.random.Generator) -> None:
        _share_generator(self.comm, rng)
        _split_generator(rng, self.rank)
        super().new_epoch(rng)


class _AgreedStream:
    """A stream loader whose epoch ends when every rank's stream has ended: each step the
    ranks agree whether any still has a batch; one that has none takes part empty."""

    def __init__(self, comm: Any, loader: Any) -> None:
        self.comm, self.loader = comm, loader
        self.steps = None
        self.weights = None
        self._flag = np.zeros(1)
        self._empty = (np.empty((0,)), None)

    def __len__(self) -> int:
        raise TypeError("a distributed stream has no length")

    def new_epoch(self, rng: np.random.Generator) -> None:
        _share_generator(self.comm, rng)
        _split_generator(rng, self.comm.Get_rank())
        self.loader.new_epoch(rng)

    def __iter__(self) -> Iterator[tuple[np.ndarray, Any]]:
        batches = iter(self.loader)
        flag = self._flag
        while True:
            batch = next(batches, None)
            flag[0] = batch is not None
            self.comm.Allreduce(_MPI.IN_PLACE, flag)
            if flag[0] == 0:
                return
            yield batch if batch is not None else self._empty


# --------------------------------------------------------------------- the gradient


class _SumGradients(AllReduce):
    """The :class:`~numbanet.optim.AllReduce` slot of a data-parallel fit.

    Each rank's gradient is the mean over its slice (its loss divided by its *divisor*
    ``d_r``: rows, elements or summed weights); the global batch's gradient is
    ``sum_r d_r * g_r / D`` with ``D = sum_r d_r``. When every rank has the same ``d_r``
    the weights are applied after the sum, through the pending scale (no pass over the
    buffer); otherwise each rank scales its buffer first. ``D`` is known locally in most
    runs (the fit loop sets it); when it is not, it is summed by a non-blocking all-reduce
    that overlaps the gradient's.
    """

    def __init__(self, comm: Any) -> None:
        super().__init__(reduce_=self._allreduce, divisor=1.0)
        self.comm = comm
        self.local = 1.0  # this rank's d_r at this step
        self.total: float | None = 1.0  # D, or None: sum it
        self.uniform = True  # every rank has this d_r
        self.last_total = 1.0
        self._count = np.zeros(1)

    repr_fields = ()

    def _allreduce(self, grads: np.ndarray) -> None:
        self.comm.Allreduce(_MPI.IN_PLACE, grads)

    def update(self, grads: np.ndarray, params: np.ndarray, scale: float) -> float:
        local, total = self.local, self.total
        factor = 1.0
        if local == 0.0:
            grads[...] = 0  # an empty slice (or zero weight) adds nothing
        elif self.uniform and total is not None:
            if scale != 1.0:
                grads *= scale
            factor = local
        elif scale * local != 1.0:
            grads *= scale * local
        if total is None:
            self._count[0] = local
            request = self.comm.Iallreduce(_MPI.IN_PLACE, self._count)
            self.comm.Allreduce(_MPI.IN_PLACE, grads)
            request.Wait()
            total = float(self._count[0])
        else:
            self.comm.Allreduce(_MPI.IN_PLACE, grads)
        self.last_total = total
        # A global batch whose weights sum to zero teaches nothing (as in the loss host).
        return factor / total if total > 0 else 0.0


def _weighted(targets: Any) -> bool:
    return hasattr(targets, "weight") and hasattr(targets, "targets")


def _divisor_kind(loss: Any) -> str:
    """What the loss's reduction divides a batch's summed loss by: ``"sum"`` (nothing:
    reduction sum/none), ``"rows"``, ``"elements"`` (rows x outputs), or ``"general"``
    (ignored labels or class weights: computed from the targets). A loss that is not a
    numbanet :class:`~numbanet.losses.Loss` is taken to average over rows."""
    reduction = getattr(loss, "reduction", "mean")
    if reduction in ("sum", "none"):
        return "sum"
    spec = getattr(loss, "spec", None)
    over = "rows"
    if spec is not None:
        over = spec.extra_reductions.get(reduction, spec.mean_over)
    if over == "elements":
        return "elements"
    if over == "weights" and getattr(loss, "weight", None) is not None:
        return "general"
    if getattr(loss, "ignore_label", None) is not None:
        return "general"  # "rows" again when no label is ignored (checked on the data)
    return "rows"


def _batch_divisor(loss: Any, targets: Any, k: int) -> float:
    """``d`` for one batch, as the loss host computes it (for the ``"general"`` kind and
    sample-weighted targets)."""
    weight = None
    if _weighted(targets):
        targets, weight = targets.targets, targets.weight
    spec = getattr(loss, "spec", None)
    reduction = getattr(loss, "reduction", "mean")
    over = spec.extra_reductions.get(reduction, spec.mean_over) if spec is not None else "rows"
    labels = targets.ndim == 1
    ignore = getattr(loss, "ignore_label", None) if labels else None
    class_weight = getattr(loss, "weight", None) if (labels and over == "weights") else None
    rows = targets.shape[0]
    if weight is None:
        if over == "elements":
            return float(rows * k)
        keep = targets != ignore if ignore is not None else None
        kept = targets if keep is None else targets[keep]
        if class_weight is not None:
            return float(np.sum(class_weight[kept]))
        return float(kept.shape[0])
    if labels:
        keep = targets != ignore if ignore is not None else slice(None)
        w = weight[keep]
        if class_weight is not None:
            w = w * class_weight[targets[keep]]
        total = float(np.sum(w))
    else:
        total = float(np.sum(weight))
    return total * k if over == "elements" else total


def _contains(targets: Any, label: int) -> bool:
    t = targets.targets if _weighted(targets) else targets
    return bool(t.ndim == 1 and t.dtype.kind in "iu" and (t == label).any())


# ----------------------------------------------------------------------- DataParallel


def _even_split(total: int, parts: int, index: int) -> tuple[int, int]:
    return total * index // parts, total * (index + 1) // parts


class DataParallel:
    """What one ``fit(distributed=True)`` call plugs into the training loop.

    The loop asks it for: the batch sampler (:meth:`sampler`, :meth:`stream`), the
    all-reduce stage of the gradient pipeline (:meth:`pipeline`), the global result of a
    step (:meth:`train_batch`), the outputs of every row for end-of-epoch metrics
    (:meth:`outputs`) and the end-of-epoch synchronisation (:meth:`end_epoch`). Nothing
    else in the loop knows about MPI.

    Args:
        shard: ``"global"`` (every rank passes the same data) or ``"local"``.
    """

    def __init__(self, shard: str = "global") -> None:
        init()
        self.comm = _comm
        self.rank, self.size = int(self.comm.Get_rank()), int(self.comm.Get_size())
        self.shard = shard
        self.is_main = self.rank == 0
        self.stage = _SumGradients(self.comm)
        self.samples = 0  # training samples over all ranks
        self._kind = "rows"
        self._k = 0  # outputs per row, read from the model when first needed
        self._loss: Any = None
        self._sampler: BatchSampler | None = None
        self._rows_of: np.ndarray | None = None  # local shard: every rank's n and batch
        self._scalars = np.zeros(2)
        self._flag = np.zeros(1)
        self._drift_warned = False

    # -- agreement ----------------------------------------------------------------
    def agree(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on every rank; if it raises on any, raise on all.

        The failing ranks raise their own error; the others a ``RuntimeError`` naming
        the first failing rank, so no rank goes on to wait for the others.
        """
        error: BaseException | None = None
        result = None
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # re-raised below, on every rank
            error = exc
        failed = self.comm.allgather(None if error is None else f"{type(error).__name__}: "
                                                                 f"{error}")
        if error is not None:
            raise error
        bad = [(r, msg) for r, msg in enumerate(failed) if msg is not None]
        if bad:
            r, msg = bad[0]
            raise RuntimeError(f"rank {r} of {self.size} failed: {msg}")
        return result

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (a callback stopping training on one)."""
        self._flag[0] = bool(flag)
        self.comm.Allreduce(_MPI.IN_PLACE, self._flag)
        return bool(self._flag[0])

    def _same_everywhere(self, what: str, values: list[int], hint: str) -> None:
        mine = np.asarray(values, dtype=np.int64)
        low, high = mine.copy(), mine.copy()
        self.comm.Allreduce(_MPI.IN_PLACE, low, op=_MPI.MIN)
        self.comm.Allreduce(_MPI.IN_PLACE, high, op=_MPI.MAX)
        if (low != high).any():
            raise ValueError(f"fit(distributed=True): the ranks disagree on {what} (from "
                             f"{low.tolist()} to {high.tolist()}); {hint}")

    # -- start ----------------------------------------------------------------------
    def synchronize(self, model: Any) -> None:
        """Start every rank from rank 0's model: parameters, buffers, optimizer state and
        generator. Ranks that resume from different epochs or optimizer steps (different
        checkpoints) are refused."""
        optimizer = model.optimizer
        slots = list(getattr(optimizer, "slots", {}).values())
        self._same_everywhere(
            "(epochs completed, optimizer steps, parameters, optimizer slots)",
            [int(model.epochs_completed), int(getattr(optimizer, "step_count", 0)),
             int(model.flat_parameters.size), len(slots)],
            "build the same model on every rank, or load the same checkpoint on every rank")
        self.comm.Bcast(model.flat_parameters, root=0)
        buffers = getattr(model, "flat_buffers", None)
        if buffers is not None and buffers.size:
            self.comm.Bcast(buffers, root=0)
        for slot in slots:
            self.comm.Bcast(slot, root=0)
        _share_generator(self.comm, model.rng)

    def sampler(self, model: Any, X: Any, targets: Any, batch_size: int,
                shuffle: bool, drop_last: bool = False) -> BatchSampler:
        """The batch sampler of this rank: its slice of each global batch (``"global"``)
        or its own rows (``"local"``). Also decides how gradients are weighted.
        ``drop_last`` leaves out the short last global batch (``"global"`` only)."""
        n = int(X.shape[0])
        kind = _divisor_kind(model.loss)
        ignore = getattr(model.loss, "ignore_label", None)
        if kind == "general" and ignore is not None and getattr(model.loss, "weight",
                                                                  None) is None:
            # Cross-entropy always has an ignore label; it matters only if it occurs.
            kind = "general" if self.any(_contains(targets, ignore)) else "rows"
        self._kind = kind
        if self.shard == "global":
            self._same_everywhere(
                "the training data (samples, checksum of the targets)",
                [n, zlib.crc32(np.ascontiguousarray(targets).view(np.uint8))],
                "with shard='global' every rank passes the same X and y; pass "
                "shard='local' if each rank holds its own rows")
            batch_size = min(batch_size, n)
            self.samples = n
            sampler: BatchSampler = _GlobalShard(self.comm, n, batch_size, shuffle,
                                                 drop_last)
        else:
            if drop_last:
                raise ValueError("fit(distributed=True, shard='local', drop_last=True): each "
                                 "rank's rows end at a different step, so there is no "
                                 "common last batch to drop; use shard='global', or give "
                                 "every rank a multiple of its batch rows")
            if batch_size < self.size:
                raise ValueError(f"fit(distributed=True, shard='local'): batch_size "
                                 f"{batch_size} is smaller than the {self.size} ranks; "
                                 f"each rank needs at least one row per step")
            local = batch_size // self.size + (self.rank < batch_size % self.size)
            counts = np.asarray(self.comm.allgather((n, local)), dtype=np.int64)
            self.samples = int(counts[:, 0].sum())
            steps = int(max(-(-int(c) // int(b)) for c, b in counts))
            self._rows_of = counts
            sampler = _LocalShard(self.comm, n, local, steps, shuffle)
        self._sampler = sampler
        return sampler

    def stream(self, model: Any, loader: Any) -> Any:
        """Wrap this rank's stream of batches (each rank reads its own) so that every
        rank takes the same number of steps: an epoch ends when all streams have."""
        # Each rank's rows at a step are known to it alone: always sum the divisors.
        self._kind = "sum" if _divisor_kind(model.loss) == "sum" else "general"
        self._sampler = None
        return _AgreedStream(self.comm, loader)

    def pipeline(self, pipeline: GradientPipeline) -> GradientPipeline:
        """``pipeline`` with the all-reduce in its :class:`~numbanet.optim.AllReduce`
        slot: where an empty ``AllReduce()`` stands, else first."""
        stages = list(pipeline.transforms)
        slots = [i for i, t in enumerate(stages) if isinstance(t, AllReduce)]
        if any(stages[i].reduce_ is not None for i in slots):
            raise ValueError("fit(distributed=True) fills the pipeline's AllReduce slot "
                             "itself; pass AllReduce() without reduce_, or leave it out")
        if slots:
            stages[slots[0]] = self.stage
        else:
            stages.insert(0, self.stage)
        return GradientPipeline(*stages)

    # -- steps ----------------------------------------------------------------------
    def _plan(self, step: int, rows: int, targets: Any) -> None:
        """Set this step's divisors on the all-reduce stage."""
        stage, kind = self.stage, self._kind
        if kind == "sum":
            stage.local, stage.total, stage.uniform = (1.0 if rows else 0.0), 1.0, True
            return
        if kind == "general" or _weighted(targets):
            stage.local = _batch_divisor(self._loss, targets, self._k) if rows else 0.0
            stage.total, stage.uniform = None, False
            return
        scale = self._k if kind == "elements" else 1
        sampler = self._sampler
        if isinstance(sampler, ShardedBatchSampler):
            start, stop = sampler.global_positions(step)
            total = stop - start
            stage.uniform = total % self.size == 0
        elif self._rows_of is not None:
            n, b = self._rows_of[:, 0], self._rows_of[:, 1]
            each = np.clip(n - step * b, 0, b)
            total = int(each.sum())
            stage.uniform = bool((each == each[0]).all())
        else:
            stage.local, stage.total, stage.uniform = float(rows * scale), None, False
            return
        stage.local, stage.total = float(rows * scale), float(total * scale)

    def train_batch(self, model: Any, step: int, X: np.ndarray, targets: Any,
                    pipeline: Callable[[Any], float]) -> tuple[float, int]:
        """One data-parallel step: this rank's forward and backward, the gradient
        all-reduce (in ``pipeline``), the update. Returns the global batch's loss and
        rows, the same on every rank."""
        self._loss = model.loss
        if not self._k:
            self._k = int(model.out_features)
        rows = int(X.shape[0])
        self._plan(step, rows, targets)
        stage = self.stage
        if rows:
            loss = float(model.train_batch(X, targets, pipeline))
        else:
            # Nothing to run forward: take part in the all-reduce with zeros and make
            # the same update as everyone else.
            scale = float(pipeline(model))
            model.optimizer.step(model.flat_parameters, model.flat_gradients, scale)
            loss = 0.0
        total = stage.last_total
        if not rows or stage.local == 0.0:
            share = 0.0
        elif self._kind == "sum":
            share = loss
        else:
            share = loss * stage.local / total if total > 0 else 0.0
        scalars = self._scalars
        scalars[0], scalars[1] = share, rows
        self.comm.Allreduce(_MPI.IN_PLACE, scalars)
        return float(scalars[0]), int(scalars[1])

    # -- end of epoch -------------------------------------------------------------------
    def end_epoch(self, model: Any) -> None:
        """Average layer buffers (BatchNorm's running statistics, which each rank updates
        from its own slice) and make sure every rank still holds rank 0's parameters."""
        buffers = getattr(model, "flat_buffers", None)
        if buffers is not None and buffers.size:
            self.comm.Allreduce(_MPI.IN_PLACE, buffers)
            buffers *= 1.0 / self.size
        params = model.flat_parameters
        check = np.array([zlib.crc32(params.view(np.uint8))], dtype=np.int64)
        low, high = check.copy(), check.copy()
        self.comm.Allreduce(_MPI.IN_PLACE, low, op=_MPI.MIN)
        self.comm.Allreduce(_MPI.IN_PLACE, high, op=_MPI.MAX)
        if low[0] != high[0]:
            # An MPI library whose all-reduce rounds differently on different ranks:
            # bring everyone back to rank 0's weights rather than drift apart.
            self.comm.Bcast(params, root=0)
            if self.is_main and not self._drift_warned:
                warnings.warn("numbanet.distributed: the ranks' parameters drifted apart "
                              "(the MPI all-reduce does not give every rank the same "
                              "sum); rank 0's were broadcast", RuntimeWarning,
                              stacklevel=2)
            self._drift_warned = True

    def _gather(self, local: np.ndarray, counts: np.ndarray) -> np.ndarray:
        local = np.ascontiguousarray(local)
        per_row = int(np.prod(local.shape[1:], dtype=np.int64))
        full = np.empty((int(counts.sum()), *local.shape[1:]), dtype=local.dtype)
        self.comm.Allgatherv(local, [full, (counts * per_row).tolist()])
        return full

    def outputs(self, X: Any, targets: Any, weight: np.ndarray | None,
                predict: Callable[[Any], np.ndarray]) -> tuple[np.ndarray, Any, Any]:
        """``(outputs, targets, weight)`` of every row of ``X`` on every rank, each rank
        computing a share: a slice of the common rows (``"global"``) or its own rows
        (``"local"``, whose targets and weights are gathered too). Metrics computed from
        them are the numbers one process computes."""
        n = int(X.shape[0])
        if self.shard == "global":
            lo, hi = _even_split(n, self.size, self.rank)
            bounds = np.array([_even_split(n, self.size, r)[0] for r in range(self.size + 1)])
            counts = np.diff(bounds).astype(np.int64)
            return self._gather(predict(X[lo:hi]), counts), targets, weight
        counts = np.asarray(self.comm.allgather(n), dtype=np.int64)
        outputs = self._gather(predict(X), counts)
        if _weighted(targets):
            targets = type(targets)(self._gather(targets.targets, counts),
                                    self._gather(targets.weight, counts))
        else:
            targets = self._gather(targets, counts)
        if weight is not None:
            weight = self._gather(weight, counts)
        return outputs, targets, weight

    def fail(self, exc: BaseException) -> NoReturn:
        """An exception only this rank may have seen: print it and end every rank."""
        abort(exc)
