"""fit on a memmap 4x larger than the memory this process may allocate.

Run: python memory_limit.py X.npy y.npy LIMIT_MB OUT.npy. After warming the kernels up,
the process's data segment (RLIMIT_DATA: heap and private anonymous memory; read-only
file mappings do not count) is capped at its current size plus LIMIT_MB. It then checks
that the cap bites (copying X into memory fails), trains one epoch on the memmap and
saves the weights.
"""

from __future__ import annotations

import resource
import sys

import numpy as np

import numbanet as nbn


def build() -> nbn.Sequential:
    model = nbn.Sequential([nbn.Dense(64, 32, activation="relu"), nbn.Dense(32, 10)], seed=0)
    model.compile("cross_entropy", nbn.get_optimizer("adam", lr=1e-3))
    return model


def train(X, y) -> nbn.Sequential:
    model = build()
    model.fit(X, y, epochs=1, batch_size=512, verbose=0, seed=1)
    return model


def data_segment_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


def main() -> None:
    x_path, y_path, limit_mb, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    X = np.load(x_path, mmap_mode="r")
    y = np.load(y_path)
    train(X[:2048].copy(), y[:2048])  # compile and start the thread pool first
    limit = data_segment_bytes() + limit_mb * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    try:
        np.array(X)
    except MemoryError:
        print("a copy of X is refused", flush=True)
    model = train(X, y)
    np.save(out, model.flat_parameters)
    print(f"trained on {X.nbytes / 2**20:.0f} MiB under a {limit_mb} MiB limit", flush=True)


if __name__ == "__main__":
    main()
