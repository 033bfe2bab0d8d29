"""Sizes, thread counts and helpers shared by every suite.

Conventions (see docs/benchmarking.md):

* Every suite sets ``params`` and ``param_names``; thread counts come from
  :data:`THREADS` (1 and all cores, capped by the machine).
* ``setup()`` allocates, sets the thread count and calls the kernel once, so Numba's
  compile time never lands in a timed sample (cold compile is measured separately by the
  ``timeraw_`` benchmarks in :mod:`.jit`).
* asv_runner times one call per sample when a suite has ``setup`` (and re-runs setup
  between samples), so bodies that would take well under 1 ms loop a FIXED number of
  times (the ``INNER_*`` constants): the recorded time is for that many calls. The count
  must not be calibrated at run time, or a slower commit would loop fewer times and its
  samples would look as fast as before.
* ``NUMBANET_ASV_SMOKE=1`` (set by ``asv_benchmarks/smoke.sh``) shrinks the grids to
  one thread count and the two smaller models so the CI smoke check stays short; every
  benchmark still imports and runs.
* Nothing here launches a parallel kernel at import: asv imports the suites once and
  forks a process per benchmark, and a thread pool started before ``fork`` is unsafe.
"""

from __future__ import annotations

import os

import numpy as np

import numbanet
from numbanet.bench import STANDARD_MODELS, ModelSpec, make_batch
from numbanet.threads import max_threads

#: True in the CI smoke check: smaller grids, same benchmarks.
SMOKE = os.environ.get("NUMBANET_ASV_SMOKE", "") == "1"
#: Thread counts: one core and every core of the machine.
THREADS = [1] if SMOKE else sorted({1, max_threads()})
#: Thread counts of the issue's GEMM table (1 and 2), where the machine has them.
GEMM_THREADS = [1] if SMOKE else [t for t in (1, 2) if t <= max_threads()]
DTYPES = ["float32", "float64"]
#: op(a) @ op(b): "nt" means a as is, b transposed.
TRANSPOSES = ["nn", "nt", "tn", "tt"]
#: m = n = k of the GEMM benchmarks: 268 MFLOP, a few ms on one core.
GEMM_SIZE = 512
#: (rows, columns) of the activation benchmarks: 256 samples of a 1024-wide layer.
ACTIVATION_SHAPE = (256, 1024)
#: batch and classes of the loss benchmarks.
LOSS_SHAPE = (256, 10)
#: Elements updated by the optimizer benchmarks (784-1024-1024-10 has 1.86 M).
OPTIMIZER_SIZE = 1 << 20
#: The standard MLPs of the benchmark issue, named "784-256-128-10@64".
MODELS = list(STANDARD_MODELS)[:2] if SMOKE else list(STANDARD_MODELS)
#: Cache states of the cold-start benchmarks: "cold" empties the user's caches (a first
#: run after pip install: the kernels the wheel ships load, the rest compile), "jit" also
#: hides the shipped kernels (everything compiles), "warm" reuses earlier runs' caches.
CACHE_STATES = ["warm"] if SMOKE else ["cold", "jit", "warm"]
#: Samples per framework and seconds per sample in the side-by-side comparison.
COMPARE_REPEATS, COMPARE_MIN_TIME = (1, 0.005) if SMOKE else (5, 0.05)
#: Samples in one benchmark epoch (synthetic data of the model's input width).
EPOCH_SAMPLES = 2048
#: Calls per timed sample of the activation suite (one call is 0.05-1 ms).
INNER_ACTIVATION = 20
#: Calls per timed sample of the loss suite (one call is a few microseconds).
INNER_LOSS = 200
#: Calls per timed sample of the optimizer suite.
INNER_OPTIMIZER = 4


def set_threads(threads: int) -> None:
    """Give numbanet's kernels ``threads`` threads (setup() of every parallel suite)."""
    numbanet.set_num_threads(threads)


def random_array(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    """Standard normal values in a C-contiguous array."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(dtype)


def gflops(flop: float, seconds: float) -> float:
    """Billions of floating point operations per second."""
    return flop / seconds / 1e9


def build_model(model: str, optimizer: str = "adam") -> tuple[object, ModelSpec]:
    """A compiled float32 MLP for a :data:`MODELS` name: ReLU hidden layers, linear
    output, softmax cross-entropy, ``optimizer`` with default hyperparameters."""
    from numbanet.nn import Dense, Sequential

    spec = STANDARD_MODELS[model]
    sizes = spec.sizes
    layers = [
        Dense(i, o, activation="relu" if k < len(sizes) - 2 else None)
        for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    ]
    net = Sequential(layers, seed=0, dtype="float32")
    net.compile(loss="cross_entropy", optimizer=optimizer)
    return net, spec


def epoch_data(spec: ModelSpec, samples: int = EPOCH_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` random inputs of the model's width and integer labels."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((samples, spec.sizes[0])).astype(np.float32)
    y = rng.integers(0, spec.sizes[-1], size=samples, dtype=np.int64)
    return x, y


__all__ = [
    "CACHE_STATES",
    "COMPARE_MIN_TIME",
    "COMPARE_REPEATS",
    "SMOKE",
    "ACTIVATION_SHAPE",
    "DTYPES",
    "EPOCH_SAMPLES",
    "GEMM_SIZE",
    "GEMM_THREADS",
    "INNER_ACTIVATION",
    "INNER_LOSS",
    "INNER_OPTIMIZER",
    "LOSS_SHAPE",
    "MODELS",
    "OPTIMIZER_SIZE",
    "THREADS",
    "TRANSPOSES",
    "build_model",
    "epoch_data",
    "gflops",
    "make_batch",
    "random_array",
    "set_threads",
]
