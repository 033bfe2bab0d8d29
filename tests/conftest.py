"""Fixtures shared by the whole suite.

``make_dist``: fake installed plugin distributions, a dist-info folder on ``sys.path``.

importlib.metadata finds ``<name>-<version>.dist-info/entry_points.txt`` on ``sys.path``
exactly as it finds a pip-installed package, so these tests exercise the real entry-point
loading without installing anything.
"""

from __future__ import annotations

import itertools
import sys
import textwrap

import pytest

import numbanet.plugins as nbp

_counter = itertools.count()

KERNEL_MODULE = '''
import numpy as np
from numbanet import hookspecs
from numbanet.jit import kernel
from numbanet.specs import LossSpec, OptimizerSpec

hookimpl = hookspecs.hookimpl


@kernel
def half_step_kernel(i, p, g, gs, slots, hp, sc):
    p[i] -= 0.5 * hp[0] * g[i] * gs


@kernel
def row_sum_kernel(r, x, t, aux, hp, gs, grad):
    s = 0.0
    for j in range(x.shape[1]):
        s += x[r, j]
        grad[r, j] = gs
    return s
'''


@pytest.fixture
def write_package(tmp_path):
    """``write_package(name, {relative path: source}) -> package dir`` under ``tmp_path``.

    Sources are dedented; subdirectories are created. The directory is not put on
    ``sys.path``: tests import it in a subprocess, or prepend ``tmp_path`` themselves.
    """

    def write(name, files):
        pkg = tmp_path / name
        pkg.mkdir()
        for filename, body in files.items():
            (pkg / filename).parent.mkdir(parents=True, exist_ok=True)
            (pkg / filename).write_text(textwrap.dedent(body), encoding="utf-8")
        return pkg

    return write


@pytest.fixture
def make_dist(tmp_path, monkeypatch):
    """``make_dist(dist_name, body, entry_name=None) -> module name``: a fake installed plugin.

    ``body`` is Python appended to a module that already defines ``hookimpl``,
    ``OptimizerSpec``, ``LossSpec`` and two kernels (``half_step_kernel`` and
    ``row_sum_kernel``).
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(nbp.AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(nbp.ALLOW_ENV, raising=False)
    created = []

    def make(dist_name: str, body: str, entry_name: str | None = None,
             version: str = "1.0") -> str:
        module = f"fake_nbn_plugin_{next(_counter)}"
        (tmp_path / f"{module}.py").write_text(KERNEL_MODULE + textwrap.dedent(body))
        info = tmp_path / f"{dist_name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n"
        )
        (info / "entry_points.txt").write_text(
            f"[numbanet]\n{entry_name or dist_name.replace('-', '_')} = {module}\n"
        )
        created.append(module)
        nbp.reload_plugins()
        return module

    yield make
    for module in created:
        sys.modules.pop(module, None)
    monkeypatch.undo()
    nbp.reload_plugins()
