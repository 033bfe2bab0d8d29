"""Side-by-side speed comparison: the same training step in numbanet and its peers.

Used by ``numbanet bench`` (:mod:`numbanet._bench_cli`) and by the asv ``track_``
benchmarks in ``asv_benchmarks/benchmarks/compare.py``, so the numbers in the command's
table and in the asv history come from one piece of code.

The frameworks (:data:`FRAMEWORKS`): numbanet; JAX (``jax.jit`` of the whole step);
PyTorch with ``torch.compile``; PyTorch eager; Keras 3 on its JAX backend; and a plain
NumPy reference. All but numbanet and NumPy are optional: one that is not installed
(or fails to build its step) is skipped with a note saying why.

What is compared, per standard MLP (:data:`STANDARD_MODELS`) or CNN
(:data:`STANDARD_CNNS`: LeNet-5 and a small residual CNN with BatchNorm, see
:mod:`numbanet._bench_cnn`):

* the same architecture: for an MLP, ``Dense`` layers with ReLU between them and a
  linear last layer; for a CNN, the same layers in every framework, channels-last
  (PyTorch's ``channels_last`` memory format), BatchNorm in training mode (batch
  statistics) everywhere. The NumPy reference covers the MLPs only and is skipped with a
  note for a CNN;
* the same float32 initial weights (drawn here with NumPy and copied into every framework),
  the same batch (random inputs, random integer labels), softmax cross-entropy averaged
  over the batch, and one Adam step (``lr=1e-3``, PyTorch defaults otherwise);
* the same threads: each framework is given ``threads`` threads
  (``numbanet.set_num_threads``, ``torch.set_num_threads``, ``PJRT_NPROC`` for XLA, set
  before JAX is imported, and NumPy's BLAS through ``threadpoolctl`` when installed) and,
  in a process of its own (the default of ``numbanet bench``), every thread of that
  process is pinned to the same ``threads`` cores with ``os.sched_setaffinity`` (JAX's
  dispatch thread and Keras's callback thread run beside the pool).

The frameworks are timed interleaved: every repeat times one sample of each framework in
a rotating order, so a burst of load from another process hits them all alike, and the
report uses the median over repeats. A sample runs the step a fixed number of times,
chosen once per framework so that a sample lasts at least ``min_time`` seconds. With more
than one thread, each sample starts after a short pause (``settle``) so the previous
framework's spinning thread pool has gone to sleep.

Every framework's first step returns its loss; same weights and batch give the same loss
to float32 rounding, and :attr:`Comparison.losses_agree` checks it (``numbanet bench``
exits 1 when they disagree: the frameworks would not be computing the same step).

:func:`cold_start` measures the other side of speed: the seconds from launching a fresh
interpreter to the end of the first training step, with every compile cache empty.

Example:
    >>> from numbanet.bench import compare
    >>> result = compare("64-32-10@32", threads=1, repeats=3, min_time=0.01,
    ...                  frameworks=["numbanet", "numpy"])
    >>> sorted(result.samples_per_s)
    ['numbanet', 'numpy']
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from numbanet._bench_cnn import CNNSpec
from numbanet._bench_steps import (
    FRAMEWORKS,
    LEARNING_RATE,
    REPORT_MARK,
    STANDARD_MODELS,
    BenchSpec,
    ModelSpec,
    bench_cores,
    build_step,
    cold_command,
    cold_environment,
    initial_weights,
    limit_threads,
    make_batch,
    missing,
    parse_model,
    pin_process,
    prepare_process,
    remove_tree,
    unsupported,
)
from numbanet._validation import Integer, OneOf, Optional, Real, check_arg, validate_args

__all__ = [
    "COLD_START_MODEL",
    "FRAMEWORKS",
    "LEARNING_RATE",
    "LOSS_RTOL",
    "STANDARD_CNNS",
    "STANDARD_MODELS",
    "BenchSpec",
    "CNNSpec",
    "ColdStart",
    "Comparison",
    "ModelSpec",
    "available_frameworks",
    "cold_start",
    "compare",
    "initial_weights",
    "make_batch",
    "make_step",
    "parse_model",
]

#: Relative difference between two frameworks' first losses above which they are taken
#: to compute different steps (float32 rounding gives about 1e-7).
LOSS_RTOL = 1e-4

#: The CNNs of issue 13, by name: LeNet-5 (28x28x1) and a small residual CNN (32x32x3,
#: BatchNorm), both at batch 64. :data:`STANDARD_MODELS` stays the MLPs.
STANDARD_CNNS: dict[str, CNNSpec] = {
    spec.name: spec for spec in (CNNSpec("lenet5", 64), CNNSpec("resnet-small", 64))
}

#: The model of the cold-start figures in the benchmark issue.
COLD_START_MODEL = "784-256-128-10@64"


def available_frameworks() -> list[str]:
    """The frameworks of :data:`FRAMEWORKS` installed here, in report order.

    Found without importing them (see :func:`numbanet._bench_steps.missing`); one that is
    installed may still fail to build its step (``torch.compile`` without a C++
    compiler), and is then skipped with a note by :func:`compare` and :func:`cold_start`.
    """
    return [name for name in FRAMEWORKS if missing(name) is None]


def _choose(frameworks: Sequence[str] | str | None, spec: BenchSpec | None = None
            ) -> tuple[list[str], dict[str, str]]:
    """``(frameworks to run, {skipped framework: why})``; numbanet always runs. A
    framework without a step for ``spec`` (NumPy for a CNN) is skipped with a note."""
    if frameworks is None:
        wanted = list(FRAMEWORKS)
    else:
        if isinstance(frameworks, str):
            frameworks = [frameworks]
        unknown = [f for f in frameworks if f not in FRAMEWORKS]
        if unknown:
            raise ValueError(f"frameworks: unknown {unknown}; choose from {list(FRAMEWORKS)}")
        wanted = [f for f in FRAMEWORKS if f in frameworks or f == "numbanet"]
    chosen, skipped = [], {}
    for name in wanted:
        reason = missing(name) or (None if spec is None else unsupported(name, spec))
        if reason is None:
            chosen.append(name)
        else:
            skipped[name] = reason
    return chosen, skipped


@validate_args({"framework": OneOf(*FRAMEWORKS)})
def make_step(
    framework: str, model: str | BenchSpec, seed: int = 0
) -> Callable[[], float]:
    """Build one framework's training step on the shared weights and batch.

    Args:
        framework: one of :data:`FRAMEWORKS`.
        model: a :class:`ModelSpec` or :class:`CNNSpec`, or its name
            (``"784-256-128-10@64"``, ``"lenet5@64"``, ``"resnet-small@64"``).
        seed: seeds the initial weights (the batch uses ``seed + 1``).

    Returns:
        ``step() -> float``: one forward, loss, backward and Adam update; returns the
        loss before the update.

    Raises:
        ImportError: the framework is not installed.
        ValueError: the framework has no step for this model (NumPy for a CNN).
    """
    return build_step(framework, parse_model(model), seed)


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _thread_limits(
    threads: int, frameworks: Sequence[str] = FRAMEWORKS
) -> Iterator[dict[str, Any]]:
    """Give each of ``frameworks`` ``threads`` threads in this process; restore after.

    Only the frameworks named are touched: setting numbanet's thread count starts Numba's
    OpenMP pool, and once that pool has started PyTorch's OpenMP parallel regions in the
    same process run several times slower (measured here: a 2-thread 784-256-128-10@64
    step 5.8x slower), so an isolated PyTorch process must never start it. XLA reads
    ``PJRT_NPROC`` once, when JAX is first imported: if JAX is imported already, its pool
    keeps the size it has (recorded in the notes).
    """
    info: dict[str, Any] = {}
    previous = None
    if "numbanet" in frameworks:
        import numbanet

        previous = numbanet.get_num_threads()
        numbanet.set_num_threads(threads)
    torch = None
    torch_previous = None
    if "torch" in frameworks or "torch.compile" in frameworks:
        import torch

        torch_previous = torch.get_num_threads()
        torch.set_num_threads(threads)
    # Environment variables set here are put back afterwards (JAX and Keras read them
    # once, at import, which happens while the frameworks run).
    saved_env = {name: os.environ.get(name) for name in ("PJRT_NPROC", "KERAS_BACKEND")}
    if "jax" in frameworks or "keras" in frameworks:
        if "jax" in sys.modules:
            info["xla_threads"] = (
                f"not limited: jax was imported before, with PJRT_NPROC="
                f"{os.environ.get('PJRT_NPROC', 'unset')}"
            )
        else:
            prepare_process("jax", threads)
            info["xla_threads"] = f"PJRT_NPROC={threads}"
    if "keras" in frameworks and "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "jax")
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
                import numbanet

                numbanet.set_num_threads(previous)
            if torch is not None and torch_previous is not None:
                torch.set_num_threads(torch_previous)
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


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
    """Runs one framework's step in this process.

    With ``threads``, also limits the framework's threads for good (an isolated worker
    runs nothing else); :meth:`info` returns the notes of that.
    """

    def __init__(self, framework: str, spec: BenchSpec, seed: int,
                 threads: int | None = None) -> None:
        self.step = make_step(framework, spec, seed)
        self._info = {} if threads is None else limit_threads(framework, threads)

    def info(self) -> dict[str, Any]:
        return self._info

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


def _worker(conn: Any, framework: str, spec: BenchSpec, seed: int, threads: int,
            cores: list[int]) -> None:
    """Body of an isolated framework process: serve first/calibrate/run requests.

    Pins the process to ``cores`` and sets XLA's pool size before the framework is
    imported; a failure to build or run the step is sent back as ``("error", text)``.
    """
    pin_process(cores)
    prepare_process(framework, threads)
    runner = None
    while True:
        request, argument = conn.recv()
        if request == "close":
            break
        try:
            if runner is None:
                runner = _LocalRunner(framework, spec, seed, threads)
            conn.send(("ok", getattr(runner, request)(*argument)))
        except Exception as exc:  # reported to the parent, which skips the framework
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    conn.close()


class _FrameworkFailed(Exception):
    """A framework's step could not be built or run (the message says why)."""


