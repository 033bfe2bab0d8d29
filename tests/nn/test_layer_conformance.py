"""check_layer over every registered layer, and check_layer catching broken layers."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import pytest

import numbanet as nbn
import numbanet.plugins as nbp
from numbanet.hookspecs import hookimpl
from numbanet.kernels.activations import ACTIVATIONS
from numbanet.nn import Activation, Dense, Dropout, Module
from numbanet.testing import check_layer

Case = tuple[str, Callable[[], Module], tuple[int, ...], dict[str, Any]]

# Factories and sample shapes per built-in layer. Batches of 1024 x 64 elements (and the
# 256 x 64 x 64 GEMM) reach the kernels' parallel paths, so the thread check compares
# parallel runs. Inputs are pushed 0.1 away from zero (check_layer's default sample), away
# from the kinks of relu, leaky_relu and elu.
BUILTIN_CASES: dict[str, list[Case]] = {
    "Dense": [
        ("identity", lambda: Dense(8, 3), (8,), {"batch": 16}),
        ("relu", lambda: Dense(6, 5, activation="relu"), (6,), {"batch": 16}),
        ("softmax", lambda: Dense(7, 4, activation="softmax"), (7,), {"batch": 16}),
        ("tanh-parallel-gemm", lambda: Dense(64, 64, activation="tanh"), (64,),
         {"batch": 256}),
    ],
    "Activation": [
        (name, lambda name=name: Activation(name), (64,), {"batch": 1024})
        for name in ACTIVATIONS
    ],
    "Dropout": [
        ("rate-0.3", lambda: Dropout(0.3), (64,), {"batch": 1024}),
        ("rate-0-on-3d-samples", lambda: Dropout(0.0), (2, 3, 4), {"batch": 8}),
    ],
    # Image layers (NHWC samples), built through the registry by name.
    "Conv2D": [
        ("tanh-padded", lambda: _layer("Conv2D", 3, 4, 3, padding=1, activation="tanh"),
         (6, 6, 3), {"batch": 8}),
        ("relu-strided", lambda: _layer("Conv2D", 3, 8, 3, stride=2, activation="relu"),
         (7, 7, 3), {"batch": 8}),
    ],
    "MaxPool2D": [("2x2", lambda: _layer("MaxPool2D", 2), (6, 6, 3), {"batch": 8})],
    "AvgPool2D": [("2x2-padded", lambda: _layer("AvgPool2D", 2, padding=1), (6, 6, 3),
                   {"batch": 8})],
    "GlobalAvgPool2D": [("4x4", lambda: _layer("GlobalAvgPool2D"), (4, 4, 3), {"batch": 8})],
    "Flatten": [("3d", lambda: _layer("Flatten"), (2, 3, 4), {"batch": 8})],
    "BatchNorm": [
        ("features-parallel", lambda: _layer("BatchNorm", 64), (64,), {"batch": 1024}),
        ("images", lambda: _layer("BatchNorm", 3), (5, 7, 3), {"batch": 8}),
        ("no-affine", lambda: _layer("BatchNorm", 4, affine=False), (4,), {"batch": 16}),
    ],
    "LayerNorm": [
        ("rows-parallel", lambda: _layer("LayerNorm", 64), (64,), {"batch": 1024}),
        ("images", lambda: _layer("LayerNorm", 3), (4, 5, 3), {"batch": 8}),
    ],
    "Embedding": [
        ("sequences", lambda: _layer("Embedding", 50, 32), (7,),
         {"batch": 512, "sample": lambda rng, shape: rng.integers(0, 50, shape)}),
        # The padding row takes part in the forward pass but gets no gradient by design
        # (torch.nn.Embedding's padding_idx), so finite differences would flag it; its
        # gradient is checked against PyTorch in test_embedding.py.
        ("padding-idx", lambda: _layer("Embedding", 9, 4, padding_idx=0), (3,),
         {"batch": 16, "sample": lambda rng, shape: rng.integers(0, 9, shape),
          "skip": ("gradients",)}),
    ],
    "Residual": [
        ("dense-bn", lambda: _layer("Residual", [Dense(16, 16, activation="relu"),
                                                 _layer("BatchNorm", 16), Dense(16, 16)]),
         (16,), {"batch": 64}),
    ],
}

def _layer(name: str, *args: Any, **kwargs: Any) -> Module:
    return nbp.get_layer_class(f"{nbp.BUILTIN_DISTRIBUTION}:{name}")(*args, **kwargs)


# Plugin layers whose own package runs check_layer in its tests.
COVERED_BY_PLUGIN_TESTS = {
    "numbanet-rmsnorm:RMSNorm": "plugins/numbanet-rmsnorm/tests/test_rmsnorm.py",
}


def _registered_layers() -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nbp.PluginWarning)
        nbp.reload_plugins()
        return nbp.list_layers(qualified=True)


def _cases() -> list[Any]:
    params = []
    for qid in _registered_layers():
        dist, name = qid.split(":", 1)
        if dist == nbp.BUILTIN_DISTRIBUTION:
            params += [pytest.param(qid, *case[1:], id=f"{qid}-{case[0]}")
                       for case in BUILTIN_CASES.get(name, [])]
        else:
            params.append(pytest.param(qid, None, None, None, id=qid))
    return params


@pytest.mark.parametrize(("qualified_id", "factory", "input_shape", "options"), _cases())
def test_registered_layer_conforms(qualified_id, factory, input_shape, options):
    if factory is None:
        where = COVERED_BY_PLUGIN_TESTS.get(qualified_id)
        pytest.skip(f"{qualified_id} comes from a plugin; "
                    + (f"{where} runs check_layer on it" if where else
                       "its package's tests should run numbanet.testing.check_layer"))
    check_layer(factory, input_shape, **options)


def test_every_builtin_layer_has_conformance_cases():
    builtins = [q.split(":", 1)[1] for q in _registered_layers()
                if q.startswith(f"{nbp.BUILTIN_DISTRIBUTION}:")]
    assert builtins and all(BUILTIN_CASES.get(name) for name in builtins), (
        f"add cases for {[n for n in builtins if not BUILTIN_CASES.get(n)]} to BUILTIN_CASES")


def test_check_layer_takes_an_instance_as_a_template():
    layer = Dense(5, 2, activation="sigmoid")
    check_layer(layer, (5,), batch=8)
    with pytest.raises(RuntimeError, match="not part of a model yet"):
        _ = layer.workspace  # the template itself was never put in a model


def test_check_layer_rejects_bad_arguments():
    with pytest.raises(TypeError, match="zero-argument function"):
        check_layer(Dense, (4,))
    with pytest.raises(TypeError, match="the factory returned int"):
        check_layer(lambda: 3, (4,))
    with pytest.raises(ValueError, match="skip must be a collection of names"):
        check_layer(lambda: Dense(4, 2), (4,), skip=("speed",))
    with pytest.raises(ValueError, match="skip must be a collection of names"):
        check_layer(lambda: Dense(4, 2), (4,), skip="threads")
    with pytest.raises(ValueError, match=r"expects samples of shape \(4,\)"):
        check_layer(lambda: Dense(4, 2), (5,))


# -- broken layers: check_layer must catch each one, naming the property --------------


class Scale(Module):
    """``y = factor * x``: a correct, parameter-free layer the broken ones start from."""

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        self.factor = float(factor)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.layer_type, "factor": self.factor}

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        y = self.workspace.get("y", x.shape)
        np.multiply(x, self.factor, out=y)
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        if not need_input_grad:
            return None
        dx = self.workspace.get("dx", dy.shape)
        np.multiply(dy, self.factor, out=dx)
        return dx


class ScaleConfigLies(Scale):
    def get_config(self) -> dict[str, Any]:
        return {"type": self.layer_type}  # forgets factor


class ScaleConfigNamesAnother(Scale):
    def get_config(self) -> dict[str, Any]:
        return {"type": "Scale", "factor": self.factor}


class ScaleUnregistered(Scale):
    pass


class ScaleWrongShape(Scale):
    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*in_shape, 1)


class ScaleWrongInputGradient(Scale):
    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        dx = super().backward(dy, need_input_grad)
        if dx is not None:
            dx *= 1.01
        return dx


class ScaleOwnRandomness(Scale):
    """Draws its noise from a generator of its own instead of the model's."""

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__(factor)
        self.noise = np.random.default_rng()

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        y = super().forward(x, training)
        if training:
            y *= self.noise.uniform(0.5, 1.5)
        return y


