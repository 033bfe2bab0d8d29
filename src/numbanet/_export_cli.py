"""``numbanet export MODEL.npz OUT.onnx [--probabilities] [--opset N]``: a saved model as
ONNX (:func:`numbanet.onnx.export`).

The model is loaded for inference only (``numbanet.load(path, compile=False)``), so a
model trained with a plugin optimizer exports where that plugin is not installed.
``--probabilities`` ends the graph with the training loss's output activation (softmax
or sigmoid), so it outputs what ``model.predict_proba`` returns.

Exit codes: 0 success, 1 the model cannot be read or exported (or onnx is missing),
2 bad options.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numbanet export",
        description="Write a model saved by numbanet (numbanet.save, numbanet train --save) "
                    "as an ONNX file for ONNX Runtime and other ONNX consumers.",
    )
    parser.add_argument("model", help="a numbanet model file (.npz)")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--probabilities", action="store_true",
                        help="end with the loss's output activation (softmax/sigmoid): the "
                             "graph outputs predict_proba instead of predict")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset to write (default: numbanet.onnx.DEFAULT_OPSET)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    args = _parser().parse_args(argv)
    from numbanet.io import load

    try:
        import numbanet.onnx as nbn_onnx

        nbn_onnx._onnx()  # fail early, naming the extra, when onnx is missing
    except ImportError as exc:
        print(f"numbanet export: {exc}", file=sys.stderr)
        return 1
    directory = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(directory):
        print(f"numbanet export: the directory {directory!r} of {args.output!r} does not "
              f"exist", file=sys.stderr)
        return 1
    try:
        model = load(args.model, compile=False)
        nbn_onnx.export(model, args.output, opset=args.opset,
                        probabilities=args.probabilities)
    except (OSError, ValueError, TypeError) as exc:
        print(f"numbanet export: {exc}", file=sys.stderr)
        return 1
    shape = ", ".join(map(str, model.input_shape or ()))
    out_shape = ", ".join(map(str, model.output_shape or ()))
    output = "probabilities" if args.probabilities else "output"
    print(f"wrote {args.output}: input 'input' (batch, {shape}) {model.dtype.name} -> "
          f"'{output}' (batch, {out_shape}); opset "
          f"{args.opset if args.opset is not None else nbn_onnx.DEFAULT_OPSET}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
