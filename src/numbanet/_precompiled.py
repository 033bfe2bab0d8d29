"""Build the kernels that ship compiled with numbanet (``numbanet/_precompiled/``).

A first training step on an empty Numba cache spends ~20 s compiling kernels. Like a C
extension, numbanet compiles them when the package is built instead: ``pip install``
(setup.py's ``build_py``) runs :func:`build`, which trains the standard jobs once in a
fresh process per x86-64 level (:mod:`numbanet._target`) with every kernel's cache
pointed at ``<out>/<tag>/`` (:data:`numbanet._kernel_cache.PRECOMPILE_INTO_VARIABLE`).
At run time :class:`numbanet._kernel_cache.DependencyAwareCache` loads from there when
the user's own cache has no entry, so a new environment's first step loads machine code
(about a second) instead of compiling it.

What is built: the kernels of :data:`WORKLOADS`, the jobs a new user runs first (the
README's ``numbanet train``, its ``--model cnn``, float64 for scikit-learn, and the
``numbanet bench`` MLP step). Anything else (another optimizer or activation, a plugin's
kernels) compiles on first use as before and lands in the user's cache.

The entries are only used when they are exact: Numba's index key holds the Python and
Numba versions, the kernel's bytecode and the CPU level, and numbanet's stamp the
content of every source file the kernel's module imports. A stale entry is a miss, never
wrong code.

Command line (``python -m numbanet._precompiled --help``): the build hook runs it with
``--levels host``; a wheel meant for other machines is built with ``--levels all`` (every
level this build machine can run: x86-64-v4 and x86-64-v3 on an AVX-512 machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

__all__ = ["MANIFEST", "WORKLOADS", "build", "is_fresh", "main", "source_digest"]

#: Name of the file that records what a ``<tag>`` directory was built from.
MANIFEST = "manifest.json"


def _train(*options: str) -> Callable[[], None]:
    def run() -> None:
        from numbanet.cli import main as cli_main

        status = cli_main(["train", "--epochs", "1", "--quiet", *options])
        if status:
            raise RuntimeError(f"numbanet train {' '.join(options)} exited with {status}")

    return run


def _bench_mlp() -> None:
    from numbanet._bench_steps import build_step

    step = build_step("numbanet", "784-256-128-10@64")
    step()
    step()


#: Name -> (job, thread counts it runs at). ``None`` is every thread Numba has (the
#: default of a training run, and the parallel twin of size-dispatched kernels); ``1`` adds
#: the serial twins a one-thread run takes (``numbanet bench --threads 1``, asv).
#: Building all four takes about 80 s of one core for one level.
WORKLOADS: dict[str, tuple[Callable[[], None], tuple[int | None, ...]]] = {
    "train-mlp": (_train(), (1, None)),
    "bench-mlp": (_bench_mlp, (1, None)),
    "train-mlp-float64": (_train("--dtype", "float64"), (None,)),
    "train-cnn": (_train("--model", "cnn"), (None,)),
}


def source_digest() -> str:
    """sha256 over every ``.py`` file of the numbanet package (relative path, content)."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "_precompiled"))
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).replace(os.sep, "/").encode() + b"\0")
                with open(path, "rb") as fh:
                    digest.update(hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()


def _expected_manifest(level: str) -> dict[str, object]:
    import numba

    return {
        "level": level,
        "numba": numba.__version__,
        "python": list(sys.version_info[:2]),
        "source": source_digest(),
        "workloads": sorted(WORKLOADS),
    }


def is_fresh(out: str, level: str) -> bool:
    """Whether ``out`` holds a complete build of ``level`` from these sources."""
    from numbanet._kernel_cache import precompiled_tag

    path = os.path.join(out, precompiled_tag(level), MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            found = json.load(fh)
    except (OSError, ValueError):
        return False
    expected = _expected_manifest(level)
    return all(found.get(key) == value for key, value in expected.items())


def _sources_root() -> str:
    """The directory that holds this ``numbanet`` package."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resolve_levels(spec: str) -> list[str]:
    from numbanet._target import LEVEL_FEATURES, host_level

    host = host_level()
    runnable = [] if host is None else list(LEVEL_FEATURES)[list(LEVEL_FEATURES).index(host):]
    if spec == "host":
        return runnable[:1]
    if spec == "all":
        return runnable
    levels = [part.strip() for part in spec.split(",") if part.strip()]
    for level in levels:
        if level not in LEVEL_FEATURES:
            raise ValueError(
                f"unknown level {level!r}; choose from {', '.join(LEVEL_FEATURES)}, host or all"
            )
        if level not in runnable:
            raise ValueError(
                f"this machine cannot run {level} code (it supports "
                f"{', '.join(runnable) or 'neither level'}), so it cannot build it"
            )
    return levels


def _build_level(out: str, level: str, log: Callable[[str], None]) -> None:
    from numbanet._kernel_cache import PRECOMPILE_INTO_VARIABLE, precompiled_tag
    from numbanet._target import LEVEL_FEATURES

    tag = precompiled_tag(level)
    os.makedirs(out, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{tag}-", dir=out)
    scratch = tempfile.mkdtemp(prefix="numbanet-precompile-")
    try:
        env = dict(os.environ)
        env.update(
            NUMBA_CPU_NAME=level,
            NUMBA_CPU_FEATURES=LEVEL_FEATURES[level],
            NUMBA_CACHE_DIR=os.path.join(scratch, "numba"),
            NUMBANET_CACHE_DIR=os.path.join(scratch, "numbanet"),
            MPLBACKEND="Agg",
            PYTHONDONTWRITEBYTECODE="1",  # no .pyc files in a wheel's build tree
        )
        env[PRECOMPILE_INTO_VARIABLE] = staging
        started = time.perf_counter()
        # This numbanet, not whichever the child's sys.path would find (pip's build
        # isolation also drops PYTHONPATH entries).
        code = (f"import sys; sys.path.insert(0, {_sources_root()!r}); "
                "from numbanet._precompiled import main; sys.exit(main(['--run-workloads']))")
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=scratch)
        built = os.path.join(staging, tag)
        with open(os.path.join(built, MANIFEST), "w", encoding="utf-8") as fh:
            json.dump(_expected_manifest(level), fh, indent=1)
        final = os.path.join(out, tag)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(built, final)  # the complete tree appears at once
        log(f"numbanet: compiled {level} kernels into {final} "
            f"in {time.perf_counter() - started:.0f} s")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def build(out: str, levels: str = "host", force: bool = False,
          log: Callable[[str], None] = print) -> list[str]:
    """Compile the :data:`WORKLOADS` kernels for ``levels`` into ``out/<tag>/``.

    Args:
        out: the directory (``numbanet/_precompiled`` in a package).
        levels: ``"host"`` (this machine's level), ``"all"`` (every level this machine
            can run) or a comma-separated list of :data:`numbanet._target.LEVEL_FEATURES`
            names.
        force: rebuild a level whose build is already fresh (:func:`is_fresh`).
        log: where progress lines go.

    Returns:
        The levels built (fresh ones skipped). Each level is built in a fresh process,
        into a staging directory renamed into place when complete.

    Raises:
        ValueError: a level this machine cannot run (its code cannot be exercised here).
        subprocess.CalledProcessError: a workload failed.
    """
    built = []
    for level in _resolve_levels(levels):
        if not force and is_fresh(out, level):
            log(f"numbanet: {level} kernels in {out} are up to date")
            continue
        _build_level(out, level, log)
        built.append(level)
    return built


def _run_workloads() -> None:
    from numbanet._kernel_cache import PRECOMPILE_INTO_VARIABLE
    from numbanet._target import target_level
    from numbanet.threads import set_num_threads

    if not os.environ.get(PRECOMPILE_INTO_VARIABLE) or target_level() is None:
        raise SystemExit("--run-workloads is internal: run by build() with its environment")
    import numba

    for run, thread_counts in WORKLOADS.values():
        for threads in thread_counts:
            set_num_threads(numba.config.NUMBA_NUM_THREADS if threads is None else threads)
            run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m numbanet._precompiled",
        description="Compile numbanet's standard kernels ahead of time (see the module "
        "docstring of numbanet._precompiled).",
    )
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "_precompiled"),
                        help="where to write (default: this package's _precompiled folder)")
    parser.add_argument("--levels", default="host",
                        help="host (default), all, or e.g. x86-64-v3,x86-64-v4")
    parser.add_argument("--force", action="store_true", help="rebuild fresh levels too")
    parser.add_argument("--run-workloads", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_workloads:
        _run_workloads()
        return 0
    try:
        built = build(args.out, args.levels, force=args.force)
    except ValueError as exc:
        parser.error(str(exc))
    except subprocess.CalledProcessError as exc:
        print(f"numbanet: compiling kernels failed ({exc}); they will compile on first use",
              file=sys.stderr)
        return 1
    if not built and _resolve_levels(args.levels) == []:
        print("numbanet: this CPU supports no portable level (x86-64-v3 or later); "
              "kernels compile on first use", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
