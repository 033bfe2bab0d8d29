"""Side by side: numbanet's BatchNorm and LayerNorm against PyTorch, forward + backward.

Run: ``python asv_benchmarks/compare_norm.py [--threads 1 2] [--rounds 5] [--cores 0,1]
[--dtype float32] [--mode paired [--pairs 15] [--slice 0.25]]`` (needs torch).

Cases (float32 by default), one training step of the layer alone: forward in training
mode, then backward with the input gradient and both parameter gradients:

* BatchNorm on ``(256, 1024)`` (``torch.nn.BatchNorm1d``) and on channels-last images
  ``(64, 16, 16, 64)`` (``torch.nn.BatchNorm2d`` on a ``channels_last`` tensor, the
  same memory layout);
* LayerNorm over the last axis of the same two shapes.

numbanet is timed through the layer's own ``forward``/``backward`` (what a model calls;
the model's input check and output copy are left out), PyTorch through the module call
and ``y.backward(dy)`` (its autograd overhead included: that is what its users pay).
Both get inputs on 64-byte boundaries: numbanet's from ``numbanet._aligned`` (in a model
a layer reads other layers' workspace buffers, which are allocated there), PyTorch's
from its own allocator.

Method: each framework runs in its own process, pinned (``os.sched_setaffinity``) to the
same cores and limited to the same number of threads; a process warms up (compiles, or
loads numbanet's kernels from the disk cache) before it times anything. Two modes:

* ``--mode rounds`` (default): a fresh process per framework and round. Rounds alternate
  which framework goes first, so load from other processes hits both alike. A process
  times single calls for about a second per case and reports the median; the table
  shows the median over rounds of those medians, and the ratio PyTorch time / numbanet
  time (above 1: numbanet is faster). On a machine shared with other jobs, also compare
  the "best" columns (each framework's fastest round).
* ``--mode paired``: one process per framework for the whole run, and the parent asks
  them in turn to time a case for ``--slice`` seconds (0.25), ``--pairs`` times (15)
  per case, alternating which goes first. Each pair gives a ratio of two medians
  measured a fraction of a second apart; the table shows the median and quartiles of
  those ratios. On a shared machine whose load changes over seconds (on the 2-vCPU
  development VM, a compute-bound loop on both vCPUs ran at half speed in about one
  check in fifteen, as if the host gave both one core), a slow stretch then lands in
  one pair instead of in one framework's whole round.

  With two or more threads the numbanet worker also times an empty parallel region
  (one ``prange`` iteration per thread, nothing else) for 0.02 s after each pair, and
  the table's "handoff" column gives its median in microseconds: the cost of waking
  the other threads and collecting them, cache lines crossing between cores. On the
  2-vCPU development VM it is 1.5-1.6 us most of the time and 2.7-3.1 us in the
  stretches where a line written by one core costs the other several times more to
  read; the two-thread norms are slower in those (docs/performance.md).

Memory traffic: the table's GB/s counts the passes the kernels make over arrays of the
input's size (:mod:`numbanet.kernels.norm`): BatchNorm 8 (forward reads x twice and
writes y; backward reads x and dy twice and writes dx), LayerNorm 5 (forward reads x and
writes y; backward reads x and dy and writes dx). The last lines give, for comparison,
numpy's copy bandwidth (read + write) on one core for a 256 MiB array (DRAM) and an array
of the cases' size (the caches: both shapes are 1 MiB and 4 MiB of float32).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = [
    ("BatchNorm", (256, 1024)),
    ("BatchNorm", (64, 16, 16, 64)),
    ("LayerNorm", (256, 1024)),
    ("LayerNorm", (64, 16, 16, 64)),
]
# Arrays of the input's size each forward + backward reads or writes (see the docstring).
PASSES = {"BatchNorm": 8, "LayerNorm": 5}


def _time_calls(fn, seconds: float = 1.0, warmup: float = 0.2) -> tuple[float, float]:
    """(median, min) seconds per call of ``fn`` over about ``seconds`` of single calls."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < warmup:
        fn()
    samples = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or len(samples) < 20:
        s = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - s)
    return statistics.median(samples), min(samples)


def _numbanet_steps(dtype: str, threads: int) -> dict:
    """case name -> a function running one forward + backward of numbanet's layer."""
    import numpy as np

    import numbanet as nbn
    from numbanet._aligned import aligned_empty

    nbn.set_num_threads(threads)
    rng = np.random.default_rng(0)
    steps = {}
    for kind, shape in CASES:
        layer = getattr(nbn, kind)(shape[-1])
        model = nbn.Sequential([layer], seed=0, dtype=dtype, input_shape=shape[1:])
        layer = model.layers[0]
        # 64-byte aligned, as the layer's input and gradient are in a model (other
        # layers' workspace buffers) and as PyTorch's allocator aligns its tensors;
        # NumPy's arrays of this size start 16 bytes into a page.
        x, dy = aligned_empty(shape, dtype), aligned_empty(shape, dtype)
        x[...] = rng.standard_normal(shape)
        dy[...] = rng.standard_normal(shape)

        def step(layer=layer, x=x, dy=dy):
            layer.forward(x, True)
            layer.backward(dy, need_input_grad=True)

        steps[f"{kind} {shape}"] = step
    return steps


