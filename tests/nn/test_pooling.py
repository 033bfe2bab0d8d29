"""MaxPool2D, AvgPool2D, GlobalAvgPool2D and Flatten against PyTorch, across threads,
through the conformance check, and with bad input."""

from __future__ import annotations

import numpy as np
import pytest

import numbanet as nbn
from numbanet.nn import AvgPool2D, Flatten, GlobalAvgPool2D, MaxPool2D, Sequential
from numbanet.testing import check_layer
from numbanet.threads import max_threads

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOLERANCE = {"float64": 1e-10, "float32": 1e-4}

# (id, kernel_size, stride, padding, (height, width, channels), batch)
WINDOWS = [
    ("2x2-batch1", 2, None, 0, (6, 8, 3), 1),
    ("odd-image", 2, None, 0, (7, 9, 2), 2),
    ("nonsquare-kernel-stride-pair", (3, 2), (2, 1), 0, (7, 6, 2), 2),
    ("stride3", 3, 3, 0, (11, 10, 4), 2),
    ("overlapping-padded", 3, 2, 1, (9, 8, 3), 2),
    ("padding-pair", (4, 2), (2, 3), (2, 1), (9, 10, 2), 2),
    ("kernel-as-large-as-image", (5, 4), None, 0, (5, 4, 3), 2),
    ("parallel-sized", 2, None, 0, (28, 28, 8), 16),
]


def _nchw(a):
    return torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


def run(layer, x, dy, dtype):
    model = Sequential([layer], input_shape=x.shape[1:], dtype=dtype, seed=0)
    y = model.forward(x)
    return y, model.backward(dy)


def run_unvalidated(layer, x, dy):
    """The layer's own forward/backward: the model refuses NaN and inf inputs."""
    Sequential([layer], input_shape=x.shape[1:], dtype=x.dtype, seed=0)
    y = layer.forward(x, True).copy()
    return y, layer.backward(dy).copy()


def torch_pool(fn, x, dy, **kwargs):
    xt = _nchw(x).requires_grad_(True)
    yt = fn(xt, **kwargs)
    yt.backward(torch.tensor(dy) if dy.ndim == 2 else _nchw(dy))
    return (yt.detach().numpy() if dy.ndim == 2 else _nhwc(yt)), _nhwc(xt.grad)


def assert_close(actual, expected, rtol, what):
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def _data(layer, shape, batch, dtype, seed=3, ties=False):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: many windows hold their maximum twice
        x = rng.integers(-2, 3, (batch, *shape)).astype(dtype)
    else:
        x = rng.standard_normal((batch, *shape)).astype(dtype)
    dy = rng.standard_normal((batch, *layer.output_shape(shape))).astype(dtype)
    return x, dy


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("window", WINDOWS, ids=[w[0] for w in WINDOWS])
def test_max_pool_matches_torch(window, ties, dtype):
    _, kernel, stride, padding, shape, batch = window
    layer = MaxPool2D(kernel, stride, padding)
    x, dy = _data(layer, shape, batch, dtype, ties=ties)
    y, dx = run(layer, x, dy, dtype)
    ty, tdx = torch_pool(F.max_pool2d, x, dy, kernel_size=kernel, stride=stride,
                         padding=padding)
    # Maxima are copies, and ties go to the first position as in torch: exact.
    np.testing.assert_array_equal(y, ty)
    assert_close(dx, tdx, TOLERANCE[dtype], "input gradient")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("window", WINDOWS, ids=[w[0] for w in WINDOWS])
def test_avg_pool_matches_torch(window, dtype):
    _, kernel, stride, padding, shape, batch = window
    layer = AvgPool2D(kernel, stride, padding)
    x, dy = _data(layer, shape, batch, dtype)
    y, dx = run(layer, x, dy, dtype)
    ty, tdx = torch_pool(F.avg_pool2d, x, dy, kernel_size=kernel, stride=stride,
                         padding=padding)  # count_include_pad=True is torch's default
    assert_close(y, ty, TOLERANCE[dtype], "output")
    assert_close(dx, tdx, TOLERANCE[dtype], "input gradient")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("shape", "batch"), [((5, 7, 3), 1), ((1, 1, 4), 2),
                                             ((16, 16, 32), 16)])
def test_global_avg_pool_matches_torch(shape, batch, dtype):
    layer = GlobalAvgPool2D()
    x, dy = _data(layer, shape, batch, dtype)
    y, dx = run(layer, x, dy, dtype)

    def global_pool(t):
        return F.adaptive_avg_pool2d(t, 1).flatten(1)

    ty, tdx = torch_pool(global_pool, x, dy)
    assert_close(y, ty, TOLERANCE[dtype], "output")
    assert_close(dx, tdx, TOLERANCE[dtype], "input gradient")


