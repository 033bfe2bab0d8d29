"""Conv2D against PyTorch (forward, input and parameter gradients) on awkward shapes,
finite differences through a small CNN, thread-count determinism, the conformance check
and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import numbanet as nbn
from numbanet.kernels.activations import get_activation
from numbanet.nn import Conv2D, Dense, Flatten, MaxPool2D, Sequential
from numbanet.testing import check_layer
from numbanet.threads import max_threads

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOLERANCE = {"float64": 1e-10, "float32": 1e-4}

# (id, in_channels, out_channels, kernel_size, options, (height, width), batch). Between
# them they take every path of Conv2D: im2col + GEMM (normal and transposed outputs),
# the transposed im2col and the direct kernels for one input channel, 1x1 without
# im2col, the direct grouped kernels, and Winograd for 3x3 stride-1 kernels with 16 or
# more channels in whole vectors (16, 32, 48 here on any CPU and dtype).
CASES = [
    ("batch1-odd-image", 2, 3, 3, {}, (5, 7), 1),
    ("nonsquare-kernel-stride2-padding", 3, 4, (3, 2), {"stride": 2, "padding": (1, 0)},
     (9, 6), 2),
    ("stride3-padding2", 2, 5, 4, {"stride": 3, "padding": 2}, (11, 10), 2),
    ("dilation2", 3, 2, 3, {"dilation": 2, "padding": 2}, (8, 9), 2),
    ("stride-and-dilation-pairs", 2, 3, (2, 3), {"stride": (1, 2), "dilation": (2, 1)},
     (7, 8), 3),
    ("depthwise", 4, 4, 3, {"groups": 4, "padding": 1}, (6, 5), 2),
    ("depthwise-multiplier-stride2", 3, 6, 3, {"groups": 3, "stride": 2}, (7, 7), 2),
    ("groups2-dilated", 4, 6, (2, 3), {"groups": 2, "dilation": (2, 1), "padding": 1},
     (6, 7), 2),
    ("1x1", 5, 7, 1, {}, (4, 3), 2),
    ("1x1-stride2", 5, 7, 1, {"stride": 2}, (5, 4), 2),
    ("kernel-as-large-as-image", 2, 3, (5, 4), {}, (5, 4), 2),
    ("same-even-kernel-dilated", 2, 3, 4, {"padding": "same", "dilation": 2}, (7, 6), 2),
    ("valid", 2, 3, 3, {"padding": "valid"}, (5, 5), 1),
    ("no-bias", 3, 4, 3, {"bias": False}, (5, 6), 2),
    ("16-channels-relu", 3, 16, 3, {"padding": 1, "activation": "relu"}, (6, 6), 2),
    ("32-channels", 3, 32, 3, {}, (5, 5), 2),
    ("gelu", 2, 5, 3, {"activation": "gelu", "padding": 1}, (4, 5), 2),
    ("softmax-over-channels", 2, 5, 2, {"activation": "softmax"}, (4, 4), 2),
    ("one-channel-direct", 1, 6, 5, {"padding": 2, "activation": "relu"}, (20, 20), 2),
    ("one-channel-direct-tanh-dilated", 1, 9, (3, 2), {"dilation": (2, 3), "bias": False,
                                                    "activation": "tanh"}, (9, 30), 2),
    ("one-channel-strided", 1, 4, 3, {"stride": 2}, (9, 9), 2),
    ("one-channel-narrow", 1, 3, 3, {"padding": 1}, (5, 6), 2),
    ("parallel-sized", 8, 16, 3, {"padding": 1, "activation": "relu"}, (16, 16), 8),
    ("lenet-second-conv", 6, 16, 5, {"activation": "relu"}, (14, 14), 3),
    ("strided-16-channels", 3, 16, 3, {"stride": 2, "padding": 1}, (9, 9), 2),
    ("winograd-same-relu", 16, 16, 3, {"padding": "same", "activation": "relu"}, (7, 9), 2),
    ("winograd-valid-batch1", 32, 48, 3, {}, (6, 5), 1),
    ("winograd-padding2-tanh", 16, 32, 3, {"padding": 2, "activation": "tanh"}, (5, 6), 3),
    ("winograd-rows-only-no-bias", 48, 16, 3, {"padding": (1, 0), "bias": False}, (9, 7), 2),
    ("winograd-kernel-as-large-as-image", 16, 16, 3, {}, (3, 3), 2),
]


def _nchw(a: np.ndarray):
    return torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _nhwc(t) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def torch_conv(x, weight, bias, dy, *, stride=1, padding=0, dilation=1, groups=1,
               activation=None):
    """PyTorch's output, input gradient and parameter gradients, in numbanet layouts."""
    xt = _nchw(x).requires_grad_(True)
    # ours (kh, kw, in/groups, out) -> torch (out, in/groups, kh, kw)
    wt = torch.tensor(np.ascontiguousarray(weight.transpose(3, 2, 0, 1)), requires_grad=True)
    bt = None if bias is None else torch.tensor(bias, requires_grad=True)
    z = F.conv2d(xt, wt, bt, stride=stride, padding=padding, dilation=dilation, groups=groups)
    z = z.permute(0, 2, 3, 1)  # activations act on the channels axis last (softmax)
    y = z if activation is None else get_activation(activation).torch_reference(F, z)
    y.backward(torch.tensor(dy))
    grads = {"weight": wt.grad.permute(2, 3, 1, 0).numpy()}
    if bt is not None:
        grads["bias"] = bt.grad.numpy()
    return y.detach().numpy(), _nhwc(xt.grad), grads


