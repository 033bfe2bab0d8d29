"""The model core's contract: N-D shapes, buffers, roles, protocol-based fusion and RNG,
the open layer registry, summary and get/set_weights, and old model files."""

from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

import numbanet as nbn
import numbanet.plugins as nbp
from numbanet.nn import Activation, Dense, Dropout, Module, Sequential

DATA = Path(__file__).resolve().parents[1] / "data"
SRC = Path(nbn.__file__).resolve().parent


class Scale(Module):
    """Test layer on any shape: ``y = x * gain`` with one ``"norm"`` parameter per last-axis
    feature and a buffer counting forward calls in training (non-trainable state)."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self._x = None

    def parameter_shapes(self):
        return [("gain", (self.features,))]

    def parameter_roles(self):
        return {"gain": "norm"}

    def buffer_shapes(self):
        return [("calls", (1,))]

    def initialize(self, rng):
        self.parameter("gain").value[...] = 1 + rng.uniform(-0.5, 0.5, self.features)
        self.buffer("calls")[...] = 0

    def output_shape(self, in_shape):
        if in_shape[-1] != self.features:
            raise ValueError(f"Scale({self.features}) needs {self.features} features on the "
                             f"last axis, got {in_shape}")
        return in_shape

    def get_config(self):
        return {"type": self.layer_type, "features": self.features}

    def forward(self, x, training):
        if training:
            self.buffer("calls")[0] += 1
        self._x = x
        y = self.workspace.get("y", x.shape)
        np.multiply(x, self.parameter("gain").value, out=y)
        return y

    def backward(self, dy, need_input_grad=True):
        gain = self.parameter("gain")
        gain.grad[...] = (dy * self._x).reshape(-1, self.features).sum(axis=0)
        if not need_input_grad:
            return None
        dx = self.workspace.get("dx", dy.shape)
        np.multiply(dy, gain.value, out=dx)
        return dx


class Flat(Module):
    """Test layer: ``(n, *shape)`` -> ``(n, prod(shape))``."""

    def output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)

    def get_config(self):
        return {"type": self.layer_type}

    def forward(self, x, training):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_input_grad=True):
        return dy.reshape(self._shape) if need_input_grad else None


class _TestLayers:
    @staticmethod
    @nbn.hookimpl
    def numbanet_register_layers():
        return [Scale, Flat]


@pytest.fixture
def test_layers():
    nbp.register_plugin(_TestLayers, "model-core-test")
    yield
    nbp.unregister_plugin("model-core-test")


def _image_model(**kwargs):
    return Sequential([Scale(3), Flat(), Dense(4 * 5 * 3, 6, activation="relu"), Dense(6, 2)],
                      seed=1, dtype="float64", **kwargs)


def test_input_shape_validates_the_whole_stack_up_front():
    with pytest.raises(ValueError, match=r"layers\[0\].*3 features on the last axis"):
        Sequential([Scale(3), Flat(), Dense(60, 2)], input_shape=(4, 5, 2))
    with pytest.raises(ValueError, match=r"layers\[2\].*expects samples of shape \(61,\)"):
        Sequential([Scale(3), Flat(), Dense(61, 2)], input_shape=(4, 5, 3))
    model = _image_model(input_shape=(4, 5, 3))
    assert model.input_shape == (4, 5, 3) and model.output_shape == (2,)


def test_shapes_resolve_at_the_first_call_without_input_shape():
    model = _image_model()
    assert model.input_shape is None
    x = np.random.default_rng(0).standard_normal((7, 4, 5, 3))
    out = model.predict(x)
    assert out.shape == (7, 2) and model.input_shape == (4, 5, 3)
    with pytest.raises(ValueError, match=r"samples of shape \(4, 5, 2\).*expects \(4, 5, 3\)"):
        model.predict(np.ones((2, 4, 5, 2)))


def test_bad_first_call_shape_names_the_layer():
    model = _image_model()
    with pytest.raises(ValueError, match=r"layers\[0\]"):
        model.predict(np.ones((2, 4, 5, 2)))


def test_nd_model_gradients_match_finite_differences():
    model = _image_model(input_shape=(4, 5, 3))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5, 3))
    d_out = rng.standard_normal((3, 2))

    def loss(xv):
        return float(np.sum(model.forward(xv, training=False) * d_out))

    model.forward(x, training=False)
    dx = model.backward(d_out)
    grads = {p.name: p.grad.copy() for p in model.parameters()}
    eps = 1e-6
    for idx in [(0, 0, 0, 0), (1, 2, 3, 1), (2, 3, 4, 2)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        assert dx[idx] == pytest.approx((loss(xp) - loss(xm)) / (2 * eps), rel=1e-6, abs=1e-9)
    gain = model.parameters()[0]
    for j in range(3):
        old = gain.value[j]
        gain.value[j] = old + eps
        up = loss(x)
        gain.value[j] = old - eps
        down = loss(x)
        gain.value[j] = old
        assert grads["0.gain"][j] == pytest.approx((up - down) / (2 * eps), rel=1e-6)


def test_losses_need_batch_by_k_outputs():
    model = Sequential([Scale(3)], input_shape=(4, 3))
    with pytest.raises(ValueError, match=r"outputs have shape \(batch, 4, 3\).*\(batch, k\)"):
        model.compile("mse", "sgd")


def test_parameter_roles_come_from_the_layer_not_the_name():
    model = _image_model(input_shape=(4, 5, 3))
    roles = {p.name: p.role for p in model.parameters()}
    assert roles == {"0.gain": "norm", "2.weight": "weight", "2.bias": "bias",
                     "3.weight": "weight", "3.bias": "bias"}

    class BadRole(Scale):
        def parameter_roles(self):
            return {"gain": "scale"}

    with pytest.raises(ValueError, match="role 'scale'"):
        Sequential([BadRole(3)], input_shape=(3,))


def test_buffers_are_saved_loaded_and_not_trained(tmp_path, test_layers):
    model = _image_model(input_shape=(4, 5, 3))
    model.compile("cross_entropy", nbn.get_optimizer("adam", lr=0.01))
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((16, 4, 5, 3)), rng.integers(0, 2, 16)
    for _ in range(3):
        model.train_step(x, y)
    assert model.buffers()["0.calls"][0] == 3
    # The optimizer updates parameters only: the buffer moves by the layer's forward alone.
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = nbn.load(path)
    assert loaded.buffers()["0.calls"][0] == 3
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    # Resuming continues bit for bit, buffers included.
    for m in (model, loaded):
        m.train_step(x, y)
    np.testing.assert_array_equal(loaded.flat_parameters, model.flat_parameters)
    np.testing.assert_array_equal(loaded.flat_buffers, model.flat_buffers)


def test_plugin_layer_type_missing_at_load_is_a_clear_error(tmp_path, test_layers):
    model = _image_model(input_shape=(4, 5, 3))
    path = tmp_path / "m.npz"
    model.save(path)
    nbp.unregister_plugin("model-core-test")
    with pytest.raises(ValueError, match=r"layer 'Scale' comes from the plugin "
                                         r"'model-core-test', which is not installed here"):
        nbn.load(path)


def test_get_and_set_weights_round_trip_in_keras_order():
    model = _image_model(input_shape=(4, 5, 3))
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(3,), (1,), (60, 6), (6,), (6, 2), (2,)]
    other = _image_model(input_shape=(4, 5, 3))
    other.set_weights([w * 2 for w in weights])
    np.testing.assert_array_equal(other.layers[2].weight.value, 2 * weights[2])
    with pytest.raises(ValueError, match="needs 6 arrays"):
        other.set_weights(weights[:-1])
    with pytest.raises(ValueError, match=r"2.weight must have shape \(60, 6\)"):
        other.set_weights([weights[0], weights[1], weights[3], weights[2], *weights[4:]])
    bad = [w.copy() for w in weights]
    bad[3][0] = np.nan
    before = other.get_weights()
    with pytest.raises(ValueError, match="finite"):
        other.set_weights(bad)
    for a, b in zip(before, other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # nothing was written


def test_summary_lists_layers_shapes_and_counts():
    lines: list[str] = []
    _image_model(input_shape=(4, 5, 3)).summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "input (batch, 4, 5, 3)" in text
    assert re.search(r"Scale.*\(batch, 4, 5, 3\)\s+3$", text, re.M)
    assert re.search(r"Dense\(60, 6, activation='relu'\)\s+\(batch, 6\)\s+366$", text, re.M)
    assert "trainable parameters: 383; non-trainable buffers: 1" in text


def test_summary_before_shapes_are_known():
    lines: list[str] = []
    _image_model().summary(print_fn=lines.append)
    assert "not known until the first call" in lines[0]


def test_sequential_and_fit_hold_no_concrete_layer_checks():
    out = subprocess.run(
        ["grep", "-n", r"isinstance(.*\(Dense\|Dropout\)", str(SRC / "nn" / "sequential.py"),
         str(SRC / "train.py")], capture_output=True, text=True)
    assert out.stdout == ""


class Doubler(Module):
    """Test layer that draws from the model's generator: proves the RNG protocol."""

    def set_rng(self, rng):
        self.rng = rng

    def get_config(self):
        return {"type": self.layer_type}

    def forward(self, x, training):
        self.last = self.rng.random()
        return x

    def backward(self, dy, need_input_grad=True):
        return dy


