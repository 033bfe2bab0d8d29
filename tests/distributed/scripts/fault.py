"""One rank fails during fit(distributed=True); every rank must end, never hang.

Run: mpiexec -n 2 python fault.py MODE OUTDIR, MODE one of:

* ``callback``: a callback raises on rank 1 in the middle of epoch 2.
* ``disk``: rank 0's checkpoint write fails with "No space left on device".
* ``data``: shard="local" from memmaps; rank 1's holds NaN in row 37, found when the
  batch holding it is read (mid-epoch).
* ``nan``: on_nan="raise" with a learning rate that diverges: every rank raises
  FloatingPointError at the same step, so each can catch it (the script does, prints
  "caught" and exits 0).
* ``setup``: shard="local", rank 1's labels are out of range: found before training,
  so every rank raises (rank 1 its ValueError, rank 0 a RuntimeError naming rank 1) and
  each can catch it (the script does, prints "caught" and exits 0).
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import numpy as np

import numbanet as nbn
from numbanet import distributed as dist


class FailOnRank1(nbn.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, step, logs=None):
        if dist.rank() == 1 and self.epoch == 1 and step == 2:
            raise RuntimeError("rank 1 fails on purpose")


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 8))
    y = (X[:, 0] > 0).astype(np.int64)
    model = nbn.Sequential([nbn.Dense(8, 16, activation="relu"), nbn.Dense(16, 2)], seed=0)
    lr = 1e6 if mode == "nan" else 1e-2
    model.compile("cross_entropy", nbn.get_optimizer("sgd", lr=lr))
    kwargs = {}
    callbacks: list = []
    if mode == "callback":
        callbacks = [FailOnRank1()]
    elif mode == "disk":
        import numbanet.io

        def full_disk(*args, **kw):
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "ckpt.npz"))

        numbanet.io.save = full_disk  # what ModelCheckpoint calls
        callbacks = [nbn.ModelCheckpoint(str(out / "ckpt.npz"))]
    elif mode == "data":
        path = out / f"X{dist.rank()}.npy"
        local = X[dist.rank()::2].copy()
        if dist.rank() == 1:
            local[37, 3] = np.nan
        np.save(path, local)
        X, y = np.load(path, mmap_mode="r"), y[dist.rank()::2]
        kwargs["shard"] = "local"
    elif mode == "nan":
        kwargs["on_nan"] = "raise"
    elif mode == "setup":
        X, y = X[dist.rank()::2], y[dist.rank()::2].copy()
        if dist.rank() == 1:
            y[5] = 7
        kwargs["shard"] = "local"
    try:
        model.fit(X, y, epochs=3, batch_size=16, verbose=0, callbacks=callbacks,
                  distributed=True, **kwargs)
    except (FloatingPointError, ValueError, RuntimeError) as exc:
        if mode not in ("nan", "setup"):
            raise
        _say(f"caught on rank {dist.rank()}: {type(exc).__name__}: {exc}")
        return
    _say(f"rank {dist.rank()} finished")


def _say(line: str) -> None:
    # One write per line: the ranks share the launcher's stdout.
    sys.stdout.write(line.replace("\n", " ") + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