def numbanet_run(layer, x, dy, dtype, params):
    model = Sequential([layer], input_shape=x.shape[1:], dtype=dtype, seed=0)
    for name, value in params.items():
        layer.parameter(name).value[...] = value
    y = model.forward(x)
    dx = model.backward(dy)
    grads = {p.name.split(".", 1)[1]: p.grad.copy() for p in model.parameters()}
    return y, dx, grads


def assert_close(actual, expected, rtol, what):
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def _inputs(case, dtype):
    _, cin, cout, kernel, options, (h, w), batch = case
    layer = Conv2D(cin, cout, kernel, **options)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((batch, h, w, cin)).astype(dtype)
    out_shape = layer.output_shape((h, w, cin))
    dy = rng.standard_normal((batch, *out_shape)).astype(dtype)
    kh, kw = layer.kernel_size
    weight = rng.standard_normal((kh, kw, cin // layer.groups, cout)).astype(dtype)
    params = {"weight": weight}
    if layer.bias_enabled:
        params["bias"] = rng.standard_normal(cout).astype(dtype)
    return layer, x, dy, params


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conv2d_matches_torch(case, dtype):
    layer, x, dy, params = _inputs(case, dtype)
    options = case[4]
    y, dx, grads = numbanet_run(layer, x, dy, dtype, params)
    ty, tdx, tgrads = torch_conv(
        x, params["weight"], params.get("bias"), dy,
        stride=options.get("stride", 1), padding=options.get("padding", 0),
        dilation=options.get("dilation", 1), groups=options.get("groups", 1),
        activation=options.get("activation"))
    rtol = TOLERANCE[dtype]
    assert y.shape == ty.shape
    assert_close(y, ty, rtol, "output")
    assert_close(dx, tdx, rtol, "input gradient")
    assert grads.keys() == tgrads.keys()
    for name in grads:
        assert_close(grads[name], tgrads[name], rtol, f"{name} gradient")


def test_conv2d_output_shape_follows_torch_formula():
    layer = Conv2D(3, 8, (3, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1))
    h, w = 17, 23
    expected_h = (h + 2 * 1 - 2 * (3 - 1) - 1) // 2 + 1
    expected_w = (w + 2 * 2 - 1 * (5 - 1) - 1) // 3 + 1
    assert layer.output_shape((h, w, 3)) == (expected_h, expected_w, 8)
    assert Conv2D(3, 8, 4, padding="same").output_shape((7, 9, 3)) == (7, 9, 8)


def _small_cnn(dtype="float64"):
    return Sequential(
        [Conv2D(2, 3, 3, padding=1, activation="relu"), MaxPool2D(2), Flatten(),
         Dense(3 * 3 * 3, 4)],
        input_shape=(6, 7, 2), seed=3, dtype=dtype)


def _numeric_grad(f, array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        plus = f()
        flat[i] = saved - eps
        minus = f()
        flat[i] = saved
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def test_small_cnn_gradients_match_finite_differences():
    # Conv2D(ReLU) -> MaxPool2D -> Flatten -> Dense: the pool takes the ReLU derivative
    # in its backward pass, so this also checks that fusion.
    rng = np.random.default_rng(4)
    model = _small_cnn()
    X = rng.standard_normal((3, 6, 7, 2))
    U = rng.standard_normal((3, 4))

    def loss() -> float:
        return float(np.sum(U * model.forward(X, training=False)))

    model.forward(X)
    dx = model.backward(U)
    analytic = {p.name: p.grad.copy() for p in model.parameters()}
    for p in model.parameters():
        np.testing.assert_allclose(analytic[p.name], _numeric_grad(loss, p.value),
                                   rtol=1e-5, atol=1e-7, err_msg=p.name)
    np.testing.assert_allclose(dx, _numeric_grad(loss, X), rtol=1e-5, atol=1e-7)


# Conv2D below another layer that takes its ReLU derivative in its own input-gradient
# pass: a convolution through col2im, a 1x1 convolution through the GEMM epilogue, a
# depthwise convolution through its direct kernel, and the three pooling layers.
FUSED_STACKS = {
    "conv-over-conv": lambda: [Conv2D(2, 4, 3, padding=1, activation="relu"),
                               Conv2D(4, 3, 3, stride=2)],
    "1x1-over-conv": lambda: [Conv2D(2, 4, 3, padding=1, activation="relu"),
                              Conv2D(4, 3, 1)],
    "depthwise-over-conv": lambda: [Conv2D(2, 4, 3, padding=1, activation="relu"),
                                    Conv2D(4, 4, 3, groups=4)],
    "maxpool-over-conv": lambda: [Conv2D(2, 4, 3, activation="relu"), MaxPool2D(2)],
    "avgpool-over-conv": lambda: [Conv2D(2, 4, 3, activation="relu"),
                                  nbn.AvgPool2D(3, 2, 1)],
    "globalpool-over-conv": lambda: [Conv2D(2, 4, 3, activation="relu"),
                                     nbn.GlobalAvgPool2D()],
}


def _torch_layer(layer):
    if isinstance(layer, Conv2D):
        conv = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                               stride=layer.stride, padding=layer.padding,
                               dilation=layer.dilation, groups=layer.groups,
                               bias=layer.bias_enabled).double()
        with torch.no_grad():
            conv.weight.copy_(torch.tensor(layer.weight.value.transpose(3, 2, 0, 1)))
            conv.bias.copy_(torch.tensor(layer.bias.value))
        return (torch.nn.Sequential(conv, torch.nn.ReLU()) if layer.activation == "relu"
                else conv)
    if isinstance(layer, MaxPool2D):
        return torch.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, nbn.AvgPool2D):
        return torch.nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding)
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