def test_max_pool_propagates_nan_like_torch():
    x = np.arange(2 * 4 * 4 * 2, dtype=np.float64).reshape(2, 4, 4, 2)
    x[0, 1, 1, 0] = np.nan
    x[0, 2, 2, 1] = x[0, 3, 2, 1] = np.nan  # two in one window: the last one wins
    x[1, 2, 3, 1] = -np.inf
    y, dx = run_unvalidated(MaxPool2D(2), x, np.ones((2, 2, 2, 2)))
    ty, tdx = torch_pool(F.max_pool2d, x, np.ones((2, 2, 2, 2)), kernel_size=2)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(dx, tdx)
    assert np.isnan(y[0, 0, 0, 0]) and dx[0, 3, 2, 1] == 1 and dx[0, 2, 2, 1] == 0


def test_max_pool_all_negative_infinity_window_sends_gradient_to_first_position():
    x = np.full((1, 2, 2, 1), -np.inf)
    _, dx = run_unvalidated(MaxPool2D(2), x, np.ones((1, 1, 1, 1)))
    _, tdx = torch_pool(F.max_pool2d, x, np.ones((1, 1, 1, 1)), kernel_size=2)
    np.testing.assert_array_equal(dx, tdx)


def test_flatten_is_c_order_and_its_gradient_reshapes_back():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    model = Sequential([Flatten()], input_shape=(3, 4, 5), dtype="float64")
    y = model.forward(x)
    np.testing.assert_array_equal(y, x.reshape(2, 60))
    dy = np.arange(120.0).reshape(2, 60)
    np.testing.assert_array_equal(model.backward(dy), dy.reshape(2, 3, 4, 5))
    assert Flatten().output_shape((3, 4, 5)) == (60,)


@pytest.mark.skipif(max_threads() < 2, reason="needs two threads")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make", [lambda: MaxPool2D(2), lambda: MaxPool2D(3, 2, 1),
                                  lambda: AvgPool2D(3, 2, 1), GlobalAvgPool2D],
                         ids=["max", "max-overlapping", "avg", "global"])
def test_pooling_is_bit_identical_for_1_and_2_threads(make, dtype):
    shape = (28, 28, 8)
    results = []
    for threads in (1, 2):
        nbn.set_num_threads(threads)
        try:
            layer = make()
            x, dy = _data(layer, shape, 16, dtype)
            results.append(run(layer, x, dy, dtype))
        finally:
            nbn.set_num_threads(max_threads())
    for a, b in zip(results[0], results[1], strict=True):
        assert np.array_equal(a, b)


CONFORMANCE = [
    ("max", lambda: MaxPool2D(2), (16, 16, 8), 32),
    ("max-overlapping", lambda: MaxPool2D(3, 2, 1), (9, 8, 4), 8),
    ("avg", lambda: AvgPool2D(3, 2, 1), (16, 16, 8), 32),
    ("global", lambda: GlobalAvgPool2D(), (16, 16, 8), 32),
    ("flatten", lambda: Flatten(), (4, 3, 2), 8),
]


@pytest.mark.parametrize(("factory", "shape", "batch"), [c[1:] for c in CONFORMANCE],
                         ids=[c[0] for c in CONFORMANCE])
def test_pooling_layers_conform(factory, shape, batch):
    check_layer(factory, shape, batch=batch)


def test_pooling_configs_round_trip():
    for layer in (MaxPool2D(3, 2, 1), AvgPool2D((2, 3)), GlobalAvgPool2D(), Flatten()):
        config = layer.get_config()
        again = nbn.nn.layer_from_config(config)
        assert type(again) is type(layer) and again.get_config() == config
    assert MaxPool2D(2).get_config() == {"type": "MaxPool2D", "kernel_size": [2, 2],
                                         "stride": [2, 2], "padding": [0, 0]}


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda: MaxPool2D(0), ValueError, r"MaxPool2D: kernel_size must be >= 1, got 0"),
    (lambda: MaxPool2D(2, stride=0), ValueError, r"MaxPool2D: stride must be >= 1, got 0"),
    (lambda: AvgPool2D(2, stride=(1, -1)), ValueError,
     r"AvgPool2D: stride\[1\] must be >= 1, got -1"),
    (lambda: MaxPool2D(2, padding=-1), ValueError, r"padding must be >= 0"),
    (lambda: MaxPool2D(2, padding=2), ValueError,
     r"MaxPool2D: padding \(2, 2\) must be at most half the kernel size \(2, 2\)"),
    (lambda: AvgPool2D("2"), TypeError, r"kernel_size must be an int or a pair"),
])
def test_pooling_rejects_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(("layer", "shape", "match"), [
    (MaxPool2D(2), (8, 8), r"MaxPool2D\(2\) expects channels-last images, samples of shape "
                           r"\(height, width, channels\), but receives samples of shape "
                           r"\(8, 8\); add a channel axis"),
    (AvgPool2D(3), (64,), r"reshape flat samples to \(N, height, width, channels\)"),
    (MaxPool2D(5), (4, 6, 1), r"the window \(5 x 5\) is larger than the padded input "
                              r"\(4 x 6\) of samples of shape \(4, 6, 1\)"),
    (GlobalAvgPool2D(), (8, 8), r"GlobalAvgPool2D\(\) expects channels-last images"),
])
def test_pooling_rejects_bad_input_shapes(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        Sequential([layer], input_shape=shape)
