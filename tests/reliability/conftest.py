"""Shared pieces of the reliability suite: a tiny compiled model, its data, fake plugins.

Shapes are small on purpose: these tests are about how numbanet answers bad input and
faults, not about speed, and every compiled variant is shared across the suite.
"""

from __future__ import annotations

import itertools
import sys
import textwrap

import numpy as np
import pytest

import numbanet as nbn
import numbanet.plugins as nbp

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


_counter = itertools.count()

PLUGIN_PRELUDE = '''
import numpy as np
from numbanet import hookspecs
from numbanet._jit import kernel
from numbanet.specs import LossSpec, OptimizerSpec

hookimpl = hookspecs.hookimpl
'''


@pytest.fixture
def fake_plugin(tmp_path, monkeypatch):
    """``fake_plugin(dist_name, body) -> module name``: an installed-looking plugin.

    Writes ``<dist>-1.0.dist-info/entry_points.txt`` and a module on ``sys.path``, which
    is exactly what importlib.metadata finds for a pip-installed distribution, so the
    real entry-point loading runs. Plugins are reloaded afterwards.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(nbp.AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(nbp.ALLOW_ENV, raising=False)
    created: list[str] = []

    def make(dist_name: str, body: str) -> str:
        module = f"reliability_plugin_{next(_counter)}"
        (tmp_path / f"{module}.py").write_text(PLUGIN_PRELUDE + textwrap.dedent(body))
        info = tmp_path / f"{dist_name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\n"
                                       f"Version: 1.0\n")
        (info / "entry_points.txt").write_text(
            f"[numbanet]\n{dist_name.replace('-', '_')} = {module}\n")
        created.append(module)
        nbp.reload_plugins()
        return module

    yield make
    for module in created:
        sys.modules.pop(module, None)
    monkeypatch.undo()
    nbp.reload_plugins()


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