class ScaleFloat32Off(Scale):
    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        y = super().forward(x, training)
        if y.dtype == np.float32:
            y += np.float32(1e-2)  # a constant: the gradients stay right
        return y


class ScaleThreadDependent(Scale):
    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        y = super().forward(x, training)
        y *= 1 + 1e-6 * nbn.get_num_threads()
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        dx = super().backward(dy, need_input_grad)
        if dx is not None:
            dx *= 1 + 1e-6 * nbn.get_num_threads()
        return dx


class ScaleNewOutput(Scale):
    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        return x * self.factor  # a new array every step


@numba.njit(cache=False)
def _scale_via_temporary(x, factor, y):
    t = np.empty_like(x)  # allocated by Numba's runtime on every call
    for i in range(x.shape[0]):
        t[i] = x[i] * factor
    for i in range(x.shape[0]):
        y[i] = t[i]


class ScaleKernelAllocates(Scale):
    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        y = self.workspace.get("y", x.shape)
        _scale_via_temporary(x.reshape(-1), self.factor, y.reshape(-1))
        return y


class ScaleNumpyTemporary(Scale):
    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        y = self.workspace.get("y", x.shape)
        y[...] = x * self.factor  # the product is a batch-sized temporary
        return y


class ScaleBackwardTouchesBuffer(Scale):
    def buffer_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("calls", (1,))]

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        self.buffer("calls")[0] += 1
        return super().backward(dy, need_input_grad)


