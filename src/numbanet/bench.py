"""Side-by-side speed comparison: the same training step in numbanet, PyTorch and NumPy.

Used by ``numbanet bench`` (:mod:`numbanet._bench_cli`) and by the asv ``track_``
benchmarks in ``asv_benchmarks/benchmarks/compare.py``, so the numbers in the command's
table and in the asv history come from one piece of code.

What is compared, per standard MLP (:data:`STANDARD_MODELS`):

* the same architecture: ``Dense`` layers with ReLU between them and a linear last layer;
* the same float32 initial weights (drawn here with NumPy and copied into every framework),
  the same batch (random inputs, random integer labels), softmax cross-entropy averaged
  over the batch, and one Adam step (``lr=1e-3``, PyTorch defaults otherwise);
* the same thread count: ``numbanet.set_num_threads(n)``, ``torch.set_num_threads(n)`` and,
  when ``threadpoolctl`` is installed, NumPy's BLAS limited to ``n`` threads.

The frameworks are timed interleaved in one process: every repeat times one sample of
each framework in a rotating order, so a burst of load from another process hits them
all alike, and the report uses the median over repeats. A sample runs the step a fixed
number of times, chosen once per framework so that a sample lasts at least ``min_time``
seconds. With more than one thread, each sample starts after a short pause (``settle``)
so the previous framework's spinning thread pool has gone to sleep.

Every framework's first step returns its loss; they agree to float32 rounding, which is
how the tests check that the three steps compute the same thing.

Example:
    >>> from numbanet.bench import compare
    >>> result = compare("64-32-10@32", threads=1, repeats=3, min_time=0.01)
    >>> sorted(result.samples_per_s)
    ['numbanet', 'numpy', 'torch']
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from numbanet._validation import Integer, OneOf, Optional, Real, check_arg, validate_args

__all__ = [
    "FRAMEWORKS",
    "STANDARD_MODELS",
    "Comparison",
    "ModelSpec",
    "available_frameworks",
    "compare",
    "initial_weights",
    "make_batch",
    "make_step",
    "parse_model",
]

#: The frameworks :func:`compare` knows, in report order.
FRAMEWORKS = ("numbanet", "torch", "numpy")

LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class ModelSpec:
    """An MLP and the batch size it is trained at.

    Attributes:
        sizes: layer widths, input first: ``(784, 256, 128, 10)`` is two ReLU hidden
            layers of 256 and 128 units and 10 output logits.
        batch: samples per training step.
    """

    sizes: tuple[int, ...]
    batch: int

    @property
    def name(self) -> str:
        """``"784-256-128-10@64"``: the form :func:`parse_model` reads."""
        return "-".join(map(str, self.sizes)) + f"@{self.batch}"

    @property
    def num_parameters(self) -> int:
        """Weights and biases of all layers."""
        return sum(i * o + o for i, o in zip(self.sizes[:-1], self.sizes[1:], strict=True))

    @property
    def flops_per_step(self) -> int:
        """Multiply-adds times two of the three GEMMs per layer (forward, dW, dX).

        The first layer's input gradient is not needed, so it is not counted.
        """
        total = 0
        for index, (i, o) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True)):
            gemms = 2 if index == 0 else 3
            total += gemms * 2 * self.batch * i * o
        return total


#: The MLPs of the benchmark issue, by name.
STANDARD_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec((64, 32, 10), 32),
        ModelSpec((784, 256, 128, 10), 64),
        ModelSpec((784, 256, 128, 10), 256),
        ModelSpec((784, 1024, 1024, 10), 512),
    )
}


def parse_model(model: str | ModelSpec) -> ModelSpec:
    """Read ``"784-256-128-10@64"`` (widths, input first, ``@`` batch size).

    Raises:
        TypeError: ``model`` is neither a string nor a :class:`ModelSpec`.
        ValueError: the string is malformed (the message shows the expected form).
    """
    if isinstance(model, ModelSpec):
        return model
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a string like '784-256-128-10@64', got {type(model).__name__}"
        )
    text = model.strip()
    try:
        widths, batch = text.split("@")
        sizes = tuple(int(w) for w in widths.split("-"))
        spec = ModelSpec(sizes, int(batch))
    except ValueError:
        raise ValueError(
            f"model must look like '784-256-128-10@64' (widths, input first, then @batch), "
            f"got {model!r}"
        ) from None
    if len(spec.sizes) < 2 or min(spec.sizes) < 1 or spec.batch < 1:
        raise ValueError(f"model {model!r} needs at least two positive widths and a positive batch")
    return spec


def initial_weights(spec: ModelSpec, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """He-uniform float32 weights ``(in, out)`` and small biases ``(out,)`` per layer.

    Non-zero biases make a wrong bias gradient show up in the loss after one step.
    """
    rng = np.random.default_rng(seed)
    layers = []
    for i, o in zip(spec.sizes[:-1], spec.sizes[1:], strict=True):
        bound = np.sqrt(6.0 / i)
        w = rng.uniform(-bound, bound, size=(i, o)).astype(np.float32)
        b = rng.uniform(-0.1, 0.1, size=o).astype(np.float32)
        layers.append((w, b))
    return layers


def make_batch(spec: ModelSpec, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A random batch: inputs ``(batch, sizes[0])`` float32 and int64 labels ``(batch,)``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((spec.batch, spec.sizes[0])).astype(np.float32)
    y = rng.integers(0, spec.sizes[-1], size=spec.batch, dtype=np.int64)
    return x, y


# ---------------------------------------------------------------------------------------
# One training step per framework. Each builder returns ``step() -> float`` (the loss of
# the batch before the update) after copying the same initial weights in.
# ---------------------------------------------------------------------------------------


def _numbanet_step(spec: ModelSpec, weights, x, y) -> Callable[[], float]:
    from numbanet.nn import Dense, Sequential
    from numbanet.plugins import get_optimizer

    last = len(weights) - 1
    model = Sequential(
        [
            Dense(w.shape[0], w.shape[1], activation=None if i == last else "relu")
            for i, (w, _) in enumerate(weights)
        ],
        seed=0,
        dtype="float32",
    )
    dense = [layer for layer in model.layers if isinstance(layer, Dense)]
    for layer, (w, b) in zip(dense, weights, strict=True):
        layer.weight.value[...] = w
        layer.bias.value[...] = b
    model.compile(loss="cross_entropy", optimizer=get_optimizer("adam", lr=LEARNING_RATE))

    # The public train_step: it validates X and y each call, as a user's loop would.
    def step() -> float:
        return float(model.train_step(x, y))

    return step


def _torch_step(spec: ModelSpec, weights, x, y) -> Callable[[], float]:
    import torch

    layers: list[Any] = []
    last = len(weights) - 1
    for i, (w, b) in enumerate(weights):
        linear = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            # torch keeps the weight as (out, in).
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
        if i != last:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


class _NumpyMLP:
    """The reference: a float32 MLP with softmax cross-entropy and Adam in plain NumPy.

    Written as a careful user would: buffers allocated once, ``out=`` everywhere on the
    hot path, BLAS through ``np.matmul``. Adam follows PyTorch's formulation
    (``p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)``).
    """

    def __init__(self, weights, x: np.ndarray, y: np.ndarray) -> None:
        self.params = [a.copy() for w, b in weights for a in (w, b)]
        self.grads = [np.zeros_like(p) for p in self.params]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.tmp = [np.zeros_like(p) for p in self.params]
        self.x, self.y = x, y
        rows = x.shape[0]
        widths = [w.shape[1] for w, _ in weights]
        self.z = [np.empty((rows, n), np.float32) for n in widths]
        self.h = [np.empty((rows, n), np.float32) for n in widths[:-1]]
        self.dz = [np.empty((rows, n), np.float32) for n in widths]
        self.onehot = np.zeros((rows, widths[-1]), np.float32)
        self.onehot[np.arange(rows), y] = 1.0
        self.t = 0
        self.b1, self.b2, self.eps = 0.9, 0.999, 1e-8

    def step(self) -> float:
        n_layers = len(self.z)
        rows = self.x.shape[0]
        inp = self.x
        for i in range(n_layers):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            np.matmul(inp, w, out=self.z[i])
            self.z[i] += b
            if i < n_layers - 1:
                np.maximum(self.z[i], 0.0, out=self.h[i])
                inp = self.h[i]
        logits = self.z[-1]
        # Stable softmax cross-entropy; dz[-1] holds the probabilities, then the gradient.
        p = self.dz[-1]
        np.subtract(logits, logits.max(axis=1, keepdims=True), out=p)
        np.exp(p, out=p)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(rows), self.y]).mean())
        p -= self.onehot
        p *= np.float32(1.0 / rows)
        for i in range(n_layers - 1, -1, -1):
            inp = self.x if i == 0 else self.h[i - 1]
            np.matmul(inp.T, self.dz[i], out=self.grads[2 * i])
            np.sum(self.dz[i], axis=0, out=self.grads[2 * i + 1])
            if i > 0:
                dh = self.dz[i - 1]
                np.matmul(self.dz[i], self.params[2 * i].T, out=dh)
                dh *= self.z[i - 1] > 0
        self.t += 1
        bc1 = 1.0 - self.b1**self.t
        bc2 = 1.0 - self.b2**self.t
        step_size = np.float32(LEARNING_RATE / bc1)
        inv_sqrt_bc2 = np.float32(1.0 / np.sqrt(bc2))
        for p_, g, m, v, tmp in zip(
            self.params, self.grads, self.m, self.v, self.tmp, strict=True
        ):
            m *= np.float32(self.b1)
            m += np.float32(1.0 - self.b1) * g
            v *= np.float32(self.b2)
            np.multiply(g, g, out=tmp)
            tmp *= np.float32(1.0 - self.b2)
            v += tmp
            np.sqrt(v, out=tmp)
            tmp *= inv_sqrt_bc2
            tmp += np.float32(self.eps)
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p_ -= tmp
        return loss


def _numpy_step(spec: ModelSpec, weights, x, y) -> Callable[[], float]:
    return _NumpyMLP(weights, x, y).step


_BUILDERS = {"numbanet": _numbanet_step, "torch": _torch_step, "numpy": _numpy_step}


def available_frameworks() -> list[str]:
    """The frameworks of :data:`FRAMEWORKS` importable here (PyTorch is optional)."""
    found = ["numbanet"]
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        found.append("torch")
    found.append("numpy")
    return found


@validate_args({"framework": OneOf(*FRAMEWORKS)})
def make_step(
    framework: str, model: str | ModelSpec, seed: int = 0
) -> Callable[[], float]:
    """Build one framework's training step on the shared weights and batch.

    Args:
        framework: one of :data:`FRAMEWORKS`.
        model: a :class:`ModelSpec` or its name (``"784-256-128-10@64"``).
        seed: seeds the initial weights (the batch uses ``seed + 1``).

    Returns:
        ``step() -> float``: one forward, loss, backward and Adam update; returns the
        loss before the update.
    """
    spec = parse_model(model)
    x, y = make_batch(spec, seed + 1)
    return _BUILDERS[framework](spec, initial_weights(spec, seed), x, y)


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _thread_limits(
    threads: int, frameworks: Sequence[str] = FRAMEWORKS
) -> Iterator[dict[str, Any]]:
    """Give each of ``frameworks`` ``threads`` threads; restore the previous settings after.

    Only the frameworks named are touched: setting numbanet's thread count starts Numba's
    OpenMP pool, and once that pool has started PyTorch's OpenMP parallel regions in the
    same process run several times slower (measured here: a 2-thread 784-256-128-10@64
    step 5.8x slower), so an isolated PyTorch process must never start it.
    """
    import numbanet

    info: dict[str, Any] = {}
    previous = None
    if "numbanet" in frameworks:
        previous = numbanet.get_num_threads()
        numbanet.set_num_threads(threads)
    torch_previous = None
    torch = None
    if "torch" in frameworks:
        try:
            import torch
        except ImportError:
            torch = None  # type: ignore[assignment]
    if torch is not None:
        torch_previous = torch.get_num_threads()
        torch.set_num_threads(threads)
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            info["numpy_blas_threads"] = "not limited (install threadpoolctl)"
        else:
            stack.enter_context(threadpool_limits(limits=threads, user_api="blas"))
            info["numpy_blas_threads"] = threads
        try:
            yield info
        finally:
            if previous is not None:
                numbanet.set_num_threads(previous)
            if torch is not None and torch_previous is not None:
                torch.set_num_threads(torch_previous)


def _calibrate(step: Callable[[], float], min_time: float) -> int:
    """How many calls of ``step`` make one sample of at least ``min_time`` seconds."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            step()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or number >= 1 << 20:
            return number
        # Aim a little past min_time so the next try usually suffices.
        number = max(number * 2, int(number * 1.2 * min_time / max(elapsed, 1e-9)))


