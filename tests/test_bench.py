"""numbanet.bench and ``numbanet bench``: the comparison runs on tiny sizes, every
framework's training step computes the same thing, the reported ratios are consistent,
missing frameworks are skipped with a note, and the cold-start driver runs fresh
processes with empty caches.

The optional peers (JAX, Keras, torch.compile, PyTorch) are tested behind importorskip;
everything else runs without them. No timing assertions: speeds depend on the machine
and its load.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import numbanet
from numbanet import _bench_steps, bench
from numbanet._bench_cli import main as bench_main

TINY = "64-32-10@32"
#: The frameworks the in-process tests time: numbanet, NumPy and PyTorch when installed
#: (the peers that compile, JAX, Keras and torch.compile, have tests of their own).
CLASSIC = [f for f in ("numbanet", "torch", "numpy") if f in bench.available_frameworks()]


def test_standard_models_are_the_issue_list():
    assert list(bench.STANDARD_MODELS) == [
        "64-32-10@32",
        "784-256-128-10@64",
        "784-256-128-10@256",
        "784-1024-1024-10@512",
    ]


def test_parse_model_reads_widths_and_batch():
    spec = bench.parse_model(" 784-256-128-10@64 ")
    assert spec.sizes == (784, 256, 128, 10)
    assert spec.batch == 64
    assert spec.name == "784-256-128-10@64"
    assert bench.parse_model(spec) is spec


@pytest.mark.parametrize("text", ["784-256", "784-x-10@64", "10@0", "784@64", "", "5-5@-1"])
def test_parse_model_rejects_malformed_names(text):
    with pytest.raises(ValueError, match="model"):
        bench.parse_model(text)


def test_parse_model_rejects_non_strings():
    with pytest.raises(TypeError, match="model must be a string"):
        bench.parse_model(784)


def test_flops_per_step_counts_three_gemms_but_two_in_the_first_layer():
    spec = bench.parse_model("64-32-10@32")
    # layer 0: forward and dW (no dX); layer 1: forward, dW, dX. 2 flops per multiply-add.
    assert spec.flops_per_step == 2 * 2 * 32 * 64 * 32 + 3 * 2 * 32 * 32 * 10
    assert spec.num_parameters == 64 * 32 + 32 + 32 * 10 + 10


def test_initial_weights_are_float32_with_the_layer_shapes():
    weights = bench.initial_weights(bench.parse_model("5-4-3@2"))
    assert [(w.shape, b.shape) for w, b in weights] == [((5, 4), (4,)), ((4, 3), (3,))]
    assert all(w.dtype == np.float32 and b.dtype == np.float32 for w, b in weights)


def _numpy_float64_losses(model: str, steps: int) -> list[float]:
    """An independent float64 reference written out in full: MLP, softmax CE, Adam."""
    spec = bench.parse_model(model)
    params = [a.astype(np.float64) for w, b in bench.initial_weights(spec) for a in (w, b)]
    x, y = bench.make_batch(spec, 1)
    x = x.astype(np.float64)
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    losses = []
    n_layers = len(params) // 2
    for t in range(1, steps + 1):
        hs, zs = [x], []
        for i in range(n_layers):
            z = hs[-1] @ params[2 * i] + params[2 * i + 1]
            zs.append(z)
            hs.append(np.maximum(z, 0) if i < n_layers - 1 else z)
        logits = hs[-1]
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        losses.append(-logp[np.arange(len(y)), y].mean())
        d = np.exp(logp)
        d[np.arange(len(y)), y] -= 1
        d /= len(y)
        grads = [None] * len(params)
        for i in range(n_layers - 1, -1, -1):
            grads[2 * i] = hs[i].T @ d
            grads[2 * i + 1] = d.sum(axis=0)
            if i:
                d = (d @ params[2 * i].T) * (zs[i - 1] > 0)
        for j, g in enumerate(grads):
            m[j] = 0.9 * m[j] + 0.1 * g
            v[j] = 0.999 * v[j] + 0.001 * g * g
            mhat = m[j] / (1 - 0.9**t)
            vhat = v[j] / (1 - 0.999**t)
            params[j] = params[j] - 1e-3 * mhat / (np.sqrt(vhat) + 1e-8)
    return losses


@pytest.mark.parametrize("framework", ["numbanet", "numpy"])
def test_training_step_matches_float64_reference_for_4_steps(framework):
    step = bench.make_step(framework, TINY)
    got = [step() for _ in range(4)]
    want = _numpy_float64_losses(TINY, 4)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    assert want[3] < want[0]  # the steps really train


def test_torch_step_matches_float64_reference_for_4_steps():
    pytest.importorskip("torch")
    step = bench.make_step("torch", TINY)
    np.testing.assert_allclose([step() for _ in range(4)], _numpy_float64_losses(TINY, 4),
                               rtol=2e-5)


def test_make_step_rejects_unknown_framework():
    with pytest.raises(ValueError, match="framework must be one of"):
        bench.make_step("tensorflow", TINY)


def test_compare_reports_consistent_ratios_and_restores_threads():
    before = numbanet.get_num_threads()
    result = bench.compare(TINY, threads=1, repeats=2, min_time=0.001, frameworks=CLASSIC)
    assert numbanet.get_num_threads() == before
    assert result.model == TINY and result.batch == 32 and result.threads == 1
    expected = CLASSIC
    assert list(result.samples_per_s) == expected
    assert result.losses_agree
    for name in expected:
        sps = result.samples_per_s[name]
        assert math.isfinite(sps) and sps > 0
        assert sps == pytest.approx(32 / result.step_seconds[name])
        assert result.spread[name] >= 0
        assert result.first_loss[name] == pytest.approx(result.first_loss["numbanet"], rel=1e-5)
    assert set(result.ratios) == set(expected) - {"numbanet"}
    for name, ratio in result.ratios.items():
        assert ratio == pytest.approx(result.samples_per_s["numbanet"] / result.samples_per_s[name])
    assert json.loads(json.dumps(result.to_dict()))["losses_agree"] is True


def test_isolated_processes_give_the_same_first_loss_and_finite_timings():
    local = bench.compare(TINY, threads=1, repeats=1, min_time=0.001,
                          frameworks=["numbanet", "numpy"])
    isolated = bench.compare(TINY, threads=1, repeats=2, min_time=0.001,
                             frameworks=["numbanet", "numpy"], isolate=True)
    assert isolated.notes["isolated_processes"] is True
    # Same weights and batch in another process: the same first loss, to the bit.
    assert isolated.first_loss == local.first_loss
    assert all(math.isfinite(v) and v > 0 for v in isolated.samples_per_s.values())
    assert isolated.ratios["numpy"] == pytest.approx(
        isolated.samples_per_s["numbanet"] / isolated.samples_per_s["numpy"])


def test_compare_with_numbanet_only_has_no_ratios():
    result = bench.compare(TINY, threads=1, repeats=1, min_time=0.001, frameworks=["numbanet"])
    assert list(result.samples_per_s) == ["numbanet"] and result.ratios == {}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"threads": 0}, ValueError, "threads"),
        ({"threads": 10_000}, ValueError, "threads"),
        ({"threads": "2"}, TypeError, "threads"),
        ({"repeats": 0}, ValueError, "repeats"),
        ({"min_time": -1.0}, ValueError, "min_time"),
        ({"min_time": "fast"}, TypeError, "min_time"),
        ({"frameworks": ["tensorflow"]}, ValueError, "frameworks"),
        ({"model": "64-32"}, ValueError, "model"),
        ({"settle": -0.1}, ValueError, "settle"),
    ],
)
def test_compare_rejects_bad_arguments(kwargs, error, match):
    args = {"model": TINY, **kwargs}
    with pytest.raises(error, match=match):
        bench.compare(**args)


def test_bench_command_prints_json(capsys):
    status = bench_main(["--models", TINY, "--threads", "1", "--repeats", "1",
                         "--min-time", "0.001", "--frameworks", "numbanet,numpy", "--json"])
    assert status == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in results] == [TINY]
    assert set(results[0]["samples_per_s"]) == {"numbanet", "numpy"}
    assert results[0]["ratios"]["numpy"] > 0


def test_bench_command_prints_a_table(capsys):
    status = bench_main(["--models", TINY, "--threads", "1", "--repeats", "1",
                         "--min-time", "0.001", "--frameworks", "numpy"])
    assert status == 0
    out = capsys.readouterr().out
    assert "samples/s" in out
    assert out.count(TINY) == 2  # numbanet is always timed, plus numpy


@pytest.mark.parametrize(
    "argv",
    [["--threads", "0"], ["--threads", "x"], ["--models", "bogus"], ["--repeats", "0"],
     ["--min-time", "0"], ["--frameworks", "tensorflow"], ["--threads", "10000"],
     ["--cache", "warm"], ["--cold-start", "--in-process"], ["--cold-start", "--cache", "hot"]],
)
def test_bench_command_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main(argv)
    assert exc.value.code == 2
    assert "numbanet bench" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Peers: JAX, Keras 3, torch.compile (optional), skip notes
# ---------------------------------------------------------------------------------------


def test_frameworks_are_numbanet_its_peers_and_numpy():
    assert bench.FRAMEWORKS == ("numbanet", "jax", "torch.compile", "torch", "keras", "numpy")
    found = bench.available_frameworks()
    assert found[0] == "numbanet" and "numpy" in found
    assert set(found) <= set(bench.FRAMEWORKS)


def test_missing_framework_note_names_what_to_install(monkeypatch):
    monkeypatch.setattr(_bench_steps.importlib.util, "find_spec", lambda name: None)
    note = _bench_steps.missing("jax")
    assert note.startswith("not installed") and "pip install 'jax[cpu]'" in note
    assert "KERAS_BACKEND" not in note
    assert "keras" in _bench_steps.missing("keras")


def _pretend_missing(monkeypatch, *names):
    real = bench.missing
    monkeypatch.setattr(bench, "missing",
                        lambda f: f"not installed (pretend: {f})" if f in names else real(f))


def test_compare_skips_a_framework_that_is_not_installed_with_a_note(monkeypatch):
    _pretend_missing(monkeypatch, "numpy", "jax")
    result = bench.compare(TINY, threads=1, repeats=1, min_time=0.001,
                           frameworks=["numbanet", "numpy", "jax"])
    assert list(result.samples_per_s) == ["numbanet"]
    assert result.skipped == {"numpy": "not installed (pretend: numpy)",
                              "jax": "not installed (pretend: jax)"}
    assert result.ratios == {}


def test_compare_by_default_notes_every_uninstalled_peer(monkeypatch):
    _pretend_missing(monkeypatch, "jax", "keras", "torch", "torch.compile")
    result = bench.compare(TINY, threads=1, repeats=1, min_time=0.001)
    assert list(result.samples_per_s) == ["numbanet", "numpy"]
    assert set(result.skipped) == {"jax", "keras", "torch", "torch.compile"}


def test_a_step_that_fails_to_build_is_skipped_not_fatal(monkeypatch):
    def broken(spec, weights, x, y):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setitem(_bench_steps._BUILDERS, "numpy", broken)
    result = bench.compare(TINY, threads=1, repeats=1, min_time=0.001,
                           frameworks=["numbanet", "numpy"])
    assert list(result.samples_per_s) == ["numbanet"]
    assert result.skipped["numpy"] == "failed to build: RuntimeError: no C++ compiler"


def test_losses_agree_flags_a_framework_computing_another_step():
    result = bench.Comparison(model=TINY, batch=32, threads=1, repeats=1,
                              first_loss={"numbanet": 2.0, "numpy": 2.0 * (1 + 1e-6),
                                          "jax": 2.01})
    assert not result.losses_agree
    assert result.to_dict()["losses_agree"] is False
    assert bench._losses_disagree(result.first_loss) == {"jax": 2.01}


def test_bench_command_exits_1_when_first_losses_disagree(monkeypatch, capsys):
    def fake_compare(model, **kwargs):
        return bench.Comparison(
            model=model, batch=32, threads=1, repeats=1,
            step_seconds={"numbanet": 1e-4, "numpy": 1e-4},
            samples_per_s={"numbanet": 3.2e5, "numpy": 3.2e5},
            spread={"numbanet": 0.0, "numpy": 0.0},
            first_loss={"numbanet": 2.0, "numpy": 2.5}, ratios={"numpy": 1.0},
            notes={"first_loss_mismatch": {"numpy": 2.5}},
        )

    monkeypatch.setattr("numbanet._bench_cli.compare", fake_compare)
    assert bench_main(["--models", TINY, "--threads", "1"]) == 1
    assert "WARNING" in capsys.readouterr().out


@pytest.mark.parametrize("framework", ["jax", "keras"])
def test_jax_and_keras_steps_match_float64_reference_for_4_steps(framework, monkeypatch):
    pytest.importorskip("jax")
    if framework == "keras":
        monkeypatch.setenv("KERAS_BACKEND", "jax")  # read once, when keras is first imported
        pytest.importorskip("keras")
    step = bench.make_step(framework, TINY)
    np.testing.assert_allclose([step() for _ in range(4)], _numpy_float64_losses(TINY, 4),
                               rtol=2e-5)


@pytest.mark.slow  # Inductor compiles C++: tens of seconds
def test_torch_compile_step_matches_float64_reference_for_4_steps():
    pytest.importorskip("torch")
    step = bench.make_step("torch.compile", TINY)
    np.testing.assert_allclose([step() for _ in range(4)], _numpy_float64_losses(TINY, 4),
                               rtol=2e-5)


def test_isolated_jax_is_pinned_and_agrees_with_numbanet():
    pytest.importorskip("jax")
    result = bench.compare(TINY, threads=1, repeats=1, min_time=0.001,
                           frameworks=["numbanet", "jax"], isolate=True)
    assert result.skipped == {}
    assert result.losses_agree
    assert result.notes["pinned_cores"] == _bench_steps.bench_cores(1)
    assert result.notes["xla_threads"] == "PJRT_NPROC=1"


def test_pin_process_pins_every_thread(tmp_path):
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity here")
    core = _bench_steps.bench_cores(1)
    code = (
        "import os, threading, time\n"
        "from numbanet import _bench_steps\n"
        "ev = threading.Event()\n"
        "t = threading.Thread(target=ev.wait); t.start()\n"  # started before pinning
        f"_bench_steps.pin_process({core!r})\n"
        "print(sorted({frozenset(os.sched_getaffinity(int(p))) for p in "
        "os.listdir('/proc/self/task')}, key=sorted))\n"
        "ev.set()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == f"[frozenset({set(core)!r})]"


# ---------------------------------------------------------------------------------------
# Cold start
# ---------------------------------------------------------------------------------------


def test_cold_environment_points_every_cache_at_empty_directories(tmp_path):
    env = _bench_steps.cold_environment(
        {"PATH": "/bin", "JAX_COMPILATION_CACHE_DIR": "/somewhere", "NUMBA_CACHE_DIR": "/x"},
        str(tmp_path))
    for variable in _bench_steps.CACHE_VARIABLES:
        assert env[variable].startswith(str(tmp_path))
        assert os.listdir(env[variable]) == []
    assert "JAX_COMPILATION_CACHE_DIR" not in env
    assert env["JAX_ENABLE_COMPILATION_CACHE"] == "false"
    assert env["PATH"] == "/bin"


def test_cold_environment_keeps_or_hides_the_shipped_kernels(tmp_path):
    base = {"PATH": "/bin", "NUMBANET_PRECOMPILED_DIR": "/elsewhere"}
    shipped = _bench_steps.cold_environment(base, str(tmp_path / "a"))
    assert "NUMBANET_PRECOMPILED_DIR" not in shipped  # the package's own, as for a user
    hidden = _bench_steps.cold_environment(base, str(tmp_path / "b"), shipped_kernels=False)
    assert not os.path.exists(hidden["NUMBANET_PRECOMPILED_DIR"])


def test_cold_environment_bypasses_numbanets_pycache_kernel_cache(tmp_path):
    # numbanet's kernels cache into the package's __pycache__ by default; with
    # NUMBA_CACHE_DIR set Numba's user-provided locator comes first, and numbanet's
    # dependency-aware cache wraps whichever locator Numba chose.
    env = _bench_steps.cold_environment(dict(os.environ), str(tmp_path))
    code = (
        "import importlib\n"
        "gemm = importlib.import_module('numbanet.kernels.matmul')._gemm_serial\n"
        "print(type(gemm._cache._impl.locator._inner).__name__, gemm._cache.cache_path)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] == "UserProvidedCacheLocator"
    assert out[1].startswith(env["NUMBA_CACHE_DIR"])


def test_cold_start_times_fresh_processes_and_reports_phases():
    # "warm": the default caches, so numbanet does not compile everything in this test.
    result = bench.cold_start(TINY, threads=1, frameworks=["numpy"], repeats=2, cache="warm")
    assert list(result.seconds) == ["numbanet", "numpy"]
    assert result.skipped == {} and result.losses_agree
    for name, seconds in result.seconds.items():
        assert len(result.samples[name]) == 2
        phases = result.phases[name]
        assert set(phases) == {"startup", "import_and_build", "first_step"}
        assert all(v >= 0 for v in phases.values())
        assert sum(phases.values()) == pytest.approx(seconds, rel=0.5)
        assert result.cpu_seconds[name] > 0
    assert result.first_loss["numpy"] == pytest.approx(result.first_loss["numbanet"], rel=1e-5)
    assert result.ratios["numpy"] == pytest.approx(
        result.seconds["numpy"] / result.seconds["numbanet"])
    assert result.notes["pinned_cores"] == _bench_steps.bench_cores(1)
    json.dumps(result.to_dict())


def test_cold_start_peer_child_does_not_import_numbanet(tmp_path):
    env = _bench_steps.cold_environment(dict(os.environ), str(tmp_path))
    cores = _bench_steps.bench_cores(1)
    command = _bench_steps.cold_command("numpy", TINY, 0, 1, cores)
    command[-1] += ("print('numbanet' in sys.modules, 'numba' in sys.modules, "
                    "sorted(os.sched_getaffinity(0)))\n")
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == f"False False {cores}"
    report = json.loads(out.splitlines()[-2][len(_bench_steps.REPORT_MARK):])
    assert report["started"] <= report["build"] <= report["step"] <= report["end"]


def test_cold_start_skips_a_framework_whose_run_fails(monkeypatch):
    real = bench._cold_run

    def failing(framework, *args):
        if framework == "numpy":
            raise bench._FrameworkFailed("exit code 1: boom")
        return real(framework, *args)

    monkeypatch.setattr(bench, "_cold_run", failing)
    result = bench.cold_start(TINY, threads=1, frameworks=["numpy"], repeats=1, cache="warm")
    assert list(result.seconds) == ["numbanet"]
    assert result.skipped == {"numpy": "failed: exit code 1: boom"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [({"cache": "hot"}, ValueError, "cache"), ({"repeats": 0}, ValueError, "repeats"),
     ({"threads": 0}, ValueError, "threads"), ({"frameworks": ["tf"]}, ValueError, "frameworks"),
     ({"timeout": 0}, ValueError, "timeout")],
)
def test_cold_start_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        bench.cold_start(TINY, **kwargs)


def test_bench_command_cold_start_prints_json(capsys):
    status = bench_main(["--cold-start", "--cache", "warm", "--models", TINY, "--threads", "1",
                         "--repeats", "1", "--frameworks", "numpy", "--json"])
    assert status == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["model"] == TINY and result["cache"] == "warm"
    assert set(result["seconds"]) == {"numbanet", "numpy"}


def test_bench_command_cold_start_defaults_to_the_issue_model():
    from numbanet._bench_cli import DEFAULT_COLD_REPEATS, build_parser

    args = build_parser().parse_args(["--cold-start"])
    assert args.models is None and args.repeats is None and args.cache == "cold"
    assert bench.COLD_START_MODEL == "784-256-128-10@64" and DEFAULT_COLD_REPEATS == 3
    args = build_parser().parse_args(["--frameworks", "jax,torch.compile,keras"])
    assert args.frameworks == ["jax", "torch.compile", "keras"]


@pytest.mark.slow  # compiles every kernel of the first step from scratch
def test_cold_start_with_empty_caches_compiles_and_agrees():
    result = bench.cold_start(TINY, threads=1, frameworks=["numpy"], repeats=1)
    assert result.cache == "cold" and result.losses_agree
    assert result.phases["numbanet"]["first_step"] > result.phases["numpy"]["first_step"]


@pytest.mark.slow  # a cold compile of every kernel of the issue's first step
def test_cold_first_step_compiles_each_gemm_and_update_kernel_once():
    # Issue 17: Numba types a prange index int64 while it types a parallel function and
    # uint64 in the gufunc it builds from the loop, and a literal 0 argument gets a
    # Literal[int](0) specialization; either compiled one of the largest functions a
    # second time (2-4 s each). Run cold, in a fresh process: from a warm cache callees
    # are never typed, so their dispatchers list nothing.
    code = (
        "import importlib, json, sys\n"
        "import numbanet\n"
        "from numbanet.bench import make_step\n"
        "numbanet.set_num_threads(numbanet.threads.max_threads())\n"
        "make_step('numbanet', '784-256-128-10@64')()\n"
        "mm = importlib.import_module('numbanet.kernels.matmul')\n"
        "from numbanet._builtin import adam\n"
        "print(json.dumps({name: [[str(t) for t in sig] for sig in d.signatures] for name, d in "
        "[('macro_tile', mm._macro_tile), ('epilogue_rows', mm._epilogue_rows), "
        "('adam', adam.adam_kernel)]}))\n"
    )
    with tempfile.TemporaryDirectory() as scratch:
        # Without the shipped kernels too: loading them types no callee either.
        env = _bench_steps.cold_environment(dict(os.environ), scratch, shipped_kernels=False)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout
    signatures = json.loads(out.splitlines()[-1])
    assert len(signatures["macro_tile"]) == 1 and signatures["macro_tile"][0][0] == "int64"
    assert len(signatures["epilogue_rows"]) == 1
    assert not any("Literal" in t for t in signatures["epilogue_rows"][0])
    assert len(signatures["adam"]) == 1  # the parallel driver's, uint64 index


def test_in_process_compare_puts_xla_environment_back(monkeypatch):
    monkeypatch.delenv("PJRT_NPROC", raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with bench._thread_limits(1, ["numbanet", "jax", "keras"]) as info:
        if "jax" not in sys.modules:
            assert os.environ["PJRT_NPROC"] == "1" and info["xla_threads"] == "PJRT_NPROC=1"
    assert "PJRT_NPROC" not in os.environ
    assert os.environ["KERAS_BACKEND"] == "torch"
