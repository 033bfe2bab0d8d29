"""``numbanet bench``: time a training step in numbanet, PyTorch and NumPy side by side.

The work is done by :func:`numbanet.bench.compare`; this module parses options and
prints a table (or JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from numbanet.bench import FRAMEWORKS, STANDARD_MODELS, compare, parse_model


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


def _model_list(text: str) -> list[str]:
    if text == "all":
        return list(STANDARD_MODELS)
    names = [m.strip() for m in text.split(",") if m.strip()]
    try:
        return [parse_model(m).name for m in names]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``numbanet bench``."""
    from numbanet.threads import max_threads

    parser = argparse.ArgumentParser(
        prog="numbanet bench",
        description=(
            "Time the same float32 MLP training step (ReLU layers, softmax cross-entropy, "
            "Adam) in numbanet, PyTorch (if installed) and plain NumPy, each in a process "
            "of its own, interleaved sample by sample, and print samples/s and numbanet's "
            "speed ratio to each."
        ),
        epilog="Standard models: " + ", ".join(STANDARD_MODELS),
    )
    parser.add_argument(
        "--models",
        type=_model_list,
        default=list(STANDARD_MODELS),
        help="comma-separated 'WIDTHS@BATCH' such as 784-256-128-10@64, or 'all' "
        "(default: all standard models)",
    )
    parser.add_argument(
        "--threads",
        type=_thread_list,
        default=[max_threads()],
        help=f"comma-separated thread counts, e.g. 1,2 (default: {max_threads()})",
    )
    parser.add_argument(
        "--frameworks",
        default=None,
        help=f"comma-separated subset of {','.join(FRAMEWORKS)} (default: all installed)",
    )
    parser.add_argument("--repeats", type=int, default=7, help="samples per framework (median)")
    parser.add_argument(
        "--min-time", type=float, default=0.1, help="minimum seconds per sample (default 0.1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and batch")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="time every framework in this one process instead of one process each "
        "(still interleaved either way); in one process Numba's OpenMP pool slows "
        "PyTorch's multi-threaded steps, which flatters numbanet",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def format_table(results: Sequence[dict]) -> str:
    """A plain-text table: one row per model, thread count and framework."""
    header = f"{'model':<22} {'thr':>3} {'framework':<9} {'samples/s':>11} {'ms/step':>9} " \
             f"{'spread':>7} {'first loss':>10} {'numbanet x':>10}"
    lines = [header, "-" * len(header)]
    for r in results:
        for name, sps in r["samples_per_s"].items():
            ratio = "" if name == "numbanet" else f"{r['ratios'][name]:.2f}x"
            lines.append(
                f"{r['model']:<22} {r['threads']:>3} {name:<9} {sps:>11,.0f} "
                f"{r['step_seconds'][name] * 1e3:>9.3f} {r['spread'][name]:>6.0%} "
                f"{r['first_loss'][name]:>10.5f} {ratio:>10}"
            )
    lines.append(
        "numbanet x = numbanet samples/s / framework samples/s (above 1: numbanet faster); "
        "spread = (max-min)/median of the samples."
    )
    if results:
        lines.append(f"numpy BLAS threads: {results[0]['notes'].get('numpy_blas_threads')}; "
                     f"versions: {results[0]['notes'].get('versions')}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``numbanet bench``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if not args.min_time > 0:
        parser.error(f"--min-time must be positive, got {args.min_time}")
    frameworks = None
    if args.frameworks:
        frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
        unknown = [f for f in frameworks if f not in FRAMEWORKS]
        if unknown:
            parser.error(f"--frameworks: unknown {unknown}; choose from {list(FRAMEWORKS)}")
        if "torch" in frameworks:
            try:
                import torch  # noqa: F401
            except ImportError:
                parser.error("--frameworks torch: PyTorch is not installed "
                             "(pip install torch, the CPU build)")
    from numbanet.threads import max_threads

    too_many = [t for t in args.threads if t > max_threads()]
    if too_many:
        parser.error(f"--threads {too_many} above the {max_threads()} available "
                     "(NUMBA_NUM_THREADS)")

    results = []
    for model in args.models:
        for threads in args.threads:
            comparison = compare(model, threads=threads, repeats=args.repeats,
                                 min_time=args.min_time, frameworks=frameworks, seed=args.seed,
                                 isolate=not args.in_process)
            results.append(comparison.to_dict())
            if not args.json:
                print(f"done: {model} on {threads} thread(s)", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