def test_layers_receive_the_model_generator_through_set_rng():
    layer = Doubler()
    model = Sequential([Dense(3, 3), layer], seed=5)
    assert layer.rng is model.rng
    dropout = Dropout(0.5)
    model = Sequential([Dense(3, 3), dropout], seed=5)
    assert dropout.rng is model.rng


def test_derivative_fusion_is_a_protocol():
    """A layer offering ReLU's derivative through fused_derivative() gets it applied by the
    Dense above: a Dense with a ReLU and an Activation("relu") layer both offer it, and
    the two models' gradients agree."""
    rng = np.random.default_rng(4)
    x, d_out = rng.standard_normal((9, 5)), rng.standard_normal((9, 2))
    fused = Sequential([Dense(5, 7, activation="relu"), Dense(7, 2)], seed=0, dtype="float64")
    unfused = Sequential([Dense(5, 7), Activation("relu"), Dense(7, 2)], seed=0,
                         dtype="float64")
    assert fused._fusion_below[1] is fused.layers[0]
    assert unfused._fusion_below == [None, None, unfused.layers[1]]
    for a, b in zip(fused.parameters(), unfused.parameters(), strict=True):
        b.value[...] = a.value
    dx_fused = (fused.forward(x), fused.backward(d_out))[1]
    dx_plain = (unfused.forward(x), unfused.backward(d_out))[1]
    np.testing.assert_allclose(dx_fused, dx_plain, rtol=1e-12)
    for a, b in zip(fused.parameters(), unfused.parameters(), strict=True):
        np.testing.assert_allclose(a.grad, b.grad, rtol=1e-12, atol=1e-15)


