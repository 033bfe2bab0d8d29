"""Adam on 1M float32 parameters: plugin kernel through the host driver vs hand-fused loops.

Not a test (no timing assertions in tests); run
``python tests/optim/bench_adam_driver.py [threads ...]`` (e.g. ``1 2``).
Prints medians over repeats, timed side by side in one process.
"""

from __future__ import annotations

import math
import statistics
import time

import numba
import numpy as np

import numbanet.plugins as nbp
from numbanet._jit import parallel_kernel


@parallel_kernel
def adam_fused_f64_scalars(p, g, m, v, step_size, b1, b2, eps, inv_sqrt_bc2):
    # Same arithmetic as the plugin kernel, written by hand: a float64 scalar times a
    # float32 element computes in float64.
    for i in numba.prange(p.shape[0]):
        d = g[i]
        mi = b1 * m[i] + (1.0 - b1) * d
        vi = b2 * v[i] + (1.0 - b2) * d * d
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - step_size * mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps)


@parallel_kernel
def adam_fused_f32(p, g, m, v, step_size, b1, b2, eps, inv_sqrt_bc2):
    # The fastest natural hand-written version: every scalar float32, so the whole loop
    # runs 8-wide float32 arithmetic.
    one = np.float32(1.0)
    for i in numba.prange(p.shape[0]):
        d = g[i]
        mi = b1 * m[i] + (one - b1) * d
        vi = b2 * v[i] + (one - b2) * d * d
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - step_size * mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps)


def main(n: int = 1_000_000, repeats: int = 41, inner: int = 5) -> None:
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    opt = nbp.get_optimizer("adam", lr=1e-3)
    m = np.zeros(n, np.float32)
    v = np.zeros(n, np.float32)
    f32 = np.float32
    args64 = (1e-3 / 0.1, 0.9, 0.999, 1e-8, 1.0 / math.sqrt(0.001))
    args32 = tuple(f32(a) for a in args64)
    opt.step(p, g)  # allocates the slots
    hp = tuple(np.float32(x) for x in opt._hp_tuple)
    sc = tuple(np.float32(x) for x in opt._prepare(1))

    def plugin_host():
        opt.step(p, g)

    def plugin_driver_only():
        opt.driver.run_parallel(p, g, np.float32(1.0), opt._slots, hp, sc)

    def fused64():
        adam_fused_f64_scalars(p, g, m, v, *args64)

    def fused32():
        adam_fused_f32(p, g, m, v, *args32)

    cases = {"plugin kernel via Optimizer.step": plugin_host,
             "plugin kernel, driver call only": plugin_driver_only,
             "hand-fused, float64 scalars": fused64,
             "hand-fused, float32 throughout": fused32}
    for fn in cases.values():
        fn()  # compile / warm
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():  # interleaved, so load noise hits all alike
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - t0) / inner)
    med = {k: statistics.median(s) for k, s in samples.items()}
    base = med["hand-fused, float32 throughout"]
    print(f"Adam update, n={n} float32, threads={numba.get_num_threads()}, "
          f"median of {repeats}x{inner}")
    for name, t in med.items():
        print(f"  {name:36s} {t * 1e3:7.3f} ms   ratio to hand-fused f32: {t / base:5.2f}")


if __name__ == "__main__":
    import sys

    for threads in [int(a) for a in sys.argv[1:]] or [numba.get_num_threads()]:
        numba.set_num_threads(threads)
        main()
