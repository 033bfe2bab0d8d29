"""Train an MLP with fit(distributed=True) and save what this rank holds.

Run: mpiexec -n 2 python equivalence.py OUTDIR [CONFIG]. Every rank writes
OUTDIR/rank<r>-<config>.npz (flat parameters, history); only rank 0 may write the
checkpoint and CSV files under OUTDIR/files-<rank>/. The test imports this file and runs
``train(config, distributed=False)`` as the single-process reference.

Configurations (each 20 Adam steps with clipping and weight decay, float64):
* ``even``: 200 training rows, batch 40: every rank gets 20 rows a step.
* ``uneven``: 185 training rows, batch 37: 18 and 19 rows, so the ranks' shares differ.
* ``local``: like ``even`` but each rank passes only its own rows (shard="local"), laid
  out so that the union of the ranks' k-th batches is one process's k-th batch.
* ``stream``: the same rows as ``local``, as a list of (X_batch, y_batch) per rank
  (fit(batches, None, ...)); training metrics are not logged for streams.
* ``weighted``: like ``uneven`` with class weights and some ignored labels (-100), so
  each rank's mean divides by its own sum of weights and the ranks' shares are summed.
* ``sample_weight``: like ``uneven`` with fit(sample_weight=...) and weighted validation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import numbanet as nbn

CONFIGS = {
    # name: (training rows, batch size, shuffle)
    "even": (200, 40, True),
    "uneven": (185, 37, True),
    "local": (200, 40, False),
    "stream": (200, 40, False),
    "weighted": (185, 37, True),
    "sample_weight": (185, 37, True),
}
VALIDATION = 30


def data(config: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n, _, _ = CONFIGS[config]
    rng = np.random.default_rng(42)
    X = rng.normal(size=(n + VALIDATION, 12))
    y = (X[:, :3].sum(axis=1) > 0).astype(np.int64) + (X[:, 3] > 0.5)
    if config == "weighted":
        y[rng.random(len(y)) < 0.1] = -100  # ignored rows
    return X[:n], y[:n], X[n:], y[n:]


def build(seed: int, config: str = "even") -> nbn.Sequential:
    model = nbn.Sequential([nbn.Dense(12, 32, activation="relu"),
                            nbn.Dense(32, 16, activation="tanh"), nbn.Dense(16, 3)],
                           seed=seed, dtype="float64")
    if config == "weighted":
        loss = nbn.get_loss("cross_entropy", weight=[0.5, 1.0, 3.0])
        model.compile(loss, nbn.get_optimizer("adam", lr=3e-2))
    else:
        model.compile("cross_entropy", nbn.get_optimizer("adam", lr=3e-2),
                      metrics=["accuracy"])
    return model


def local_rows(n: int, batch: int, rank: int, size: int) -> np.ndarray:
    """Rows of rank ``rank`` such that its k-th local batch (of batch // size rows, no
    shuffling) is its slice of the k-th global batch."""
    local = batch // size
    return np.concatenate([np.arange(start + rank * local, start + (rank + 1) * local)
                           for start in range(0, n, batch)])


def train(config: str, distributed: bool, files: Path | None = None, model_seed: int = 0,
          rng_seed: int = 7) -> tuple[nbn.Sequential, nbn.History]:
    X, y, X_val, y_val = data(config)
    n, batch, shuffle = CONFIGS[config]
    model = build(model_seed, config)
    model.rng.bit_generator.state = np.random.default_rng(rng_seed).bit_generator.state
    callbacks = []
    if files is not None:
        files.mkdir(parents=True, exist_ok=True)
        callbacks = [nbn.CSVLogger(files / "log.csv"),
                     nbn.ModelCheckpoint(str(files / "ckpt-{epoch}.npz"), verbose=1)]
    kwargs = {}
    if config in ("local", "stream") and distributed:
        from numbanet import distributed as dist

        rows = local_rows(n, batch, dist.rank(), dist.size())
        X, y = X[rows], y[rows]
        kwargs["shard"] = "local"
        if config == "stream":
            local = batch // dist.size()
            X = [(X[i:i + local], y[i:i + local]) for i in range(0, len(X), local)]
            y = None
            del kwargs["shard"]
    if distributed:
        kwargs["distributed"] = True
    validation: tuple = (X_val, y_val)
    if config == "sample_weight":
        weights = np.random.default_rng(9).uniform(0.0, 2.0, size=n + VALIDATION)
        kwargs["sample_weight"] = weights[:n]
        validation = (X_val, y_val, weights[n:])
    history = model.fit(X, y, epochs=4, batch_size=batch, shuffle=shuffle,
                        validation_data=validation, clip_norm=0.5, weight_decay=1e-2,
                        verbose=2, callbacks=callbacks, **kwargs)
    return model, history


def main() -> None:
    from numbanet import distributed as dist

    out = Path(sys.argv[1])
    configs = sys.argv[2:] or list(CONFIGS)
    rank = dist.rank()
    for config in configs:
        # Ranks other than 0 start from other weights and another generator state: fit
        # must broadcast rank 0's.
        model, history = train(config, True, out / f"files-{rank}",
                               model_seed=0 if rank == 0 else 100 + rank,
                               rng_seed=7 if rank == 0 else 1000 + rank)
        np.savez(out / f"rank{rank}-{config}.npz", params=model.flat_parameters,
                 history=json.dumps(history.history), params_meta=json.dumps(history.params),
                 threads=nbn.get_num_threads())


if __name__ == "__main__":
    main()
