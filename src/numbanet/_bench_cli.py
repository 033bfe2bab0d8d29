"""``numbanet bench``: time a training step in numbanet and its peers side by side.

The work is done by :func:`numbanet.bench.compare` (steady-state speed) and
:func:`numbanet.bench.cold_start` (``--cold-start``: a fresh process's first step); this
module parses options and prints a table (or JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from numbanet.bench import (
    COLD_START_MODEL,
    FRAMEWORKS,
    STANDARD_CNNS,
    STANDARD_MODELS,
    cold_start,
    compare,
    parse_model,
)

#: ``--repeats`` when not given: timing samples, or fresh processes with --cold-start.
DEFAULT_REPEATS = 7
DEFAULT_COLD_REPEATS = 3


def _thread_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected thread counts like '1,2', got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be positive, got {text!r}")
    return values


#: Shorthands of --models: each stands for a list of standard models.
MODEL_GROUPS = {
    "mlps": list(STANDARD_MODELS),
    "cnns": list(STANDARD_CNNS),
    "all": list(STANDARD_MODELS) + list(STANDARD_CNNS),
}


def _model_list(text: str) -> list[str]:
    names: list[str] = []
    for item in (m.strip() for m in text.split(",")):
        if not item:
            continue
        if item.lower() in MODEL_GROUPS:
            names += MODEL_GROUPS[item.lower()]
            continue
        try:
            names.append(parse_model(item).name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if not names:
        raise argparse.ArgumentTypeError(f"no model named in {text!r}")
    return list(dict.fromkeys(names))  # drop repeats, keep the order


def _framework_list(text: str) -> list[str]:
    names = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in names if f not in FRAMEWORKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {unknown or text!r}; choose from {','.join(FRAMEWORKS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``numbanet bench``."""
    from numbanet.threads import max_threads

    parser = argparse.ArgumentParser(
        prog="numbanet bench",
        description=(
            "Time the same float32 training step (an MLP of ReLU layers, or the CNNs "
            "LeNet-5 and a small residual CNN with BatchNorm; softmax cross-entropy, "
            "Adam) in numbanet and its peers (JAX jit, torch.compile, PyTorch, Keras 3 on "
            "JAX; each skipped with a note when not installed) and plain NumPy (MLPs "
            "only), each in a "
            "process of its own pinned to the same cores, interleaved sample by sample, "
            "and print samples/s and numbanet's speed ratio to each. With --cold-start, "
            "time a fresh process's first training step instead."
        ),
        epilog="Standard models: " + ", ".join(STANDARD_MODELS)
        + ". CNNs: " + ", ".join(STANDARD_CNNS)
        + f" (any batch: lenet5@128). Frameworks: {', '.join(FRAMEWORKS)}.",
    )
    parser.add_argument(
        "--models",
        type=_model_list,
        default=None,
        help="comma-separated models: MLPs 'WIDTHS@BATCH' such as 784-256-128-10@64, "
        "CNNs 'lenet5@64' and 'resnet-small@64', or the groups 'mlps', 'cnns', 'all' "
        f"(default: the standard MLPs; {COLD_START_MODEL} with --cold-start)",
    )
    parser.add_argument(
        "--threads",
        type=_thread_list,
        default=[max_threads()],
        help=f"comma-separated thread counts, e.g. 1,2 (default: {max_threads()})",
    )
    parser.add_argument(
        "--frameworks",
        type=_framework_list,
        default=None,
        help=f"comma-separated subset of {','.join(FRAMEWORKS)} (default: all; numbanet "
        "always runs; one not installed is skipped with a note)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None,
        help=f"samples per framework, median reported (default {DEFAULT_REPEATS}; "
        f"with --cold-start, fresh processes per framework, default {DEFAULT_COLD_REPEATS})",
    )
    parser.add_argument(
        "--min-time", type=float, default=0.1, help="minimum seconds per sample (default 0.1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and batch")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="time every framework in this one process instead of one process each "
        "(still interleaved either way); in one process Numba's OpenMP pool slows "
        "PyTorch's multi-threaded steps, which flatters numbanet, and nothing is pinned",
    )
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="measure seconds from launching a fresh interpreter to the end of the first "
        "training step, per framework (see --cache)",
    )
    parser.add_argument(
        "--cache",
        choices=("cold", "jit", "warm"),
        default="cold",
        help="with --cold-start: 'cold' empties every compile cache (Numba's, numbanet's, "
        "Inductor's: a first run after pip install, where numbanet loads the kernels it "
        "ships compiled; the default), 'jit' also hides those (numbanet compiles "
        "everything), or 'warm' keeps the default caches, filled by one untimed run",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _footer(results: Sequence[dict]) -> list[str]:
    lines = []
    skipped: dict[str, str] = {}
    for r in results:
        skipped.update(r.get("skipped", {}))
    for name, why in skipped.items():
        lines.append(f"skipped {name}: {why}")
    for r in results:
        mismatch = r["notes"].get("first_loss_mismatch")
        if mismatch:
            lines.append(
                f"WARNING {r['model']} on {r['threads']} thread(s): first losses differ from "
                f"numbanet's {r['first_loss'].get('numbanet')}: {mismatch}; those frameworks "
                "do not compute the same step, so their speeds are not comparable"
            )
    seen = set()
    for r in results:  # one line per thread count
        notes = r["notes"]
        line = (f"{r['threads']} thread(s): cores {notes.get('pinned_cores')}; numpy BLAS "
                f"threads: {notes.get('numpy_blas_threads', '-')}; XLA threads: "
                f"{notes.get('xla_threads', '-')}")
        if line not in seen:
            seen.add(line)
            lines.append(line)
    if results:
        lines.append(f"versions: {results[0]['notes'].get('versions')}")
    return lines


def format_table(results: Sequence[dict]) -> str:
    """A plain-text table: one row per model, thread count and framework."""
    header = f"{'model':<22} {'thr':>3} {'framework':<13} {'samples/s':>11} {'ms/step':>9} " \
             f"{'spread':>7} {'first loss':>10} {'numbanet x':>10}"
    lines = [header, "-" * len(header)]
    for r in results:
        for name, sps in r["samples_per_s"].items():
            ratio = "" if name == "numbanet" else f"{r['ratios'][name]:.2f}x"
            lines.append(
                f"{r['model']:<22} {r['threads']:>3} {name:<13} {sps:>11,.0f} "
                f"{r['step_seconds'][name] * 1e3:>9.3f} {r['spread'][name]:>6.0%} "
                f"{r['first_loss'][name]:>10.5f} {ratio:>10}"
            )
    lines.append(
        "numbanet x = numbanet samples/s / framework samples/s (above 1: numbanet faster); "
        "spread = (max-min)/median of the samples."
    )
    lines.extend(_footer(results))
    return "\n".join(lines)


def format_cold_table(results: Sequence[dict]) -> str:
    """A plain-text table of :func:`numbanet.bench.cold_start` results."""
    header = (f"{'model':<22} {'thr':>3} {'framework':<13} {'cache':<5} {'seconds':>8} "
              f"{'startup':>8} {'import+build':>12} {'1st step':>8} {'cpu s':>7} "
              f"{'first loss':>10} {'numbanet x':>10}")
    lines = [header, "-" * len(header)]
    for r in results:
        for name, seconds in r["seconds"].items():
            phases = r["phases"][name]
            ratio = "" if name == "numbanet" else f"{r['ratios'][name]:.2f}x"
            lines.append(
                f"{r['model']:<22} {r['threads']:>3} {name:<13} {r['cache']:<5} "
                f"{seconds:>8.2f} {phases['startup']:>8.2f} {phases['import_and_build']:>12.2f} "
                f"{phases['first_step']:>8.2f} {r['cpu_seconds'][name]:>7.2f} "
                f"{r['first_loss'][name]:>10.5f} {ratio:>10}"
            )
    lines.append(
        "seconds = median, from launching python to the end of the first training step; "
        "numbanet x = framework seconds / numbanet seconds (above 1: numbanet starts faster)."
    )
    lines.extend(_footer(results))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``numbanet bench``; returns the exit status (1 when first losses disagree)."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    repeats = args.repeats
    if repeats is None:
        repeats = DEFAULT_COLD_REPEATS if args.cold_start else DEFAULT_REPEATS
    if repeats < 1:
        parser.error(f"--repeats must be at least 1, got {repeats}")
    if not args.min_time > 0:
        parser.error(f"--min-time must be positive, got {args.min_time}")
    if args.cold_start and args.in_process:
        parser.error("--cold-start runs a fresh process per run; drop --in-process")
    if args.cache != "cold" and not args.cold_start:
        parser.error("--cache applies to --cold-start only")
    models = args.models
    if models is None:
        models = [COLD_START_MODEL] if args.cold_start else list(STANDARD_MODELS)
    from numbanet.threads import max_threads

    too_many = [t for t in args.threads if t > max_threads()]
    if too_many:
        parser.error(f"--threads {too_many} above the {max_threads()} available "
                     "(NUMBA_NUM_THREADS)")

    results = []
    for model in models:
        for threads in args.threads:
            if args.cold_start:
                outcome = cold_start(model, threads=threads, frameworks=args.frameworks,
                                     repeats=repeats, cache=args.cache, seed=args.seed)
            else:
                outcome = compare(model, threads=threads, repeats=repeats,
                                  min_time=args.min_time, frameworks=args.frameworks,
                                  seed=args.seed, isolate=not args.in_process)
            results.append(outcome.to_dict())
            if not args.json:
                print(f"done: {model} on {threads} thread(s)", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_cold_table(results) if args.cold_start else format_table(results))
    return 0 if all(r["losses_agree"] for r in results) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