class _LocalRunner:
    """Runs one framework's step in this process."""

    def __init__(self, framework: str, spec: ModelSpec, seed: int) -> None:
        self.step = make_step(framework, spec, seed)

    def first(self) -> float:
        return float(self.step())

    def calibrate(self, min_time: float) -> int:
        return _calibrate(self.step, min_time)

    def run(self, number: int) -> float:
        """Seconds per step over ``number`` steps."""
        start = time.perf_counter()
        for _ in range(number):
            self.step()
        return (time.perf_counter() - start) / number

    def close(self) -> None:
        pass


def _worker(conn: Any, framework: str, spec: ModelSpec, seed: int, threads: int) -> None:
    """Body of an isolated framework process: serve first/calibrate/run requests."""
    with _thread_limits(threads, [framework]):
        runner = _LocalRunner(framework, spec, seed)
        while True:
            request, argument = conn.recv()
            if request == "close":
                break
            conn.send(getattr(runner, request)(*argument))
    conn.close()


class _IsolatedRunner:
    """Runs one framework's step in a process of its own (``isolate=True``).

    Each framework then has its own threading runtime. In one process, once Numba's
    OpenMP pool has started, PyTorch's OpenMP regions run several times slower (both
    bind the same libgomp; measured here: PyTorch's 2-thread 784-256-128-10@64 step 5.8x
    slower), which would flatter numbanet.
    """

    def __init__(self, framework: str, spec: ModelSpec, seed: int, threads: int) -> None:
        import multiprocessing

        # spawn, not fork: forking after an OpenMP pool started can hang the child.
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_worker, args=(child, framework, spec, seed, threads), daemon=True
        )
        self._process.start()
        child.close()

    def _ask(self, request: str, *argument: Any) -> Any:
        self._conn.send((request, argument))
        return self._conn.recv()

    def first(self) -> float:
        return float(self._ask("first"))

    def calibrate(self, min_time: float) -> int:
        return int(self._ask("calibrate", min_time))

    def run(self, number: int) -> float:
        return float(self._ask("run", number))

    def close(self) -> None:
        self._conn.send(("close", ()))
        self._process.join(timeout=30)


