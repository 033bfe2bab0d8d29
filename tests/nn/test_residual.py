"""Residual: y = x + f(x) against PyTorch, naming, nesting, fusion inside, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import numbanet as nbn
from numbanet.nn import layer_from_config
from numbanet.nn.module import fusion_partners
from numbanet.testing import check_layer

RTOL = {"float64": 1e-10, "float32": 1e-4}


def close(ours, theirs, dtype, what):
    theirs = np.asarray(theirs, dtype=np.float64)
    rtol = RTOL[dtype]
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.abs(theirs).max(),
                               err_msg=what)


def block_model(dtype, seed=0):
    """Dense -> Residual([Dense+ReLU, BatchNorm, Dense]) -> ReLU -> Dense."""
    return nbn.Sequential([
        nbn.Dense(5, 6),
        nbn.Residual([nbn.Dense(6, 6, activation="relu"), nbn.Dense(6, 6, activation="relu"),
                      nbn.BatchNorm(6), nbn.Dense(6, 6)]),
        nbn.Activation("relu"),
        nbn.Dense(6, 3),
    ], seed=seed, dtype=dtype)


def torch_block(torch, model, dtype):
    tdtype = getattr(torch, dtype)

    def linear(layer):
        lin = torch.nn.Linear(layer.in_features, layer.out_features).to(tdtype)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(layer.weight.value.T))
            lin.bias.copy_(torch.tensor(layer.bias.value))
        return lin

    first, block, _, last = model.layers
    inner = block.layers
    bn = torch.nn.BatchNorm1d(6).to(tdtype)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(inner[2].parameter("weight").value))
        bn.bias.copy_(torch.tensor(inner[2].parameter("bias").value))
    f = torch.nn.Sequential(linear(inner[0]), torch.nn.ReLU(), linear(inner[1]),
                            torch.nn.ReLU(), bn, linear(inner[3]))
    lin0, lin3 = linear(first), linear(last)

    def forward(x):
        h = lin0(x)
        return lin3(torch.relu(h + f(h)))

    modules = [lin0, f[0], f[2], bn, f[5], lin3]
    return forward, modules


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [7, 3])
def test_residual_block_matches_torch(batch, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(batch)
    model = block_model(dtype)
    for p in model.parameters():  # beta and gamma away from 0 and 1
        if p.role == "norm":
            p.value[...] = rng.normal(size=p.value.shape) + (p.name.endswith("weight"))
    x = rng.normal(size=(batch, 5)).astype(dtype)
    dy = rng.normal(size=(batch, 3)).astype(dtype)
    out = model.forward(x, training=True)
    dx = model.backward(dy)

    forward, modules = torch_block(torch, model, dtype)
    tx = torch.tensor(x, requires_grad=True)
    t_out = forward(tx)
    t_out.backward(torch.tensor(dy))
    close(out, t_out.detach().numpy(), dtype, "output")
    close(dx, tx.grad.numpy(), dtype, "input gradient")
    grads = {p.name: p.grad for p in model.parameters()}
    names = ["0", "1.0", "1.1", "1.2", "1.3", "3"]
    for name, module in zip(names, modules, strict=True):
        transpose = isinstance(module, torch.nn.Linear)
        w = module.weight.grad.numpy()
        close(grads[f"{name}.weight"], w.T if transpose else w, dtype, f"{name}.weight grad")
        close(grads[f"{name}.bias"], module.bias.grad.numpy(), dtype, f"{name}.bias grad")
    bn = modules[3]
    close(model.buffers()["1.2.running_mean"], bn.running_mean.numpy(), dtype, "running_mean")
    close(model.buffers()["1.2.running_var"], bn.running_var.numpy(), dtype, "running_var")


def test_inner_names_roles_and_buffers_are_nested():
    model = block_model("float32")
    names = [p.name for p in model.parameters()]
    assert names == ["0.weight", "0.bias", "1.0.weight", "1.0.bias", "1.1.weight", "1.1.bias",
                     "1.2.weight", "1.2.bias", "1.3.weight", "1.3.bias", "3.weight", "3.bias"]
    roles = {p.name: p.role for p in model.parameters()}
    assert roles["1.0.weight"] == "weight" and roles["1.0.bias"] == "bias"
    assert roles["1.2.weight"] == roles["1.2.bias"] == "norm"
    assert sorted(model.buffers()) == ["1.2.running_mean", "1.2.running_var"]
    block = model.layers[1]
    assert [n for n, _ in block.parameter_shapes()][:2] == ["0.weight", "0.bias"]
    # Each inner layer holds views of its own slice of the model's flat buffers.
    inner = block.layers[3].parameter("weight")
    assert np.shares_memory(inner.value, model.flat_parameters)
    assert inner is block.parameter("3.weight")
    assert block.layers[2].buffer("running_var") is not None
    np.testing.assert_array_equal(block.layers[2].buffer("running_var"), 1)


def test_inner_layers_fuse_activation_derivatives_like_sequential():
    layers = [nbn.Dense(4, 4, activation="relu"), nbn.Dense(4, 4, activation="relu"),
              nbn.BatchNorm(4), nbn.Dense(4, 4)]
    block = nbn.Residual(layers)
    # Dense(relu) under Dense fuses; nothing fuses across BatchNorm or into the first layer.
    assert fusion_partners(layers) == [None, layers[0], None, None]
    assert block._partners == [None, layers[0], None, None]


def _resnet_like(dtype, fused, seed=0):
    """Conv + BN + ReLU, a post-activation residual block + ReLU, pooling, Dense. With
    ``fused=False`` a Dropout(0.0) (the identity) sits before every ReLU, so no ReLU is
    right above the layer that could apply it: the same values, each ReLU in its own
    pass."""
    def relu():
        return [nbn.Activation("relu")] if fused else [nbn.Dropout(0.0), nbn.Activation("relu")]

    conv = lambda cin, cout: nbn.Conv2D(cin, cout, 3, padding=1, bias=False)  # noqa: E731
    block = nbn.Residual([conv(8, 8), nbn.BatchNorm(8), *relu(), conv(8, 8),
                          nbn.BatchNorm(8)])
    return nbn.Sequential([conv(3, 8), nbn.BatchNorm(8), *relu(), block, *relu(),
                           nbn.GlobalAvgPool2D(), nbn.Dense(8, 4)],
                          input_shape=(16, 15, 3), seed=seed, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 15, 16, 17, 1000, 65536, 3 * 16384 + 70001])
def test_residual_sums_equal_numpy_on_any_thread_count(size, dtype):
    """The block's sum kernel: NumPy's sum and the ReLU layer's rule (NaN passes, as
    numpy.maximum) on every size around the vector width and the chunks, serial and
    parallel, 1 and 2 threads."""
    from numbanet.kernels.residual import add_into

    rng = np.random.default_rng(size)
    a, b = rng.normal(size=size).astype(dtype), rng.normal(size=size).astype(dtype)
    a[::97] = np.nan
    want = a + b
    for relu in (False, True):
        expected = np.maximum(want, 0) if relu else want
        outs = []
        previous = nbn.get_num_threads()
        try:
            for threads in (1, 2):
                nbn.set_num_threads(threads)
                out = np.empty_like(a)
                add_into(a, b, out, relu)
                outs.append(out)
        finally:
            nbn.set_num_threads(previous)
        np.testing.assert_array_equal(outs[0], expected)
        np.testing.assert_array_equal(outs[1], expected)
    into_a = a.copy()
    add_into(into_a, b, into_a, True)  # out may be an input
    np.testing.assert_array_equal(into_a, np.maximum(want, 0))


def test_relus_above_batchnorm_and_residual_are_applied_by_the_layer_below():
    model = _resnet_like("float32", fused=True)
    block = model.layers[3]
    assert [layer.input_rectified for layer in model.layers] == [
        False, False, True, False, True, False, False]
    assert [layer.input_rectified for layer in block.layers] == [
        False, False, True, False, False]
    # The ReLU layer hands on the array its producer wrote: no buffer, no pass of its own.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 16, 15, 3)).astype(np.float32)
    h = model.layers[1].forward(model.layers[0].forward(x, True), True)
    assert model.layers[2].forward(h, True) is h
    assert (h >= 0).all() and (h == 0).any()
    # Unfused: the same layers with a Dropout(0.0) in between take their own pass.
    plain = _resnet_like("float32", fused=False)
    assert not any(layer.input_rectified for layer in plain.layers)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fused_relus_give_the_same_bits_as_their_own_passes(dtype, threads):
    """Outputs, input gradient, every parameter gradient and the running statistics
    after two training steps, fused against unfused (batch 37: the residual sums and
    the batch norms of 37 x 16 x 15 x 8 values take their parallel kernels)."""
    from numbanet.kernels.norm import PARALLEL_MIN as K_NORM_PARALLEL_MIN
    from numbanet.kernels.residual import PARALLEL_MIN

    rng = np.random.default_rng(1)
    x = rng.normal(size=(37, 16, 15, 3)).astype(dtype)
    y = rng.integers(0, 4, size=37)
    assert 37 * 16 * 15 * 8 >= max(PARALLEL_MIN, K_NORM_PARALLEL_MIN)
    results = []
    previous = nbn.get_num_threads()
    nbn.set_num_threads(threads)
    try:
        for fused in (True, False):
            model = _resnet_like(dtype, fused)
            model.compile("cross_entropy", nbn.get_optimizer("sgd", lr=0.1))
            for _ in range(2):
                model.train_step(x, y)
            out = model.forward(x, training=True)
            dx = model.backward(np.ones_like(out))
            results.append([out, dx, model.flat_gradients.copy(), model.flat_parameters.copy(),
                            *(layer.buffer("running_var").copy() for layer in
                              [model.layers[1], model.layers[-4 if fused else -5].layers[1]])])
    finally:
        nbn.set_num_threads(previous)
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_nested_residual_blocks_name_three_levels_and_round_trip_their_config():
    inner = nbn.Residual([nbn.Dense(4, 4, activation="tanh"), nbn.LayerNorm(4)])
    outer = nbn.Residual([nbn.Dense(4, 4), inner, nbn.Dropout(0.2)])
    model = nbn.Sequential([outer], seed=0, dtype="float64")
    assert [p.name for p in model.parameters()] == [
        "0.0.weight", "0.0.bias", "0.1.0.weight", "0.1.0.bias", "0.1.1.weight", "0.1.1.bias"]
    config = outer.get_config()
    assert config == {"type": "Residual", "layers": [
        {"type": "Dense", "in_features": 4, "out_features": 4, "activation": None},
        {"type": "Residual", "layers": [
            {"type": "Dense", "in_features": 4, "out_features": 4, "activation": "tanh"},
            {"type": "LayerNorm", "normalized_shape": 4, "eps": 1e-5,
             "elementwise_affine": True}]},
        {"type": "Dropout", "rate": 0.2}]}
    rebuilt = layer_from_config(config)
    assert isinstance(rebuilt, nbn.Residual) and rebuilt.get_config() == config
    # The Dropout inside received the model's generator: training mode runs.
    assert model.forward(np.ones((3, 4)), training=True).shape == (3, 4)
    assert repr(outer) == ("Residual([Dense(4, 4), Residual([Dense(4, 4, activation='tanh'), "
                           "LayerNorm(4)]), Dropout(0.2)])")


def test_finite_differences_through_nested_blocks():
    from numbanet.testing import gradcheck

    rng = np.random.default_rng(1)
    model = nbn.Sequential([
        nbn.Residual([nbn.Dense(4, 4, activation="tanh"),
                      nbn.Residual([nbn.Dense(4, 4, activation="relu"), nbn.Dense(4, 4)]),
                      nbn.BatchNorm(4)]),
        nbn.Dense(4, 2),
    ], seed=2, dtype="float64")
    X = rng.normal(size=(6, 4)) + 0.1
    U = rng.normal(size=(6, 2))

    def loss(_=None):
        return float(np.sum(model.forward(X, training=True) * U))

    loss()
    dx = model.backward(U)
    grads = {p.name: p.grad.copy() for p in model.parameters()}
    gradcheck(lambda x: float(np.sum(model.forward(x, training=True) * U)), X, dx,
              rtol=1e-6, atol=1e-8, label="input gradient")
    for p in model.parameters():
        gradcheck(loss, p.value, grads[p.name], rtol=1e-6, atol=1e-8, label=p.name)


def test_summary_shows_the_block_and_counts_its_parameters():
    lines = []
    block_model("float32").summary(print_fn=lines.append)
    row = next(line for line in lines if line.lstrip().startswith("1 "))
    assert "Residual([Dense(6, 6, activation='relu')" in row
    assert row.rstrip().endswith(" 138")  # three Dense(6, 6) and a BatchNorm(6): 3 x 42 + 12


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda: nbn.Residual([]), ValueError, "layers must not be empty"),
    (lambda: nbn.Residual(nbn.Dense(3, 3)), TypeError, "layers must be a list of layers"),
    (lambda: nbn.Residual([nbn.Dense(3, 3), "relu"]), TypeError,
     r"layers\[1\] must be a numbanet layer \(or its config dict\), got str"),
    (lambda: nbn.Residual([nbn.Embedding(5, 3)]), ValueError,
     r"layers\[0\] \(Embedding\(5, 3\)\) takes integer indices"),
    (lambda: nbn.Residual([{"type": "NoSuchLayer"}]), ValueError, "NoSuchLayer"),
])
def test_bad_layers_are_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_the_same_layer_twice_is_refused():
    dense = nbn.Dense(3, 3)
    with pytest.raises(ValueError, match="the same layer object appears twice"):
        nbn.Residual([dense, dense])


def test_mismatched_shapes_are_refused_before_any_kernel():
    with pytest.raises(ValueError, match=(
            r"layers\[1\] \(Residual\(\[Dense\(4, 5\)\]\)\): Residual\(\[Dense\(4, 5\)\]\) adds "
            r"its input of shape \(4,\) to the output of its layers, which have shape \(5,\); "
            r"make the layers map \(4,\) back to \(4,\) \(the last one should produce 4 "
            r"features\), or put the shape-changing layer outside the block")):
        nbn.Sequential([nbn.Dense(3, 4), nbn.Residual([nbn.Dense(4, 5)])])
    with pytest.raises(ValueError, match=r"Residual layers\[1\] \(Dense\(6, 4\)\): Dense\(6, 4\) "
                                         r"expects samples of shape \(6,\) but receives \(5,\)"):
        nbn.Sequential([nbn.Residual([nbn.Dense(4, 5), nbn.Dense(6, 4)])])
    # Shapes known only from data: refused at the first call, before any layer runs.
    model = nbn.Sequential([nbn.Residual([nbn.LayerNorm(3), nbn.Flatten()])])
    with pytest.raises(ValueError, match=r"which have shape \(6,\)"):
        model.forward(np.ones((2, 2, 3)))


CHECK_CASES = [
    ("dense-relu-dense", lambda: nbn.Residual([nbn.Dense(16, 16, activation="relu"),
                                               nbn.Dense(16, 16)]), (16,), {"batch": 64}),
    ("with-batch-norm", lambda: nbn.Residual([
        nbn.Dense(64, 64, activation="relu"), nbn.BatchNorm(64, momentum=1.0),
        nbn.Dense(64, 64, activation="relu"), nbn.Dense(64, 64)]), (64,), {"batch": 1024}),
    # No Dropout beside BatchNorm here: check_layer compares float32 and float64 models'
    # inference outputs, which read running statistics that different masks moved.
    ("norms-on-sequences", lambda: nbn.Residual([nbn.LayerNorm(5), nbn.Activation("tanh"),
                                                 nbn.BatchNorm(5, momentum=1.0)]), (3, 5),
     {"batch": 8}),
]


@pytest.mark.parametrize(("factory", "shape", "options"), [c[1:] for c in CHECK_CASES],
                         ids=[c[0] for c in CHECK_CASES])
def test_check_layer(factory, shape, options):
    check_layer(factory, shape, **options)
