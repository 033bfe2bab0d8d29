"""Kill a distributed run mid-epoch, then resume it from its checkpoint on another
number of ranks.

Run: mpiexec -n 2 python resume.py crash OUTDIR  (rank 1 is killed in epoch 3; rank 0's
ModelCheckpoint wrote OUTDIR/ckpt.npz after epochs 1 and 2), then
mpiexec -n 1 python resume.py resume OUTDIR  (every rank loads the checkpoint and
trains the remaining epoch; writes OUTDIR/resumed-rank<r>.npy). The test compares with
``train(EPOCHS)``: one process, three epochs in one call.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np

import numbanet as nbn

EPOCHS = 3


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(150, 10))
    return X, (X[:, :2].sum(axis=1) > 0).astype(np.int64)


def build() -> nbn.Sequential:
    model = nbn.Sequential([nbn.Dense(10, 24, activation="relu"), nbn.Dense(24, 2)],
                           seed=0, dtype="float64")
    model.compile("cross_entropy", nbn.get_optimizer("adam", lr=1e-2))
    return model


def fit(model: nbn.Sequential, epochs: int, **kwargs) -> None:
    X, y = data()
    model.fit(X, y, epochs=epochs, batch_size=25, validation_split=0.2, clip_norm=1.0,
              weight_decay=1e-3, verbose=0, **kwargs)


def train(epochs: int) -> nbn.Sequential:
    model = build()
    fit(model, epochs)
    return model


class KillRank1(nbn.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, step, logs=None):
        from numbanet import distributed as dist

        if dist.rank() == 1 and self.epoch == 2 and step == 2:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    from numbanet import distributed as dist

    phase, out = sys.argv[1], Path(sys.argv[2])
    if phase == "crash":
        model = build()
        fit(model, EPOCHS, distributed=True,
            callbacks=[nbn.ModelCheckpoint(str(out / "ckpt.npz")), KillRank1()])
        return
    model = nbn.load(out / "ckpt.npz")
    fit(model, EPOCHS - model.epochs_completed, distributed=True)
    np.save(out / f"resumed-rank{dist.rank()}.npy", model.flat_parameters)


if __name__ == "__main__":
    main()
