"""A training step allocates nothing in steady state (Numba runtime and NumPy alike)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Runs in a fresh interpreter: Numba reads NUMBA_NRT_STATS when it is first imported.
_PROBE = textwrap.dedent(
    """
    import json, sys, tracemalloc
    import numpy as np
    from numba.core.runtime import rtsys
    import numbanet as nbn

    optimizer, dropout = sys.argv[1], float(sys.argv[2])
    layers = [nbn.Dense(300, 256, activation="relu")]
    if dropout:
        layers.append(nbn.Dropout(dropout))
    layers += [nbn.Dense(256, 64, activation="tanh"), nbn.Dense(64, 10)]
    model = nbn.Sequential(layers, seed=0)
    model.compile(loss="cross_entropy", optimizer=nbn.get_optimizer(optimizer, lr=1e-3))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(128, 300)).astype(np.float32)
    y = rng.integers(0, 10, size=128)

    def steps(n):
        for _ in range(n):
            model.train_step(X, y)

    steps(5)  # warm-up: compile kernels, create workspaces and optimizer state

    # Count the arrays handed to compiled kernels from Python: Numba's runtime makes one
    # short-lived record per array argument it unboxes, and counts it as an allocation.
    from numba.core.dispatcher import Dispatcher
    import numba._dispatcher
    base_call = numba._dispatcher.Dispatcher.__call__
    unboxed = [0]

    def count_arrays(value):
        if isinstance(value, np.ndarray):
            return 1
        if isinstance(value, tuple):
            return sum(count_arrays(v) for v in value)
        return 0

    def counting_call(self, *args, **kwargs):
        unboxed[0] += count_arrays(args) + count_arrays(tuple(kwargs.values()))
        return base_call(self, *args, **kwargs)

    Dispatcher.__call__ = counting_call

    def measure(n):
        unboxed[0] = 0
        before = rtsys.get_allocation_stats()
        steps(n)
        after = rtsys.get_allocation_stats()
        return {
            "alloc": after.alloc - before.alloc,
            "unboxed_arrays": unboxed[0],
            "outstanding": (after.alloc - after.free) - (before.alloc - before.free),
            "mi_outstanding": (after.mi_alloc - after.mi_free)
            - (before.mi_alloc - before.mi_free),
        }

    tracemalloc.start()
    snapshot_before = tracemalloc.take_snapshot()
    ten, twenty = measure(10), measure(20)
    snapshot_after = tracemalloc.take_snapshot()
    growth = sum(s.size_diff for s in snapshot_after.compare_to(snapshot_before, "filename")
                 if s.size_diff > 0)
    print(json.dumps({"ten": ten, "twenty": twenty, "numpy_bytes_growth": growth}))
    """
)


@pytest.mark.parametrize(("optimizer", "dropout"), [("sgd", 0.0), ("adam", 0.2)])
def test_training_step_allocates_nothing_after_warm_up(optimizer, dropout):
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, optimizer, str(dropout)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    ten, twenty = stats["ten"], stats["twenty"]
    # Nothing the runtime allocates during a step outlives it ...
    assert ten["outstanding"] == twenty["outstanding"] == 0, stats
    assert ten["mi_outstanding"] == twenty["mi_outstanding"] == 0, stats
    # ... and the only runtime allocations are the records Numba makes for the array
    # arguments it unboxes: no kernel creates an array (a workspace made inside a
    # kernel would add one allocation per call).
    assert ten["unboxed_arrays"] > 0, stats
    assert ten["alloc"] == ten["unboxed_arrays"], stats
    assert twenty["alloc"] == twenty["unboxed_arrays"], stats
    # NumPy side: train_step validates its inputs (small temporaries freed at once);
    # what stays allocated must not grow with the number of steps.
    assert stats["numpy_bytes_growth"] < 16 * 1024, stats
