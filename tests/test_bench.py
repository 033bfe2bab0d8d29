"""numbanet.bench and ``numbanet bench``: the comparison runs on tiny sizes, the three
training steps compute the same thing, and the reported ratios are consistent.

No timing assertions: speeds depend on the machine and its load.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import numbanet
from numbanet import bench
from numbanet._bench_cli import main as bench_main

TINY = "64-32-10@32"


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
        bench.make_step("jax", TINY)


def test_compare_reports_consistent_ratios_and_restores_threads():
    before = numbanet.get_num_threads()
    result = bench.compare(TINY, threads=1, repeats=2, min_time=0.001)
    assert numbanet.get_num_threads() == before
    assert result.model == TINY and result.batch == 32 and result.threads == 1
    expected = bench.available_frameworks()
    assert list(result.samples_per_s) == expected
    for name in expected:
        sps = result.samples_per_s[name]
        assert math.isfinite(sps) and sps > 0
        assert sps == pytest.approx(32 / result.step_seconds[name])
        assert result.spread[name] >= 0
        assert result.first_loss[name] == pytest.approx(result.first_loss["numbanet"], rel=1e-5)
    assert set(result.ratios) == set(expected) - {"numbanet"}
    for name, ratio in result.ratios.items():
        assert ratio == pytest.approx(result.samples_per_s["numbanet"] / result.samples_per_s[name])
    json.dumps(result.to_dict())


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
        ({"frameworks": ["jax"]}, ValueError, "frameworks"),
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
     ["--min-time", "0"], ["--frameworks", "jax"], ["--threads", "10000"]],
)
def test_bench_command_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main(argv)
    assert exc.value.code == 2
    assert "numbanet bench" in capsys.readouterr().err
