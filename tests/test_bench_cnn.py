"""The CNNs of ``numbanet bench`` (issue 13): LeNet-5 and a small residual CNN.

Their names parse, their sizes and work are what the issue describes, every framework
computes the same training step from the same weights (first losses agree, and the
next losses follow, which checks the gradients and the weight layouts: PyTorch's
transposed kernels and permuted flatten, Keras's explicit padding of the strided
convolutions), and frameworks without a CNN step are skipped with a note. Tiny batches
keep it quick; no timing assertions.
"""

from __future__ import annotations

import functools
import json
import subprocess

import numpy as np
import pytest

from numbanet import _bench_cnn, _bench_steps, bench
from numbanet._bench_cli import main as bench_main

LENET = "lenet5@8"
RESNET = "resnet-small@4"


def test_standard_cnns_are_the_issue_models_at_batch_64():
    assert list(bench.STANDARD_CNNS) == ["lenet5@64", "resnet-small@64"]
    assert [s.input_shape for s in bench.STANDARD_CNNS.values()] == [(28, 28, 1), (32, 32, 3)]
    assert list(bench.STANDARD_MODELS)[0] == "64-32-10@32"  # the MLPs are unchanged


@pytest.mark.parametrize(
    ("text", "arch", "batch"),
    [("lenet5@64", "lenet5", 64), (" ResNet-Small@32 ", "resnet-small", 32),
     ("lenet5", "lenet5", 64)],
)
def test_parse_model_reads_cnn_names(text, arch, batch):
    spec = bench.parse_model(text)
    assert isinstance(spec, bench.CNNSpec)
    assert (spec.arch, spec.batch, spec.name) == (arch, batch, f"{arch}@{batch}")
    assert bench.parse_model(spec) is spec
    assert isinstance(bench.parse_model("784-256-128-10@64"), bench.ModelSpec)


@pytest.mark.parametrize("text", ["lenet5@x", "lenet5@1", "resnet@64", "lenet5@64@2"])
def test_parse_model_rejects_bad_cnn_names(text):
    with pytest.raises(ValueError, match="lenet5"):
        bench.parse_model(text)


def test_lenet5_has_its_61706_parameters_and_counted_work():
    spec = bench.parse_model("lenet5@64")
    assert spec.num_parameters == (25 * 6 + 6) + (150 * 16 + 16) + (400 * 120 + 120) \
        + (120 * 84 + 84) + (84 * 10 + 10) == 61706
    macs = [64 * 28 * 28 * 25 * 6, 64 * 10 * 10 * 150 * 16, 64 * 400 * 120,
            64 * 120 * 84, 64 * 84 * 10]
    # The first layer has no input gradient: 2 products, the others 3.
    assert spec.flops_per_step == 2 * (2 * macs[0] + 3 * sum(macs[1:]))


def test_resnet_small_layers_follow_the_issue():
    spec = bench.parse_model("resnet-small@64")
    layers = spec.layers
    convs = [c for c, _ in _bench_cnn._with_shapes(layers, spec.input_shape)
             if isinstance(c, _bench_cnn.Conv)]
    assert len(convs) == 1 + 2 + 3 * 2 * 2  # stem, two transitions, 12 in the blocks
    assert not any(c.bias for c in convs)  # every conv is followed by BatchNorm
    assert [c.cout for c in convs if c.stride == 2] == [32, 64]
    assert sum(isinstance(x, _bench_cnn.Residual) for x in layers) == 6
    assert all(isinstance(b, _bench_cnn.ReLU) for a, b in zip(layers[:-1], layers[1:], strict=True)
               if isinstance(a, _bench_cnn.Residual))  # ReLU after each sum
    assert layers[-2:] == (_bench_cnn.GlobalAvgPool(), _bench_cnn.Dense(64, 10))
    weights = bench.initial_weights(spec)
    assert sum(w.size for w in weights) == spec.num_parameters
    assert all(w.dtype == np.float32 for w in weights)


def test_cnn_batch_is_channels_last_images():
    x, y = bench.make_batch(bench.parse_model(RESNET))
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.min() >= 0 and y.max() < 10


def _losses(framework: str, model: str, steps: int = 3) -> list[float]:
    if framework == "numbanet":
        return _numbanet_losses(model)[:steps]
    step = bench.make_step(framework, model)
    return [step() for _ in range(steps)]


