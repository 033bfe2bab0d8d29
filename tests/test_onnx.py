"""numbanet.onnx: every layer type and activation exports, the file passes the ONNX
checker, and ONNX Runtime computes what ``model.predict`` / ``predict_proba`` compute."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import numbanet as nbn  # noqa: E402
import numbanet.onnx as nbn_onnx  # noqa: E402
from numbanet.cli import main as cli_main  # noqa: E402
from numbanet.kernels.activations import ACTIVATIONS  # noqa: E402

# float32: max |ORT - numbanet| <= 1e-5 of the output scale; float64: 1e-10.
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
# Activations whose float64 graph needs an operator ONNX Runtime has no double kernel for.
REFUSED_IN_FLOAT64 = {"gelu"}


def run_ort(proto, X):
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"input": X})[0]


def assert_matches(got, expected, dtype):
    assert got.dtype == expected.dtype and got.shape == expected.shape
    scale = max(float(np.abs(expected).max()), np.finfo(dtype).tiny)
    assert float(np.abs(got - expected).max()) <= TOLERANCE[dtype] * scale


def every_layer_model(activation, dtype):
    """Dense with the activation fused, the activation as its own layer, Dropout."""
    model = nbn.Sequential([
        nbn.Dense(5, 7, activation=activation), nbn.Activation(activation),
        nbn.Dropout(0.5), nbn.Dense(7, 3)], seed=0, dtype=dtype)
    return model.compile("cross_entropy", "sgd")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_layer_and_activation_matches_predict(activation, dtype):
    model = every_layer_model(activation, dtype)
    if dtype == "float64" and activation in REFUSED_IN_FLOAT64:
        with pytest.raises(nbn_onnx.OnnxExportError,
                           match="no float64 \\(double\\) kernel.*float32 copy"):
            nbn_onnx.to_onnx(model)
        return
    proto = nbn_onnx.to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    rng = np.random.default_rng(1)
    for batch in (1, 37):
        # Spread wide enough to reach softplus's threshold and the saturated tails.
        X = (rng.normal(size=(batch, 5)) * 4).astype(dtype)
        assert_matches(run_ort(proto, X), model.predict(X), dtype)


IMAGE_MODELS = {
    "conv_pool_flatten": ((9, 8, 3), lambda: [
        nbn.Conv2D(3, 8, 3, padding="same", activation="relu"), nbn.MaxPool2D(2),
        nbn.Conv2D(8, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2),
                   activation="elu"),
        nbn.AvgPool2D(2, stride=1, padding=1), nbn.Flatten(), nbn.Dense(54, 5)]),
    "grouped_global_pool": ((7, 7, 4), lambda: [
        nbn.Conv2D(4, 8, 3, groups=4, padding=1, bias=False), nbn.Activation("selu"),
        nbn.Conv2D(8, 6, 1, groups=2), nbn.MaxPool2D(3, stride=2, padding=1),
        nbn.GlobalAvgPool2D(), nbn.Dense(6, 2)]),
    "strided_valid": ((10, 6, 2), lambda: [
        nbn.Conv2D(2, 5, (2, 3), stride=2, padding="valid", activation="tanh"),
        nbn.AvgPool2D((2, 1)), nbn.Flatten(), nbn.Dense(20, 3, activation="softmax")]),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(IMAGE_MODELS))
def test_image_layers_match_predict(name, dtype):
    """Conv2D (stride, padding, dilation, groups, no bias), the three poolings and
    Flatten; float64 graphs go through the im2col decomposition."""
    shape, layers = IMAGE_MODELS[name]
    model = nbn.Sequential(layers(), seed=0, dtype=dtype, input_shape=shape)
    proto = nbn_onnx.to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    assert ("Conv" in ops) == (dtype == "float32")
    rng = np.random.default_rng(2)
    for batch in (1, 37):
        X = rng.normal(size=(batch, *shape)).astype(dtype)
        assert_matches(run_ort(proto, X), model.predict(X), dtype)


NORM_MODELS = {
    "norms_and_residual": ((6,), None, lambda: [
        nbn.Dense(6, 8), nbn.BatchNorm(8), nbn.LayerNorm(8),
        nbn.Residual([nbn.Dense(8, 8, activation="relu"), nbn.BatchNorm(8, affine=False),
                      nbn.Dropout(0.2), nbn.Dense(8, 8)]),
        nbn.LayerNorm(8, elementwise_affine=False), nbn.Dense(8, 3)]),
    "embedding": ((3,), 20, lambda: [
        nbn.Embedding(20, 5, padding_idx=0), nbn.LayerNorm(5), nbn.Flatten(),
        nbn.Dense(15, 2)]),
    "resnet_block": ((6, 6, 2), None, lambda: [
        nbn.Conv2D(2, 4, 3, padding=1), nbn.BatchNorm(4), nbn.Activation("relu"),
        nbn.Residual([nbn.Conv2D(4, 4, 3, padding=1, activation="relu"), nbn.BatchNorm(4),
                      nbn.Residual([nbn.Conv2D(4, 4, 1), nbn.BatchNorm(4)])]),
        nbn.GlobalAvgPool2D(), nbn.Dense(4, 2)]),
}


@pytest.mark.parametrize("opset", [nbn_onnx.MIN_OPSET, nbn_onnx.DEFAULT_OPSET])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(NORM_MODELS))
def test_norm_embedding_and_residual_layers_match_predict(name, dtype, opset):
    """BatchNorm (running statistics moved by training first), LayerNorm (the ONNX op
    from opset 17, its formula before), Embedding on int64 indices, nested Residual."""
    shape, vocabulary, layers = NORM_MODELS[name]
    model = nbn.Sequential(layers(), seed=0, dtype=dtype, input_shape=shape)
    model.compile("mse", nbn.get_optimizer("sgd", lr=0.01))
    rng = np.random.default_rng(3)

    def inputs(n):
        if vocabulary:
            return rng.integers(0, vocabulary, size=(n, *shape))
        return (rng.normal(size=(n, *shape)) * 2 + 1).astype(dtype)

    X_fit = inputs(64)
    model.fit(X_fit, rng.normal(size=(64, model.out_features)), epochs=2, batch_size=16,
              verbose=0)
    proto = nbn_onnx.to_onnx(model, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    elem = proto.graph.input[0].type.tensor_type.elem_type
    assert (elem == onnx.TensorProto.INT64) == (vocabulary is not None)
    for batch in (1, 37):
        X = inputs(batch)
        assert_matches(run_ort(proto, X), model.predict(X), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("loss", "outputs"), [("cross_entropy", 4),
                                               ("binary_cross_entropy", 1),
                                               ("binary_cross_entropy", 3)])
def test_probabilities_match_predict_proba(loss, outputs, dtype):
    model = nbn.Sequential([nbn.Dense(6, 16, activation="tanh"), nbn.Dense(16, outputs)],
                           seed=3, dtype=dtype).compile(loss, "adam")
    proto = nbn_onnx.to_onnx(model, probabilities=True)
    onnx.checker.check_model(proto, full_check=True)
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    X = np.random.default_rng(0).normal(size=(37, 6)).astype(dtype) * 3
    assert_matches(run_ort(proto, X), model.predict_proba(X), dtype)


def test_probabilities_need_a_classification_loss():
    model = nbn.Sequential([nbn.Dense(3, 2)]).compile("mse", "sgd")
    with pytest.raises(nbn_onnx.OnnxExportError, match="classification loss.*'mse'"):
        nbn_onnx.to_onnx(model, probabilities=True)
    with pytest.raises(nbn_onnx.OnnxExportError, match="compile"):
        nbn_onnx.to_onnx(nbn.Sequential([nbn.Dense(3, 2)]), probabilities=True)


def test_graph_has_a_dynamic_batch_axis_and_named_io():
    model = nbn.Sequential([nbn.Dense(4, 8, activation="relu"), nbn.Dense(8, 2)])
    graph = nbn_onnx.to_onnx(model).graph
    (inp,), (out,) = graph.input, graph.output
    assert inp.name == "input" and out.name == "output"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 4]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 2]


@pytest.mark.parametrize("opset", [nbn_onnx.MIN_OPSET, nbn_onnx.DEFAULT_OPSET, 20])
def test_opsets(opset):
    model = nbn.Sequential([nbn.Dense(4, 8, activation="gelu"), nbn.Dense(8, 2)], seed=0)
    proto = nbn_onnx.to_onnx(model, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == opset
    ops = {node.op_type for node in proto.graph.node}
    assert ("Gelu" in ops) == (opset >= 20)
    X = np.random.default_rng(0).normal(size=(37, 4)).astype(np.float32)
    assert_matches(run_ort(proto, X), model.predict(X), "float32")


def test_bad_opset_and_unknown_input_shape_are_refused():
    model = nbn.Sequential([nbn.Dense(4, 2)])
    with pytest.raises(ValueError, match="opset must be in \\[13, "):
        nbn_onnx.to_onnx(model, opset=11)
    with pytest.raises(nbn_onnx.OnnxExportError, match="input shape is not known"):
        nbn_onnx.to_onnx(nbn.Sequential([nbn.Activation("relu")]))


# --------------------------------------------------------------------- plugin layers


class Scale(nbn.Module):
    """y = x * gamma: a plugin-style layer that brings its own ONNX mapping."""

    layer_type = "TestOnnxScale"

    def __init__(self, features):
        super().__init__()
        self.features = features

    def parameter_shapes(self):
        return [("gamma", (self.features,))]

    def initialize(self, rng):
        self.parameter("gamma").value[...] = rng.uniform(0.5, 2.0, self.features)

    def get_config(self):
        return {"type": self.layer_type, "features": self.features}

    def forward(self, x, training):
        self._x = x
        return x * self.parameter("gamma").value

    def backward(self, dy, need_input_grad=True):
        self.parameter("gamma").grad[...] = (dy * self._x).sum(axis=0)
        return dy * self.parameter("gamma").value if need_input_grad else None

    def onnx_export(self, builder, x):
        gamma = builder.initializer(self.parameter("gamma").value, "gamma")
        return builder.node("Mul", [x, gamma])


class Unmapped(Scale):
    layer_type = "TestOnnxUnmapped"
    onnx_export = None  # no mapping of its own


def test_a_layer_brings_its_own_mapping():
    model = nbn.Sequential([nbn.Dense(3, 4), Scale(4), nbn.Dense(4, 2)], seed=0)
    proto = nbn_onnx.to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    X = np.random.default_rng(0).normal(size=(37, 3)).astype(np.float32)
    assert_matches(run_ort(proto, X), model.predict(X), "float32")


def test_a_layer_without_mapping_is_named_and_register_exporter_adds_one():
    model = nbn.Sequential([nbn.Dense(3, 4), Unmapped(4), nbn.Dense(4, 2)], seed=0)
    with pytest.raises(nbn_onnx.OnnxExportError,
                       match="layer 1 .*TestOnnxUnmapped.*no ONNX mapping.*onnx_export"):
        nbn_onnx.to_onnx(model)

    def mapping(builder, layer, x):
        assert builder.in_shape == builder.out_shape == (4,)
        return builder.node("Mul", [x, builder.initializer(layer.parameter("gamma").value,
                                                           "gamma")])

    nbn_onnx.register_exporter(Unmapped, mapping)
    try:
        proto = nbn_onnx.to_onnx(model)
        X = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
        assert_matches(run_ort(proto, X), model.predict(X), "float32")
    finally:
        del nbn_onnx.LAYER_EXPORTERS[Unmapped]


def test_a_plugin_mapping_using_an_unsupported_double_op_is_refused_by_name():
    class Cubed(Scale):
        layer_type = "TestOnnxCubed"

        def onnx_export(self, builder, x):
            return builder.node("Elu", [x])

    model = nbn.Sequential([nbn.Dense(3, 4), Cubed(4)], dtype="float64")
    with pytest.raises(nbn_onnx.OnnxExportError, match="layer 1 .*Elu.*float64"):
        nbn_onnx.to_onnx(model)


# -------------------------------------------------------------------- files and CLI


def test_export_writes_a_checked_file(tmp_path):
    model = every_layer_model("relu", "float32")
    path = tmp_path / "model.onnx"
    proto = nbn_onnx.export(model, path)
    loaded = onnx.load(str(path))
    assert loaded.SerializeToString() == proto.SerializeToString()
    assert loaded.producer_name == "numbanet"
    X = np.ones((2, 5), np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert_matches(session.run(None, {"input": X})[0], model.predict(X), "float32")


def test_cli_export_of_a_saved_model(tmp_path, capsys):
    model = every_layer_model("tanh", "float32")
    model.save(tmp_path / "m.npz")
    out = tmp_path / "m.onnx"
    assert cli_main(["export", str(tmp_path / "m.npz"), str(out), "--probabilities"]) == 0
    assert "wrote" in capsys.readouterr().out
    X = np.random.default_rng(0).normal(size=(37, 5)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert_matches(session.run(None, {"input": X})[0], model.predict_proba(X), "float32")


def test_cli_export_errors_exit_1(tmp_path, capsys):
    assert cli_main(["export", str(tmp_path / "missing.npz"), str(tmp_path / "x.onnx")]) == 1
    assert "no model file" in capsys.readouterr().err
    nbn.Sequential([nbn.Dense(3, 2)]).compile("mse", "sgd").save(tmp_path / "r.npz")
    assert cli_main(["export", str(tmp_path / "r.npz"), str(tmp_path / "r.onnx"),
                     "--probabilities"]) == 1
    assert "classification loss" in capsys.readouterr().err


def test_sklearn_model_exports():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    from numbanet.sklearn import NumbanetClassifier

    X, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 5 epochs do not converge, and need not
        clf = NumbanetClassifier((32,), max_iter=5, random_state=0).fit(X / 16, y)
    proto = nbn_onnx.to_onnx(clf.model_, probabilities=True)
    assert_matches(run_ort(proto, X[:37] / 16), clf.predict_proba(X[:37] / 16), "float64")


def test_without_onnx_the_error_names_the_extra():
    code = ("import sys; sys.modules['onnx'] = None\n"
            "import numbanet as nbn, numbanet.onnx\n"
            "try:\n    numbanet.onnx.to_onnx(nbn.Sequential([nbn.Dense(2, 2)]))\n"
            "except ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert 'pip install "numbanet[onnx]"' in out


def test_every_built_in_layer_has_a_mapping():
    """A layer registered by numbanet itself without an ONNX mapping fails here (add it
    to numbanet.onnx.LAYER_EXPORTERS, with a case in the tests above)."""
    built_in = [name.split(":", 1)[1] for name in nbn.list_layers(qualified=True)
                if name.startswith("numbanet:")]
    missing = [name for name in built_in
               if nbn.get_layer_class(name) not in nbn_onnx.LAYER_EXPORTERS
               and not callable(getattr(nbn.get_layer_class(name), "onnx_export", None))]
    assert built_in and not missing