@pytest.mark.parametrize("name", sorted(FUSED_STACKS))
def test_fused_relu_derivative_matches_torch(name):
    rng = np.random.default_rng(5)
    model = Sequential(FUSED_STACKS[name](), input_shape=(9, 8, 2), seed=1, dtype="float64")
    x = rng.standard_normal((2, 9, 8, 2))
    y = model.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    net = torch.nn.Sequential(*[_torch_layer(layer) for layer in model.layers])
    xt = _nchw(x).requires_grad_(True)
    yt = net(xt)
    dyt = torch.tensor(dy) if dy.ndim == 2 else _nchw(dy)
    yt.backward(dyt)
    ty = yt.detach().numpy() if y.ndim == 2 else _nhwc(yt)
    assert_close(y, ty, 1e-10, "output")
    assert_close(dx, _nhwc(xt.grad), 1e-10, "input gradient")
    conv = net[0][0] if isinstance(net[0], torch.nn.Sequential) else net[0]
    assert_close(model.layers[0].weight.grad, conv.weight.grad.permute(2, 3, 1, 0).numpy(),
                 1e-10, "first weight gradient")


@pytest.mark.skipif(max_threads() < 2, reason="needs two threads")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in {
    "parallel-sized", "one-channel-direct", "depthwise", "16-channels-relu", "32-channels",
    "lenet-second-conv", "strided-16-channels", "groups2-dilated", "1x1",
    "winograd-same-relu", "winograd-padding2-tanh",
}], ids=lambda c: c[0])
def test_conv2d_is_bit_identical_for_1_and_2_threads(case, dtype):
    _, cin, cout, kernel, options, (h, w), _ = case
    big = (case[0], cin, cout, kernel, options, (max(h, 20), max(w, 20)), 16)
    results = []
    for threads in (1, 2):
        nbn.set_num_threads(threads)
        try:
            layer, x, dy, params = _inputs(big, dtype)
            y, dx, grads = numbanet_run(layer, x, dy, dtype, params)
        finally:
            nbn.set_num_threads(max_threads())
        results.append((y, dx, grads))
    (y1, dx1, g1), (y2, dx2, g2) = results
    assert np.array_equal(y1, y2)
    assert np.array_equal(dx1, dx2)
    for name in g1:
        assert np.array_equal(g1[name], g2[name]), name