class DenseHalfBiasGradient(Dense):
    def backward_fused(self, grad, grad_is_dz, need_input_grad, below):
        dx = super().backward_fused(grad, grad_is_dz, need_input_grad, below)
        self.parameter("bias").grad[...] *= 0.5
        return dx


class DenseAccumulatesGradient(Dense):
    def backward_fused(self, grad, grad_is_dz, need_input_grad, below):
        before = self.parameter("weight").grad.copy()
        dx = super().backward_fused(grad, grad_is_dz, need_input_grad, below)
        self.parameter("weight").grad[...] += before
        return dx


REGISTERED_FOR_TESTS = [Scale, ScaleConfigLies, ScaleConfigNamesAnother, ScaleWrongShape,
                        ScaleWrongInputGradient, ScaleOwnRandomness, ScaleFloat32Off,
                        ScaleThreadDependent, ScaleNewOutput, ScaleKernelAllocates,
                        ScaleNumpyTemporary, ScaleBackwardTouchesBuffer,
                        DenseHalfBiasGradient, DenseAccumulatesGradient]


class _TestLayers:
    @hookimpl
    def numbanet_register_layers(self):
        return REGISTERED_FOR_TESTS


@pytest.fixture(scope="module")
def test_layers():
    nbp.register_plugin(_TestLayers(), "numbanet-layer-conformance-tests")
    yield
    nbp.unregister_plugin("numbanet-layer-conformance-tests")


def test_check_layer_passes_the_correct_test_layer(test_layers):
    check_layer(Scale(2.0), (8,), batch=256)


