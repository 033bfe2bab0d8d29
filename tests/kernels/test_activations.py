"""Activation kernels against NumPy (float64 truth), finite differences, PyTorch and
properties that hold for any input, across dtypes, odd shapes and thread counts.

The parametrization and the NumPy / PyTorch references come from the one table,
``activations.ACTIVATION_TABLE``: a new row is tested here without editing this file."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numbanet._jit import kernel
from numbanet.kernels import activations as A

DTYPES = [np.float32, np.float64]
SPECS = {spec.name: spec for spec in A.ACTIVATION_TABLE}
ELEMENTWISE = [spec.name for spec in A.ACTIVATION_TABLE if spec.kind == "elementwise"]
ROWWISE = [spec.name for spec in A.ACTIVATION_TABLE if spec.kind == "rowwise"]
# 1 element, primes, a 3-D shape, and one shape above every parallel threshold.
SHAPES = [(1,), (7,), (1031,), (3, 5, 7), (257, 263)]
ROW_SHAPES = [(1, 1), (1, 7), (13, 11), (97, 89)]
assert 257 * 263 >= max(SPECS[n].forward_parallel_min for n in ELEMENTWISE)
assert 97 * 89 >= max(SPECS[n].forward_parallel_min for n in ROWWISE)

# Written out here, not imported: the kink test checks the kernels' constants.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _reference(name, x):
    """float64 forward truth from the table row."""
    return SPECS[name].reference(x)


def _reference_dx(name, x, dy):
    """float64 ``dx`` truth (the vector-Jacobian product) from the table row."""
    return SPECS[name].reference_backward(x, dy)


def _tol(dtype):
    return {"rtol": 2e-5, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-13}


def _inputs(shape, dtype, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy


def _run(name, x, dy):
    act = A.get_activation(name)
    y = np.empty_like(x)
    act.forward(x, y)
    dx = np.empty_like(x)
    act.backward(x, y, dy, dx)
    return y, dx


# --------------------------------------------------------------------------- NumPy truth


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_forward_and_backward_match_numpy(name, dtype, shape):
    x, dy = _inputs(shape, dtype)
    y, dx = _run(name, x, dy)
    x64 = x.astype(np.float64)
    assert y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(y, _reference(name, x64), **_tol(dtype))
    expected_dx = _reference_dx(name, x64, dy.astype(np.float64))
    np.testing.assert_allclose(dx, expected_dx, **_tol(dtype))


@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", ROWWISE)
def test_rowwise_forward_and_backward_match_numpy(name, dtype, shape):
    x, dy = _inputs(shape, dtype, scale=5.0)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    y, dx = _run(name, x, dy)
    ref = _reference(name, x64)
    # Error over max(1, |truth|): absolute for probabilities (below 1), relative for
    # log-probabilities (they reach ~-40 here, where an absolute bound would be too tight).
    err = np.abs(y - ref) / np.maximum(1.0, np.abs(ref))
    assert err.max() <= _tol(dtype)["atol"], err.max()
    np.testing.assert_allclose(dx, _reference_dx(name, x64, dy64), **_tol(dtype))


@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_logsumexp_rows_matches_numpy(dtype, shape):
    x, _ = _inputs(shape, dtype, scale=5.0)
    x64 = x.astype(np.float64)
    atol = 2e-5 if dtype == np.float32 else 1e-12
    out = np.empty(shape[0], dtype)
    A.logsumexp_rows(x, out)
    ref = x64.max(1) + np.log(np.exp(x64 - x64.max(1, keepdims=True)).sum(1))
    np.testing.assert_allclose(out, ref, rtol=_tol(dtype)["rtol"], atol=atol)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_softmax_handles_huge_logits(dtype):
    x = np.array([[1e4, -1e4, 1e4 - 1.0], [-3e4, -3e4, -3e4]], dtype=dtype)
    y = np.empty_like(x)
    A.softmax(x, y)
    e = math.exp(-1.0)
    np.testing.assert_allclose(y[0], [1 / (1 + e), 0.0, e / (1 + e)], rtol=1e-6)
    np.testing.assert_allclose(y[1], [1 / 3] * 3, rtol=1e-6)
    A.log_softmax(x, y)
    assert np.isfinite(y[0, [0, 2]]).all() and np.isfinite(y[1]).all()
    out = np.empty(2, dtype)
    A.logsumexp_rows(x, out)
    np.testing.assert_allclose(out, [1e4 + math.log1p(e), -3e4 + math.log(3)], rtol=1e-6)


def test_logsumexp_rows_of_infinite_rows_is_the_limit():
    x = np.array([[-np.inf, -np.inf], [np.inf, 0.0]])
    out = np.empty(2)
    A.logsumexp_rows(x, out)
    assert out[0] == -np.inf and out[1] == np.inf


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_activations_stay_finite_and_quiet_at_extremes(name, dtype):
    x = np.array([-1000.0, -100.0, -20.5, 20.5, 100.0, 1000.0], dtype=dtype)
    y = np.empty_like(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        A.get_activation(name).forward(x, y)
    assert np.isfinite(y).all(), name
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(y, _reference(name, x64), rtol=1e-6, atol=1e-30)


def test_parameterised_activations_use_their_parameter():
    x = np.array([-2.0, -0.5, 0.5, 2.0])
    y = np.empty_like(x)
    A.leaky_relu(x, y, negative_slope=0.2)
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.2 * x))
    A.elu(x, y, alpha=0.5)
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.5 * np.expm1(x)))
    dx = np.empty_like(x)
    A.leaky_relu_backward(x, y, np.ones_like(x), dx, negative_slope=0.2)
    np.testing.assert_allclose(dx, np.where(x > 0, 1.0, 0.2))
    A.elu_backward(x, y, np.ones_like(x), dx, alpha=0.5)
    np.testing.assert_allclose(dx, np.where(x > 0, 1.0, 0.5 * np.exp(x)))


def test_derivatives_at_kinks_follow_pytorch():
    x = np.zeros(1)
    y, dx = np.empty(1), np.empty(1)
    expected = {"relu": 0.0, "leaky_relu": 0.01, "elu": 1.0, "selu": SELU_SCALE * SELU_ALPHA}
    for name, want in expected.items():
        act = A.get_activation(name)
        act.forward(x, y)
        act.backward(x, y, np.ones(1), dx)
        assert dx[0] == pytest.approx(want), name


def test_in_place_forward_and_backward():
    x, dy = _inputs((1031,), np.float64)
    y_ref, dx_ref = _run("silu", x, dy)
    z = x.copy()
    A.silu(z, z)
    np.testing.assert_array_equal(z, y_ref)
    g = dy.copy()
    A.silu_backward(x, y_ref, g, g)
    np.testing.assert_array_equal(g, dx_ref)
    s = x.reshape(1031, 1).copy()
    ref = np.empty_like(s)
    A.softmax(s, ref)
    A.softmax(s, s)
    np.testing.assert_array_equal(s, ref)


# ------------------------------------------------------- 1-D epilogue functions, three ways


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_1d_epilogue_functions_match_python_and_numpy(dtype):
    x, dy = _inputs((67,), dtype, seed=3)
    x64 = x.astype(np.float64)
    for name, act_id in A.ACTIVATION_IDS.items():
        param = A.get_activation(name).default_param
        y, yp = np.empty_like(x), np.empty_like(x)
        A.activation_forward_1d(act_id, param, x, y)
        A.activation_forward_1d.py_func(act_id, param, x, yp)
        dx, dxp = np.empty_like(x), np.empty_like(x)
        A.activation_backward_1d(act_id, param, x, y, dy, dx)
        A.activation_backward_1d.py_func(act_id, param, x, y, dy, dxp)
        np.testing.assert_allclose(y, _reference(name, x64), **_tol(dtype))
        np.testing.assert_allclose(yp, y, **_tol(dtype))
        np.testing.assert_allclose(dxp, dx, **_tol(dtype))


def test_1d_forward_allows_y_to_alias_z():
    x, _ = _inputs((101,), np.float32)
    for act_id in A.ACTIVATION_IDS.values():
        y = np.empty_like(x)
        A.activation_forward_1d(act_id, 0.01, x, y)
        z = x.copy()
        A.activation_forward_1d(act_id, 0.01, z, z)
        np.testing.assert_array_equal(z, y)


# --------------------------------------------------- vectorizable exp / tanh accuracy


@kernel
def _map_fast_exp(x, y):
    # Compiled with numbanet's flags (reassoc included), as the activation kernels are.
    for i in range(x.shape[0]):
        y[i] = A.fast_exp(x[i])


@kernel
def _map_fast_tanh(x, y):
    for i in range(x.shape[0]):
        y[i] = A.fast_tanh(x[i])


@kernel
def _map_fast_softplus(x, y):
    for i in range(x.shape[0]):
        y[i] = A.fast_softplus(x[i])


@kernel
def _map_fast_expm1(x, y):
    for i in range(x.shape[0]):
        y[i] = A.fast_expm1(x[i])


@kernel
def _map_fast_ndtr(x, y):
    for i in range(x.shape[0]):
        y[i] = A.fast_ndtr(x[i])


def test_fast_ndtr_float32_is_within_1_ulp_of_float64_erfc():
    x = np.concatenate([np.linspace(-13, 8, 20001), np.linspace(-1e-3, 1e-3, 101)]).astype(
        np.float32
    )
    y = np.empty_like(x)
    _map_fast_ndtr(x, y)
    truth = np.array([0.5 * math.erfc(-float(v) / math.sqrt(2.0)) for v in x])
    normal = truth >= np.finfo(np.float32).tiny
    err = np.abs(y[normal] - truth[normal]) / np.spacing(truth[normal].astype(np.float32))
    assert err.max() <= 1.0
    special = np.array([np.nan, -np.inf, np.inf, 0.0], np.float32)
    out = np.empty_like(special)
    _map_fast_ndtr(special, out)
    np.testing.assert_array_equal(out, [np.nan, 0.0, 1.0, 0.5])


def _ulp_error(y, x, fn):
    truth = fn(x.astype(np.longdouble))
    # Results below the smallest normal number flush to zero: not counted in ulps.
    normal = np.abs(truth) >= np.finfo(y.dtype).tiny
    spacing = np.spacing(np.abs(truth).astype(y.dtype)).astype(np.longdouble)
    err = np.abs(y.astype(np.longdouble) - truth) / spacing
    return float(err[normal].max())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_fast_exp_tanh_softplus_are_within_a_few_ulp(dtype):
    rng = np.random.default_rng(8)
    limit = 87.0 if dtype == np.float32 else 708.0
    x = np.concatenate(
        [np.linspace(-limit, limit, 20001), rng.standard_normal(5000), np.geomspace(1e-20, 1, 500)]
    ).astype(dtype)
    y = np.empty_like(x)
    _map_fast_exp(x, y)
    assert _ulp_error(y, x, np.exp) <= 2.0
    t = np.concatenate([x[np.abs(x) < 40], -x[np.abs(x) < 40]])
    yt = np.empty_like(t)
    _map_fast_tanh(t, yt)
    assert _ulp_error(yt, t, np.tanh) <= 2.0
    half = t.size // 2
    np.testing.assert_array_equal(yt[half:], -yt[:half])  # exactly odd
    _map_fast_softplus(x, y)
    assert _ulp_error(y, x, lambda v: np.logaddexp(np.longdouble(0), v)) <= 3.0
    small = np.concatenate([t, np.geomspace(1e-30, 1, 300), -np.geomspace(1e-30, 1, 300)])
    small = small.astype(dtype)
    ym = np.empty_like(small)
    _map_fast_expm1(small, ym)
    assert _ulp_error(ym, small, np.expm1) <= 3.5


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_fast_exp_and_tanh_special_values(dtype):
    x = np.array([np.nan, -np.inf, np.inf, 0.0, -1e4, 1e4], dtype=dtype)
    y = np.empty_like(x)
    _map_fast_exp(x, y)
    np.testing.assert_array_equal(y, [np.nan, 0.0, np.inf, 1.0, 0.0, np.inf])
    _map_fast_tanh(x, y)
    np.testing.assert_array_equal(y, [np.nan, -1.0, 1.0, 0.0, -1.0, 1.0])
    _map_fast_softplus(x, y)
    expected = np.array([np.nan, 0.0, np.inf, math.log(2.0), 0.0, 1e4], dtype)
    np.testing.assert_array_equal(y, expected)
    # Outside Numba the same names fall back to math, keeping the dtype (for py_func).
    assert type(A.fast_exp(dtype(1.0))) is dtype and A.fast_tanh(0.5) == math.tanh(0.5)


# ----------------------------------------------------------------------- thread counts


@pytest.fixture
def restore_threads():
    n = numba.get_num_threads()
    yield
    numba.set_num_threads(n)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_results_are_bit_identical_under_1_and_2_threads(dtype, restore_threads):
    x, dy = _inputs((257, 263), dtype, seed=5)
    results = []
    for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        numba.set_num_threads(threads)
        outs = [_run(name, x, dy) for name in A.ACTIVATIONS]
        lse = np.empty(x.shape[0], dtype)
        A.logsumexp_rows(x, lse)
        results.append((outs, lse))
    (outs1, lse1), (outs2, lse2) = results
    for name, (y1, dx1), (y2, dx2) in zip(A.ACTIVATIONS, outs1, outs2, strict=True):
        np.testing.assert_array_equal(y1, y2, err_msg=name)
        np.testing.assert_array_equal(dx1, dx2, err_msg=name)
    np.testing.assert_array_equal(lse1, lse2)


def test_serial_twin_matches_parallel_kernel_bit_for_bit():
    x, dy = _inputs((3 * A.CHUNK + 5,), np.float32, seed=6)
    for name, act_id in A.ACTIVATION_IDS.items():
        ys, yp = np.empty_like(x), np.empty_like(x)
        A._forward_serial(act_id, 0.01, x, ys)
        A._forward_parallel(act_id, 0.01, x, yp)
        np.testing.assert_array_equal(ys, yp, err_msg=f"{name} forward")
        ds, dp = np.empty_like(x), np.empty_like(x)
        A._backward_serial(act_id, 0.01, x, ys, dy, ds)
        A._backward_parallel(act_id, 0.01, x, ys, dy, dp)
        np.testing.assert_array_equal(ds, dp, err_msg=f"{name} backward")


# --------------------------------------------------------------- finite-difference checks


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_backward_matches_central_differences(name):
    rng = np.random.default_rng(11)
    x = rng.uniform(-4, 4, size=64)
    x = x[np.abs(x) > 1e-2]  # away from the kinks of relu / leaky_relu / elu / selu
    dy = rng.standard_normal(x.shape)
    act = A.get_activation(name)
    y, dx = np.empty_like(x), np.empty_like(x)
    act.forward(x, y)
    act.backward(x, y, dy, dx)
    h = 1e-6
    yp, ym = np.empty_like(x), np.empty_like(x)
    act.forward(x + h, yp)
    act.forward(x - h, ym)
    np.testing.assert_allclose(dx, dy * (yp - ym) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ROWWISE)
def test_rowwise_backward_matches_central_differences(name):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 5))
    w = rng.standard_normal((3, 5))  # loss = sum(w * act(x)), so dy = w
    act = A.get_activation(name)
    y, dx = np.empty_like(x), np.empty_like(x)
    act.forward(x, y)
    act.backward(x, y, w, dx)
    numeric = np.empty_like(x)
    h = 1e-6
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape):
        xp = x.copy()
        xp[idx] += h
        act.forward(xp, out)
        lp = (w * out).sum()
        xp[idx] -= 2 * h
        act.forward(xp, out)
        numeric[idx] = (lp - (w * out).sum()) / (2 * h)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


# -------------------------------------------------------------------------- properties

_finite = st.floats(-50, 50, allow_nan=False, width=64)
_vectors = hnp.arrays(np.float64, st.integers(1, 40), elements=_finite)
_matrices = hnp.arrays(
    np.float64, st.tuples(st.integers(1, 6), st.integers(1, 9)), elements=_finite
)


def _apply(name, x):
    y = np.empty_like(x)
    A.get_activation(name).forward(np.ascontiguousarray(x), y)
    return y


@settings(max_examples=40, deadline=None)
@given(_matrices, st.floats(-100, 100, allow_nan=False))
def test_softmax_rows_sum_to_one_and_ignore_row_shifts(x, shift):
    p = _apply("softmax", x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    assert (p >= 0).all()
    np.testing.assert_allclose(_apply("softmax", x + shift), p, rtol=1e-9, atol=1e-15)


@settings(max_examples=40, deadline=None)
@given(_matrices)
def test_log_softmax_is_log_of_softmax(x):
    p = _apply("softmax", x)
    logp = _apply("log_softmax", x)
    mask = p > 1e-300
    np.testing.assert_allclose(logp[mask], np.log(p[mask]), rtol=1e-9, atol=1e-12)
    lse = np.empty(x.shape[0])
    A.logsumexp_rows(x, lse)
    np.testing.assert_allclose(logp, x - lse[:, None], rtol=1e-9, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(_vectors)
def test_elementwise_symmetries(x):
    s, s_neg = _apply("sigmoid", x), _apply("sigmoid", -x)
    np.testing.assert_allclose(s_neg, 1 - s, atol=1e-15)
    assert ((s >= 0) & (s <= 1)).all()
    assert (_apply("relu", x) >= 0).all()
    np.testing.assert_array_equal(_apply("tanh", -x), -_apply("tanh", x))
    np.testing.assert_allclose(_apply("softplus", x) - _apply("softplus", -x), x, atol=1e-8)
    assert (_apply("softplus", x) > np.maximum(x, 0) - 1e-12).all()
    np.testing.assert_allclose(_apply("silu", x), x * s, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(_apply("gelu", x) - _apply("gelu", -x), x, atol=1e-12)
    np.testing.assert_allclose(_apply("relu", x) - _apply("relu", -x), x)


@settings(max_examples=30, deadline=None)
@given(_vectors)
def test_activations_are_monotone(x):
    xs = np.sort(x)
    for name in ("sigmoid", "relu", "leaky_relu", "tanh", "elu", "selu", "softplus"):
        assert (np.diff(_apply(name, xs)) >= 0).all(), name


# -------------------------------------------------------------------------- PyTorch parity

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", A.ACTIVATIONS)
def test_forward_and_backward_match_torch(name, dtype):
    torch = pytest.importorskip("torch")
    x, dy = _inputs((13, 31), dtype, seed=21, scale=4.0)
    x[0, :3] = [25.0, -25.0, 19.5]  # softplus's threshold region and saturation
    y, dx = _run(name, x, dy)
    t = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = SPECS[name].torch_reference(torch.nn.functional, t)
    ty.backward(torch.from_numpy(dy))
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-13}
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, t.grad.numpy(), **tol)


# -------------------------------------------------------------------------- bad input


def test_registry_lists_every_activation():
    assert A.ACTIVATIONS == (*ELEMENTWISE, *ROWWISE)
    assert A.ACTIVATION_IDS == {n: SPECS[n].id for n in ELEMENTWISE}
    assert sorted(A.ACTIVATION_IDS.values()) == list(range(len(A.ACTIVATION_IDS)))
    for name in A.ACTIVATIONS:
        act = A.get_activation(name)
        assert act.name == name and act.elementwise == (name in A.ACTIVATION_IDS)
        assert act.id == A.ACTIVATION_IDS.get(name, -1)
        # Every table field is on the record get_activation returns.
        for field in dataclasses.fields(A.ActivationSpec):
            assert getattr(act, field.name) == getattr(SPECS[name], field.name), field.name
        hand_written = getattr(A, name, None)
        if hand_written is not None:
            assert act.forward is hand_written and act.backward is getattr(A, name + "_backward")
    assert A.get_activation("leaky_relu").default_param == 0.01
    assert A.get_activation("elu").default_param == 1.0
    assert A.RELU == A.ACTIVATION_IDS["relu"] and A.SOFTPLUS == A.ACTIVATION_IDS["softplus"]


def test_table_records_what_layers_and_init_used_to_hard_code():
    # The sets nn/layers.py and nn/init.py held before the table.
    from numbanet.nn import init

    from_output = {n for n in A.ACTIVATIONS if A.get_activation(n).derivative_from_output}
    assert from_output == {"relu", "sigmoid", "tanh"}
    assert init.HE_ACTIVATIONS == {"relu", "leaky_relu", "elu", "gelu", "silu"}
    assert init.LECUN_ACTIVATIONS == {"selu"}
    for name in A.ACTIVATIONS:
        assert init.init_scheme(name) == SPECS[name].init in A.INIT_SCHEMES
    assert init.init_scheme("not_an_activation") == "glorot_uniform"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize(
    "name", [n for n in A.ACTIVATIONS if SPECS[n].derivative_from_output]
)
def test_derivative_from_output_holds_when_x_is_replaced_by_y(name, dtype):
    # What the flag promises a layer that overwrites its pre-activation with the output.
    x, dy = _inputs((1031,), dtype, seed=9)
    x[:3] = [0.0, -0.0, np.nan]
    y, dx = _run(name, x, dy)
    act = A.get_activation(name)
    dx_from_y = np.empty_like(x)
    act.backward(y, y, dy, dx_from_y)
    np.testing.assert_array_equal(dx_from_y, dx)


@pytest.mark.parametrize("name", A.ACTIVATIONS)
def test_a_row_without_hand_written_functions_gets_checked_kernels(name):
    # A new table row needs no public wrapper pair: the record builds one.
    spec = dataclasses.replace(SPECS[name], name=f"unlisted_{name}")
    act = A._make_activation(spec)
    assert act.forward is not getattr(A, name) and act.name == spec.name
    shape = (13, 11)
    x, dy = _inputs(shape, np.float64, seed=10)
    y, dx = np.empty_like(x), np.empty_like(x)
    act.forward(x, y)
    act.backward(x, y, dy, dx)
    y_ref, dx_ref = _run(name, x, dy)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    with pytest.raises(ValueError, match="out must have shape"):
        act.forward(x, np.empty((2, 2)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "relu"}, "duplicate activation names"),
        ({"id": 42}, "elementwise ids must be 0, 1"),
        ({"kind": "columnwise"}, "kind must be"),
        ({"init": "orthogonal"}, "init must be one of"),
        ({"default_param": 0.5}, "default_param without a param_name"),
    ],
)
def test_inconsistent_table_is_rejected(change, message):
    table = list(A.ACTIVATION_TABLE)
    table[0] = dataclasses.replace(table[0], **change)  # identity
    with pytest.raises(ValueError, match=message):
        A._check_table(tuple(table))


def test_unknown_activation_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown activation 'rel'.*relu.*log_softmax"):
        A.get_activation("rel")
    with pytest.raises(TypeError, match="activation name must be a str"):
        A.get_activation(None)


def test_activation_record_is_frozen():
    act = A.get_activation("relu")
    with pytest.raises(AttributeError):
        act.name = "tanh"


@pytest.mark.parametrize(
    ("make_args", "error", "message"),
    [
        (lambda: (np.zeros(4, np.int64), np.zeros(4)), TypeError, "x must have dtype float32"),
        (lambda: (np.zeros(4), np.zeros(4, np.float32)), TypeError, "out must have dtype float64"),
        (lambda: (np.zeros(4), np.zeros(5)), ValueError, r"out must have shape \(4,\)"),
        (lambda: (np.zeros((4, 4))[:, ::2], np.zeros((4, 2))), ValueError, "x must be C-cont"),
        (lambda: ([0.0, 1.0], np.zeros(2)), TypeError, "x must be a numpy.ndarray"),
        (
            lambda: (np.zeros(3), np.broadcast_to(np.zeros(1), (3,))),
            ValueError,
            "out must be",
        ),
    ],
)
def test_forward_rejects_bad_arrays(make_args, error, message):
    with pytest.raises(error, match=message):
        A.relu(*make_args())


def test_backward_rejects_mismatched_arrays():
    x = np.zeros(4)
    with pytest.raises(ValueError, match=r"dy must have shape \(4,\)"):
        A.tanh_backward(x, x, np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match="dx must have dtype float64"):
        A.tanh_backward(x, x, x, np.zeros(4, np.float32))
    ro = np.zeros(4)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dx must be writeable"):
        A.sigmoid_backward(x, x, x, ro)


def test_rowwise_activations_need_2d_input():
    with pytest.raises(ValueError, match="x must be 2-D, got 1-D"):
        A.softmax(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="x must be 2-D, got 3-D"):
        A.log_softmax_backward(*(np.zeros((2, 2, 2)),) * 4)
    with pytest.raises(ValueError, match=r"out must have shape \(2,\)"):
        A.logsumexp_rows(np.zeros((2, 3)), np.zeros(3))


def test_bad_parameters_are_rejected():
    x = np.zeros(3)
    with pytest.raises(TypeError, match="negative_slope must be a real number"):
        A.leaky_relu(x, x, negative_slope="0.1")
    with pytest.raises(ValueError, match="alpha must be finite"):
        A.elu(x, x, alpha=float("nan"))
