"""A small CNN with BatchNorm trained with fit(distributed=True); saves this rank's state.

Run: mpiexec -n 2 python batchnorm.py OUTDIR. Each rank normalises with the statistics
of its own slice of the batch (PyTorch's BatchNorm without SyncBatchNorm) and the
running statistics are averaged over the ranks at the end of each epoch. The test
compares the result with ``emulate(2)``, one process doing what the two ranks do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import numbanet as nbn

N, BATCH, EPOCHS = 96, 32, 2


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(N, 6, 6, 2))
    y = (X[..., 0].mean(axis=(1, 2)) > 0).astype(np.int64) + (X[:, 2, 2, 1] > 0.7)
    return X, y


def build() -> nbn.Sequential:
    model = nbn.Sequential([nbn.Conv2D(2, 4, 3, padding=1), nbn.BatchNorm(4),
                            nbn.Activation("relu"), nbn.GlobalAvgPool2D(), nbn.Dense(4, 3)],
                           seed=0, dtype="float64", input_shape=(6, 6, 2))
    model.compile("cross_entropy", nbn.get_optimizer("sgd", lr=0.1, momentum=0.9))
    return model


def emulate(size: int) -> nbn.Sequential:
    """One process doing what ``size`` ranks do: each rank's slice runs forward and
    backward with that rank's running statistics; the update uses the gradient of the
    whole batch; the statistics are averaged at the end of each epoch."""
    X, y = data()
    model = build()
    buffers = [model.flat_buffers.copy() for _ in range(size)]
    grads = np.zeros_like(model.flat_gradients)
    for _ in range(EPOCHS):
        for start in range(0, N, BATCH):
            stop = min(start + BATCH, N)
            grads[...] = 0
            for r in range(size):
                lo = start + (stop - start) * r // size
                hi = start + (stop - start) * (r + 1) // size
                model.flat_buffers[...] = buffers[r]
                out = model.forward(X[lo:hi], training=True)
                d_out = np.empty_like(out)
                model.loss.forward_backward(out, y[lo:hi], d_out)
                model.backward(d_out)
                buffers[r] = model.flat_buffers.copy()
                grads += model.flat_gradients * (hi - lo)
            model.optimizer.step(model.flat_parameters, grads, 1.0 / (stop - start))
        mean = np.mean(buffers, axis=0)
        buffers = [mean.copy() for _ in range(size)]
        model.flat_buffers[...] = mean
    return model


def main() -> None:
    from numbanet import distributed as dist

    out = Path(sys.argv[1])
    X, y = data()
    model = build()
    model.fit(X, y, epochs=EPOCHS, batch_size=BATCH, shuffle=False, verbose=0,
              distributed=True)
    np.savez(out / f"bn-rank{dist.rank()}.npz", params=model.flat_parameters,
             buffers=model.flat_buffers)


if __name__ == "__main__":
    main()
