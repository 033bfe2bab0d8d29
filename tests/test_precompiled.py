"""Kernels compiled ahead of time (numbanet._target, numbanet._precompiled, the shipped cache).

A new environment's first training step loads machine code built at install time
instead of compiling for ~20 s. What users rely on: the shipped code is used only when
it is exact (same sources, Numba, Python, CPU level), a stale entry is a recompile and
never wrong code, the user's own Numba target choice is respected, and the installed
package really ships what a first ``numbanet train`` and a first benchmark step need.
Subprocess tests use temporary caches and packages, never the tree's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from numbanet import _kernel_cache as kc
from numbanet import _precompiled, _target

V4 = _target.LEVEL_FEATURES["x86-64-v4"]
V3 = _target.LEVEL_FEATURES["x86-64-v3"]
HOST_LEVEL = _target.host_level()
needs_level = pytest.mark.skipif(HOST_LEVEL is None,
                                 reason="the host supports no portable x86-64 level")


# ---------------------------------------------------------------- levels


@pytest.mark.parametrize(("features", "level"), [
    (V4 + ",+avx512vnni,-amx-tile", "x86-64-v4"),
    (V3 + ",-avx512f,+aes", "x86-64-v3"),
    (V4.replace("+avx512bw", "-avx512bw"), "x86-64-v3"),  # F without BW is not v4
    (V3.replace("+fma", "-fma"), None),  # AVX2 without FMA is not v3
    ("+64bit,+sse,+sse2,+sse4.2", None),
])
def test_host_level_is_the_highest_level_whose_features_are_all_present(features, level):
    assert _target.host_level(features) == level


def test_levels_nest_and_v4_adds_avx512():
    assert set(V3.split(",")) < set(V4.split(","))
    assert {f for f in V4.split(",") if f not in V3.split(",")} == {
        "+avx512f", "+avx512bw", "+avx512cd", "+avx512dq", "+avx512vl"}


_TARGET_PROBE = """
import json
import numbanet
from numba.core import config
from numbanet._target import target_level
from numbanet.kernels import _simd
print(json.dumps({"cpu": config.CPU_NAME, "level": target_level(),
                  "wide": _simd.WIDE_VECTORS}))
"""


def _python(code: str, env: dict[str, str], *args: str, timeout: float = 600) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBANET_PORTABLE_TARGET",
                        kc.PRECOMPILED_DIR_VARIABLE, kc.PRECOMPILE_INTO_VARIABLE)}
    env.update(extra)
    return env


@needs_level
def test_import_targets_the_host_level_and_the_gemm_width_follows_it():
    found = _python(_TARGET_PROBE, _clean_env())
    assert found == {"cpu": HOST_LEVEL, "level": HOST_LEVEL,
                     "wide": HOST_LEVEL == "x86-64-v4"}


def test_a_target_the_user_chose_is_kept():
    haswell = _python(_TARGET_PROBE, _clean_env(NUMBA_CPU_NAME="haswell",
                                                NUMBA_CPU_FEATURES=V3 + ",-avx512f"))
    assert haswell == {"cpu": "haswell", "level": None, "wide": False}
    # Naming a level exactly, as the build does, is that level.
    v3 = _python(_TARGET_PROBE, _clean_env(NUMBA_CPU_NAME="x86-64-v3", NUMBA_CPU_FEATURES=V3))
    assert v3 == {"cpu": "x86-64-v3", "level": "x86-64-v3", "wide": False}


def test_the_portable_target_can_be_switched_off():
    found = _python(_TARGET_PROBE, _clean_env(NUMBANET_PORTABLE_TARGET="0"))
    assert found["cpu"] is None and found["level"] is None


def test_numba_compiling_first_keeps_its_host_target():
    # Numba's target machine is fixed once built: switching the name afterwards would
    # file host-specific code under a portable key.
    code = "import numba\nnumba.njit(lambda x: x + 1)(1)\n" + _TARGET_PROBE
    assert _python(code, _clean_env())["level"] is None


# ------------------------------------------------ the shipped cache, end to end

_KERNELS = {
    "__init__.py": "",
    "dep.py": """
        from numbanet._jit import kernel

        @kernel(inline="always")
        def helper(x):
            return x + 1.0
    """,
    "user.py": """
        from numbanet._jit import kernel, parallel_kernel
        from numba import prange
        from nbship_pkg.dep import helper

        @kernel
        def outer(x):
            return helper(x) * 10.0

        @parallel_kernel
        def total(a):
            s = 0.0
            for i in prange(a.shape[0]):
                s += helper(a[i])
            return s
    """,
}

_SHIP_PROBE = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from nbship_pkg.user import outer, total
values = [outer(1.0), total(np.arange(4.0))]
stats = [outer.stats, total.stats]
print(json.dumps({"values": values,
                  "hits": sum(sum(s.cache_hits.values()) for s in stats),
                  "misses": sum(sum(s.cache_misses.values()) for s in stats)}))
"""


