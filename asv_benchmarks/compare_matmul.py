"""Side-by-side GFLOP/s of ``numbanet.kernels.matmul`` and ``numpy.matmul`` (BLAS).

Run: ``python asv_benchmarks/compare_matmul.py [--threads 2] [--repeats 7] [--dtype ...]``;
``--first-call`` instead times the first call in new processes, with an empty and then
a warm Numba disk cache (compile time versus cache load time).

Shapes are those of training a 784-256-128-10 MLP at batch 256 (forward, and the two
backward products ``dW = X^T dZ`` and ``dX = dZ W^T``), plus square products. The two
libraries are timed in interleaved repeats (A, B, A, B, ...) so that noise from other
processes hits both alike. numpy's BLAS thread count is capped to the same number of
threads (``OPENBLAS_NUM_THREADS`` is set before numpy is imported, and ``threadpoolctl``
is used when installed).

Both thread pools spin after a call before they sleep (OpenBLAS for up to 2**28 cycles,
GNU OpenMP under Numba's ``omp`` layer for its spin count). Timing one right after the
other would measure each library with the other's idle workers still holding the
cores, and a fork-join GEMM on 2 cores collapses when one core is taken. So each timed
block is preceded by ``--pause`` seconds of sleep and 50 ms of untimed calls.

Two statistics are printed: the median over repeats, and the best (fastest) sample of
each library. On a machine shared with other jobs, the best sample approximates what
each library reaches on idle cores, and interleaving gives both the same chances.
"""

from __future__ import annotations

import argparse
import os
import time

# (label, m, k, n, transpose_a, transpose_b); out = op(a) @ op(b) is m x n, inner dim k.
SHAPES = [
    ("fwd 256x784 @ 784x256", 256, 784, 256, False, False),
    ("fwd 256x256 @ 256x784", 256, 256, 784, False, False),
    ("square 1024^3", 1024, 1024, 1024, False, False),
    ("dW  (256x784)^T @ 256x256", 784, 256, 256, True, False),
    ("dX  256x256 @ (784x256)^T", 256, 256, 784, False, True),
    ("dW2 (256x256)^T @ 256x128", 256, 256, 128, True, False),
    ("dX2 256x128 @ (256x128)^T", 256, 128, 256, False, True),
    ("fwd 64x784 @ 784x256", 64, 784, 256, False, False),
    ("512x1024 @ 1024x1024", 512, 1024, 1024, False, False),
    ("out fwd 256x128 @ 128x10", 256, 128, 10, False, False),
    ("out dW (256x128)^T @ 256x10", 128, 256, 10, True, False),
]


def _operands(rng, m, k, n, ta, tb, dtype):
    import numpy as np

    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b, np.empty((m, n), dtype)


def _time(fn, min_seconds=2e-3, pause=0.0, warmup=0.05):
    """Seconds per call, looping until one sample lasts at least ``min_seconds``.

    After the pause, untimed calls run for ``warmup`` seconds first (at least two): on
    this VM the first calls after a sleep often take 4-8 ms each, for any library
    (idle cores and sleeping pool threads waking up; streaks of up to ~40 ms were
    seen), and such calls would otherwise make up whole samples of a sub-millisecond
    product. Training calls the GEMM back to back, so it never sees that state.
    """
    if pause:
        time.sleep(pause)
    t0 = time.perf_counter()
    fn()
    fn()
    while time.perf_counter() - t0 < warmup:
        fn()
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / calls
        calls *= 2


_FIRST_CALL = """
import sys, time
t0 = time.perf_counter()
import numpy as np
from numbanet.kernels.matmul import matmul
t1 = time.perf_counter()
dtype = np.dtype(sys.argv[1])
small = [np.ones((8, 8), dtype), np.ones((8, 8), dtype), np.empty((8, 8), dtype)]
big = [np.ones((160, 160), dtype), np.ones((160, 160), dtype), np.empty((160, 160), dtype)]
t2 = time.perf_counter(); matmul(*small); t3 = time.perf_counter(); matmul(*big)
t4 = time.perf_counter()
print(f"{dtype.name}: import {t1 - t0:.2f} s, first call serial twin {t3 - t2:.2f} s, "
      f"parallel kernel {t4 - t3:.2f} s")
"""


def first_call_times() -> None:
    """First-call times in new processes: cold (empty Numba cache), then warm (disk cache)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for state in ("cold cache (compiles)", "warm cache (loads from disk)"):
            print(state)
            for dtype in ("float32", "float64"):
                subprocess.run([sys.executable, "-c", _FIRST_CALL, dtype], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pause", type=float, default=0.2,
                        help="seconds to sleep before each timed block (see above)")
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default="both")
    parser.add_argument("--first-call", action="store_true",
                        help="only time first calls (compile, then disk-cache load)")
    args = parser.parse_args()
    if args.first_call:
        first_call_times()
        return
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))

    import numpy as np

    import numbanet
    from numbanet.kernels.matmul import matmul

    numbanet.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass

    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    rng = np.random.default_rng(0)
    print(f"threads={args.threads} repeats={args.repeats} (medians, GFLOP/s)")
    for dtype in dtypes:
        t0 = time.perf_counter()
        a, b, out = _operands(rng, 64, 64, 64, False, False, dtype)
        matmul(a, b, out)
        print(f"\n{dtype}: warm-up incl. compile/cache load {time.perf_counter() - t0:.2f} s")
        print(f"{'':<30} {'median':-^26}   {'best sample':-^26}")
        print(f"{'shape':<30} {'numbanet':>9} {'numpy':>9} {'ratio':>6}"
              f"   {'numbanet':>9} {'numpy':>9} {'ratio':>6}")
        ratios, best_ratios = [], []
        for label, m, k, n, ta, tb in SHAPES:
            a, b, out = _operands(rng, m, k, n, ta, tb, dtype)
            ref = np.empty_like(out)
            op_a = a.T if ta else a
            op_b = b.T if tb else b
            matmul(a, b, out, ta, tb)
            np.matmul(op_a, op_b, out=ref)
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(_time(lambda: matmul(a, b, out, ta, tb), pause=args.pause))  # noqa: B023
                theirs.append(
                    _time(lambda: np.matmul(op_a, op_b, out=ref), pause=args.pause)  # noqa: B023
                )
            flops = 2.0 * m * n * k
            g_ours = flops / np.median(ours) / 1e9
            g_np = flops / np.median(theirs) / 1e9
            b_ours = flops / np.min(ours) / 1e9
            b_np = flops / np.min(theirs) / 1e9
            ratios.append(g_ours / g_np)
            best_ratios.append(b_ours / b_np)
            print(f"{label:<30} {g_ours:9.1f} {g_np:9.1f} {g_ours / g_np:6.2f}"
                  f"   {b_ours:9.1f} {b_np:9.1f} {b_ours / b_np:6.2f}")
        geo = float(np.exp(np.mean(np.log(ratios))))
        best_geo = float(np.exp(np.mean(np.log(best_ratios))))
        print(f"{'geometric mean ratio':<30} {'':>9} {'':>9} {geo:6.2f}"
              f"   {'':>9} {'':>9} {best_geo:6.2f}")


if __name__ == "__main__":
    main()
