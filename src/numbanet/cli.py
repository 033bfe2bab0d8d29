"""The ``numbanet`` command line.

Subcommands live in their own modules and are imported only when run, so
``numbanet info`` does not pay for compiling training kernels:

* ``train``, ``evaluate``, ``predict``: :mod:`numbanet._train_cli`
* ``plugins``: :mod:`numbanet._plugins_cli`
* ``bench``: :mod:`numbanet._bench_cli`
* ``export``: :mod:`numbanet._export_cli`
* ``info``: below
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help). Each module has ``main(argv) -> int``.
_SUBCOMMANDS = {
    "train": ("numbanet._train_cli", "train a model (default: an MLP on the bundled digits)"),
    "evaluate": ("numbanet._train_cli", "evaluate a saved model on a dataset"),
    "predict": ("numbanet._train_cli", "predict with a saved model"),
    "plugins": ("numbanet._plugins_cli", "list installed plugins and what they provide"),
    "bench": ("numbanet._bench_cli", "time a training step against JAX, PyTorch, Keras and NumPy"),
    "export": ("numbanet._export_cli", "write a saved model as ONNX (needs numbanet[onnx])"),
    "info": ("numbanet.cli", "versions, threading layer, threads and CPU"),
}


def info_lines() -> list[str]:
    """What ``numbanet info`` prints: versions, threading layer, threads, CPU."""
    import platform

    import numba
    import numpy as np

    import numbanet
    from numbanet._kernel_cache import shipped_directory
    from numbanet.threads import threading_layer, threading_layer_choice

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [
        f"numbanet        {numbanet.__version__}",
        f"python          {platform.python_version()}",
        f"numpy           {np.__version__}",
        f"numba           {numba.__version__}",
        f"threading layer {threading_layer()}: {threading_layer_choice()}",
        f"threads         {numbanet.get_num_threads()} of {numba.config.NUMBA_NUM_THREADS}",
        f"cpu             {cpu} ({numba.config.NUMBA_DEFAULT_NUM_THREADS} logical cores)",
        f"llvm target cpu {numba.core.config.CPU_NAME or 'host'}",
        f"shipped kernels {shipped_directory() or 'none for this target (compiled on first use)'}",
    ]


def _info_main(argv: Sequence[str]) -> int:
    argparse.ArgumentParser(prog="numbanet info", description=_SUBCOMMANDS["info"][1]).parse_args(
        argv
    )
    print("\n".join(info_lines()))
    return 0


def _parser() -> argparse.ArgumentParser:
    width = max(len(name) for name in _SUBCOMMANDS)
    commands = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in _SUBCOMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="numbanet",
        usage="numbanet [--version] [-h] COMMAND [options]",
        description=f"Train neural networks on every core of your CPU.\n\ncommands:\n{commands}",
        epilog="Run 'numbanet COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("command", choices=list(_SUBCOMMANDS), metavar="COMMAND",
                        help="one of the commands above")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``numbanet`` command.

    Run as a program (``argv`` is ``None``), a closed pipe ends it quietly like any Unix
    tool (``numbanet train | head -2``): SIGPIPE gets its default action back.
    """
    if argv is None and hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if argv and argv[0] in ("-V", "--version"):
        from numbanet import __version__

        print(f"numbanet {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    rest = argv[1:]
    if args.command == "info":
        return _info_main(rest)
    module = importlib.import_module(_SUBCOMMANDS[args.command][0])
    if args.command in ("evaluate", "predict", "train"):
        return int(module.main([args.command, *rest]))
    return int(module.main(rest))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
