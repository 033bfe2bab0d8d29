"""Side-by-side training-step speed of LeNet-5 in numbanet and PyTorch, and where
numbanet's time goes.

Run: ``python asv_benchmarks/compare_cnn.py [--threads 1 2] [--repeats 15] [--batch 64]``
(add ``--breakdown`` for numbanet's per-layer and per-kernel times, ``--peak`` for the
conv GEMMs' share of this CPU's FMA peak).

The model is LeNet-5 on 28x28x1 images: conv 5x5 6ch pad 2 + ReLU, maxpool 2, conv 5x5
16ch + ReLU, maxpool 2, flatten, dense 400-120-84-10 (ReLU between), softmax
cross-entropy, Adam (lr 1e-3). PyTorch runs eager in ``channels_last`` (its fastest mode
here). Both start from the same weights (numbanet's initialisation copied into torch,
the first dense layer's rows permuted from our (h, w, c) flattening to torch's
(c, h, w)); the first losses are printed and must agree.

Method: each framework runs in a process of its own (spawned, so the two threading
runtimes never share a process), pinned with ``os.sched_setaffinity`` to the same
cores ``0 .. threads-1``, with ``numbanet.set_num_threads`` / ``torch.set_num_threads``
at that count. Samples alternate between the two processes (A, B, A, B, ...) so load
from other processes hits both alike; each sample times enough steps to last
``--min-time`` seconds after a short untimed warm-up, and the medians are reported with
their ratio. On a shared machine, compare ratios measured side by side rather than
absolute numbers from different runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

LR = 1e-3


def _numbanet_model(seed: int = 0) -> Any:
    import numbanet as nbn

    return nbn.Sequential(
        [
            nbn.Conv2D(1, 6, 5, padding=2, activation="relu"),
            nbn.MaxPool2D(2),
            nbn.Conv2D(6, 16, 5, activation="relu"),
            nbn.MaxPool2D(2),
            nbn.Flatten(),
            nbn.Dense(400, 120, activation="relu"),
            nbn.Dense(120, 84, activation="relu"),
            nbn.Dense(84, 10),
        ],
        input_shape=(28, 28, 1),
        seed=seed,
        dtype="float32",
    )


def _batch(batch: int, seed: int = 1) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((batch, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    return x, y


def _numbanet_step(batch: int) -> Any:
    import numbanet as nbn

    model = _numbanet_model()
    model.compile(loss="cross_entropy", optimizer=nbn.get_optimizer("adam", lr=LR))
    x, y = _batch(batch)

    def step() -> float:
        return float(model.train_step(x, y))

    return step


def _torch_step(batch: int) -> Any:
    import numpy as np
    import torch

    weights = [p.value.copy() for p in _numbanet_model().parameters()]
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(400, 120), torch.nn.ReLU(),
        torch.nn.Linear(120, 84), torch.nn.ReLU(),
        torch.nn.Linear(84, 10),
    )
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for i, conv in enumerate(convs):
            # ours (kh, kw, in, out) -> torch (out, in, kh, kw)
            conv.weight.copy_(torch.from_numpy(weights[2 * i].transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(weights[2 * i + 1]))
        for i, lin in enumerate(linears):
            w = weights[4 + 2 * i]
            if i == 0:  # rows in (h, w, c) order -> torch's flatten order (c, h, w)
                w = w.reshape(5, 5, 16, -1).transpose(2, 0, 1, 3).reshape(400, -1)
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            lin.bias.copy_(torch.from_numpy(weights[5 + 2 * i]))
    net = net.to(memory_format=torch.channels_last)
    x, y = _batch(batch)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(
        memory_format=torch.channels_last)
    yt = torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=LR)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def _worker(conn: Any, framework: str, threads: int, batch: int) -> None:
    os.sched_setaffinity(0, set(range(threads)))
    if framework == "numbanet":
        import numbanet

        numbanet.set_num_threads(threads)
        step = _numbanet_step(batch)
    else:
        import torch

        torch.set_num_threads(threads)
        step = _torch_step(batch)
    first = step()
    conn.send(first)
    while True:
        request, arg = conn.recv()
        if request == "close":
            break
        if request == "warm":
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < arg:
                step()
            conn.send(None)
        elif request == "calibrate":
            number = 1
            while True:
                t0 = time.perf_counter()
                for _ in range(number):
                    step()
                if time.perf_counter() - t0 >= arg:
                    break
                number *= 2
            conn.send(number)
        elif request == "run":
            t0 = time.perf_counter()
            for _ in range(arg):
                step()
            conn.send((time.perf_counter() - t0) / arg)
    conn.close()


class _Runner:
    def __init__(self, framework: str, threads: int, batch: int) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker,
                                       args=(child, framework, threads, batch), daemon=True)
        self.process.start()
        child.close()
        self.first_loss = self.conn.recv()

    def ask(self, request: str, arg: Any = None) -> Any:
        self.conn.send((request, arg))
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(("close", None))
        self.process.join(timeout=30)


def compare(threads: int, batch: int, repeats: int, min_time: float) -> dict[str, Any]:
    """Median seconds per step of each framework, sampled alternately."""
    runners = {name: _Runner(name, threads, batch) for name in ("numbanet", "torch")}
    try:
        numbers = {}
        for name, runner in runners.items():
            runner.ask("warm", 0.5)
            numbers[name] = runner.ask("calibrate", min_time)
        samples: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(repeats):
            for name, runner in runners.items():
                runner.ask("warm", 0.02)
                samples[name].append(runner.ask("run", numbers[name]))
        return {
            "first_loss": {n: r.first_loss for n, r in runners.items()},
            "median": {n: statistics.median(s) for n, s in samples.items()},
            "best": {n: min(s) for n, s in samples.items()},
        }
    finally:
        for runner in runners.values():
            runner.close()


def breakdown(threads: int, batch: int, steps: int = 200) -> None:
    """numbanet's step split by layer and by kernel (minimum over steps of each part)."""
    import collections

    import numbanet as nbn
    import numbanet.nn.conv as conv_layer

    os.sched_setaffinity(0, set(range(threads)))
    nbn.set_num_threads(threads)
    model = _numbanet_model()
    model.compile(loss="cross_entropy", optimizer=nbn.get_optimizer("adam", lr=LR))
    x, y = _batch(batch)
    for _ in range(10):
        model.train_step(x, y)
    # CPU time of this thread is robust to other processes on one thread; with more
    # threads the wall clock is the only honest measure.
    clock = time.thread_time if threads == 1 else time.perf_counter
    current: dict[tuple[str, str], float] = collections.defaultdict(float)
    best: dict[tuple[str, str], float] = collections.defaultdict(lambda: float("inf"))
    where = ["step"]

    def timed(function: Any, key: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            result = function(*args, **kwargs)
            current[(where[-1], key)] += clock() - t0
            return result
        return wrapper

    for name in ("im2col_into", "gemm_into", "col2im_into", "column_sum_into",
                 "untranspose_into", "transpose_small", "direct_forward_into",
                 "direct_backward_weight_into", "flip_weights"):
        setattr(conv_layer, name, timed(getattr(conv_layer, name), name))
    for i, layer in enumerate(model.layers):
        for method in ("forward", "backward_fused"):
            inner = getattr(layer, method)

            def wrapped(*args: Any, inner: Any = inner, label: str = f"{i} {layer!r} "
                        f"{method.split('_')[0]}", **kwargs: Any) -> Any:
                where.append(label)
                t0 = clock()
                result = inner(*args, **kwargs)
                current[(label, "total")] += clock() - t0
                where.pop()
                return result

            setattr(layer, method, wrapped)
    for _ in range(steps):
        current.clear()
        t0 = clock()
        model.train_step(x, y)
        current[("step", "total")] = clock() - t0
        for key, value in current.items():
            best[key] = min(best[key], value)
    total = best.pop(("step", "total"))
    print(f"numbanet step at {threads} thread(s), minimum over {steps} steps: "
          f"{total * 1e3:.3f} ms ({batch / total:,.0f} samples/s)")
    layers = 0.0
    for (label, part), value in sorted(best.items()):
        if part == "total":
            layers += value
        print(f"  {label:70s} {part:32s} {value * 1e3:7.3f} ms")
    print(f"  loss, Adam, input checks and Python (step minus layers): "
          f"{(total - layers) * 1e3:.3f} ms")


def peak(threads: int = 1) -> None:
    """GFLOP/s of the conv GEMMs (LeNet conv2 at batch 64) against a large square GEMM,
    the nearest this machine gets to its FMA peak."""
    import numpy as np

    import numbanet as nbn
    from numbanet.kernels.matmul import gemm_into, gemm_plan

    os.sched_setaffinity(0, set(range(threads)))
    nbn.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter

    def gflops(a: Any, b: Any, out: Any, ta: bool, tb: bool) -> float:
        m, n = out.shape
        k = a.shape[0] if ta else a.shape[1]
        plan = gemm_plan(m, n, k, out.dtype)
        work = np.empty(plan.workspace, out.dtype)
        gemm_into(a, b, out, ta, tb, work, plan)
        fastest = float("inf")
        for _ in range(15):
            t0 = clock()
            for _ in range(10):
                gemm_into(a, b, out, ta, tb, work, plan)
            fastest = min(fastest, (clock() - t0) / 10)
        return 2 * m * n * k / fastest / 1e9

    rng = np.random.default_rng(0)
    sq = rng.random((1024, 1024), dtype=np.float32)
    ref = gflops(sq, sq, np.empty_like(sq), False, False)
    m, k, n = 64 * 10 * 10, 150, 16
    cols = rng.random((m, k), dtype=np.float32)
    w = rng.random((k, n), dtype=np.float32)
    dz = rng.random((m, n), dtype=np.float32)
    rows = [
        ("forward z.T = W.T @ cols.T (16 x 6400 x 150)",
         gflops(w, cols, np.empty((n, m), np.float32), True, True)),
        ("weight dW.T = dz.T @ cols (16 x 150 x 6400)",
         gflops(dz, cols, np.empty((n, k), np.float32), True, False)),
        ("input dcols = dz @ W.T (6400 x 150 x 16)",
         gflops(dz, w, np.empty((m, k), np.float32), False, True)),
    ]
    print(f"square 1024^3 GEMM at {threads} thread(s): {ref:.1f} GFLOP/s (the FMA peak "
          f"measured here is ~96 GFLOP/s per core)")
    for label, value in rows:
        print(f"  conv2 {label}: {value:.1f} GFLOP/s = {value / ref:.0%} of the square GEMM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--min-time", type=float, default=0.1)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--peak", action="store_true")
    args = parser.parse_args()
    if args.breakdown:
        for threads in args.threads:
            breakdown(threads, args.batch)
        return
    if args.peak:
        peak()
        return
    load = os.getloadavg()
    print(f"LeNet-5 training step, batch {args.batch}, float32; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    for threads in args.threads:
        result = compare(threads, args.batch, args.repeats, args.min_time)
        med, fast = result["median"], result["best"]
        sps = {n: args.batch / s for n, s in med.items()}
        print(f"threads {threads}: numbanet {sps['numbanet']:,.0f} samples/s, torch "
              f"channels_last {sps['torch']:,.0f} samples/s (medians of {args.repeats}); "
              f"ratio {med['torch'] / med['numbanet']:.2f}x (best samples: "
              f"{fast['torch'] / fast['numbanet']:.2f}x); first losses "
              f"{result['first_loss']['numbanet']:.6f} / {result['first_loss']['torch']:.6f}")


if __name__ == "__main__":
    main()
