"""Cold start: what a new process pays before its first training step.

``timeraw_`` benchmarks run their statement in a fresh interpreter, once per sample.
``cache="cold"`` points ``NUMBA_CACHE_DIR`` at an empty directory, so every kernel the
step needs is compiled from scratch (a first run after ``pip install``); ``"warm"`` uses
the disk cache that earlier runs filled (every later run).
"""

from __future__ import annotations

from .common import CACHE_STATES

_SETUP = """
import atexit, os, shutil, tempfile
if {cold}:
    # Must precede the first numba import: numba reads it once. Removed at exit, after
    # the timing.
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numbanet-asv-jit-")
    atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], True)
import numpy as np
import numbanet
from numbanet.bench import STANDARD_MODELS, make_batch
from numbanet.nn import Dense, Sequential
"""

_FIRST_STEP = """
spec = STANDARD_MODELS["{model}"]
sizes = spec.sizes
layers = [Dense(i, o, activation="relu" if k < len(sizes) - 2 else None)
          for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))]
net = Sequential(layers, seed=0, dtype="float32")
net.compile(loss="cross_entropy", optimizer="adam")
x, y = make_batch(spec)
net.train_step(x, y)
"""

_FIRST_MATMUL = """
from numbanet.kernels.matmul import matmul
a = np.ones((300, 300), dtype="{dtype}")
out = np.empty_like(a)
matmul(a, a, out)
"""


class ColdStartSuite:
    """Seconds from a fresh interpreter (numbanet imported) to the end of the first call:
    a training step of 64-32-10@32 and of 784-256-128-10@64, a float32 300x300 matmul."""

    params = (CACHE_STATES,)
    param_names = ["cache"]
    # Each sample is a new process compiling everything: few samples, long timeout.
    number = 1
    repeat = (1, 3, 120.0)
    rounds = 1
    timeout = 600

    def timeraw_import(self, cache: str) -> tuple[str, str]:
        return "import numbanet", _SETUP.split("import numpy")[0].format(cold=cache == "cold")

    def timeraw_first_train_step(self, cache: str) -> tuple[str, str]:
        return _FIRST_STEP.format(model="64-32-10@32"), _SETUP.format(cold=cache == "cold")

    def timeraw_first_train_step_784(self, cache: str) -> tuple[str, str]:
        # Large enough for the parallel GEMM (the 64-wide model stays on the serial twin).
        return _FIRST_STEP.format(model="784-256-128-10@64"), _SETUP.format(cold=cache == "cold")

    def timeraw_first_matmul_float32(self, cache: str) -> tuple[str, str]:
        return _FIRST_MATMUL.format(dtype="float32"), _SETUP.format(cold=cache == "cold")
