"""``numbanet plugins [--json] [--strict]``: what is installed and whether it loaded.

Lists every plugin distribution (numbanet's built-ins first), its version, its status
(``loaded``, ``failed``, ``skipped``), the optimizers, losses and layers it provides (qualified
ids), and the error for failed or skipped ones. Also shows the environment switches in
effect. ``numbanet.cli`` calls :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

from numbanet import plugins

__all__ = ["main"]


def _collect() -> tuple[list[dict[str, Any]], list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", plugins.PluginWarning)
        plugins.reload_plugins()
        report = plugins.plugin_report()
    notes = [str(w.message) for w in caught if issubclass(w.category, plugins.PluginWarning)]
    return report, notes


def _print_table(report: list[dict[str, Any]], notes: list[str], out: TextIO) -> None:
    env = {name: os.environ.get(name) for name in (plugins.AUTOLOAD_ENV, plugins.ALLOW_ENV)}
    for name, value in env.items():
        if value:
            print(f"{name}={value}", file=out)
    for rec in report:
        print(f"{rec['name']} {rec['version']}: {rec['status']}", file=out)
        for kind in ("optimizers", "losses", "layers"):
            if rec[kind]:
                print(f"  {kind}: {', '.join(rec[kind])}", file=out)
        if rec["error"]:
            print(f"  error: {rec['error']}", file=out)
    # Disabled plugins already show their error above; the other warnings (a plugin
    # shadowing a built-in, one implementing no hook) are notes.
    for note in notes:
        if "is disabled:" not in note:
            print(f"note: {note}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the process exit code.

    Args:
        argv: arguments after ``plugins`` (``["--json"]``); ``None`` reads ``sys.argv``.

    Returns:
        0, or 1 with ``--strict`` when any plugin failed to load.
    """
    parser = argparse.ArgumentParser(
        prog="numbanet plugins",
        description="List numbanet plugins, their versions, what they provide and their status.",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 if any plugin failed to load")
    args = parser.parse_args(argv)
    report, notes = _collect()
    for rec in report:
        rec["optimizers"] = [f"{rec['name']}:{n}" for n in rec["optimizers"]]
        rec["losses"] = [f"{rec['name']}:{n}" for n in rec["losses"]]
        rec["layers"] = [f"{rec['name']}:{n}" for n in rec["layers"]]
    if args.json:
        json.dump({"plugins": report, "warnings": notes}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(report, notes, sys.stdout)
    failed = any(rec["status"] == "failed" for rec in report)
    return 1 if (args.strict and failed) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
