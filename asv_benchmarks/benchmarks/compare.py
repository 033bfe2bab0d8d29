"""numbanet beside PyTorch and a plain NumPy reference: the same training step.

The numbers come from :func:`numbanet.bench.compare` (the code behind
``numbanet bench``): same architecture, float32 weights and batch, softmax
cross-entropy, Adam, same thread count, frameworks interleaved in one process, medians.

asv treats a larger value as worse, so the ratios are of step TIMES:
``track_time_ratio_torch`` = numbanet seconds per step / PyTorch seconds per step (below
1: numbanet is faster). ``track_samples_per_s`` is numbanet's throughput (larger is
better; read it in the graphs, keep it out of the regression gate). Without PyTorch the
torch ratio is NaN (asv shows it as failed/missing).
"""

from __future__ import annotations

import math

from numbanet.bench import available_frameworks, compare

from .common import COMPARE_MIN_TIME, COMPARE_REPEATS, MODELS, THREADS


class CompareSuite:
    """One :func:`~numbanet.bench.compare` per model and thread count, run once in
    ``setup_cache`` and read by the ``track_`` methods."""

    params = (MODELS, THREADS)
    param_names = ["model", "threads"]
    timeout = 600

    def setup_cache(self) -> dict:
        results = {}
        for model in MODELS:
            for threads in THREADS:
                # The frameworks these ratios track (the compiling peers have their own
                # processes and pins in `numbanet bench`); without torch its ratio is NaN.
                frameworks = [f for f in ("numbanet", "torch", "numpy")
                              if f in available_frameworks()]
                r = compare(
                    model, threads=threads, repeats=COMPARE_REPEATS, min_time=COMPARE_MIN_TIME,
                    frameworks=frameworks,
                )
                results[(model, threads)] = {
                    "step_seconds": r.step_seconds,
                    "samples_per_s": r.samples_per_s,
                }
        return results

    def _ratio(self, results: dict, model: str, threads: int, other: str) -> float:
        seconds = results[(model, threads)]["step_seconds"]
        if other not in seconds:
            return math.nan
        return seconds["numbanet"] / seconds[other]

    def track_time_ratio_torch(self, results: dict, model: str, threads: int) -> float:
        return self._ratio(results, model, threads, "torch")

    def track_time_ratio_numpy(self, results: dict, model: str, threads: int) -> float:
        return self._ratio(results, model, threads, "numpy")

    def track_samples_per_s(self, results: dict, model: str, threads: int) -> float:
        return results[(model, threads)]["samples_per_s"]["numbanet"]

    track_time_ratio_torch.unit = "x"  # type: ignore[attr-defined]
    track_time_ratio_numpy.unit = "x"  # type: ignore[attr-defined]
    track_samples_per_s.unit = "samples/s"  # type: ignore[attr-defined]