def test_registry_lists_builtins_and_plugin_layers(test_layers):
    assert {"Dense", "Activation", "Dropout", "Scale", "Flat"} <= set(nbn.list_layers())
    assert nbp.resolve_layer("Scale") == ("model-core-test:Scale", Scale)
    assert nbp.get_layer_class("numbanet:Dense") is Dense
    report = {r["name"]: r for r in nbp.plugin_report()}
    assert report["model-core-test"]["layers"] == ["Scale", "Flat"]
    assert report["numbanet"]["layers"][:3] == ["Dense", "Activation", "Dropout"]


def test_a_plugin_layer_shadowing_a_builtin_warns_and_the_builtin_wins():
    class Dense2(Scale):
        layer_type = "Dense"

    class Shadow:
        @staticmethod
        @nbn.hookimpl
        def numbanet_register_layers():
            return [Dense2]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nbp.register_plugin(Shadow, "shadow-layers")
        try:
            assert nbp.get_layer_class("Dense") is Dense
            assert nbp.get_layer_class("shadow-layers:Dense") is Dense2
        finally:
            nbp.unregister_plugin("shadow-layers")
    assert any("shadows numbanet's built-in layer 'Dense'" in str(w.message) for w in caught)


@pytest.mark.parametrize(("result", "message"), [
    (lambda: [Scale(3)], "return the class, not an instance"),
    (lambda: [int], "expected subclasses of numbanet.Module"),
    (lambda: Scale, "expected a list of layer classes"),
    (lambda: 1 / 0, "raised ZeroDivisionError"),
])
def test_a_faulty_layer_hook_disables_only_its_plugin(result, message):
    class Faulty:
        @staticmethod
        @nbn.hookimpl
        def numbanet_register_layers():
            return result()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nbp.register_plugin(Faulty, "faulty-layers")
        try:
            assert "Dense" in nbn.list_layers()
            assert "adam" in nbn.list_optimizers()
            report = {r["name"]: r for r in nbp.plugin_report()}
            assert report["faulty-layers"]["status"] == "failed"
            assert message in report["faulty-layers"]["error"]
        finally:
            nbp.unregister_plugin("faulty-layers")
    assert any("faulty-layers" in str(w.message) for w in caught)


