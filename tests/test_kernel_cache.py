"""The kernel disk cache notices edits in the modules a kernel imports (numbanet._kernel_cache).

Numba alone keys a cached kernel on its own file only, so a GEMM that inlines activation
code from another module loaded stale machine code after that module changed. The
subprocess tests use a temporary ``NUMBA_CACHE_DIR`` and edit copies, never the tree.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import numbanet
from numbanet import _kernel_cache as kc
from numbanet._jit import kernel, parallel_kernel

SRC = Path(numbanet.__file__).resolve().parent.parent


# ---------------------------------------------------------------- quick unit tests


def test_gemm_depends_on_the_activation_and_simd_modules():
    matmul = importlib.import_module("numbanet.kernels.matmul")
    deps = kc.source_dependencies(matmul.__name__, matmul.__file__)
    for name in ("numbanet.kernels.matmul", "numbanet.kernels.activations",
                 "numbanet.kernels._simd", "numbanet._jit"):
        assert name in deps, name
        assert Path(deps[name]).is_file()
    assert "numba" not in deps and "numpy" not in deps  # third-party: not followed


def test_dependency_closure_follows_own_package_and_relative_imports(tmp_path, monkeypatch,
                                                                     write_package):
    pkg = write_package("nbcache_unit_pkg", {
        "__init__.py": "",
        "a.py": "from . import b\nimport numpy\n",
        "b.py": "def f():\n    from nbcache_unit_pkg.sub import c\n",
        "unrelated.py": "x = 1\n",
        "sub/__init__.py": "",
        "sub/c.py": "from ..sub import d\n",
        "sub/d.py": "y = 2\n",
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    deps = kc.source_dependencies("nbcache_unit_pkg.a", str(pkg / "a.py"))
    assert set(deps) == {"nbcache_unit_pkg.a", "nbcache_unit_pkg.b",
                         "nbcache_unit_pkg.sub.c", "nbcache_unit_pkg.sub.d"}
    before = kc.dependency_digest("nbcache_unit_pkg.a", str(pkg / "a.py"))
    assert kc.dependency_digest("nbcache_unit_pkg.a", str(pkg / "a.py")) == before
    (pkg / "unrelated.py").write_text("x = 2\n", encoding="utf-8")
    assert kc.dependency_digest("nbcache_unit_pkg.a", str(pkg / "a.py")) == before
    (pkg / "sub" / "d.py").write_text("y = 3  # edited\n", encoding="utf-8")
    after = kc.dependency_digest("nbcache_unit_pkg.a", str(pkg / "a.py"))
    assert after != before


def test_import_scanner_reads_every_statement_form(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(textwrap.dedent("""
        from __future__ import annotations
        import os, numpy as np  # a comment
        from .sib import (a,
                          b as c,  # note
        )
        from .. import up
        from pkg.mod import \\
            name
        def f():
            import pkg.lazy as lz
        x = "not an import"
    """), encoding="utf-8")
    st = src.stat()
    imports = kc._read_file(str(src), st.st_mtime_ns, st.st_size)[1]
    assert imports == (
        ("__future__", 0, ("annotations",)),
        ("os", 0, ()),
        ("numpy", 0, ()),
        ("sib", 1, ("a", "b")),
        ("", 2, ("up",)),
        ("pkg.mod", 0, ("name",)),
        ("pkg.lazy", 0, ()),
    )


def test_numbanet_kernels_use_the_dependency_aware_cache():
    @kernel
    def _cached(x):  # pragma: no cover - compiled
        return x + 1.0

    @parallel_kernel(cache=False)
    def _uncached(x):  # pragma: no cover - compiled
        return x + 1.0

    assert isinstance(_cached._cache, kc.DependencyAwareCache)
    assert not isinstance(_uncached._cache, kc.DependencyAwareCache)
    matmul = importlib.import_module("numbanet.kernels.matmul")
    stamp = matmul._gemm_serial._cache._impl.locator.get_source_stamp()
    path = matmul._gemm_serial.py_func.__code__.co_filename
    assert stamp[1] == kc.dependency_digest("numbanet.kernels.matmul", path)


def test_a_kernel_that_cannot_be_cached_warns_and_runs():
    """A parallel kernel that asks for the thread count uses a dynamic global, so Numba
    cannot cache it and says so with a warning (which reads the locator's source file);
    the kernel must still run."""
    import numba
    import numpy as np
    from numba.core.errors import NumbaWarning

    @parallel_kernel
    def _threads_into(x):  # pragma: no cover - compiled
        n = numba.get_num_threads()
        for i in numba.prange(x.shape[0]):
            x[i] = n

    out = np.zeros(4)
    with pytest.warns(NumbaWarning, match="Cannot cache"):
        _threads_into(out)
    np.testing.assert_array_equal(out, numba.get_num_threads())


# ------------------------------------------------ end to end, in fresh processes

_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from nbcache_e2e_pkg.user import outer
value = outer(1.0)
print(json.dumps({"value": value,
                  "hits": sum(outer.stats.cache_hits.values()),
                  "misses": sum(outer.stats.cache_misses.values())}))
"""


def _run(args, cache_dir, extra_path=None, timeout=300):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_editing_an_imported_module_recompiles_the_caller(tmp_path, write_package):
    # helper is inlined into outer's machine code, as activation code is into the GEMM.
    pkg = write_package("nbcache_e2e_pkg", {
        "__init__.py": "",
        "dep.py": """
            from numbanet._jit import kernel

            @kernel(inline="always")
            def helper(x):
                return x + 1.0
        """,
        "user.py": """
            from numbanet._jit import kernel
            from nbcache_e2e_pkg.dep import helper

            @kernel
            def outer(x):
                return helper(x) * 10.0
        """,
    })
    probe = tmp_path / "probe.py"
    probe.write_text(_PROBE, encoding="utf-8")
    cache = tmp_path / "cache"
    args = [str(probe), str(tmp_path)]
    assert _run(args, cache) == {"value": 20.0, "hits": 0, "misses": 1}
    assert _run(args, cache) == {"value": 20.0, "hits": 1, "misses": 0}  # warm
    dep = pkg / "dep.py"
    dep.write_text(dep.read_text().replace("x + 1.0", "x + 2.0"), encoding="utf-8")
    # Numba's own cache would load the stale 20.0 here.
    assert _run(args, cache) == {"value": 30.0, "hits": 0, "misses": 1}
    assert _run(args, cache) == {"value": 30.0, "hits": 1, "misses": 0}


_GEMM_PROBE = """
import importlib, json, time
import numpy as np
t0 = time.perf_counter()
matmul = importlib.import_module("numbanet.kernels.matmul")
from numbanet.kernels.activations import ACTIVATION_IDS
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 48)).astype(np.float32)
w = rng.standard_normal((48, 40)).astype(np.float32)
z = np.empty((64, 40), np.float32)
t1 = time.perf_counter()
matmul.dense_forward(x, w, None, z, z, ACTIVATION_IDS["tanh"], 0.0)
t2 = time.perf_counter()
gemm = (matmul._gemm_serial, matmul._gemm_parallel)
print(json.dumps({"file": matmul.__file__, "import_s": t1 - t0, "call_s": t2 - t1,
                  "hits": sum(sum(d.stats.cache_hits.values()) for d in gemm),
                  "misses": sum(sum(d.stats.cache_misses.values()) for d in gemm)}))
"""


@pytest.mark.slow
def test_editing_activations_recompiles_the_gemm(tmp_path):
    # A copy of the package, so the edit never touches the tree other tests import.
    root = tmp_path / "src"
    shutil.copytree(SRC / "numbanet", root / "numbanet",
                    ignore=shutil.ignore_patterns("__pycache__", "_precompiled"))
    probe = tmp_path / "probe.py"
    probe.write_text(_GEMM_PROBE, encoding="utf-8")
    cache = tmp_path / "cache"
    cold = _run([str(probe)], cache, extra_path=root)
    assert cold["file"].startswith(str(root)) and cold["misses"] == 1
    warm = _run([str(probe)], cache, extra_path=root)
    assert warm["hits"] == 1 and warm["misses"] == 0
    activations = root / "numbanet" / "kernels" / "activations.py"
    with activations.open("a", encoding="utf-8") as fh:
        fh.write("\n# an edit\n")
    edited = _run([str(probe)], cache, extra_path=root)
    assert edited["hits"] == 0 and edited["misses"] == 1
    assert _run([str(probe)], cache, extra_path=root)["hits"] == 1


def test_an_entry_compiled_for_other_types_is_a_miss():
    # Numba writes the index before the data file: a reader in between can get an old
    # data file compiled for other argument types. Loading it would make every caller
    # fail to type; a miss recompiles.
    from types import SimpleNamespace

    from numba import types

    entry = SimpleNamespace(signature=SimpleNamespace(args=(types.float32[:], types.int64)))
    assert kc._checked((types.float32[:], types.int64), entry) is entry
    assert kc._checked((types.float64[:], types.int64), entry) is None
    assert kc._checked(types.none(types.float32[:], types.int64), entry) is entry
    assert kc._checked((types.float32[:], types.int64), None) is None


def test_cache_files_are_written_data_first_and_never_reused(tmp_path, monkeypatch):
    # Numba writes the index first and reuses data file numbers after a stale index: a
    # reader in between loaded old code. Ours: a new unique data file, written before
    # the index that names it; replaced and orphaned files are removed.
    seen_at_index_time = []
    real_save_index = kc._DataFirstIndexFile._save_index

    def spy(self, overloads):
        seen_at_index_time.append(all(os.path.exists(self._data_path(n))
                                      for n in overloads.values()))
        real_save_index(self, overloads)

    monkeypatch.setattr(kc._DataFirstIndexFile, "_save_index", spy)
    old = kc._DataFirstIndexFile(str(tmp_path), "f-1.py311", "stamp-1")
    old.save("key", ("first",))
    old.save("other", ("other",))
    first = old._load_index()["key"]
    old.save("key", ("second",))
    assert old._load_index()["key"] != first and not (tmp_path / first).exists()
    assert old.load("key") == ("second",) and old.load("other") == ("other",)
    # A source edit: the index goes stale; the new one names only its own file.
    new = kc._DataFirstIndexFile(str(tmp_path), "f-1.py311", "stamp-2")
    assert new.load("key") is None
    new.save("key", ("edited",))
    assert new.load("key") == ("edited",)
    assert sorted(p.name for p in tmp_path.glob("*.nbc")) == [new._load_index()["key"]]
    assert seen_at_index_time == [True] * 4


def test_kernels_use_the_data_first_cache_files():
    matmul = importlib.import_module("numbanet.kernels.matmul")
    assert isinstance(matmul._gemm_serial._cache._cache_file, kc._DataFirstIndexFile)
