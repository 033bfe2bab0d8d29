"""First-call time of a plugin optimizer in a new process, warm and cold driver cache.

Not a test; run ``python tests/optim/bench_first_call.py [name]`` (default ``lion``, which
needs ``pip install -e plugins/numbanet-lion``). Each sample is a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import numbanet as nbn
t1 = time.perf_counter()
# Numba initialises its target context (about 0.4-0.7 s here: importing numba.np.arraymath
# and scipy for its BLAS check) when the first compiled or cached function of the process
# runs, whichever library it belongs to. Pay it on an unrelated cached kernel first so the
# optimizer's own cost is visible; in a training run the model's first kernel pays it.
loss = nbn.get_loss("mse")
loss.forward(np.zeros((2, 2)), np.zeros((2, 2)))
t2 = time.perf_counter()
opt = nbn.get_optimizer(sys.argv[1])
q = np.zeros(100, np.float32)
opt.step(q, np.ones_like(q))  # the serial driver
t3 = time.perf_counter()
opt = nbn.get_optimizer(sys.argv[1])
p = np.zeros(1_000_000, np.float32); g = np.ones_like(p)
opt.step(p, g)  # the prange driver, plus first touch of 1M-element state slots
t4 = time.perf_counter()
opt.step(p, g)
t5 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "numba_context_init": t2 - t1,
                  "first_step_n100": t3 - t2, "first_step_n1M": t4 - t3,
                  "second_step_n1M": t5 - t4}))
"""


def sample(name: str, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, name], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(name: str = "lion", repeats: int = 5) -> None:
    env = dict(os.environ)
    sample(name, env)  # make sure the cache is warm
    warm = [sample(name, env) for _ in range(repeats)]
    cold = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            cold.append(sample(name, {**env, "NUMBANET_CACHE_DIR": tmp}))
    for label, runs in (("warm driver cache", warm), ("cold driver cache", cold)):
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{name}, {label}, median of {len(runs)} processes: "
              + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items()))


if __name__ == "__main__":
    main(*sys.argv[1:2])
