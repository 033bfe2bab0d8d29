"""fit(distributed=True) under ``mpiexec -n 2``: the same weights as one process, on
every rank; logs reduced over the ranks; rank 0 alone prints and writes; a failing rank
ends the run; a checkpoint resumes on another number of ranks; ``numbanet train``.

Each test starts mpiexec once (a few seconds: two interpreters loading cached kernels)
and compares with the single-process reference computed here from the same script.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from numbanet.threads import process_share

RTOL = 1e-9  # the bound: float64, 20 Adam steps with clipping and weight decay


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_two_ranks_hold_the_weights_of_one_process(mpirun, script, tmp_path: Path) -> None:
    eq = script("equivalence")
    run = mpirun("equivalence.py", tmp_path, *eq.CONFIGS)
    for config in eq.CONFIGS:
        model, history = eq.train(config, distributed=False)
        ranks = [np.load(tmp_path / f"rank{r}-{config}.npz") for r in range(2)]
        # Every rank holds the same weights, bit for bit ...
        assert np.array_equal(ranks[0]["params"], ranks[1]["params"]), config
        # ... and they are one process's up to the order of additions.
        assert _relative(ranks[0]["params"], model.flat_parameters) <= RTOL, config
        # Loss, metrics and validation are the numbers one process logs, on every rank.
        for saved in ranks:
            logged = json.loads(str(saved["history"]))
            if config == "stream":  # a stream cannot be re-read for training metrics
                assert "accuracy" not in logged
            for key, values in logged.items():
                np.testing.assert_allclose(values, history.history[key], rtol=RTOL,
                                           err_msg=f"{config} {key}")
            meta = json.loads(str(saved["params_meta"]))
            assert meta["world_size"] == 2
            # Each rank took its share of the cores (mpiexec binds nothing here).
            assert int(saved["threads"]) == process_share(2)
            # 20 steps: 4 epochs of 5 global batches (a stream's length is not known).
            assert meta["steps"] == (None if config == "stream" else 5)
    # Only rank 0 printed (one line per epoch per run) and wrote files.
    assert run.stdout.count("epoch 1/4 - ") == len(eq.CONFIGS), run
    assert run.stdout.count("epoch 4: saved") == len(eq.CONFIGS), run
    assert sorted(p.name for p in (tmp_path / "files-0").iterdir()) == [
        "ckpt-1.npz", "ckpt-2.npz", "ckpt-3.npz", "ckpt-4.npz", "log.csv"]
    assert list((tmp_path / "files-1").iterdir()) == []
    rows = (tmp_path / "files-0" / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # the last run's header and epochs


def test_batchnorm_uses_per_rank_statistics(mpirun, script, tmp_path: Path) -> None:
    """BatchNorm normalises with each rank's slice (no SyncBatchNorm): the result is one
    process doing the same per slice, not one process on the whole batch; running
    statistics are averaged, so every rank ends with the same buffers."""
    bn = script("batchnorm")
    mpirun("batchnorm.py", tmp_path)
    ranks = [np.load(tmp_path / f"bn-rank{r}.npz") for r in range(2)]
    for key in ("params", "buffers"):
        assert np.array_equal(ranks[0][key], ranks[1][key]), key
    emulated = bn.emulate(2)
    assert _relative(ranks[0]["params"], emulated.flat_parameters) <= RTOL
    assert _relative(ranks[0]["buffers"], emulated.flat_buffers) <= RTOL
    one_process = bn.emulate(1)
    assert _relative(ranks[0]["params"], one_process.flat_parameters) > 1e-6


@pytest.mark.parametrize("mode, message", [
    ("callback", "rank 1 fails on purpose"),
    ("disk", "No space left on device"),
    ("data", "X[37] contains NaN or infinity"),
])
def test_a_failing_rank_ends_every_rank(mpirun, tmp_path: Path, mode: str,
                                        message: str) -> None:
    started = time.monotonic()
    run = mpirun("fault.py", mode, tmp_path, check=False, timeout=90)
    assert run.returncode != 0, run
    assert message in run.stderr, run
    assert "ending every rank" in run.stderr, run
    assert "finished" not in run.stdout, run
    assert time.monotonic() - started < 60, run


def test_nan_raise_reaches_every_rank_at_the_same_step(mpirun, tmp_path: Path) -> None:
    run = mpirun("fault.py", "nan", tmp_path)
    assert run.stdout.count("caught on rank") == 2, run
    lines = sorted(line.split(": ", 1)[1] for line in run.stdout.splitlines()
                   if line.startswith("caught"))
    assert lines[0] == lines[1], run  # the same epoch and step on both ranks
    assert lines[0].startswith("FloatingPointError: loss is"), run


def test_bad_data_found_before_training_raises_on_every_rank(mpirun, tmp_path: Path) -> None:
    run = mpirun("fault.py", "setup", tmp_path)
    caught = sorted(line for line in run.stdout.splitlines() if line.startswith("caught"))
    assert len(caught) == 2, run
    assert caught[0].startswith("caught on rank 0: RuntimeError: rank 1 of 2 failed: "
                                "ValueError:"), run
    assert caught[1].startswith("caught on rank 1: ValueError:"), run
    assert "labels" in caught[1], run


def test_a_killed_run_resumes_from_its_checkpoint_on_another_rank_count(
        mpirun, script, tmp_path: Path) -> None:
    resume = script("resume")
    crashed = mpirun("resume.py", "crash", tmp_path, check=False, timeout=90)
    assert crashed.returncode != 0, crashed
    assert (tmp_path / "ckpt.npz").exists(), crashed
    mpirun("resume.py", "resume", tmp_path, n=1)
    reference = resume.train(resume.EPOCHS)
    resumed = np.load(tmp_path / "resumed-rank0.npy")
    assert _relative(resumed, reference.flat_parameters) <= RTOL


def test_numbanet_train_under_mpiexec_matches_one_process(mpiexec: str, command,
                                                          tmp_path: Path) -> None:
    args = ["--dtype", "float64", "--epochs", "2", "--batch-size", "64"]
    one = command([sys.executable, "-m", "numbanet", "train", *args, "--save",
                       str(tmp_path / "one.npz")], timeout=180)
    assert one.returncode == 0, one
    two = command([mpiexec, "-n", "2", sys.executable, "-m", "numbanet", "train", *args,
                       "--save", str(tmp_path / "two.npz")], timeout=180)
    assert two.returncode == 0, two
    import numbanet as nbn

    a = nbn.load(tmp_path / "two.npz").flat_parameters
    b = nbn.load(tmp_path / "one.npz").flat_parameters
    assert _relative(a, b) <= RTOL
    # Rank 0 alone reports: the same lines as one process, once.
    assert two.stdout.count("saved model to") == 1, two
    assert two.stdout.count("epoch 2/2") == 1, two
    test_line = [line for line in one.stdout.splitlines() if line.startswith("test ")][0]
    assert test_line.split(" (")[0] in two.stdout, two