class _IsolatedRunner:
    """Runs one framework's step in a process of its own (``isolate=True``).

    Each framework then has its own threading runtime. In one process, once Numba's
    OpenMP pool has started, PyTorch's OpenMP regions run several times slower (both
    bind the same libgomp; measured here: PyTorch's 2-thread 784-256-128-10@64 step 5.8x
    slower), which would flatter numbanet.
    """

    def __init__(self, framework: str, spec: BenchSpec, seed: int, threads: int,
                 cores: list[int]) -> None:
        import multiprocessing

        # spawn, not fork: forking after an OpenMP pool started can hang the child.
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_worker, args=(child, framework, spec, seed, threads, cores), daemon=True
        )
        self._process.start()
        child.close()

    def _ask(self, request: str, *argument: Any) -> Any:
        self._conn.send((request, argument))
        try:
            status, value = self._conn.recv()
        except EOFError:
            raise _FrameworkFailed(
                f"its process exited (code {self._process.exitcode})") from None
        if status == "error":
            raise _FrameworkFailed(value)
        return value

    def info(self) -> dict[str, Any]:
        return dict(self._ask("info"))

    def first(self) -> float:
        return float(self._ask("first"))

    def calibrate(self, min_time: float) -> int:
        return int(self._ask("calibrate", min_time))

    def run(self, number: int) -> float:
        return float(self._ask("run", number))

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(("close", ()))
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()


