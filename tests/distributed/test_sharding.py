"""The parts of data parallelism that one process can check: how batches are cut
between ranks, the gradient weights, the pipeline slot, threads per rank, messages
without mpi4py, and a one-rank distributed fit (identical to a plain one)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import numbanet as nbn
from numbanet import distributed
from numbanet.sampling import BatchSampler, LocalShardSampler, ShardedBatchSampler
from numbanet.threads import process_share


@pytest.fixture
def mpi4py() -> None:
    if importlib.util.find_spec("mpi4py") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the distributed tests: pip install 'numbanet[mpi]'")
        pytest.skip("mpi4py not installed: pip install 'numbanet[mpi]'")


@pytest.mark.parametrize("n, batch, size", [(10, 4, 2), (185, 37, 2), (7, 3, 4),
                                            (100, 100, 3), (5, 8, 8)])
def test_the_ranks_slices_cut_every_global_batch_once(n: int, batch: int, size: int) -> None:
    samplers = [ShardedBatchSampler(n, batch, rank=r, size=size, shuffle=False)
                for r in range(size)]
    plain = BatchSampler(n, batch, shuffle=False)
    assert all(len(s) == len(plain) for s in samplers)
    for step in range(len(plain)):
        pieces = [s.positions(step) for s in samplers]
        assert pieces[0][0] == plain.positions(step)[0]
        assert pieces[-1][1] == plain.positions(step)[1]
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))
        lengths = [stop - start for start, stop in pieces]
        assert max(lengths) - min(lengths) <= 1


def test_a_local_shard_runs_empty_once_its_rows_are_used() -> None:
    s = LocalShardSampler(5, 2, steps=4, shuffle=False)
    assert [s.positions(k) for k in range(4)] == [(0, 2), (2, 4), (4, 5), (5, 5)]
    assert s.batch_sizes() == {0, 1, 2}
    with pytest.raises(ValueError, match="cannot cover"):
        LocalShardSampler(5, 2, steps=2)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\)"):
        ShardedBatchSampler(5, 2, rank=2, size=2)


def test_the_launcher_size_comes_from_its_environment(monkeypatch) -> None:
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launcher_size() == 1
    monkeypatch.setenv("PMI_SIZE", "4")
    assert distributed.launcher_size() == 4


def test_without_mpi4py_the_error_names_the_extra() -> None:
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import numpy as np, numbanet as nbn\n"
            "from numbanet import distributed\n"
            "m = nbn.Sequential([nbn.Dense(2, 2)], seed=0); m.compile()\n"
            "for call in (distributed.init, lambda: m.fit(np.ones((4, 2)), [0, 1, 0, 1],"
            " distributed=True, verbose=0)):\n"
            "    try:\n        call()\n    except ImportError as exc:\n        print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and all('pip install "numbanet[mpi]"' in line for line in lines)


def test_shard_local_needs_distributed() -> None:
    model = nbn.Sequential([nbn.Dense(2, 2)], seed=0).compile()
    with pytest.raises(ValueError, match="shard='local' needs distributed=True"):
        model.fit(np.ones((4, 2)), [0, 1, 0, 1], shard="local", verbose=0)
    with pytest.raises(ValueError, match="shard must be one of"):
        model.fit(np.ones((4, 2)), [0, 1, 0, 1], shard="everywhere", verbose=0)


def test_each_rank_gets_its_share_of_the_cores() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert process_share(1) == min(cores, nbn.threads.max_threads())
    assert process_share(cores) == 1
    assert process_share(10 * cores) == 1


def test_numbanet_num_threads_is_read_at_import() -> None:
    code = "import numbanet; print(numbanet.get_num_threads())"
    env = {**os.environ, "NUMBANET_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.stdout.strip() == "1", out.stderr
    env["NUMBANET_NUM_THREADS"] = "many"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and "NUMBANET_NUM_THREADS='many' ignored" in out.stderr


def test_set_num_threads_and_the_environment_win_over_the_process_share() -> None:
    code = ("import numbanet\nfrom numbanet.threads import use_process_share\n"
            "numbanet.set_num_threads(1)\nprint(use_process_share(1))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "1", out.stderr
    code = "from numbanet.threads import use_process_share\nprint(use_process_share(1))\n"
    env = {**os.environ, "NUMBANET_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.stdout.strip() == "1", out.stderr


def _model(loss: object = "cross_entropy", metrics: object = ("accuracy",)) -> nbn.Sequential:
    model = nbn.Sequential([nbn.Dense(5, 8, activation="relu"), nbn.Dense(8, 3)], seed=0,
                           dtype="float64")
    model.compile(loss, nbn.get_optimizer("adam", lr=1e-2), metrics=list(metrics))
    return model


def test_one_rank_trains_exactly_like_a_plain_fit(mpi4py) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(90, 5)), rng.integers(0, 3, 90)
    kwargs = {"epochs": 2, "batch_size": 16, "validation_split": 0.2, "clip_norm": 1.0,
              "verbose": 0, "seed": 3}
    plain, one_rank = _model(), _model()
    expected = plain.fit(X, y, **kwargs)
    history = one_rank.fit(X, y, distributed=True, **kwargs)
    assert np.array_equal(one_rank.flat_parameters, plain.flat_parameters)
    assert history.history == expected.history
    assert history.params["rank"] == 0 and history.params["world_size"] == 1


def test_one_rank_with_drop_last_trains_exactly_like_a_plain_fit(mpi4py) -> None:
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(90, 5)), rng.integers(0, 3, 90)
    kwargs = {"epochs": 2, "batch_size": 16, "drop_last": True, "verbose": 0, "seed": 3}
    plain, one_rank = _model(), _model()
    plain.fit(X, y, **kwargs)
    one_rank.fit(X, y, distributed=True, **kwargs)
    assert plain.optimizer.step_count == 2 * (90 // 16)
    assert np.array_equal(one_rank.flat_parameters, plain.flat_parameters)
    with pytest.raises(ValueError, match="shard='local', drop_last=True"):
        _model().fit(X, y, distributed=True, shard="local", **kwargs)


def test_drop_last_leaves_out_the_short_global_batch_on_every_rank() -> None:
    samplers = [ShardedBatchSampler(37, 8, rank=r, size=3, shuffle=False, drop_last=True)
                for r in range(3)]
    assert all(len(s) == 4 for s in samplers)
    assert samplers[-1].positions(3)[1] == 32


def test_one_rank_with_class_weights_and_ignored_labels(mpi4py) -> None:
    """The divisor of each rank's mean is computed as the loss host does (here the sum
    of the class weights of the rows not ignored)."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(90, 5)), rng.integers(0, 3, 90)
    y[::7] = -100
    loss = nbn.get_loss("cross_entropy", weight=[1.0, 2.0, 0.5])
    plain, one_rank = _model(loss, ()), _model(loss, ())
    plain.fit(X, y, epochs=2, batch_size=16, verbose=0, seed=3)
    one_rank.fit(X, y, epochs=2, batch_size=16, verbose=0, seed=3, distributed=True)
    np.testing.assert_allclose(one_rank.flat_parameters, plain.flat_parameters, rtol=1e-12,
                               atol=1e-14)


def test_the_all_reduce_goes_in_the_pipeline_slot(mpi4py) -> None:
    from numbanet.optim import AllReduce, ClipByGlobalNorm, GradientPipeline

    dp = distributed.DataParallel()
    pipeline = dp.pipeline(GradientPipeline(ClipByGlobalNorm(1.0), AllReduce()))
    assert pipeline.transforms[1] is dp.stage
    assert dp.pipeline(GradientPipeline(ClipByGlobalNorm(1.0))).transforms[0] is dp.stage
    with pytest.raises(ValueError, match="fills the pipeline's AllReduce slot itself"):
        dp.pipeline(GradientPipeline(AllReduce(lambda g: None)))


def test_allreduce_and_broadcast_check_their_arrays(mpi4py) -> None:
    assert distributed.size() == 1 and distributed.is_main()
    a = np.arange(3.0)
    assert distributed.allreduce_(a) is a and a.tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(TypeError, match="numpy.ndarray"):
        distributed.allreduce_([1.0])
    with pytest.raises(ValueError, match="C-contiguous and writeable"):
        distributed.broadcast_(np.ones((3, 3))[:, 0])
    with pytest.raises(ValueError, match=r"root must be a rank in \[0, 1\)"):
        distributed.broadcast_(a, root=1)