def _torch_steps(dtype: str, threads: int) -> dict:
    """case name -> a function running one forward + backward of PyTorch's module."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tdtype = getattr(torch, dtype)
    steps = {}
    for kind, shape in CASES:
        c = shape[-1]
        if kind == "BatchNorm" and len(shape) == 4:
            n, h, w, _ = shape
            module = torch.nn.BatchNorm2d(c).to(tdtype)
            x = torch.randn(n, c, h, w, dtype=tdtype).to(memory_format=torch.channels_last)
        elif kind == "BatchNorm":
            module = torch.nn.BatchNorm1d(c).to(tdtype)
            x = torch.randn(*shape, dtype=tdtype)
        else:
            module = torch.nn.LayerNorm(c).to(tdtype)
            x = torch.randn(*shape, dtype=tdtype)
        x.requires_grad_(True)
        dy = torch.randn_like(x)

        def step(module=module, x=x, dy=dy):
            module(x).backward(dy)
            x.grad = None

        steps[f"{kind} {shape}"] = step
    return steps


_STEP_BUILDERS = {"numbanet": _numbanet_steps, "torch": _torch_steps}


def _bandwidth() -> dict:
    import numpy as np

    out = {}
    for label, nbytes in (("DRAM 256 MiB", 256 << 20), ("cache 1 MiB", 1 << 20),
                          ("cache 4 MiB", 4 << 20)):
        a = np.ones(nbytes // 4, dtype=np.float32)
        b = np.empty_like(a)
        median, best = _time_calls(lambda a=a, b=b: np.copyto(b, a), seconds=0.5)
        out[label] = (2 * nbytes / median / 1e9, 2 * nbytes / best / 1e9)
    return out


def _worker(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, args.cores)
    if args.worker == "bandwidth":
        print(json.dumps(_bandwidth()))
        return
    steps = _STEP_BUILDERS[args.worker](args.dtype, args.threads)
    if not args.serve:
        print(json.dumps({key: _time_calls(step) for key, step in steps.items()}))
        return
    # Paired mode: warm every case up, say so, then time one case per request line
    # ("case name<TAB>seconds") until stdin closes.
    if args.worker == "numbanet":
        steps["handoff"] = _empty_parallel_region(args.threads)
    for step in steps.values():
        _time_calls(step, seconds=0.05, warmup=0.2)
    print("ready", flush=True)
    for line in sys.stdin:
        key, seconds = line.rstrip("\n").split("\t")
        print(json.dumps(_time_calls(steps[key], seconds=float(seconds), warmup=0.02)),
              flush=True)


def _empty_parallel_region(threads: int):
    """A function launching a Numba parallel region with one empty iteration per thread
    (what every parallel kernel pays to start and join its threads)."""
    import numba
    import numpy as np

    @numba.njit(parallel=True)
    def region(flags):
        for t in numba.prange(flags.shape[0]):
            flags[t] = t

    flags = np.zeros(max(threads, 1) * 8)[::8]  # one cache line per thread
    return lambda: region(flags)


def _worker_command(name: str, threads: int, cores: list[int], dtype: str,
                    serve: bool = False) -> tuple[list[str], dict]:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(max(threads, 1)),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--worker", name, "--threads", str(threads),
           "--cores", ",".join(map(str, cores)), "--dtype", dtype]
    return cmd + (["--serve"] if serve else []), env


def _run_worker(name: str, threads: int, cores: list[int], dtype: str) -> dict:
    cmd, env = _worker_command(name, threads, cores, dtype)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _case_bytes(shape: tuple[int, ...], dtype: str) -> int:
    nbytes = 4 if dtype == "float32" else 8
    for d in shape:
        nbytes *= d
    return nbytes


def _print_header(threads: int, cores: list[int], what: str, columns: str) -> None:
    """The title and column heads of one thread count's table; ``columns`` are the
    mode's own, between the ratio and the bandwidth."""
    print(f"\nthreads={threads}, cores {cores}; microseconds per forward + backward ({what})")
    header = f"{'case':<32}{'numbanet':>10}{'torch':>10}{'ratio':>7}{columns}{'nb GB/s':>9}"
    print(header)
    print("-" * len(header))