@functools.cache
def _numbanet_losses(model: str) -> list[float]:
    """numbanet's first three losses: the reference of every peer test (built once)."""
    step = bench.make_step("numbanet", model)
    return [step() for _ in range(3)]


def _assert_same_step(got: list[float], want: list[float]) -> None:
    # The first loss is the forward pass alone: float32 rounding. Later ones follow Adam,
    # which divides by sqrt(v) and so magnifies rounding in tiny gradients; a wrong
    # gradient or layout moves them by percents.
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-3)


@pytest.mark.parametrize("model", [LENET, RESNET])
def test_torch_trains_the_same_cnn_as_numbanet(model):
    pytest.importorskip("torch")
    want = _losses("numbanet", model)
    assert want[-1] < want[0]
    _assert_same_step(_losses("torch", model), want)


@pytest.mark.parametrize(
    ("framework", "model"),
    [("jax", LENET), ("jax", RESNET), ("keras", LENET),
     pytest.param("keras", RESNET, marks=pytest.mark.slow),  # Keras builds for ~20 s
     pytest.param("torch.compile", LENET, marks=pytest.mark.slow)],  # Inductor compiles C++
)
def test_peer_trains_the_same_cnn_as_numbanet(framework, model, monkeypatch):
    pytest.importorskip("jax" if framework in ("jax", "keras") else "torch")
    if framework == "keras":
        monkeypatch.setenv("KERAS_BACKEND", "jax")  # read once, when keras is first imported
        pytest.importorskip("keras")
    _assert_same_step(_losses(framework, model), _losses("numbanet", model))


def test_numpy_has_no_cnn_step():
    with pytest.raises(ValueError, match="numpy: no CNN step"):
        bench.make_step("numpy", LENET)


def test_compare_cnn_first_losses_agree_and_numpy_is_skipped_with_a_note():
    pytest.importorskip("torch")
    result = bench.compare(RESNET, threads=1, repeats=1, min_time=0.001,
                           frameworks=["numbanet", "torch", "numpy"])
    assert list(result.samples_per_s) == ["numbanet", "torch"]
    assert result.losses_agree
    assert result.skipped == {"numpy": "no CNN step (the NumPy reference covers the MLPs only)"}
    assert result.gflops["numbanet"] > 0 and result.batch == 4


def test_isolated_cnn_compare_agrees_and_notes_missing_peers(monkeypatch):
    pytest.importorskip("torch")
    real = bench.missing
    monkeypatch.setattr(bench, "missing",
                        lambda f: "not installed (pretend)" if f == "jax" else real(f))
    result = bench.compare(LENET, threads=1, repeats=1, min_time=0.001, isolate=True,
                           frameworks=["numbanet", "torch", "jax"])
    assert result.skipped == {"jax": "not installed (pretend)"}
    assert result.losses_agree and set(result.first_loss) == {"numbanet", "torch"}
    assert result.first_loss["torch"] == pytest.approx(result.first_loss["numbanet"], rel=1e-5)


def test_bench_command_expands_cnns_and_notes_the_numpy_skip(capsys):
    from numbanet._bench_cli import build_parser

    assert build_parser().parse_args(["--models", "cnns"]).models == list(bench.STANDARD_CNNS)
    assert build_parser().parse_args(["--models", "all"]).models == \
        list(bench.STANDARD_MODELS) + list(bench.STANDARD_CNNS)
    status = bench_main(["--models", LENET, "--threads", "1", "--repeats", "1",
                         "--min-time", "0.001", "--frameworks", "numbanet,numpy"])
    assert status == 0
    out = capsys.readouterr().out
    assert f"{LENET} " in out and "skipped numpy: no CNN step" in out


def test_cold_start_child_builds_a_cnn_without_importing_numbanet():
    pytest.importorskip("torch")
    command = _bench_steps.cold_command("torch", LENET, 0, 1, _bench_steps.bench_cores(1))
    command[-1] += "print('numbanet' in sys.modules, 'numba' in sys.modules)\n"
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False False"
    report = json.loads(out.splitlines()[-2][len(_bench_steps.REPORT_MARK):])
    assert report["loss"] == pytest.approx(_losses("numbanet", LENET, 1)[0], rel=1e-5)