@pytest.mark.parametrize(("layer", "message"), [
    (ScaleWrongShape(2.0), r"output_shape\(\(8,\)\) says \(8, 1\) but forward \(training\) "
                           r"returned samples of shape \(8,\)"),
    (ScaleConfigLies(2.0), r"config round trip \(a layer rebuilt from get_config\(\) with the "
                           r"same weights computes something else"),
    (ScaleConfigNamesAnother(2.0), r"get_config\(\)\['type'\] is 'Scale', expected the "
                                   r"class's layer_type 'ScaleConfigNamesAnother'"),
    (ScaleUnregistered(2.0), r"layer type 'ScaleUnregistered' is not in the layer registry"),
    (ScaleWrongInputGradient(2.0), r"input gradient differs from central differences"),
    (DenseHalfBiasGradient(6, 3, activation="tanh"),
     r"gradient of parameter '0.bias' differs from central differences"),
    (DenseAccumulatesGradient(6, 3), r"backward does not overwrite the gradient of 0.weight"),
    (ScaleOwnRandomness(2.0), r"forward \(training\) gives different outputs for the same "
                              r"input and generator state"),
    (ScaleBackwardTouchesBuffer(2.0), r"backward changed buffer '0.calls'"),
    (ScaleFloat32Off(2.0), r"float32 and float64 disagree on the training output"),
    (ScaleNewOutput(2.0), r"allocation: forward's output is a new array every step"),
    (ScaleKernelAllocates(2.0), r"allocation: compiled kernels allocated 10 arrays in 10 "
                                r"steady-state steps"),
    (ScaleNumpyTemporary(2.0), r"allocation: a steady-state step allocates temporaries"),
], ids=lambda v: type(v).__name__ if isinstance(v, Module) else "")
def test_check_layer_catches_a_broken_layer(test_layers, layer, message):
    input_shape = (layer.in_features,) if isinstance(layer, Dense) else (8,)
    with pytest.raises(AssertionError, match=message) as info:
        check_layer(layer, input_shape, batch=256)
    assert str(info.value).startswith(f"check_layer({type(layer).__name__}(")


@pytest.mark.skipif(nbn.threads.max_threads() < 2, reason="needs two threads")
def test_check_layer_catches_a_thread_dependent_layer(test_layers):
    with pytest.raises(AssertionError, match=r"1 and \d+ threads are not bit-identical "
                                             r"\(float32; .*training output differs"):
        check_layer(ScaleThreadDependent(2.0), (8,), batch=16)


def test_skip_leaves_out_a_check(test_layers):
    check_layer(ScaleNewOutput(2.0), (8,), batch=16, skip=("allocations",))


class Lookup(Module):
    """A minimal index layer (an embedding table): ``y[b, i] = table[x[b, i]]``."""

    input_kind = "index"

    def __init__(self, num: int, dim: int) -> None:
        super().__init__()
        self.num, self.dim = num, dim
        self._x: np.ndarray | None = None

    def parameter_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("table", (self.num, self.dim))]

    def initialize(self, rng: np.random.Generator) -> None:
        self.parameter("table").value[...] = rng.standard_normal((self.num, self.dim))

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*in_shape, self.dim)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.layer_type, "num": self.num, "dim": self.dim}

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        y = self.workspace.get("y", (*x.shape, self.dim))
        np.take(self.parameter("table").value, x, axis=0, out=y)
        self._x = x
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        grad = self.parameter("table").grad
        grad[...] = 0
        np.add.at(grad, self._x.reshape(-1), dy.reshape(-1, self.dim))
        return None


def test_check_layer_takes_an_index_layer_with_an_integer_sample():
    nbp.register_plugin(type("LookupPlugin", (), {
        "numbanet_register_layers": hookimpl(lambda self: [Lookup])})(), "lookup-tests")
    try:
        # np.add.at's index machinery allocates; a real embedding layer would use a kernel.
        check_layer(lambda: Lookup(10, 4), (3,), batch=32, skip=("allocations",),
                    sample=lambda rng, shape: rng.integers(0, 10, shape))
        with pytest.raises(ValueError, match="takes integer indices .* pass sample="):
            check_layer(lambda: Lookup(10, 4), (3,))
    finally:
        nbp.unregister_plugin("lookup-tests")