CONFORMANCE = [
    ("relu", lambda: Conv2D(3, 4, 3, padding=1, activation="relu"), (6, 5, 3), 4),
    ("16-channels-parallel", lambda: Conv2D(8, 16, 3, padding=1, activation="relu"),
     (16, 16, 8), 16),
    ("1x1", lambda: Conv2D(8, 16, 1, activation="tanh"), (6, 5, 8), 8),
    ("depthwise", lambda: Conv2D(8, 8, 3, padding=1, groups=8), (16, 16, 8), 16),
    ("groups2", lambda: Conv2D(4, 6, (2, 3), stride=2, groups=2, activation="tanh"),
     (9, 8, 4), 8),
    ("one-channel", lambda: Conv2D(1, 6, 5, padding=2, activation="relu"), (28, 28, 1), 16),
    ("one-channel-strided", lambda: Conv2D(1, 4, 3, stride=2), (9, 11, 1), 4),
    ("winograd", lambda: Conv2D(16, 32, 3, padding=1, activation="relu"), (9, 10, 16), 8),
]


@pytest.mark.parametrize(("factory", "shape", "batch"), [c[1:] for c in CONFORMANCE],
                         ids=[c[0] for c in CONFORMANCE])
def test_conv2d_conforms(factory, shape, batch):
    check_layer(factory, shape, batch=batch)


def test_conv2d_config_round_trips_and_names_parameters():
    layer = Conv2D(3, 8, (3, 5), stride=2, padding=(1, 2), bias=False, activation="relu")
    config = layer.get_config()
    assert config == {"type": "Conv2D", "in_channels": 3, "out_channels": 8,
                      "kernel_size": [3, 5], "stride": [2, 2], "padding": [1, 2],
                      "dilation": [1, 1], "groups": 1, "bias": False, "activation": "relu"}
    assert nbn.nn.layer_from_config(config).get_config() == config
    model = Sequential([Conv2D(3, 8, 3), Conv2D(8, 4, 1, bias=False)], input_shape=(5, 5, 3))
    assert [p.name for p in model.parameters()] == ["0.weight", "0.bias", "1.weight"]
    assert model.layers[0].weight.value.shape == (3, 3, 3, 8)
    assert model.layers[0].parameter_roles() == {"weight": "weight", "bias": "bias"}