def _losses_disagree(first_loss: dict[str, float]) -> dict[str, float]:
    """``{framework: first loss}`` of the frameworks whose first loss differs from
    numbanet's by more than :data:`LOSS_RTOL` (relative)."""
    reference = first_loss.get("numbanet")
    if reference is None:
        return {}
    return {
        name: loss for name, loss in first_loss.items()
        if name != "numbanet" and not math.isclose(loss, reference, rel_tol=LOSS_RTOL)
    }


@dataclass
class Comparison:
    """The result of :func:`compare` for one model and thread count.

    Attributes:
        model: the model name (``"784-256-128-10@64"``, ``"lenet5@64"``).
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
        gflops: each framework's GEMM (and convolution) work per second
            (:attr:`ModelSpec.flops_per_step`, :attr:`CNNSpec.flops_per_step`).
        skipped: ``{framework: why}`` for the frameworks asked for (or, by default,
            known) that did not run: not installed, or their step failed to build.
        notes: how threads were limited, the cores, versions.
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
    skipped: dict[str, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def losses_agree(self) -> bool:
        """Whether every framework's first loss matches numbanet's (:data:`LOSS_RTOL`)."""
        return not _losses_disagree(self.first_loss)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (``losses_agree`` included)."""
        return {**asdict(self), "losses_agree": self.losses_agree}


