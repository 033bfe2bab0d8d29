"""Soak test (``-m slow``; the default run deselects it): a long training run keeps its
memory flat and its numbers finite.

Run it with ``pytest -m slow tests/reliability/test_soak.py`` (about a minute on two
cores; ``NUMBANET_SOAK_EPOCHS`` changes the length). It trains an MLP with dropout,
validation, gradient clipping, weight decay, a learning-rate schedule and a checkpoint
written every epoch, and records after every epoch the process's resident memory
(``/proc/self/statm``) and the bytes Python and NumPy hold (``tracemalloc``; NumPy
reports its array allocations to it).
"""

from __future__ import annotations

import math
import os
import tracemalloc

import numpy as np
import pytest

import numbanet as nbn

pytestmark = pytest.mark.slow

EPOCHS = int(os.environ.get("NUMBANET_SOAK_EPOCHS", "150"))
WARMUP = 10  # compiles, workspace caches and allocator pools settle in the first epochs


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _MemoryProbe(nbn.Callback):
    def __init__(self) -> None:
        self.rss: list[int] = []
        self.traced: list[int] = []
        self.params_finite: list[bool] = []

    def on_epoch_end(self, epoch, logs=None):
        self.rss.append(_rss_bytes())
        self.traced.append(tracemalloc.get_traced_memory()[0])
        self.params_finite.append(bool(np.isfinite(self.model.flat_parameters).all()))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_long_training_keeps_memory_flat_and_numbers_finite(tmp_path):
    X, y = nbn.datasets.load_digits()
    model = nbn.Sequential([nbn.Dense(64, 256, activation="relu"), nbn.Dropout(0.2),
                            nbn.Dense(256, 128, activation="gelu"), nbn.Dense(128, 10)],
                           seed=0, dtype="float32")
    model.compile(loss=nbn.get_loss("cross_entropy", label_smoothing=0.05),
                  optimizer=nbn.get_optimizer("adamw", lr=1e-3), metrics=["accuracy"])
    probe = _MemoryProbe()
    schedule = nbn.LearningRateScheduler(lambda epoch, lr: 1e-3 * 0.5 ** (epoch // 50))
    checkpoint = nbn.ModelCheckpoint(tmp_path / "soak.npz", monitor="val_loss")
    tracemalloc.start()
    try:
        history = model.fit(X, y, epochs=EPOCHS, batch_size=64, validation_split=0.2,
                            verbose=0, clip_norm=10.0, weight_decay=1e-4, seed=1,
                            callbacks=[schedule, checkpoint, probe])
    finally:
        tracemalloc.stop()

    assert len(history["loss"]) == EPOCHS, history.stop_reason
    assert all(math.isfinite(v) for key in ("loss", "val_loss") for v in history[key])
    assert all(probe.params_finite)
    assert history["val_accuracy"][-1] > 0.9
    rss_growth = probe.rss[-1] - probe.rss[WARMUP]
    traced_growth = probe.traced[-1] - probe.traced[WARMUP]
    print(f"\nsoak: {EPOCHS} epochs, RSS {probe.rss[WARMUP] / 2**20:.1f} -> "
          f"{probe.rss[-1] / 2**20:.1f} MiB, traced {probe.traced[WARMUP] / 2**10:.0f} -> "
          f"{probe.traced[-1] / 2**10:.0f} KiB")
    # A leak of one batch workspace per epoch would be >= 64 x 256 x 4 B x 140 = 9 MiB.
    assert rss_growth < 8 * 2**20, probe.rss
    assert traced_growth < 512 * 2**10, probe.traced
    loaded = nbn.load(tmp_path / "soak.npz")
    assert np.isfinite(loaded.flat_parameters).all()
