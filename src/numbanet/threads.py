"""One knob for the number of threads every numbanet kernel uses, and the threading layer.

Threading layer: Numba runs ``prange`` loops on one of three thread pools. ``tbb`` and
``omp`` accept parallel launches from several Python threads at once; ``workqueue``
does not (a concurrent launch aborts the process with "Terminating: Nested parallel
kernel launch detected, the workqueue threading layer does not supported nested
parallelism"). Numba's own default order is tbb, omp, workqueue, so it silently falls
back to the unsafe pool when neither library loads. numbanet therefore decides at
import, before any kernel runs:

* if the user set ``NUMBA_THREADING_LAYER``, that choice is kept as it is;
* else, if TBB or OpenMP can be loaded, Numba is told ``threadsafe`` (TBB first, then
  OpenMP), so training two models in two Python threads is safe;
* else Numba keeps ``default`` (it will use ``workqueue``), and
  :func:`threading_layer_is_threadsafe` says ``False``: run one model at a time.

:func:`threading_layer` reports the layer actually in use.

Thread count: kernels use every thread of Numba's pool unless told otherwise. Three
things tell otherwise, strongest first: :func:`set_num_threads`; the environment variable
``NUMBANET_NUM_THREADS`` (read when numbanet is imported, for the importing thread); and,
in a distributed run, :func:`numbanet.distributed.init`, which gives each process its
share of the cores (:func:`use_process_share`: cores / processes on the machine), so that
``mpiexec -n 4`` on 8 cores runs 4 x 2 threads instead of 4 x 8 fighting over 8 cores.
"""

from __future__ import annotations

import operator
import os
import warnings

import numba
from numba.core import config as _numba_config

__all__ = [
    "NUM_THREADS_ENV",
    "THREADSAFE_LAYERS",
    "get_num_threads",
    "max_threads",
    "process_share",
    "set_num_threads",
    "threading_layer",
    "threading_layer_choice",
    "threading_layer_is_threadsafe",
    "use_process_share",
]

#: Numba threading layers that accept parallel launches from several threads at once.
THREADSAFE_LAYERS = ("tbb", "omp")

_ENV = "NUMBA_THREADING_LAYER"


def _layer_loads(layer: str) -> bool:
    # Importing the pool's extension module loads its shared library (libtbb, libgomp)
    # without starting any threads, so this probe is cheap and side-effect free.
    try:
        if layer == "tbb":
            from numba.np.ufunc import parallel

            parallel._check_tbb_version_compatible()
            from numba.np.ufunc import tbbpool  # noqa: F401
        elif layer == "omp":
            from numba.np.ufunc import omppool  # noqa: F401
        else:
            return False
    except (ImportError, OSError, AttributeError):
        return False
    return True


def _pool_started() -> bool:
    try:
        from numba.np.ufunc import parallel
    except ImportError:  # pragma: no cover
        return False
    return bool(getattr(parallel, "_is_initialized", False))


def _choose_threading_layer() -> str:
    """Set Numba's threading layer request; return a sentence saying what and why."""
    if os.environ.get(_ENV):
        return f"{os.environ[_ENV]!r} from {_ENV} (the user's choice, kept)"
    if _pool_started():
        return "already started before numbanet was imported (left as it is)"
    loadable = [layer for layer in THREADSAFE_LAYERS if _layer_loads(layer)]
    if loadable:
        # 'threadsafe' makes Numba pick tbb, else omp, and never fall back to workqueue.
        _numba_config.THREADING_LAYER = "threadsafe"
        return f"'threadsafe' chosen by numbanet ({' and '.join(loadable)} can be loaded)"
    return ("'default' (neither TBB nor OpenMP loads, so Numba uses workqueue, which is "
            "not thread-safe: train one model at a time)")


_CHOICE = _choose_threading_layer()


def threading_layer_choice() -> str:
    """How the threading layer was chosen at import, as a sentence (for ``numbanet info``)."""
    return _CHOICE


def threading_layer() -> str:
    """The Numba threading layer in use: ``"tbb"``, ``"omp"`` or ``"workqueue"``.

    Starts Numba's thread pool if no parallel kernel has run yet (a pool starts once per
    process, so this only decides earlier what the first kernel would decide anyway).
    """
    try:
        return str(numba.threading_layer())
    except ValueError:
        # Not started yet: start it the way the first parallel launch would.
        from numba.np.ufunc import parallel

        parallel._launch_threads()
        return str(numba.threading_layer())


def threading_layer_is_threadsafe() -> bool:
    """Whether two Python threads may run numbanet kernels at the same time."""
    return threading_layer() in THREADSAFE_LAYERS


def max_threads() -> int:
    """The size of Numba's thread pool (``NUMBA_NUM_THREADS``, by default the core count)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in every parallel kernel launched from the calling thread.

    Args:
        n: between 1 and :func:`max_threads` inclusive.

    Raises:
        TypeError: ``n`` is not an integer.
        ValueError: ``n`` is outside ``1..max_threads()``.
    """
    if isinstance(n, bool):
        raise TypeError("set_num_threads: n must be an int, got bool")
    if not isinstance(n, int):
        try:
            n = operator.index(n)
        except TypeError:
            raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}") from None
    limit = max_threads()
    if not 1 <= n <= limit:
        raise ValueError(
            f"set_num_threads: n must be between 1 and {limit} (NUMBA_NUM_THREADS), got {n}"
        )
    numba.set_num_threads(n)
    global _chosen_by
    _chosen_by = "set_num_threads"


def get_num_threads() -> int:
    """The number of threads parallel kernels launched from the calling thread use."""
    return int(numba.get_num_threads())


#: Environment variable: the number of threads of every numbanet process (each MPI rank
#: too), as if :func:`set_num_threads` were called when numbanet is imported.
NUM_THREADS_ENV = "NUMBANET_NUM_THREADS"

# What fixed the thread count: None (nothing: the default), "set_num_threads" or the
# environment variable. use_process_share leaves a user's choice alone.
_chosen_by: str | None = None


def process_share(processes: int) -> int:
    """Threads for one of ``processes`` processes sharing this machine: the cores this
    process may run on (its CPU affinity) divided evenly, at least 1 and at most
    :func:`max_threads`.

    Example:
        >>> from numbanet.threads import max_threads, process_share
        >>> process_share(1) == min(max_threads(), process_share(1))
        True
    """
    processes = max(1, int(processes))
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(max_threads(), cores // processes))


def use_process_share(processes: int) -> int:
    """Use :func:`process_share` threads unless :func:`set_num_threads` or
    ``NUMBANET_NUM_THREADS`` already chose; return the thread count now in use.

    :func:`numbanet.distributed.init` calls this with the number of ranks on this machine.
    """
    if _chosen_by is None:
        numba.set_num_threads(process_share(processes))
    return get_num_threads()


def _threads_from_environment() -> None:
    value = os.environ.get(NUM_THREADS_ENV, "").strip()
    if not value:
        return
    try:
        set_num_threads(int(value))
    except ValueError as exc:
        # A bad value must not make `import numbanet` fail: say so and keep the default.
        reason = str(exc) if value.lstrip("+-").isdigit() else "not an integer"
        warnings.warn(f"{NUM_THREADS_ENV}={value!r} ignored: {reason}", RuntimeWarning,
                      stacklevel=2)
        return
    global _chosen_by
    _chosen_by = NUM_THREADS_ENV


_threads_from_environment()