@validate_args({
    "repeats": Integer(min=1),
    "min_time": Real(min=0, closed="neither", what="a number of seconds"),
    "settle": Optional(Real(min=0, what="a number of seconds")),
})
def compare(
    model: str | BenchSpec,
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
        model: a :class:`ModelSpec` or :class:`CNNSpec`, or a name such as
            ``"784-256-128-10@64"`` or ``"resnet-small@64"``.
        threads: threads for every framework (1 to ``numbanet.threads.max_threads()``).
        repeats: samples per framework; the report uses their median. At least 1.
        min_time: minimum seconds per sample (steps are repeated to reach it). Positive.
        frameworks: which of :data:`FRAMEWORKS` to time; default: all of them.
            ``"numbanet"`` is always included, since ratios are relative to it. One that
            is not installed or fails to build is skipped (see :attr:`Comparison.skipped`).
        seed: seeds the shared weights and batch.
        settle: seconds to sleep before each sample; default 0.2 with more than one
            thread, else 0. Thread pools busy-wait for a while after their last task
            (OpenBLAS by default ~2**28 cycles, about 0.1 s; OpenMP runtimes less), so
            without a pause the previous framework's idle workers would compete for the
            cores with the next framework's.
        isolate: run each framework in a process of its own pinned to the same
            ``threads`` cores (still interleaved sample by sample), so their threading
            runtimes cannot interfere; recommended, and what ``numbanet bench`` does.
            In this process nothing is pinned, and XLA's pool can be sized only if JAX
            is not imported yet.

    Returns:
        a :class:`Comparison`.

    Raises:
        TypeError, ValueError: bad arguments (named in the message).
    """
    from numbanet.threads import max_threads

    spec = parse_model(model)
    threads = check_arg("threads", threads, Integer(min=1, max=max_threads()))
    if settle is None:
        settle = 0.2 if threads > 1 else 0.0
    chosen, skipped = _choose(frameworks, spec)
    cores = bench_cores(threads) if isolate else []

    result = Comparison(model=spec.name, batch=spec.batch, threads=threads, repeats=repeats)
    result.skipped.update(skipped)
    # In isolated mode this process only coordinates: it must not start any thread pool.
    limited = () if isolate else chosen
    with _thread_limits(threads, limited) as info, contextlib.ExitStack() as cleanup:
        result.notes.update(info)
        result.notes["settle_seconds"] = settle
        result.notes["isolated_processes"] = bool(isolate)
        result.notes["pinned_cores"] = cores if cores else "not pinned"
        runners: dict[str, Any] = {}
        for name in chosen:
            try:
                runner = (_IsolatedRunner(name, spec, seed, threads, cores) if isolate
                          else _LocalRunner(name, spec, seed))
            except Exception as exc:
                if name == "numbanet":
                    raise
                result.skipped[name] = f"failed to build: {type(exc).__name__}: {exc}"
                continue
            cleanup.callback(runner.close)
            runners[name] = runner
        # The first call compiles / warms caches; its loss is the cross-check.
        for name, runner in list(runners.items()):
            try:
                result.first_loss[name] = runner.first()
                for key, value in runner.info().items():
                    result.notes.setdefault(key, value)
            except Exception as exc:
                if name == "numbanet":
                    raise
                message = str(exc) if isinstance(exc, _FrameworkFailed) else \
                    f"{type(exc).__name__}: {exc}"
                result.skipped[name] = f"failed: {message}"
                del runners[name]
        ran = list(runners)
        numbers = {}
        for name, runner in runners.items():
            time.sleep(settle)
            numbers[name] = runner.calibrate(min_time)
        samples: dict[str, list[float]] = {name: [] for name in ran}
        for r in range(repeats):
            # Rotate the order so no framework always runs right after another one.
            order = ran[r % len(ran):] + ran[: r % len(ran)]
            for name in order:
                time.sleep(settle)
                samples[name].append(runners[name].run(numbers[name]))

    for name, times in samples.items():
        median = statistics.median(times)
        result.step_seconds[name] = median
        result.samples_per_s[name] = spec.batch / median
        result.spread[name] = (max(times) - min(times)) / median
        result.gflops[name] = spec.flops_per_step / median / 1e9
    for name in ran:
        if name != "numbanet":
            result.ratios[name] = result.samples_per_s["numbanet"] / result.samples_per_s[name]
    disagree = _losses_disagree(result.first_loss)
    if disagree:
        result.notes["first_loss_mismatch"] = disagree
    result.notes["versions"] = _versions(ran)
    return result


# ---------------------------------------------------------------------------------------
# Cold start
# ---------------------------------------------------------------------------------------


@dataclass
class ColdStart:
    """The result of :func:`cold_start` for one model and thread count.

    Attributes:
        model: the model name.
        threads: threads (and pinned cores) each framework's process was given.
        cache: ``"cold"`` (every compile cache empty; numbanet's shipped kernels load),
            ``"jit"`` (also without numbanet's shipped kernels) or ``"warm"`` (the default
            caches, filled by one untimed run first).
        repeats: fresh processes per framework; the report uses their median.
        seconds: median seconds from launching the interpreter to the end of the first
            training step, per framework.
        samples: every run's seconds, per framework.
        phases: medians of ``startup`` (launch to the first statement of the child
            script plus loading NumPy and the step builders), ``import_and_build``
            (importing the framework, building and compiling the model) and
            ``first_step`` (the first call of the step, where JIT compilers compile).
        cpu_seconds: median CPU time (user + system, all threads) of the process, not
            of helper processes it starts (Inductor's compile workers).
        first_loss: the loss of each framework's first step (they should agree).
        ratios: ``seconds[other] / seconds["numbanet"]``: above 1 means numbanet starts
            faster.
        skipped: ``{framework: why}`` for frameworks that did not run.
        notes: cores, versions, the cache state.
    """

    model: str
    threads: int
    cache: str
    repeats: int
    seconds: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    first_loss: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def losses_agree(self) -> bool:
        """Whether every framework's first loss matches numbanet's (:data:`LOSS_RTOL`)."""
        return not _losses_disagree(self.first_loss)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (``losses_agree`` included)."""
        return {**asdict(self), "losses_agree": self.losses_agree}


def _cold_run(framework: str, spec: BenchSpec, seed: int, threads: int, cores: list[int],
              cache: str, timeout: float) -> dict[str, Any]:
    """One fresh process: launch, build, first step. Returns its report plus ``launched``.

    Raises:
        _FrameworkFailed: the child failed or timed out (the message has its stderr tail).
    """
    scratch = tempfile.mkdtemp(prefix="numbanet-cold-start-")
    try:
        if cache == "warm":
            env = dict(os.environ)
        else:
            env = cold_environment(os.environ, scratch, shipped_kernels=cache == "cold")
        launched = time.time()
        try:
            proc = subprocess.run(
                cold_command(framework, spec.name, seed, threads, cores), env=env,
                timeout=timeout, capture_output=True, text=True,
            )
        except subprocess.TimeoutExpired:
            raise _FrameworkFailed(f"no first step within {timeout:g} s") from None
    finally:
        remove_tree(scratch)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(REPORT_MARK):
            import json

            report = json.loads(line[len(REPORT_MARK):])
            report["launched"] = launched
            return report
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
    raise _FrameworkFailed(f"exit code {proc.returncode}: {tail}")


@validate_args({
    "repeats": Integer(min=1),
    "cache": OneOf("cold", "jit", "warm"),
    "timeout": Real(min=0, closed="neither", what="a number of seconds"),
})
def cold_start(
    model: str | BenchSpec = COLD_START_MODEL,
    threads: int = 1,
    frameworks: Sequence[str] | None = None,
    repeats: int = 3,
    cache: str = "cold",
    seed: int = 0,
    timeout: float = 900.0,
) -> ColdStart:
    """Seconds from a fresh interpreter to the end of the first training step.

    Each run is a new ``python`` process pinned to the same ``threads`` cores, which
    imports the framework, builds the model of :func:`make_step` and runs one step.
    Frameworks are interleaved run by run (rotating order), medians reported.

    With ``cache="cold"`` every compile cache is empty (see
    :func:`numbanet._bench_steps.cold_environment`): Numba's (``NUMBA_CACHE_DIR``, which
    also bypasses numbanet's kernel cache in its ``__pycache__`` directories), numbanet's
    generated driver modules, PyTorch Inductor's; JAX keeps none by default. This is a
    first run after ``pip install``: numbanet loads the kernels its wheel ships compiled
    (:mod:`numbanet._precompiled`). ``"jit"`` hides those too, so numbanet compiles
    every kernel the step needs (a first run without shipped kernels). With ``"warm"``,
    the default caches after one untimed run: every later run (JAX and Keras compile
    again each time unless a JAX compilation cache is configured).

    Args:
        model: a :class:`ModelSpec` or its name; default the issue's 784-256-128-10@64.
        threads: threads and cores per framework (1 to ``max_threads()``).
        frameworks: which of :data:`FRAMEWORKS`; default all (numbanet always runs).
        repeats: fresh processes per framework. At least 1.
        cache: ``"cold"``, ``"jit"`` or ``"warm"``.
        seed: seeds the shared weights and batch.
        timeout: seconds a run may take before the framework is skipped.

    Returns:
        a :class:`ColdStart`.

    Raises:
        TypeError, ValueError: bad arguments.
        RuntimeError: numbanet's own run failed.
    """
    from numbanet.threads import max_threads

    spec = parse_model(model)
    threads = check_arg("threads", threads, Integer(min=1, max=max_threads()))
    chosen, skipped = _choose(frameworks, spec)
    cores = bench_cores(threads)
    result = ColdStart(model=spec.name, threads=threads, cache=cache, repeats=repeats)
    result.skipped.update(skipped)
    result.notes["pinned_cores"] = cores if cores else "not pinned"
    result.notes["cache"] = cache

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}

    def run(name: str) -> dict[str, Any] | None:
        try:
            return _cold_run(name, spec, seed, threads, cores, cache, timeout)
        except _FrameworkFailed as exc:
            if name == "numbanet":
                raise RuntimeError(f"numbanet's cold-start run failed: {exc}") from None
            result.skipped[name] = f"failed: {exc}"
            runs.pop(name, None)
            return None

    if cache == "warm":
        for name in list(runs):
            run(name)  # fills the caches; not timed
    for r in range(repeats):
        names = list(runs)
        for name in names[r % len(names):] + names[: r % len(names)]:
            if name in runs:
                report = run(name)
                if report is not None:
                    runs[name].append(report)

    for name, reports in runs.items():
        result.samples[name] = [rep["end"] - rep["launched"] for rep in reports]
        result.seconds[name] = statistics.median(result.samples[name])
        result.phases[name] = {
            "startup": statistics.median(rep["build"] - rep["launched"] for rep in reports),
            "import_and_build": statistics.median(rep["step"] - rep["build"] for rep in reports),
            "first_step": statistics.median(rep["end"] - rep["step"] for rep in reports),
        }
        result.cpu_seconds[name] = statistics.median(rep["cpu_seconds"] for rep in reports)
        result.first_loss[name] = reports[0]["loss"]
        for key, value in reports[0].get("notes", {}).items():
            result.notes.setdefault(key, value)
    for name in runs:
        if name != "numbanet":
            result.ratios[name] = result.seconds[name] / result.seconds["numbanet"]
    disagree = _losses_disagree(result.first_loss)
    if disagree:
        result.notes["first_loss_mismatch"] = disagree
    result.notes["versions"] = _versions(list(runs))
    return result


def _versions(frameworks: Sequence[str]) -> dict[str, str]:
    """Versions of the packages behind ``frameworks`` (read from their metadata, so
    nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    packages = ["numbanet", "numba", "numpy"]
    for name, extra in (("jax", ["jax", "jaxlib"]), ("keras", ["keras", "jax"]),
                        ("torch", ["torch"]), ("torch.compile", ["torch"])):
        if name in frameworks:
            packages += [p for p in extra if p not in packages]
    versions = {}
    for package in packages:
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return versions
