"""The generated driver hits Numba's disk cache in a new process (no recompilation).

This is what makes a plugin optimizer's first step cheap in every run after the first:
the plugin kernel is bound at compile time inside a generated module, not captured by a
closure (closures miss the cache in every new process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import json
import numpy as np
import numbanet as nbn
opt = nbn.get_optimizer("sgd", lr=0.1, momentum=0.9)
p = np.zeros(100); g = np.ones(100)
opt.step(p, g)
stats = opt.driver.run_serial.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values()),
                  "file": opt.driver.module.__file__, "p0": float(p[0])}))
"""


def _run(env):
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_driver_compiled_in_one_process_is_loaded_from_disk_in_the_next(tmp_path):
    env = {**os.environ, "NUMBANET_CACHE_DIR": str(tmp_path)}
    first = _run(env)
    second = _run(env)
    assert first["file"].startswith(str(tmp_path))
    assert first["misses"] == 1 and first["hits"] == 0
    assert second["hits"] == 1 and second["misses"] == 0
    assert first["p0"] == second["p0"] == -0.1
