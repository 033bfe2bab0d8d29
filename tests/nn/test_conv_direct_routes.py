"""Conv2D against PyTorch on the routes resnet-small takes (issue 13): Winograd for its
3x3 stride-1 convolutions (16, 32 and 64 channels), direct kernels up to 32 channels
otherwise (forward, weight and input gradient), GEMM above, and the ReLU of an
Activation layer below fused into the input gradient; bit-identical across threads."""

import numpy as np
import pytest

import numbanet as nbn
from numbanet.kernels.conv import DIRECT_MAX_CHANNELS

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOLERANCE = {"float32": 2e-4, "float64": 1e-10}

# (in_channels, out_channels, stride, (height, width))
CASES = [(16, 16, 1, (8, 9)), (32, 32, 1, (6, 6)), (24, 20, 1, (5, 7)), (32, 33, 1, (6, 5)),
         (33, 32, 1, (6, 6)), (16, 32, 2, (8, 8)), (64, 64, 1, (4, 4))]


def _run(cin, cout, stride, hw, dtype, threads=None):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, *hw, cin)).astype(dtype)
    conv = nbn.Conv2D(cin, cout, 3, stride=stride, padding=1, bias=False)
    model = nbn.Sequential([nbn.Activation("relu"), conv], input_shape=x.shape[1:], seed=0,
                           dtype=dtype)
    w = rng.standard_normal(conv.weight.value.shape).astype(dtype)
    conv.weight.value[...] = w
    old = nbn.get_num_threads()
    if threads is not None:
        nbn.set_num_threads(threads)
    try:
        y = model.forward(x).copy()
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = model.backward(dy).copy()
    finally:
        nbn.set_num_threads(old)
    return x, w, y, dy, dx, conv.weight.grad.copy()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-s{c[2]}" for c in CASES])
def test_conv_routes_match_torch(case, dtype):
    x, w, y, dy, dx, dw = _run(*case, dtype)
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    wt = torch.tensor(w.transpose(3, 2, 0, 1).copy(), requires_grad=True)
    yt = F.conv2d(torch.relu(xt), wt, stride=case[2], padding=1)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    for ours, theirs in ((y, yt.detach().permute(0, 2, 3, 1)),
                         (dx, xt.grad.permute(0, 2, 3, 1)),
                         (dw, wt.grad.permute(2, 3, 1, 0))):
        ref = theirs.numpy()
        scale = float(np.abs(ref).max())
        np.testing.assert_allclose(ours, ref, rtol=TOLERANCE[dtype],
                                   atol=TOLERANCE[dtype] * scale)


def test_direct_kernels_take_up_to_32_channels():
    # 20 input channels are not whole vectors at any SIMD width (8 or 16 float32), so
    # Winograd leaves this one to them.
    assert DIRECT_MAX_CHANNELS == 32
    conv = nbn.Conv2D(20, 32, 3, padding=1, bias=False)
    nbn.Sequential([conv], input_shape=(16, 16, 20), dtype="float32").forward(
        np.ones((2, 16, 16, 20), np.float32))
    plan = conv._plan_for((2, 16, 16, 20))
    assert plan.direct and plan.gx is not None and not plan.winograd


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("channels", [16, 32, 64])
def test_resnet_3x3_convolutions_take_winograd(channels, dtype):
    conv = nbn.Conv2D(channels, channels, 3, padding=1, bias=False)
    nbn.Sequential([conv], input_shape=(8, 8, channels), dtype=dtype)
    plan = conv._plan_for((2, 8, 8, channels))
    assert plan.winograd and not plan.direct and plan.gx is None


@pytest.mark.parametrize("case", [CASES[1], CASES[3]])
def test_conv_routes_are_bit_identical_across_threads(case):
    one = _run(*case, "float32", threads=1)
    two = _run(*case, "float32", threads=2)
    for a, b in zip(one[2:], two[2:], strict=True):
        np.testing.assert_array_equal(a, b)