@dataclass
class Comparison:
    """The result of :func:`compare` for one model and thread count.

    Attributes:
        model: the model name (``"784-256-128-10@64"``).
        batch: samples per step.
        threads: threads each framework was given.
        repeats: samples per framework.
        step_seconds: median seconds per training step, per framework.
        samples_per_s: ``batch / step_seconds``, per framework.
        spread: (max - min) / median of the per-sample step times, per framework: a
            large value means the machine was busy and the medians are rough.
        first_loss: the loss each framework's first step returned (they should agree).
        ratios: ``samples_per_s["numbanet"] / samples_per_s[other]`` for each other
            framework; above 1 means numbanet is faster.
        gflops: numbanet's GEMM work per second (:attr:`ModelSpec.flops_per_step`).
        notes: how threads were limited, versions.
    """

    model: str
    batch: int
    threads: int
    repeats: int
    step_seconds: dict[str, float] = field(default_factory=dict)
    samples_per_s: dict[str, float] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)
    first_loss: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    gflops: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return asdict(self)


@validate_args({
    "repeats": Integer(min=1),
    "min_time": Real(min=0, closed="neither", what="a number of seconds"),
    "settle": Optional(Real(min=0, what="a number of seconds")),
})
def compare(
    model: str | ModelSpec,
    threads: int = 1,
    repeats: int = 7,
    min_time: float = 0.05,
    frameworks: Sequence[str] | None = None,
    seed: int = 0,
    settle: float | None = None,
    isolate: bool = False,
) -> Comparison:
    """Time the same training step in each framework, interleaved, and compare.

    Args:
        model: a :class:`ModelSpec` or a name such as ``"784-256-128-10@64"``.
        threads: threads for every framework (1 to ``numbanet.threads.max_threads()``).
        repeats: samples per framework; the report uses their median. At least 1.
        min_time: minimum seconds per sample (steps are repeated to reach it). Positive.
        frameworks: which of :data:`FRAMEWORKS` to time; default: all that are installed.
            ``"numbanet"`` is always included, since ratios are relative to it.
        seed: seeds the shared weights and batch.
        settle: seconds to sleep before each sample; default 0.2 with more than one
            thread, else 0. Thread pools busy-wait for a while after their last task
            (OpenBLAS by default ~2**28 cycles, about 0.1 s; OpenMP runtimes less), so
            without a pause the previous framework's idle workers would compete for the
            cores with the next framework's.
        isolate: run each framework in a process of its own (still interleaved sample
            by sample), so their threading runtimes cannot interfere; recommended with
            more than one thread.

    Returns:
        a :class:`Comparison`.

    Raises:
        TypeError, ValueError: bad arguments (named in the message).
        ImportError: ``"torch"`` asked for explicitly but not installed.
    """
    from numbanet.threads import max_threads

    spec = parse_model(model)
    threads = check_arg("threads", threads, Integer(min=1, max=max_threads()))
    if settle is None:
        settle = 0.2 if threads > 1 else 0.0
    if frameworks is None:
        chosen = available_frameworks()
    else:
        if isinstance(frameworks, str):
            frameworks = [frameworks]
        unknown = [f for f in frameworks if f not in FRAMEWORKS]
        if unknown:
            raise ValueError(f"frameworks: unknown {unknown}; choose from {list(FRAMEWORKS)}")
        chosen = [f for f in FRAMEWORKS if f in frameworks or f == "numbanet"]

    result = Comparison(model=spec.name, batch=spec.batch, threads=threads, repeats=repeats)
    # In isolated mode this process only coordinates: it must not start any thread pool.
    limited = () if isolate else chosen
    with _thread_limits(threads, limited) as info, contextlib.ExitStack() as cleanup:
        result.notes.update(info)
        result.notes["settle_seconds"] = settle
        result.notes["isolated_processes"] = bool(isolate)
        runners: dict[str, Any] = {}
        for name in chosen:
            runner = (_IsolatedRunner(name, spec, seed, threads) if isolate
                      else _LocalRunner(name, spec, seed))
            cleanup.callback(runner.close)
            runners[name] = runner
        # The first call compiles / warms caches; its loss is the cross-check.
        for name, runner in runners.items():
            result.first_loss[name] = runner.first()
        numbers = {}
        for name, runner in runners.items():
            time.sleep(settle)
            numbers[name] = runner.calibrate(min_time)
        samples: dict[str, list[float]] = {name: [] for name in chosen}
        for r in range(repeats):
            # Rotate the order so no framework always runs right after another one.
            order = chosen[r % len(chosen):] + chosen[: r % len(chosen)]
            for name in order:
                time.sleep(settle)
                samples[name].append(runners[name].run(numbers[name]))

    for name, times in samples.items():
        median = statistics.median(times)
        result.step_seconds[name] = median
        result.samples_per_s[name] = spec.batch / median
        result.spread[name] = (max(times) - min(times)) / median
        result.gflops[name] = spec.flops_per_step / median / 1e9
    for name in chosen:
        if name != "numbanet":
            result.ratios[name] = result.samples_per_s["numbanet"] / result.samples_per_s[name]
    result.notes["versions"] = _versions(chosen)
    return result


def _versions(frameworks: Sequence[str]) -> dict[str, str]:
    import numba

    import numbanet

    versions = {"numbanet": numbanet.__version__, "numba": numba.__version__,
                "numpy": np.__version__}
    if "torch" in frameworks:
        import torch

        versions["torch"] = torch.__version__
    return versions
