"""Side by side: numbanet's scikit-learn estimators against ``MLPClassifier`` /
``MLPRegressor``, same architecture, epochs and batch size.

Run: ``python asv_benchmarks/compare_sklearn.py [--threads 2] [--repeats 5] [--quick]``
(needs ``numbanet[sklearn]``; ``--dtype float32`` adds float32 rows, ``--datasets`` picks
some of digits, breast_cancer, wine, diabetes, synthetic).

Both estimators train a ``hidden_layer_sizes`` MLP (ReLU) with Adam (``lr=1e-3``,
betas 0.9/0.999, eps 1e-8), ``alpha=1e-4``, ``batch_size=200`` and shuffling, for exactly
``epochs`` passes (``tol=0`` and ``n_iter_no_change`` past the end, so neither stops
early; the script checks ``n_iter_``). Features are standardized on the training split;
the diabetes targets too (both regressors see the same scaled targets). Scores are on a
held-out 25% split: accuracy for classifiers, R² for the regressor.

Each repeat fits both libraries with the same ``random_state`` (repeat ``i`` uses ``i``),
one after the other, alternating which goes first, so load from other processes hits both
alike; each timed fit starts after a pause, so that the other library's spinning
threads have gone quiet. The table shows medians over repeats, and the ratio of each
library's fastest repeat (on a machine shared with other jobs the fastest repeat
approximates idle cores: a 2-thread fork-join pool, OpenBLAS's or Numba's, collapses
when another process takes one of the cores), and the median of the per-repeat ratios
("paired": the two fits of a repeat ran back to back, so a slow stretch of the machine
lasting seconds tends to hit both). numbanet's kernels are compiled (or loaded
from Numba's disk cache) by an untimed fit first. Thread counts: numbanet through
``numbanet.set_num_threads``, scikit-learn's BLAS through ``OPENBLAS_NUM_THREADS`` (set
before numpy loads) and ``threadpoolctl``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings


def _datasets(quick: bool) -> dict:
    """name -> (X, y, task, epochs)."""
    import numpy as np
    from sklearn import datasets

    synthetic_rows = 20_000 if quick else 100_000
    X_syn, y_syn = datasets.make_classification(
        synthetic_rows, n_features=20, n_informative=10, n_classes=4, random_state=0)
    scale = 0.2 if quick else 1.0
    return {
        "digits": (*datasets.load_digits(return_X_y=True), "classification",
                   int(200 * scale)),
        "breast_cancer": (*datasets.load_breast_cancer(return_X_y=True), "classification",
                          int(200 * scale)),
        "wine": (*datasets.load_wine(return_X_y=True), "classification", int(200 * scale)),
        "diabetes": (*datasets.load_diabetes(return_X_y=True), "regression",
                     int(200 * scale)),
        "synthetic": (X_syn.astype(np.float64), y_syn, "classification",
                      max(2, int(20 * scale))),
    }


def _split(X, y, task):
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.25, random_state=0,
        stratify=y if task == "classification" else None)
    scaler = StandardScaler().fit(X_tr)
    X_tr, X_te = scaler.transform(X_tr), scaler.transform(X_te)
    if task == "regression":
        mean, std = y_tr.mean(), y_tr.std()
        y_tr, y_te = (y_tr - mean) / std, (y_te - mean) / std
    return X_tr, X_te, y_tr, y_te


def _estimators(task, epochs, seed, dtype, hidden):
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    from numbanet.sklearn import NumbanetClassifier, NumbanetRegressor

    common = dict(hidden_layer_sizes=hidden, activation="relu", alpha=1e-4, batch_size=200,
                  learning_rate_init=1e-3, max_iter=epochs, shuffle=True, random_state=seed,
                  tol=0.0, n_iter_no_change=epochs + 1)
    if task == "classification":
        return (MLPClassifier(solver="adam", **common),
                NumbanetClassifier(dtype=dtype, **common))
    return (MLPRegressor(solver="adam", **common), NumbanetRegressor(dtype=dtype, **common))


#: Seconds to wait before each timed fit. A BLAS or OpenMP pool keeps its workers
#: spinning for a while after its last parallel call (OpenBLAS about 2**28 cycles, under
#: 0.1 s here), so a fit started right after the other library's shares the cores with
#: those threads: numbanet's digits fit took 0.25 s alone and 0.31-0.34 s right after
#: scikit-learn's.
PAUSE_S = 0.25


def _fit_time(estimator, X, y) -> float:
    """Seconds of ``estimator.fit(X, y)``, started after the other library's pool went
    quiet."""
    time.sleep(PAUSE_S)
    start = time.perf_counter()
    estimator.fit(X, y)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=("float64", "float32", "both"), default="float64",
                        help="numbanet's dtype (scikit-learn gets X in the same dtype)")
    parser.add_argument("--hidden", type=lambda s: tuple(int(v) for v in s.split(",")),
                        default=(100,), help="hidden layer sizes, e.g. 100 or 128,64")
    parser.add_argument("--datasets", default="digits,breast_cancer,wine,diabetes,synthetic")
    parser.add_argument("--quick", action="store_true",
                        help="a fifth of the epochs and 20k synthetic rows (a smoke run)")
    args = parser.parse_args(argv)

    # Before numpy loads: BLAS reads its thread count once.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np

    import numbanet as nbn

    nbn.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    warnings.simplefilter("ignore")  # ConvergenceWarning: epochs are fixed on purpose

    dtypes = ["float64", "float32"] if args.dtype == "both" else [args.dtype]
    data = _datasets(args.quick)
    print(f"numbanet {nbn.__version__} vs scikit-learn {__import__('sklearn').__version__}; "
          f"{args.threads} threads, hidden {args.hidden}, adam, batch 200, medians of "
          f"{args.repeats} repeats", flush=True)
    header = (f"{'dataset':<14}{'rows':>8}{'epochs':>7}  {'dtype':<8}"
              f"{'sklearn score':>14}{'numbanet score':>15}{'sklearn s':>11}"
              f"{'numbanet s':>11}{'speedup':>9}{'best/best':>10}{'paired':>8}")
    print(header)
    print("-" * len(header), flush=True)
    for name in args.datasets.split(","):
        X, y, task, epochs = data[name]
        X_tr, X_te, y_tr, y_te = _split(X, y, task)
        for dtype in dtypes:
            Xa, Xb = X_tr.astype(dtype), X_te.astype(dtype)
            # Untimed: numbanet's kernels for these shapes (disk cache or compile).
            _estimators(task, 1, 0, dtype, args.hidden)[1].fit(Xa, y_tr)
            times: dict[str, list[float]] = {"sk": [], "nb": []}
            scores: dict[str, list[float]] = {"sk": [], "nb": []}
            for seed in range(args.repeats):
                sk, nb = _estimators(task, epochs, seed, dtype, args.hidden)
                order = [("sk", sk), ("nb", nb)]
                if seed % 2:
                    order.reverse()
                for key, est in order:
                    times[key].append(_fit_time(est, Xa, y_tr))
                    if est.n_iter_ != epochs:
                        raise RuntimeError(f"{type(est).__name__} ran {est.n_iter_} epochs, "
                                           f"not {epochs}")
                    scores[key].append(float(est.score(Xb, y_te)))
            t_sk, t_nb = statistics.median(times["sk"]), statistics.median(times["nb"])
            # Each repeat's two fits ran back to back: the median of their ratios.
            paired = statistics.median(a / b for a, b in zip(times["sk"], times["nb"],
                                                             strict=True))
            print(f"{name:<14}{X_tr.shape[0]:>8}{epochs:>7}  {dtype:<8}"
                  f"{statistics.median(scores['sk']):>14.4f}"
                  f"{statistics.median(scores['nb']):>15.4f}"
                  f"{t_sk:>11.3f}{t_nb:>11.3f}{t_sk / t_nb:>8.1f}x"
                  f"{min(times['sk']) / min(times['nb']):>9.1f}x{paired:>7.1f}x", flush=True)
    print(f"(scores: accuracy, R² for diabetes; fit seconds and speedup: medians over "
          f"repeats; best/best: fastest repeat over fastest repeat; paired: median over "
          f"repeats of the ratio of that repeat's two fits, run back to back; load "
          f"average at the end {os.getloadavg()[0]:.2f})")
    del np
    return 0


if __name__ == "__main__":
    sys.exit(main())
