"""Cold start: what a new process pays before its first training step.

``timeraw_`` benchmarks run their statement in a fresh interpreter, once per sample.
``cache="cold"`` points ``NUMBA_CACHE_DIR`` and ``NUMBANET_CACHE_DIR`` at empty
directories (a first run after ``pip install``: with ``NUMBA_CACHE_DIR`` set, Numba's
user-provided cache locator comes first, so the kernel caches in numbanet's
``__pycache__`` directories are not read either); the kernels the wheel ships compiled
(numbanet/_precompiled, built by setup.py) still load, as they do for a user.
``"jit"`` also points ``NUMBANET_PRECOMPILED_DIR`` at an empty directory, so every kernel
the step needs is compiled from scratch (what a user pays without shipped kernels: off
x86-64, with another Numba than the build's, or for kernels no standard job uses).
``"warm"`` uses the disk caches that earlier runs filled (every later run).

The training step is :func:`numbanet.bench.make_step`'s, the one ``numbanet bench
--cold-start`` times from interpreter launch (that command also times JAX, PyTorch,
torch.compile and Keras the same way). asv_benchmarks/cold_start_profile.py breaks the
cold figure down per compiled function and compiler stage.
"""

from __future__ import annotations

from .common import CACHE_STATES

_SETUP = """
import atexit, os, shutil, tempfile
if {cold}:
    # Must precede the first numba import: numba reads it once. Removed at exit, after
    # the timing.
    _vars = ["NUMBA_CACHE_DIR", "NUMBANET_CACHE_DIR"]
    if {jit}:
        _vars.append("NUMBANET_PRECOMPILED_DIR")  # empty: no shipped kernels
    for _var in _vars:
        os.environ[_var] = tempfile.mkdtemp(prefix="numbanet-asv-jit-")
        atexit.register(shutil.rmtree, os.environ[_var], True)
import numpy as np
import numbanet
from numbanet.bench import make_step
"""

def _setup(cache: str) -> str:
    return _SETUP.format(cold=cache != "warm", jit=cache == "jit")


# Builds the model (weights copied in, compiled with Adam and cross-entropy) and runs
# one public train_step: everything a first step compiles.
_FIRST_STEP = """
make_step("numbanet", "{model}")()
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
        return "import numbanet", _setup(cache).split("import numpy")[0]

    def timeraw_first_train_step(self, cache: str) -> tuple[str, str]:
        return _FIRST_STEP.format(model="64-32-10@32"), _setup(cache)

    def timeraw_first_train_step_784(self, cache: str) -> tuple[str, str]:
        # Large enough for the parallel GEMM (the 64-wide model stays on the serial twin).
        return _FIRST_STEP.format(model="784-256-128-10@64"), _setup(cache)

    def timeraw_first_matmul_float32(self, cache: str) -> tuple[str, str]:
        return _FIRST_MATMUL.format(dtype="float32"), _setup(cache)
