"""Time training steps: one process with T threads, or R ranks under mpiexec.

One configuration (prints a JSON line on rank 0):

    python step_time.py run MODEL BATCH STEPS REPEATS            # one process
    mpiexec -n 2 python step_time.py run MODEL BATCH STEPS REPEATS --distributed

MODEL is the layer widths ("784-256-128-10"; ReLU between, float32, Adam). Each repeat
is one epoch of ``fit`` over STEPS batches of BATCH rows (shuffled); the step time is the
epoch's time / STEPS. Distributed runs also report the time spent in the gradient
all-reduce stage per step (waiting for the slower rank included) and, measured alone
between barriers, an MPI all-reduce of the gradient buffer and of the two scalars each
step reduces.

The table of docs/distributed.md (alternates the configurations, medians):

    python step_time.py table [REPEATS]

The cost model's inputs and its expected scaling: one process, one thread, the step time
at each model's batch split over N = 1, 2, 8, 64, 512 ranks (B / N rows), then the
expected step time on N ranks for a network of the given bandwidth (GB/s) and latency
(us), with the ring all-reduce's bandwidth term 2 (N - 1) / N x gradient bytes / bandwidth:

    python step_time.py scaling [BANDWIDTH_GBS LATENCY_US ...]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

MODELS = [("64-32-10", 32, 400), ("784-256-128-10", 64, 200), ("784-256-128-10", 256, 80),
          ("784-1024-1024-10", 512, 12)]


def _model(spec: str):
    import numbanet as nbn

    sizes = [int(s) for s in spec.split("-")]
    layers = [nbn.Dense(a, b, activation="relu") for a, b in zip(sizes[:-2], sizes[1:-1],
                                                                 strict=True)]
    layers.append(nbn.Dense(sizes[-2], sizes[-1]))
    model = nbn.Sequential(layers, seed=0)
    model.compile("cross_entropy", nbn.get_optimizer("adam", lr=1e-3))
    return model, sizes


def run(spec: str, batch: int, steps: int, repeats: int, distributed: bool) -> None:
    import numbanet as nbn

    reduce_seconds = [0.0]
    if distributed:
        from numbanet import distributed as dist

        dist.init()
        original = dist._SumGradients.update

        def timed(self, *args):
            start = time.perf_counter()
            try:
                return original(self, *args)
            finally:
                reduce_seconds[0] += time.perf_counter() - start

        dist._SumGradients.update = timed
    model, sizes = _model(spec)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch * steps, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], size=batch * steps)
    kwargs = {"batch_size": batch, "verbose": 0}
    if distributed:
        kwargs["distributed"] = True
    model.fit(X[: batch * 3], y[: batch * 3], **kwargs)  # compile, load caches
    step_ms, reduce_ms = [], []
    for _ in range(repeats):
        if distributed:
            dist.barrier()
        reduce_seconds[0] = 0.0
        start = time.perf_counter()
        model.fit(X, y, **kwargs)
        step_ms.append((time.perf_counter() - start) / steps * 1e3)
        reduce_ms.append(reduce_seconds[0] / steps * 1e3)
    result = {"model": spec, "batch": batch, "ranks": 1, "threads": nbn.get_num_threads(),
              "params": int(model.flat_parameters.size), "step_ms": step_ms}
    if distributed:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        result["ranks"] = comm.Get_size()
        result["reduce_ms"] = reduce_ms
        grads = np.zeros_like(model.flat_gradients)
        scalars = np.zeros(2)
        for name, buf, count in (("allreduce_ms", grads, 50), ("scalars_ms", scalars, 2000)):
            times = []
            for _ in range(count):
                comm.Barrier()
                start = time.perf_counter()
                comm.Allreduce(MPI.IN_PLACE, buf)
                times.append((time.perf_counter() - start) * 1e3)
            result[name] = statistics.median(times)
        if comm.Get_rank() != 0:
            return
    print(json.dumps(result), flush=True)


def table(repeats: int) -> None:
    here = os.path.abspath(__file__)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = "mpiexec"
    results: dict[tuple[str, int, str], list[dict]] = {}
    for _ in range(repeats):  # alternate the configurations: the machine's load drifts
        for spec, batch, steps in MODELS:
            args = ["run", spec, str(batch), str(steps), "3"]
            runs = {
                "1x2": ([sys.executable, here, *args], "2"),
                "1x1": ([sys.executable, here, *args], "1"),
                "2x1": ([mpiexec, "-n", "2", sys.executable, here, *args, "--distributed"],
                        "1"),
            }
            for name, (command, threads) in runs.items():
                env = {**os.environ, "NUMBANET_NUM_THREADS": threads}
                out = subprocess.run(command, capture_output=True, text=True, env=env,
                                     check=True, timeout=600).stdout
                results.setdefault((spec, batch, name), []).append(
                    json.loads(out.strip().splitlines()[-1]))
    print("| model @ batch | params | 1 rank x 2 threads | 1 rank x 1 thread | "
          "2 ranks x 1 thread | 2x1 / 1x2 | all-reduce stage | grad all-reduce alone | "
          "scalars |")
    print("|---|---|---|---|---|---|---|---|---|")
    for spec, batch, _ in MODELS:
        def med(name: str, key: str, spec: str = spec, batch: int = batch) -> float:
            values = [v for r in results[(spec, batch, name)] for v in np.atleast_1d(r[key])]
            return float(statistics.median(values))

        one2, one1, two1 = med("1x2", "step_ms"), med("1x1", "step_ms"), med("2x1", "step_ms")
        stage, alone = med("2x1", "reduce_ms"), med("2x1", "allreduce_ms")
        scalars = med("2x1", "scalars_ms")
        params = results[(spec, batch, "1x2")][0]["params"]
        print(f"| {spec} @ {batch} | {params:,} | {one2:.3f} ms | {one1:.3f} ms | "
              f"{two1:.3f} ms | {two1 / one2:.2f} | {stage:.3f} ms ({stage / two1:.0%}) | "
              f"{alone:.3f} ms | {scalars * 1e3:.1f} us |")
    print(json.dumps({f"{k[0]}@{k[1]} {k[2]}": v for k, v in results.items()}),
          file=sys.stderr)


RANKS = (1, 2, 8, 64, 512)


def _compute_ms(spec: str, batch: int, repeats: int = 5) -> float:
    """Median step time of one process on ``batch`` rows (one thread: one rank's core)."""
    model, sizes = _model(spec)
    rng = np.random.default_rng(0)
    steps = max(4, min(200, 4000 // batch))
    X = rng.normal(size=(batch * steps, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], size=batch * steps)
    model.fit(X[: batch * 2], y[: batch * 2], batch_size=batch, verbose=0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(X, y, batch_size=batch, verbose=0)
        times.append((time.perf_counter() - start) / steps * 1e3)
    return float(statistics.median(times))


def scaling(networks: list[tuple[float, float]]) -> None:
    import numbanet as nbn

    nbn.set_num_threads(1)
    measured = {}
    for spec, batch, _ in MODELS:
        for n in RANKS:
            rows = max(1, batch // n)
            if (spec, rows) not in measured:
                measured[(spec, rows)] = _compute_ms(spec, rows)
    print(json.dumps({f"{k[0]} b={k[1]}": round(v, 4) for k, v in measured.items()}))
    for bandwidth, latency in networks:
        print(f"\nNetwork: {bandwidth:g} GB/s per link, {latency:g} us per message. "
              f"Expected step time (speed-up over one rank) with the global batch fixed:\n")
        print("| model @ batch | gradient | "
              + " | ".join(f"{n} rank{'s' if n > 1 else ''}" for n in RANKS) + " |")
        print("|---|---|" + "---|" * len(RANKS))
        for spec, batch, _ in MODELS:
            params = _model(spec)[0].flat_parameters.size
            nbytes = 4 * params
            one = measured[(spec, batch)]
            cells = []
            for n in RANKS:
                compute = measured[(spec, max(1, batch // n))]
                if n == 1:
                    total = compute
                else:
                    # Ring all-reduce of the gradient; its latency, and the step's scalar
                    # all-reduce, as recursive doubling (2 log2 N messages).
                    ring = 2 * (n - 1) / n * nbytes / (bandwidth * 1e9) * 1e3
                    latency_ms = 2 * (np.log2(n) * 2) * latency * 1e-3
                    total = compute + ring + latency_ms
                idle = " (idle ranks)" if n > batch else ""
                cells.append(f"{total:.3g} ms ({one / total:.1f}x){idle}")
            print(f"| {spec} @ {batch} | {nbytes / 2**20:.2f} MiB | " + " | ".join(cells)
                  + " |")


if __name__ == "__main__":
    if sys.argv[1] == "scaling":
        values = [float(v) for v in sys.argv[2:]] or [3.0, 10.0, 25.0, 2.0]
        scaling(list(zip(values[::2], values[1::2], strict=True)))
    elif sys.argv[1] == "run":
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
            "--distributed" in sys.argv)
    else:
        table(int(sys.argv[2]) if len(sys.argv) > 2 else 3)
