"""Concurrency: models trained in two Python threads at once equal sequential training.

Numba's ``workqueue`` threading layer aborts the process when two threads launch
parallel kernels at once; :mod:`numbanet.threads` therefore asks Numba for a thread-safe
layer (TBB or OpenMP) at import. These tests check the choice, train two models
concurrently (one of them on 1 thread, the other on all) and compare with the same two
trainings run one after the other, bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import numbanet as nbn
import numbanet.threads as nbt


def test_numbanet_chose_a_thread_safe_layer():
    if os.environ.get("NUMBA_THREADING_LAYER"):
        pytest.skip("the user chose the threading layer")
    assert nbt.threading_layer() in nbt.THREADSAFE_LAYERS
    assert nbt.threading_layer_is_threadsafe()
    assert "threadsafe" in nbt.threading_layer_choice()


def test_a_user_choice_of_layer_is_kept_and_reported():
    code = ("import numbanet.threads as t; print(t.threading_layer()); "
            "print(t.threading_layer_is_threadsafe()); print(t.threading_layer_choice())")
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.splitlines()
    assert out[0] == "workqueue" and out[1] == "False"
    assert "NUMBA_THREADING_LAYER" in out[2]


def _train(seed, optimizer, threads=None):
    if threads is not None:
        nbn.set_num_threads(threads)  # thread-local in Numba: affects this thread only
    X, y = nbn.datasets.load_digits()
    model = nbn.Sequential([nbn.Dense(64, 192, activation="relu"), nbn.Dropout(0.1),
                            nbn.Dense(192, 10)], seed=seed, dtype="float32")
    model.compile(loss="cross_entropy", optimizer=optimizer)
    history = model.fit(X[:1024], y[:1024], epochs=3, batch_size=256, verbose=0,
                        validation_split=0.25)
    return model.flat_parameters.copy(), history["loss"] + history["val_loss"]


JOBS = [
    (1, lambda: nbn.get_optimizer("adam", lr=2e-3), 1),
    (2, lambda: nbn.get_optimizer("sgd", lr=0.05, momentum=0.9, nesterov=True), None),
]


def _worker(start, results, errors, i, seed, make, threads):
    try:
        start.wait()  # both threads enter training together
        results[i] = _train(seed, make(), threads)
    except BaseException as exc:  # pragma: no cover - reported by the test
        errors.append(exc)


def test_two_models_trained_in_two_threads_equal_sequential_training():
    sequential = [_train(seed, make(), threads) for seed, make, threads in JOBS]
    nbn.set_num_threads(nbt.max_threads())  # undo the 1-thread job's setting
    for _repeat in range(3):
        results: list = [None, None]
        errors: list = []
        start = threading.Barrier(len(JOBS))
        workers = [threading.Thread(target=_worker, args=(start, results, errors, i, *job))
                   for i, job in enumerate(JOBS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=300)
        assert not errors, errors
        for (p_seq, h_seq), (p_thr, h_thr) in zip(sequential, results, strict=True):
            assert h_seq == h_thr
            np.testing.assert_array_equal(p_seq, p_thr)


def _predict_repeatedly(start, model, X, out, i):
    start.wait()
    for _ in range(5):
        out[i] = model.predict(X, batch_size=128)


def test_one_model_used_from_two_threads_gives_each_caller_its_own_answer():
    """Layers keep activations in per-model workspaces: without the model's lock, two
    threads predicting with one model overwrote each other's batches (21 of 40 results
    wrong before the fix). Training in one thread while another predicts must also give
    the predictor a consistent model, and the trainer the sequential result."""
    rng = np.random.default_rng(0)
    model = nbn.Sequential([nbn.Dense(64, 256, activation="relu"), nbn.Dense(256, 10)],
                           seed=0)
    model.compile(optimizer=nbn.get_optimizer("sgd", lr=0.01))
    inputs = [rng.standard_normal((512, 64)) for _ in range(2)]
    expected = [model.predict(x) for x in inputs]
    for _repeat in range(5):
        out: list = [None, None]
        start = threading.Barrier(2)
        workers = [threading.Thread(target=_predict_repeatedly,
                                    args=(start, model, inputs[i], out, i)) for i in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
        for got, want in zip(out, expected, strict=True):
            np.testing.assert_array_equal(got, want)

    X, y = nbn.datasets.load_digits()
    reference = nbn.Sequential([nbn.Dense(64, 256, activation="relu"), nbn.Dense(256, 10)],
                               seed=5)
    reference.compile(optimizer=nbn.get_optimizer("adam"))
    reference.fit(X[:768], y[:768], epochs=2, batch_size=128, verbose=0, seed=1)
    trained = nbn.Sequential([nbn.Dense(64, 256, activation="relu"), nbn.Dense(256, 10)],
                             seed=5)
    trained.compile(optimizer=nbn.get_optimizer("adam"))
    start = threading.Barrier(2)
    out = [None]
    reader = threading.Thread(target=_predict_repeatedly, args=(start, trained, X[:256],
                                                                 out, 0))
    reader.start()
    start.wait()
    trained.fit(X[:768], y[:768], epochs=2, batch_size=128, verbose=0, seed=1)
    reader.join(timeout=120)
    np.testing.assert_array_equal(trained.flat_parameters, reference.flat_parameters)
    assert np.isfinite(out[0]).all()


WORKQUEUE_CRASH = '''
import threading
import numpy as np
import numbanet as nbn

def train(seed):
    X = np.random.default_rng(seed).standard_normal((2048, 64))
    model = nbn.Sequential([nbn.Dense(64, 256, activation="relu"), nbn.Dense(256, 10)])
    model.compile(optimizer="adam")
    model.fit(X, np.arange(2048) % 10, epochs=3, batch_size=256, verbose=0)

threads = [threading.Thread(target=train, args=(s,)) for s in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
'''


def test_workqueue_layer_would_abort_concurrent_training():
    """Why the choice matters: forced onto workqueue, the same workload kills the process."""
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    proc = subprocess.run([sys.executable, "-c", WORKQUEUE_CRASH], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 0:
        pytest.skip("the two threads' kernels did not overlap this time")
    assert "workqueue" in proc.stderr and "not threadsafe" in proc.stderr


def _fit_into(start, model, out, i):
    X, y = nbn.datasets.load_digits()
    start.wait()
    out[i] = model.fit(X[:1024], y[:1024], epochs=2, batch_size=128, verbose=0, seed=i)["loss"]


def test_one_loss_object_shared_by_two_models_in_two_threads():
    X, y = nbn.datasets.load_digits()

    def make(seed, loss):
        model = nbn.Sequential([nbn.Dense(64, 128, activation="relu"), nbn.Dense(128, 10)],
                               seed=seed)
        model.compile(loss=loss, optimizer=nbn.get_optimizer("adam"))
        return model

    expected = [make(i, nbn.get_loss("cross_entropy")).fit(
        X[:1024], y[:1024], epochs=2, batch_size=128, verbose=0, seed=i)["loss"]
        for i in range(2)]
    for _repeat in range(5):
        shared = nbn.get_loss("cross_entropy")
        models = [make(i, shared) for i in range(2)]
        out: list = [None, None]
        start = threading.Barrier(2)
        workers = [threading.Thread(target=_fit_into, args=(start, models[i], out, i))
                   for i in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
        assert out == expected
