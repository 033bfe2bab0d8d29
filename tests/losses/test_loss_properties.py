"""Properties of the fused softmax cross-entropy that hold for any logits (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import numbanet.plugins as nbp

shapes = st.tuples(st.integers(1, 12), st.integers(2, 9))


@st.composite
def logits_and_labels(draw):
    n, k = draw(shapes)
    x = draw(arrays(np.float64, (n, k), elements=st.floats(-30, 30)))
    y = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    return x, y


@settings(max_examples=40, deadline=None)
@given(logits_and_labels(), st.floats(0.0, 1.0), st.floats(-50, 50))
def test_cross_entropy_gradient_rows_sum_to_zero_and_value_is_shift_invariant(data, eps, c):
    x, y = data
    loss = nbp.get_loss("cross_entropy", label_smoothing=eps)
    g1 = np.empty_like(x)
    v1 = loss.forward_backward(x, y, g1)
    g2 = np.empty_like(x)
    v2 = loss.forward_backward(x + c, y, g2)
    assert np.isfinite(v1) and v1 >= -1e-12
    np.testing.assert_allclose(g1.sum(axis=1), 0.0, atol=1e-12)
    assert np.isclose(v1, v2, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(g1, g2, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(logits_and_labels())
def test_cross_entropy_with_one_hot_probabilities_equals_labels(data):
    x, y = data
    k = x.shape[1]
    loss = nbp.get_loss("cross_entropy")
    ga, gb = np.empty_like(x), np.empty_like(x)
    va = loss.forward_backward(x, y, ga)
    vb = loss.forward_backward(x, np.eye(k)[y], gb)
    assert np.isclose(va, vb, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ga, gb, atol=1e-15)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 10), st.integers(1, 6)),
              elements=st.floats(-40, 40)))
def test_binary_cross_entropy_on_logits_is_stable_and_matches_naive_form(x):
    t = (np.arange(x.size).reshape(x.shape) % 2).astype(np.float64)
    loss = nbp.get_loss("binary_cross_entropy", reduction="sum")
    g = np.empty_like(x)
    value = loss.forward_backward(x, t, g)
    sig = 1.0 / (1.0 + np.exp(-x))
    naive = -(t * np.log(sig) + (1 - t) * np.log1p(-sig)) if np.abs(x).max() < 15 else None
    assert np.isfinite(value)
    np.testing.assert_allclose(g, sig - t, atol=1e-15)
    if naive is not None:
        assert np.isclose(value, naive.sum(), rtol=1e-9)