def test_conv2d_trains_and_saves(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 8, 8, 1)).astype(np.float32)
    y = (X[:, :4].sum(axis=(1, 2, 3)) > X[:, 4:].sum(axis=(1, 2, 3))).astype(np.int64)
    model = Sequential([Conv2D(1, 4, 3, padding="same", activation="relu"), MaxPool2D(2),
                        Flatten(), Dense(64, 2)], input_shape=(8, 8, 1), seed=0)
    model.compile(loss="cross_entropy", optimizer=nbn.get_optimizer("adam", lr=1e-2))
    first = model.train_step(X, y)
    for _ in range(30):
        last = model.train_step(X, y)
    assert last < first
    model.save(tmp_path / "cnn.npz")
    again = nbn.load(tmp_path / "cnn.npz")
    np.testing.assert_array_equal(again.predict(X), model.predict(X))


# -- bad input: raised in the constructor or by output_shape (before any kernel) --------


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"stride": 0}, ValueError, r"Conv2D: stride must be >= 1, got 0"),
    ({"stride": (1, -2)}, ValueError, r"Conv2D: stride\[1\] must be >= 1, got -2"),
    ({"stride": 1.5}, TypeError, r"Conv2D: stride must be an int, got float 1.5"),
    ({"kernel_size": 0}, ValueError, r"kernel_size must be >= 1"),
    ({"kernel_size": (3, 3, 3)}, ValueError, r"kernel_size must be an int or a pair"),
    ({"padding": -1}, ValueError, r"padding must be >= 0, got -1"),
    ({"padding": "full"}, ValueError, r"padding must be an int, a pair, 'valid' or 'same', "
                                      r"got 'full'"),
    ({"padding": "same", "stride": 2}, ValueError, r"padding='same' needs stride 1"),
    ({"dilation": 0}, ValueError, r"dilation must be >= 1"),
    ({"groups": 2}, ValueError, r"groups \(2\) must divide in_channels \(3\) and "
                                r"out_channels \(8\)"),
    ({"bias": 1}, TypeError, r"Conv2D: bias must be a bool"),
    ({"activation": "relux"}, ValueError, r"relux"),
])
def test_conv2d_rejects_bad_arguments(kwargs, error, match):
    args = {"in_channels": 3, "out_channels": 8, "kernel_size": 3, **kwargs}
    with pytest.raises(error, match=match):
        Conv2D(**args)


@pytest.mark.parametrize(("layer", "shape", "match"), [
    (Conv2D(3, 8, 3), (8, 8),
     r"layers\[0\] \(Conv2D\(3, 8, kernel_size=3\)\): Conv2D\(3, 8, kernel_size=3\) expects "
     r"channels-last images, samples of shape \(height, width, 3\), but receives samples of "
     r"shape \(8, 8\); add a channel axis"),
    (Conv2D(3, 8, 3), (64,), r"receives samples of shape \(64,\); reshape flat samples"),
    (Conv2D(3, 8, 3), (8, 8, 1), r"expects 3 channels on the last axis.*receives samples of "
                                 r"shape \(8, 8, 1\); set in_channels=1"),
    (Conv2D(3, 8, 3), (3, 8, 8), r"receives samples of shape \(3, 8, 8\); transpose "
                                 r"channels-first data to channels-last"),
    (Conv2D(1, 4, 7), (5, 5, 1), r"the kernel \(7 x 7\) is larger than the padded input "
                                 r"\(5 x 5\) of samples of shape \(5, 5, 1\); use a smaller "
                                 r"kernel_size"),
    (Conv2D(1, 4, 3, dilation=3), (5, 5, 1),
     r"the dilated kernel \(7 x 7\) is larger than the padded input \(5 x 5\)"),
])
def test_conv2d_rejects_bad_input_shapes_before_any_kernel(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        Sequential([layer], input_shape=shape)
