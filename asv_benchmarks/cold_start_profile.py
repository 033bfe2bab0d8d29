"""Where numbanet's cold start goes: compile time per function and per compiler stage.

Runs, in this fresh process with an empty Numba cache (a temporary ``NUMBA_CACHE_DIR``
and ``NUMBANET_CACHE_DIR``, both set before Numba is imported), what a new user's first
training step runs: ``import numbanet``, building and compiling a float32 MLP (ReLU
hidden layers, softmax cross-entropy, Adam: :func:`numbanet.bench.make_step`'s, the step
``numbanet bench --cold-start`` times), and one ``train_step``. Every compilation
Numba does on the way is timed and charged, exclusively, to the function being compiled
and to one stage of the compiler:

* ``frontend``: bytecode analysis and the untyped passes (SSA, inlining, rewrites);
* ``typing``: type inference (``NopythonTypeInference``);
* ``parfor``: the parfor passes of ``parallel=True`` kernels (``PreParforPass``,
  ``ParforPass``, ``ParforFusionPass``, ``ParforPreLoweringPass``);
* ``lower``: Numba IR to LLVM IR, and parsing that IR into LLVM (``NativeLowering`` less
  the LLVM work below);
* ``llvm-opt``: LLVM's function and module optimization passes;
* ``codegen``: machine code generation (MCJIT's ``finalize_object``);
* ``cache``: the disk cache (index lookups, source stamps, writing the object code).

A function that calls another jitted function compiles the callee while it types the
call; the callee's time is charged to the callee, not the caller (exclusive times). The
gufunc Numba builds from a ``prange`` loop is charged to the kernel that holds the loop.

Usage::

    python asv_benchmarks/cold_start_profile.py                  # 784-256-128-10@64, top 15
    python asv_benchmarks/cold_start_profile.py --model 64-32-10@32 --top 40
    python asv_benchmarks/cold_start_profile.py --threads 1 --json > profile.json

The instrumentation (wrapping a few Numba methods and listening to the
``numba:compile`` event) adds a few percent; compare totals only between runs of this
script. ``numbanet bench --cold-start`` measures the uninstrumented figure.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

# Before anything imports Numba: it reads NUMBA_CACHE_DIR once, at import. With it set,
# Numba's UserProvidedCacheLocator comes first, so neither numbanet's __pycache__
# directories (numbanet._kernel_cache wraps whatever locator Numba picks and changes only
# the source stamp) nor ~/.cache/numbanet (generated optimizer/loss drivers) are read.
if "--keep-cache" not in sys.argv:
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numbanet-profile-numba-")
    os.environ["NUMBANET_CACHE_DIR"] = tempfile.mkdtemp(prefix="numbanet-profile-")
    # And without the kernels numbanet's install compiled (numbanet/_precompiled): this
    # script is about where compiling goes.
    os.environ["NUMBANET_PRECOMPILED_DIR"] = tempfile.mkdtemp(prefix="numbanet-profile-none-")

_T_START = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
from collections import defaultdict  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

STAGES = ("frontend", "typing", "parfor", "lower", "llvm-opt", "codegen", "cache")


@dataclass
class Compiled:
    """One specialization Numba compiled."""

    name: str
    signature: str
    phase: str
    parallel: bool
    caller: str  # the function whose compilation asked for this one ("" from Python)
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def total(self) -> float:
        return sum(self.stages.values())

    @property
    def float64_arrays(self) -> bool:
        return "array(float64" in self.signature


class CompileProfiler:
    """Charges time to (specialization, stage) frames on a stack, exclusively.

    ``clock`` is ``time.perf_counter`` (wall) or ``time.thread_time`` (CPU time of the
    calling thread: Numba and LLVM compile on the thread that calls the kernel, so on a
    busy machine this is the steadier figure).
    """

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self.clock = clock
        self.compiled: list[Compiled] = []
        self.stack: list[tuple[Compiled | None, str]] = []
        self.phase = "import"
        self.outside: dict[str, float] = defaultdict(float)  # stage time with no compile
        self._last = clock()

    def _charge(self) -> None:
        now = self.clock()
        if self.stack:
            entry, stage = self.stack[-1]
            if entry is None:
                self.outside[stage] += now - self._last
            else:
                entry.stages[stage] += now - self._last
        self._last = now

    def push(self, entry: Compiled | None, stage: str) -> None:
        self._charge()
        self.stack.append((entry, stage))

    def pop(self) -> None:
        self._charge()
        self.stack.pop()

    def current(self) -> Compiled | None:
        return self.stack[-1][0] if self.stack else None

    @contextlib.contextmanager
    def stage(self, stage: str, entry: Compiled | None = None):
        self.push(entry if entry is not None else self.current(), stage)
        try:
            yield
        finally:
            self.pop()

    # -- installation ----------------------------------------------------------------

    def install(self) -> None:
        from numba.core import caching, codegen, event, typed_passes, untyped_passes  # noqa: F401

        profiler = self

        class _CompileListener(event.Listener):
            def on_start(self, ev: Any) -> None:
                dispatcher = ev.data["dispatcher"]
                py = dispatcher.py_func
                parent = profiler.current()
                entry = Compiled(
                    name=f"{py.__module__}.{py.__qualname__}",
                    signature="(" + ", ".join(map(str, ev.data["args"])) + ")",
                    phase=profiler.phase,
                    parallel=bool(dispatcher.targetoptions.get("parallel")),
                    caller=parent.name if parent is not None else "",
                )
                profiler.compiled.append(entry)
                profiler.push(entry, "frontend")

            def on_end(self, ev: Any) -> None:
                profiler.pop()

        event.register("numba:compile", _CompileListener())

        def wrap(owner: Any, method: str, stage: str) -> None:
            original = getattr(owner, method)

            @functools.wraps(original)
            def timed(*args: Any, **kwargs: Any) -> Any:
                with profiler.stage(stage):
                    return original(*args, **kwargs)

            setattr(owner, method, timed)

        wrap(typed_passes.BaseTypeInference, "run_pass", "typing")
        for name in ("PreParforPass", "ParforPass", "ParforFusionPass", "ParforPreLoweringPass"):
            wrap(getattr(typed_passes, name), "run_pass", "parfor")
        wrap(typed_passes.BaseNativeLowering, "run_pass", "lower")
        wrap(codegen.CPUCodeLibrary, "_optimize_functions", "llvm-opt")
        wrap(codegen.CPUCodeLibrary, "_optimize_final_module", "llvm-opt")
        wrap(codegen.JITCodeLibrary, "_finalize_specific", "codegen")

        # Cache work happens outside the compile event: charge it to the specialization
        # it loads or saves (the latest compiled entry of that function).
        def wrap_cache(method: str) -> None:
            original = getattr(caching.Cache, method)

            @functools.wraps(original)
            def timed(cache: Any, sig: Any, *args: Any, **kwargs: Any) -> Any:
                py = cache._py_func
                name = f"{py.__module__}.{py.__qualname__}"
                entry = next((c for c in reversed(profiler.compiled) if c.name == name), None)
                if method == "load_overload":
                    entry = profiler.current()  # the caller, or None: not compiled yet
                with profiler.stage("cache", entry):
                    return original(cache, sig, *args, **kwargs)

            setattr(caching.Cache, method, timed)

        wrap_cache("load_overload")
        wrap_cache("save_overload")


def _stem(name: str) -> str:
    return re.sub(r"_(serial|parallel)(?=$|_)", "", name)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Profile numbanet's cold start: compile time per function and stage.")
    parser.add_argument("--model", default="784-256-128-10@64",
                        help="WIDTHS@BATCH (default 784-256-128-10@64)")
    parser.add_argument("--top", type=int, default=15, help="functions listed (default 15)")
    parser.add_argument("--threads", type=int, default=None,
                        help="numbanet.set_num_threads before the step (default: all)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="charge the compiling thread's CPU time (default; steadier on a "
                        "busy machine) or wall-clock time")
    parser.add_argument("--keep-cache", action="store_true",
                        help="use the existing Numba cache (a warm start) instead of an empty one")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    profiler = CompileProfiler(time.thread_time if args.clock == "cpu" else time.perf_counter)
    profiler.install()
    t_numba = time.perf_counter()

    phases: dict[str, float] = {}
    start = time.perf_counter()
    import numbanet
    from numbanet.bench import make_step, parse_model

    phases["import numbanet"] = time.perf_counter() - start

    spec = parse_model(args.model)
    if args.threads:
        numbanet.set_num_threads(args.threads)
    # The step `numbanet bench --cold-start` times: weights copied in, Adam, cross-entropy.
    profiler.phase = "build"
    start = time.perf_counter()
    step = make_step("numbanet", spec)
    phases["build + compile model"] = time.perf_counter() - start

    profiler.phase = "step"
    start = time.perf_counter()
    loss = step()
    phases["first train_step"] = time.perf_counter() - start
    end = time.perf_counter()

    compiled = profiler.compiled
    total_compile = sum(c.total for c in compiled)
    by_stage = {s: sum(c.stages[s] for c in compiled) for s in STAGES}
    twins: dict[str, set[bool]] = defaultdict(set)
    for c in compiled:
        twins[_stem(c.name)].add(c.parallel)
    summary = {
        "model": spec.name,
        "threads": numbanet.get_num_threads(),
        "clock": args.clock,
        "first_loss": loss,
        "seconds_import_numba_and_instrument": t_numba - _T_START,
        "phases": phases,
        "seconds_script_start_to_step_end": end - _T_START,
        "seconds_compiling": total_compile,
        "seconds_by_stage": by_stage,
        "stage_time_outside_compiles": dict(profiler.outside),
        "specializations": len(compiled),
        "functions": len({c.name for c in compiled}),
        "specializations_by_phase": {p: sum(c.phase == p for c in compiled)
                                     for p in ("import", "build", "step")},
        "parallel_specializations": sum(c.parallel for c in compiled),
        "float64_array_specializations": [f"{c.name}{c.signature}" for c in compiled
                                          if c.float64_arrays],
        "both_twins_compiled": sorted(k for k, v in twins.items() if v == {True, False}),
        "compiled": [
            {"name": c.name, "signature": c.signature, "phase": c.phase,
             "parallel": c.parallel, "caller": c.caller, "total": c.total, **c.stages}
            for c in compiled
        ],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_tables(summary, compiled, args.top)
    if not args.keep_cache:
        for var in ("NUMBA_CACHE_DIR", "NUMBANET_CACHE_DIR", "NUMBANET_PRECOMPILED_DIR"):
            shutil.rmtree(os.environ[var], ignore_errors=True)
    return 0


def _print_tables(summary: dict[str, Any], compiled: list[Compiled], top: int) -> None:
    total = summary["seconds_compiling"]
    print(f"cold start of {summary['model']} on {summary['threads']} thread(s); "
          f"first loss {summary['first_loss']:.6f}")
    instrument = summary["seconds_import_numba_and_instrument"]
    print(f"  script start to end of first step: "
          f"{summary['seconds_script_start_to_step_end']:.2f} s "
          f"(import numba + instrumentation {instrument:.2f} s)")
    for phase, seconds in summary["phases"].items():
        print(f"  {phase:<24} {seconds:7.2f} s")
    print(f"  compiling ({summary['clock']} time, sum below) {total:7.2f} s in "
          f"{summary['specializations']} specializations of {summary['functions']} functions "
          f"({summary['parallel_specializations']} parallel); by phase "
          f"{summary['specializations_by_phase']}")
    print("  by stage: " + ", ".join(
        f"{s} {v:.2f} s ({v / total:.0%})" for s, v in summary["seconds_by_stage"].items()
        if total))
    print()
    by_function: dict[str, list[Compiled]] = defaultdict(list)
    for c in compiled:
        by_function[c.name].append(c)
    rows = sorted(by_function.items(), key=lambda kv: -sum(c.total for c in kv[1]))
    header = (f"{'function':<52} {'n':>2} {'par':>3} {'total':>6} "
              + " ".join(f"{s:>8}" for s in STAGES))
    print(header)
    print("-" * len(header))
    for name, entries in rows[:top]:
        stages = {s: sum(c.stages[s] for c in entries) for s in STAGES}
        short = name.replace("numbanet.", "")
        if len(short) > 52:
            short = "..." + short[-49:]
        print(f"{short:<52} {len(entries):>2} {'yes' if entries[0].parallel else '':>3} "
              f"{sum(stages.values()):6.2f} " + " ".join(f"{stages[s]:8.2f}" for s in STAGES))
    rest = rows[top:]
    if rest:
        rest_total = sum(c.total for _, entries in rest for c in entries)
        print(f"{f'({len(rest)} more functions)':<52} "
              f"{sum(len(e) for _, e in rest):>2} {'':>3} {rest_total:6.2f}")
    print()
    print("specializations (phase, seconds, signature <- the caller that compiled it):")
    for c in sorted(compiled, key=lambda c: -c.total):
        mark = " [float64 arrays]" if c.float64_arrays else ""
        caller = c.caller.replace("numbanet.", "") or "Python"
        print(f"  {c.phase:<6} {c.total:6.2f}  {c.name.replace('numbanet.', '')}"
              f"{c.signature}{mark} <- {caller}")
    if summary["both_twins_compiled"]:
        print("serial and parallel twins both compiled: "
              + ", ".join(summary["both_twins_compiled"]))


if __name__ == "__main__":
    raise SystemExit(main())
