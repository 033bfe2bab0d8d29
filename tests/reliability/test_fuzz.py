"""Hypothesis fuzzing of the public API beyond the hand-written battery.

Every generated input must be either accepted (and then give finite outputs of the
right shape, or the NumPy answer for ``matmul``) or rejected with a ``TypeError`` /
``ValueError``; anything else (a Numba typing error, an ``IndexError``, a crash, a silent
garbage answer) is a failure.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import numbanet as nbn
from numbanet.kernels import matmul

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLEAR = (TypeError, ValueError)

DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8,
                          np.bool_, np.complex64, np.dtype("U3"), np.dtype("O")])


@st.composite
def arrays_of_any_kind(draw, max_dims=3):
    dtype = np.dtype(draw(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=6))
    if dtype.kind == "O":
        return np.array(draw(st.lists(st.one_of(st.floats(), st.text(max_size=2), st.none()),
                                      min_size=1, max_size=6)), dtype=object)
    array = draw(hnp.arrays(dtype, shape))
    if draw(st.booleans()) and array.ndim >= 2:
        array = array.T  # non-contiguous
    return array


@pytest.fixture(scope="module")
def fuzz_model(model_factory):
    return model_factory(optimizer="sgd", lr=0.01)


def _accepted_features(X):
    X = np.asarray(X)
    return X.ndim == 2 and X.shape[0] > 0 and X.shape[1] == 4


@FUZZ
@given(X=arrays_of_any_kind())
def test_predict_accepts_or_rejects_clearly(fuzz_model, X):
    try:
        out = fuzz_model.predict(X)
    except CLEAR:
        return
    assert _accepted_features(X) and X.dtype.kind in "fiub"
    assert out.shape == (X.shape[0], 3) and out.dtype == fuzz_model.dtype
    assert np.isfinite(out).all()


@FUZZ
@given(X=arrays_of_any_kind(max_dims=2),
       y=st.one_of(hnp.arrays(st.sampled_from([np.int64, np.float64, np.int8]),
                              st.integers(0, 7), elements=st.integers(-2, 5)),
                   arrays_of_any_kind(max_dims=2)),
       batch_size=st.integers(-2, 9))
def test_fit_accepts_or_rejects_clearly(fuzz_model, X, y, batch_size):
    before = fuzz_model.flat_parameters.copy()
    try:
        fuzz_model.fit(X, y, epochs=1, batch_size=batch_size, verbose=0, on_nan="raise")
    except CLEAR:
        # A rejected call must not have half-trained the model.
        np.testing.assert_array_equal(fuzz_model.flat_parameters, before)
        return
    assert _accepted_features(X) and batch_size > 0
    labels = np.asarray(y)
    assert labels.shape == (X.shape[0],) and labels.min() >= 0 and labels.max() < 3
    assert np.isfinite(fuzz_model.flat_parameters).all()


@st.composite
def matmul_operands(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    m, k, n = (draw(st.integers(0, 9)) for _ in range(3))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    elements = st.floats(-4, 4, width=32)
    a = draw(hnp.arrays(dtype, (k, m) if ta else (m, k), elements=elements))
    b = draw(hnp.arrays(dtype, (n, k) if tb else (k, n), elements=elements))
    out = np.full((m, n), np.nan, dtype)
    # Sometimes break one argument: a wrong dtype, a wrong shape or a strided view.
    broken = draw(st.sampled_from([None, "dtype", "shape", "layout"]))
    if broken == "dtype":
        b = b.astype(np.float64 if dtype == np.float32 else np.float32)
    elif broken == "shape":
        out = np.zeros((m + 1, n), dtype)
    elif broken == "layout" and a.ndim == 2 and a.size > 1:
        a = np.asfortranarray(a) if a.shape[0] > 1 and a.shape[1] > 1 else a
    return a, b, out, ta, tb, broken


@FUZZ
@given(ops=matmul_operands())
def test_matmul_is_numpy_or_a_clear_error(ops):
    a, b, out, ta, tb, broken = ops
    try:
        matmul(a, b, out, transpose_a=ta, transpose_b=tb)
    except CLEAR:
        assert broken is not None
        return
    expected = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    tol = 1e-4 if out.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol * 16)


ANY_VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20),
    st.booleans(), st.none(), st.text(max_size=3),
    st.tuples(st.floats(-2, 2), st.floats(-2, 2)),
    st.lists(st.floats(-2, 2), max_size=3),
)


@FUZZ
@given(name=st.sampled_from(nbn.list_optimizers()),
       hp=st.dictionaries(st.sampled_from(["lr", "momentum", "betas", "eps", "weight_decay",
                                           "alpha", "nesterov", "amsgrad", "centered",
                                           "dampening", "rho", "lr_decay", "maximize",
                                           "bogus"]), ANY_VALUE, max_size=3))
def test_optimizer_hyperparameters_are_validated(name, hp):
    try:
        opt = nbn.get_optimizer(name, **hp)
    except CLEAR:
        return
    params = np.linspace(-1, 1, 8)
    grads = np.linspace(1, -1, 8)
    opt.step(params, grads)  # an accepted optimizer must run without a Numba error


@FUZZ
@given(name=st.sampled_from(nbn.list_losses()),
       hp=st.dictionaries(st.sampled_from(["reduction", "label_smoothing", "weight", "delta",
                                           "beta", "margin", "gamma", "pos_weight",
                                           "ignore_index", "bogus"]),
                          st.one_of(ANY_VALUE, st.sampled_from(["mean", "sum", "none"]),
                                    hnp.arrays(np.float64, st.integers(0, 4))),
                          max_size=3))
def test_loss_hyperparameters_are_validated(name, hp):
    try:
        nbn.get_loss(name, **hp)
    except CLEAR:
        return
