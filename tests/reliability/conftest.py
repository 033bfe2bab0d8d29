"""Shared pieces of the reliability suite: a tiny compiled model, its data, fake plugins.

Shapes are small on purpose: these tests are about how numbanet answers bad input and
faults, not about speed, and every compiled variant is shared across the suite.
"""

from __future__ import annotations

import numpy as np
import pytest

import numbanet as nbn

N_IN, N_HIDDEN, N_OUT = 4, 8, 3


def make_model(dtype: str = "float64", optimizer: str = "adam", seed: int = 0,
               loss: str = "cross_entropy", **opt_hp) -> nbn.Sequential:
    """A compiled 4-8-3 MLP: the same architecture everywhere, so kernels compile once."""
    model = nbn.Sequential(
        [nbn.Dense(N_IN, N_HIDDEN, activation="relu"), nbn.Dense(N_HIDDEN, N_OUT)],
        seed=seed, dtype=dtype,
    )
    model.compile(loss=loss, optimizer=nbn.get_optimizer(optimizer, **opt_hp),
                  metrics=["accuracy"])
    return model


def make_data(n: int = 24, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, N_IN))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5).astype(np.int64)
    return X, y


@pytest.fixture
def model() -> nbn.Sequential:
    return make_model()


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    return make_data()


@pytest.fixture
def fake_plugin(make_dist):
    """``fake_plugin(dist_name, body) -> module name``: an installed-looking plugin (the
    suite-wide ``make_dist`` fixture of ``tests/conftest.py``; plugins are reloaded
    afterwards)."""
    return make_dist


@pytest.fixture
def tiny_model() -> nbn.Sequential:
    """A fresh compiled 4-8-3 model (cross-entropy, SGD)."""
    return make_model(optimizer="sgd", lr=0.1)


@pytest.fixture(scope="session")
def model_factory():
    """``make_model`` for tests that build several models (hypothesis, threads)."""
    return make_model


@pytest.fixture(scope="session")
def data_factory():
    """``make_data(n, seed)`` for tests that need several datasets."""
    return make_data