def test_models_saved_by_the_first_release_still_load_and_resume():
    """tests/data/digits_mlp_format_v1.npz was written by numbanet 0.1.0 at commit 54b872c
    (format version 1): Dense(64,16,relu), Dropout(0.1), Dense(16,10), Adam, 2 epochs on
    the first 512 digits; the .npy files hold its predictions on 20 digits and its weights
    after one more epoch with the same data and batch size.

    The predictions still agree bit for bit. The resumed weights agreed bit for bit until
    the optimizer kernels took exact math (no FMA contraction), which moved their last
    bits: they now differ by at most 6e-8 (float32). Resuming without the saved Adam
    state would put them up to 0.08 away, so the tolerance still tells a resume from a
    restart."""
    model = nbn.load(DATA / "digits_mlp_format_v1.npz")
    X, y = nbn.datasets.load_digits()
    np.testing.assert_array_equal(model.predict(X[:20]),
                                  np.load(DATA / "digits_mlp_format_v1_predict.npy"))
    assert model.metadata == {"dataset": "digits"}
    model.fit(X[:512], y[:512], epochs=1, batch_size=64, verbose=0)
    np.testing.assert_allclose(
        model.flat_parameters, np.load(DATA / "digits_mlp_format_v1_resumed_weights.npy"),
        rtol=0, atol=1e-6)


class Lookup(Module):
    """Test layer taking integer indices: row ``i`` of a fixed table."""

    input_kind = "index"

    def __init__(self, rows: int):
        super().__init__()
        self.rows = rows

    def check_input(self, x, name):
        if x.min() < 0 or x.max() >= self.rows:
            raise ValueError(f"{name} holds indices outside 0..{self.rows - 1}")

    def output_shape(self, in_shape):
        return (*in_shape, 2)

    def get_config(self):
        return {"type": self.layer_type, "rows": self.rows}

    def forward(self, x, training):
        self.seen = x
        table = np.arange(2.0 * self.rows).reshape(self.rows, 2)
        return table[x].astype(self.workspace.dtype)

    def backward(self, dy, need_input_grad=True):
        return None


def test_an_index_first_layer_receives_int64_and_checks_its_range():
    model = Sequential([Lookup(5), Flat()], input_shape=(3,))
    out = model.predict(np.array([[0, 4, 1]], dtype=np.int32))
    assert model.layers[0].seen.dtype == np.int64
    np.testing.assert_array_equal(out, [[0, 1, 8, 9, 2, 3]])
    with pytest.raises(TypeError, match="integer indices for Lookup"):
        model.predict(np.array([[0.0, 1.5, 2.0]]))
    with pytest.raises(ValueError, match=r"X holds indices outside 0..4"):
        model.predict(np.array([[0, 5, 1]]))


@pytest.mark.parametrize("last", [Dense(4, 3, activation="softmax"), Activation("softmax")])
def test_softmax_output_with_cross_entropy_warns_once_naming_the_fix(last):
    model = Sequential([Dense(5, 3 if isinstance(last, Activation) else 4), last], seed=0)
    with pytest.warns(UserWarning, match=r"applies softmax.*again.*remove the activation"):
        model.compile("cross_entropy", "sgd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Sequential([Dense(5, 4), Dense(4, 3, activation="sigmoid")], seed=0).compile(
            "cross_entropy", "sgd")