def _paired(threads: int, cores: list[int], args: argparse.Namespace) -> None:
    """Paired mode for one thread count: start both workers, alternate their slices,
    print the table."""
    workers = {}
    try:
        for name in ("numbanet", "torch"):
            cmd, env = _worker_command(name, threads, cores, args.dtype, serve=True)
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
            workers[name] = proc
        for name, proc in workers.items():
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"{name} worker failed to start (see its output above)")

        def ask(name: str, key: str, seconds: float = args.slice) -> float:
            proc = workers[name]
            proc.stdin.write(f"{key}\t{seconds}\n")
            proc.stdin.flush()
            reply = proc.stdout.readline()
            if not reply:
                raise SystemExit(f"{name} worker stopped")
            return json.loads(reply)[0]

        handoff = threads > 1
        _print_header(threads, cores,
                      f"medians over {args.pairs} pairs of slices; ratio = PyTorch / "
                      f"numbanet per pair: median [quartiles]",
                      f"{'quartiles':>15}" + (f"{'handoff':>9}" if handoff else ""))
        for kind, shape in CASES:
            key = f"{kind} {shape}"
            nb, pt, hand = [], [], []
            for p in range(args.pairs):
                order = ("numbanet", "torch") if p % 2 == 0 else ("torch", "numbanet")
                got = {name: ask(name, key) for name in order}
                nb.append(got["numbanet"])
                pt.append(got["torch"])
                if handoff:
                    hand.append(ask("numbanet", "handoff", 0.02))
            ratios = sorted(t / n for t, n in zip(pt, nb, strict=True))
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            nb_med = statistics.median(nb)
            gbs = PASSES[kind] * _case_bytes(shape, args.dtype) / nb_med / 1e9
            hand_us = f"{statistics.median(hand) * 1e6:>9.1f}" if handoff else ""
            print(f"{key:<32}{nb_med * 1e6:>10.1f}{statistics.median(pt) * 1e6:>10.1f}"
                  f"{statistics.median(ratios):>7.2f}{f'[{q1:.2f}, {q3:.2f}]':>15}"
                  f"{hand_us}{gbs:>9.1f}")
    finally:
        for proc in workers.values():
            proc.stdin.close()
            proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cores", default=None,
                        help="comma-separated cores to pin to (default: the first "
                             "max(threads) cores this process may use)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--mode", default="rounds", choices=["rounds", "paired"],
                        help="a fresh process per framework and round (rounds), or one "
                             "per framework timing alternate slices (paired)")
    parser.add_argument("--pairs", type=int, default=15,
                        help="paired mode: pairs of slices per case")
    parser.add_argument("--slice", type=float, default=0.25,
                        help="paired mode: seconds of single calls per slice")
    parser.add_argument("--worker", choices=["numbanet", "torch", "bandwidth"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cores is not None:
        args.cores = [int(c) for c in args.cores.split(",")]
    if args.worker:
        args.threads = args.threads[0]
        _worker(args)
        return

    available = sorted(os.sched_getaffinity(0))
    cores_all = args.cores or available
    if max(args.threads) > len(cores_all):
        raise SystemExit(f"--threads {max(args.threads)} needs as many cores; have "
                         f"{cores_all}")
    try:
        load = os.getloadavg()
        load_text = f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    except OSError:
        load_text = "load average unknown"
    plan = (f"{args.rounds} rounds" if args.mode == "rounds"
            else f"{args.pairs} pairs of {args.slice} s slices per case")
    print(f"compare_norm: {args.dtype}, {plan}, {os.cpu_count()} CPUs, {load_text} at start")
    for threads in args.threads:
        cores = cores_all[:threads]
        if args.mode == "paired":
            _paired(threads, cores, args)
            continue
        runs: dict[str, list[dict]] = {"numbanet": [], "torch": []}
        for r in range(args.rounds):
            order = ["numbanet", "torch"] if r % 2 == 0 else ["torch", "numbanet"]
            for name in order:
                runs[name].append(_run_worker(name, threads, cores, args.dtype))
        _print_header(threads, cores,
                      "median over rounds of per-round medians; best = fastest round's "
                      "median", f"{'best nb':>10}{'best pt':>10}{'ratio':>7}")
        for kind, shape in CASES:
            key = f"{kind} {shape}"
            nb = [run[key][0] for run in runs["numbanet"]]
            pt = [run[key][0] for run in runs["torch"]]
            nb_med, pt_med = statistics.median(nb), statistics.median(pt)
            nb_best, pt_best = min(nb), min(pt)
            gbs = PASSES[kind] * _case_bytes(shape, args.dtype) / nb_med / 1e9
            print(f"{key:<32}{nb_med * 1e6:>10.1f}{pt_med * 1e6:>10.1f}"
                  f"{pt_med / nb_med:>7.2f}{nb_best * 1e6:>10.1f}{pt_best * 1e6:>10.1f}"
                  f"{pt_best / nb_best:>7.2f}{gbs:>9.1f}")
    band = _run_worker("bandwidth", 1, cores_all[:1], args.dtype)
    print("\nnumpy copy on one core, read + write GB/s (median, best): "
          + "; ".join(f"{k} {v[0]:.1f}, {v[1]:.1f}" for k, v in band.items()))
    try:
        load = os.getloadavg()
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end")
    except OSError:
        pass


if __name__ == "__main__":
    main()