@needs_level
def test_shipped_kernels_load_in_a_new_environment_and_stale_ones_recompile(tmp_path,
                                                                           write_package):
    pkg = write_package("nbship_pkg", _KERNELS)
    shipped = tmp_path / "shipped"
    level_env = {"NUMBA_CPU_NAME": HOST_LEVEL,
                 "NUMBA_CPU_FEATURES": _target.LEVEL_FEATURES[HOST_LEVEL]}

    def run(cache: str, **env: str) -> dict:
        return _python(_SHIP_PROBE, _clean_env(NUMBA_CACHE_DIR=str(tmp_path / cache), **env),
                       str(tmp_path))

    # The build: compiles into <shipped>/<tag>/<module>/, nothing into the user cache.
    built = run("build-cache", **level_env, **{kc.PRECOMPILE_INTO_VARIABLE: str(shipped)})
    assert built == {"values": [20.0, 10.0], "hits": 0, "misses": 2}
    tag = kc.precompiled_tag(HOST_LEVEL)
    assert sorted(p.name for p in (shipped / tag).iterdir()) == ["nbship_pkg.user"]
    assert not list((tmp_path / "build-cache").rglob("*.nbi"))

    # A new environment (empty user cache) loads both kernels without compiling...
    ship_env = {kc.PRECOMPILED_DIR_VARIABLE: str(shipped)}
    assert run("user-1", **ship_env) == {"values": [20.0, 10.0], "hits": 2, "misses": 0}
    assert not list((tmp_path / "user-1").rglob("*.nbc"))  # and copies nothing
    # ...whether the level is numbanet's choice or named by the user, as in the build.
    assert run("user-2", **ship_env, **level_env)["hits"] == 2
    # Another level, or no portable level, cannot use them.
    assert run("user-3", **ship_env, NUMBANET_PORTABLE_TARGET="0")["misses"] == 2

    # An edit of a module the kernels inline makes the shipped entries stale: the
    # kernels recompile (into the user's cache) and compute the new values.
    dep = pkg / "dep.py"
    dep.write_text(dep.read_text().replace("x + 1.0", "x + 2.0"), encoding="utf-8")
    assert run("user-4", **ship_env) == {"values": [30.0, 14.0], "hits": 0, "misses": 2}
    assert run("user-4", **ship_env) == {"values": [30.0, 14.0], "hits": 2, "misses": 0}


def test_building_without_a_portable_level_is_refused(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import numbanet.kernels.matmul"],
        env=_clean_env(NUMBANET_PORTABLE_TARGET="0",
                       **{kc.PRECOMPILE_INTO_VARIABLE: str(tmp_path)}),
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0 and "NUMBA_CPU_NAME" in proc.stderr


@needs_level
def test_levels_this_machine_cannot_run_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown level 'x86-64-v9'"):
        _precompiled._resolve_levels("x86-64-v9")
    if HOST_LEVEL == "x86-64-v3":
        with pytest.raises(ValueError, match="cannot run x86-64-v4"):
            _precompiled._resolve_levels("x86-64-v4")
    assert _precompiled._resolve_levels("host") == [HOST_LEVEL]
    assert _precompiled._resolve_levels("all")[0] == HOST_LEVEL


def test_the_manifest_goes_stale_with_any_source_edit(tmp_path, monkeypatch):
    level = HOST_LEVEL or "x86-64-v3"
    tag_dir = tmp_path / kc.precompiled_tag(level)
    tag_dir.mkdir()
    manifest = _precompiled._expected_manifest(level)
    (tag_dir / _precompiled.MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    assert _precompiled.is_fresh(str(tmp_path), level)
    monkeypatch.setattr(_precompiled, "source_digest", lambda: "an edited tree")
    assert not _precompiled.is_fresh(str(tmp_path), level)


# ------------------------------------------- what the installed package ships

_FIRST_STEP = """
import json
from numbanet._compilation import CompileWatch
from numbanet._kernel_cache import shipped_directory
with CompileWatch() as watch:
    from numbanet._bench_steps import build_step
    step = build_step("numbanet", "784-256-128-10@64")
    loss = step()
print(json.dumps({"shipped": shipped_directory(), "compiled": watch.compiled,
                  "loss": loss}))
"""


@needs_level
def test_the_installed_package_ships_the_first_benchmark_step(tmp_path):
    """After ``pip install`` (CI's), a first step with empty caches compiles nothing."""
    from numbanet._precompiled import is_fresh

    out = os.path.join(os.path.dirname(_precompiled.__file__), "_precompiled")
    if not is_fresh(out, HOST_LEVEL):
        if os.environ.get("CI"):
            pytest.fail(f"no fresh {HOST_LEVEL} kernels in {out}: the build hook "
                        "(setup.py) did not run or failed")
        pytest.skip("no fresh precompiled kernels in this tree (reinstall to build them)")
    found = _python(_FIRST_STEP, _clean_env(NUMBA_CACHE_DIR=str(tmp_path / "numba"),
                                            NUMBANET_CACHE_DIR=str(tmp_path / "numbanet")))
    assert found["shipped"] and not found["compiled"]
    assert found["loss"] == pytest.approx(3.29505, abs=1e-5)  # bench's first loss


def test_numbanet_info_names_the_target_and_the_shipped_kernels():
    from numbanet.cli import info_lines

    lines = {line[:16].strip(): line[16:] for line in info_lines()}
    assert lines["llvm target cpu"] == (_target.target_level() or "host")
    shipped = kc.shipped_directory()
    assert lines["shipped kernels"] == (shipped or "none for this target (compiled on first use)")