@pytest.mark.parametrize("name", ["fit", "evaluate"])
def test_model_methods_show_the_real_arguments_of_the_training_loop(name):
    """help(model.fit) lists fit's real keywords (not **kwargs), and they stay in step
    with numbanet.train's."""
    import inspect

    from numbanet import train

    method = list(inspect.signature(getattr(Sequential, name)).parameters.values())[1:]
    function = list(inspect.signature(getattr(train, name)).parameters.values())[1:]
    assert [(p.name, p.kind, p.default) for p in method] == \
        [(p.name, p.kind, p.default) for p in function]


def test_a_plugin_layer_sharing_a_builtin_name_loads_as_itself(tmp_path):
    """Model files store qualified layer ids: a plugin's 'Dense' is not the built-in."""

    class OtherDense(Scale):
        layer_type = "Dense"

        def get_config(self):
            return {"type": self.layer_type, "features": self.features}

    class Shadow:
        @staticmethod
        @nbn.hookimpl
        def numbanet_register_layers():
            return [OtherDense]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nbp.PluginWarning)
        nbp.register_plugin(Shadow, "shadow-dense")
        try:
            model = Sequential([OtherDense(3), Dense(3, 2)], input_shape=(3,), seed=0)
            model.save(tmp_path / "m.npz")
            loaded = nbn.load(tmp_path / "m.npz")
            assert type(loaded.layers[0]) is OtherDense and type(loaded.layers[1]) is Dense
        finally:
            nbp.unregister_plugin("shadow-dense")
    with pytest.raises(ValueError, match=r"from the plugin 'shadow-dense', which is not"):
        nbn.load(tmp_path / "m.npz")


# -- Workspace.get_placed --------------------------------------------------------------


def _circular_gap(a: int, b: int) -> int:
    d = abs(a - b) % 4096
    return min(d, 4096 - d)


@pytest.mark.parametrize("away", [(), (16,), (0,), (1000,), (16, 16), (16, 2064),
                                  (1024, 3072), (500, 2600), (4095, 1)], ids=str)
def test_placed_buffers_start_farthest_from_the_given_page_offsets(away):
    from numbanet.nn.module import PLACEMENTS, Workspace, farthest_placement

    # Brute force over every 64-byte page offset gives the best gap; the placement
    # (restricted to quarter pages) must be within 512 bytes of it, and it must be the
    # best of the quarter pages.
    def gap(c):
        return min((_circular_gap(c, o) for o in away), default=4096)

    chosen = farthest_placement(away)
    assert chosen in PLACEMENTS
    assert gap(chosen) == max(gap(c) for c in PLACEMENTS)
    if len(away) <= 2:
        assert gap(chosen) >= 512
    ws = Workspace(np.dtype(np.float32))
    buf = ws.get_placed("y", (8, 1024), away)
    assert buf.shape == (8, 1024) and buf.dtype == np.float32 and buf.flags.c_contiguous
    assert buf.ctypes.data % 4096 == chosen
    assert buf.flags.writeable
    buf[...] = 7.0
    again = ws.get_placed("y", (8, 1024), away)
    assert again is buf  # the same view while the placement holds
    assert ws.get("other", (8, 1024)).ctypes.data != buf.ctypes.data


def test_placed_buffers_move_with_their_inputs_and_small_ones_are_plain():
    from numbanet.nn.module import Workspace

    ws = Workspace(np.dtype(np.float64))
    a = ws.get_placed("dx", (4, 512), (0,))
    b = ws.get_placed("dx", (4, 512), (2048,))
    assert _circular_gap(a.ctypes.data % 4096, 0) >= 1024
    assert _circular_gap(b.ctypes.data % 4096, 2048) >= 1024
    small = ws.get_placed("s", (2, 3), (0,))  # under a page: the plain buffer
    assert small is ws.get("s", (2, 3))
    ws.clear()
    assert ws.get_placed("dx", (4, 512), (0,)).shape == (4, 512)
