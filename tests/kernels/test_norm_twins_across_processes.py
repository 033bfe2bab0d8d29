"""Layer norm's serial and parallel twins agree bit for bit even when a cache holds one
of them and the other is compiled later, in another process.

That is what a user meets who trains on one thread, then on two: the first run compiles
and caches the serial twin and the row kernels it calls; the second compiles the
parallel twin against the cached row kernels. When the row sums were plain
``s += x[j]`` loops compiled with ``reassoc``, LLVM vectorized them in another order in
that second compilation, and 5-45 % of the outputs differed in their last bits (all
outputs agreed when both twins were compiled in one process, which is why the
in-process thread checks did not see it). The sums are now explicit vectors in a fixed
order (``numbanet.kernels.norm._ln_x_sums`` and ``_ln_dy_sums``).
"""

from __future__ import annotations

import os
import subprocess
import sys

# Every shape is at least PARALLEL_MIN elements, so two threads take the parallel twin;
# (2048, 37) has a width that is no whole number of vectors (the scalar tail); rows of
# at most four vectors are held in registers: (1024, 64) float32 and, with AVX-512,
# (2200, 30) float64, whose last vector is partial.
SHAPES = [(1024, 64), (256, 1024), (700, 100), (2048, 37), (2200, 30)]

CHILD = r"""
import sys
import numpy as np
from numbanet.kernels import norm

CASES = [(SHAPES[0], np.float32), (SHAPES[1], np.float32), (SHAPES[2], np.float64),
         (SHAPES[3], np.float64), (SHAPES[4], np.float64)]


def run(threads, shape, dtype, affine):
    rows, cols = shape
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(cols).astype(dtype) if affine else None
    b = rng.standard_normal(cols).astype(dtype) if affine else None
    y, dx = np.empty_like(x), np.empty_like(x)
    mean, rstd = np.empty(rows), np.empty(rows)
    norm.layer_norm_forward(x, 1e-5, w, b, y, mean, rstd, threads=threads)
    dw = np.empty(cols, dtype) if affine else None
    db = np.empty(cols, dtype) if affine else None
    norm.layer_norm_backward(x, dy, w, mean, rstd, norm.norm_partials(rows, cols),
                             norm.norm_partials(rows, cols, dtype),
                             norm.ln_coefs(rows, cols, dtype), dw, db, dx,
                             threads=threads)
    return [a for a in (y, mean, rstd, dx, dw, db) if a is not None]


for shape, dtype in CASES:
    for affine in (True, False):
        one = run(1, shape, dtype, affine)
        if sys.argv[1] == "compare":
            two = run(2, shape, dtype, affine)
            differ = [int(np.count_nonzero(a != c)) for a, c in zip(one, two)]
            print(shape, np.dtype(dtype).name, affine, differ)
"""


def _child(step: str, env: dict[str, str]) -> str:
    code = f"SHAPES = {SHAPES!r}\n" + CHILD
    return subprocess.run([sys.executable, "-c", code, step], env=env, check=True,
                          capture_output=True, text=True).stdout


def test_layer_norm_twins_compiled_in_different_processes_agree(tmp_path):
    from numbanet.kernels.norm import PARALLEL_MIN

    assert all(rows * cols >= PARALLEL_MIN for rows, cols in SHAPES)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NUMBANET_CACHE_DIR": str(tmp_path)}
    _child("serial", env)  # compiles and caches the serial twins and the row kernels
    lines = _child("compare", env).strip().splitlines()
    assert len(lines) == 2 * len(SHAPES)
    for line in lines:  # shape, dtype, affine, [differing elements per output]
        assert line.endswith("[0, 0, 0, 0, 0, 0]") or line.endswith("[0, 0, 0, 0]"), line
