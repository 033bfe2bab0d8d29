"""Sample-weighted reductions of the loss host: PyTorch's weighted mean
(``Σ w_i l_i / Σ w_i``, with class weights ``Σ w_i c[y_i]``) against NumPy and PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

import numbanet.plugins as nbp
from numbanet.losses import WeightedTargets

N, K = 11, 4
RNG = np.random.default_rng(3)
X = RNG.standard_normal((N, K)) * 2.0
LABELS = RNG.integers(0, K, N)
DENSE = RNG.standard_normal((N, K))
BITS = (RNG.random((N, K)) > 0.5).astype(np.float64)
W = RNG.uniform(0.0, 3.0, N)
CLASS_W = RNG.uniform(0.3, 2.0, K)


def _log_softmax(x):
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_weighted_cross_entropy_matches_a_numpy_reference():
    loss = nbp.get_loss("cross_entropy")
    grad = np.empty_like(X)
    value = loss.forward_backward(X, LABELS, grad, sample_weight=W)
    rows = -_log_softmax(X)[np.arange(N), LABELS]
    assert value == pytest.approx(np.sum(W * rows) / np.sum(W), rel=1e-12)
    p = np.exp(_log_softmax(X))
    p[np.arange(N), LABELS] -= 1.0
    np.testing.assert_allclose(grad, p * (W / W.sum())[:, None], rtol=1e-11, atol=1e-15)


def test_class_weights_as_sample_weights_equal_torch_weighted_cross_entropy():
    torch = pytest.importorskip("torch")
    loss = nbp.get_loss("cross_entropy")
    grad = np.empty_like(X)
    value = loss.forward_backward(X, LABELS, grad, sample_weight=CLASS_W[LABELS])
    x = torch.tensor(X, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(x, torch.tensor(LABELS), weight=torch.tensor(CLASS_W))
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-11, atol=1e-15)


def _torch_cases():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    cw = torch.tensor(CLASS_W)
    # (name, kwargs, targets, per-row torch loss, divisor of the weighted mean)
    return [
        ("mse", {}, DENSE, lambda x, t: F.mse_loss(x, t, reduction="none").sum(1),
         lambda w: K * w.sum()),
        ("huber", {}, DENSE, lambda x, t: F.huber_loss(x, t, reduction="none").sum(1),
         lambda w: K * w.sum()),
        ("binary_cross_entropy", {}, BITS,
         lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none").sum(1),
         lambda w: K * w.sum()),
        ("cross_entropy", {}, LABELS, lambda x, t: F.cross_entropy(x, t, reduction="none"),
         lambda w: w.sum()),
        ("cross_entropy", {"weight": CLASS_W}, LABELS,
         lambda x, t: F.cross_entropy(x, t, weight=cw, reduction="none"),
         lambda w: (w * cw[torch.tensor(LABELS)]).sum()),
        ("cross_entropy", {"label_smoothing": 0.1}, LABELS,
         lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1, reduction="none"),
         lambda w: w.sum()),
        ("nll", {}, LABELS, lambda x, t: F.nll_loss(x, t, reduction="none"), lambda w: w.sum()),
        ("hinge", {}, LABELS, lambda x, t: F.multi_margin_loss(x, t, reduction="none"),
         lambda w: w.sum()),
    ]


@pytest.mark.parametrize("case", range(8))
def test_weighted_mean_value_and_gradient_match_torch(case):
    torch = pytest.importorskip("torch")
    name, kwargs, targets, rows_of, divisor_of = _torch_cases()[case]
    loss = nbp.get_loss(name, **kwargs)
    grad = np.empty_like(X)
    value = loss.forward_backward(X, targets, grad, sample_weight=W)
    x = torch.tensor(X, requires_grad=True)
    w = torch.tensor(W)
    ref = (w * rows_of(x, torch.tensor(targets))).sum() / divisor_of(w)
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=1e-11)
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equal_weights_give_the_unweighted_loss_and_gradient(dtype):
    loss = nbp.get_loss("cross_entropy", label_smoothing=0.1)
    x = X.astype(dtype)
    plain, weighted = np.empty_like(x), np.empty_like(x)
    value = loss.forward_backward(x, LABELS, plain)
    value_w = loss.forward_backward(x, LABELS, weighted, sample_weight=np.full(N, 2.5))
    assert value_w == pytest.approx(value, rel=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(weighted, plain, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_integer_weights_equal_repeated_rows():
    loss = nbp.get_loss("mse")
    counts = np.array([1, 3, 0, 2] + [1] * (N - 4))
    repeated = loss.forward(np.repeat(X, counts, axis=0), np.repeat(DENSE, counts, axis=0))
    assert loss.forward(X, DENSE, sample_weight=counts) == pytest.approx(repeated, rel=1e-12)


def test_sum_and_none_reductions_weigh_each_row():
    rows = nbp.get_loss("cross_entropy", reduction="none").forward(X, LABELS)
    weighted_rows = nbp.get_loss("cross_entropy", reduction="none").forward(X, LABELS,
                                                                            sample_weight=W)
    np.testing.assert_allclose(weighted_rows, W * rows, rtol=1e-12)
    total = nbp.get_loss("cross_entropy", reduction="sum").forward(X, LABELS, sample_weight=W)
    assert total == pytest.approx(np.sum(W * rows), rel=1e-12)


def test_ignored_labels_leave_the_divisor():
    labels = LABELS.copy()
    labels[[0, 5]] = -100
    loss = nbp.get_loss("cross_entropy")
    keep = labels != -100
    rows = -_log_softmax(X)[np.arange(N)[keep], labels[keep]]
    expected = np.sum(W[keep] * rows) / np.sum(W[keep])
    assert loss.forward(X, labels, sample_weight=W) == pytest.approx(expected, rel=1e-12)


def test_weighted_targets_on_the_hot_path_equal_sample_weight():
    loss = nbp.get_loss("cross_entropy")
    a, b = np.empty_like(X), np.empty_like(X)
    value = loss.forward_backward(X, LABELS, a, sample_weight=W)
    hot = loss.forward_backward_unchecked(X, WeightedTargets(LABELS, W), b)
    assert hot == value
    np.testing.assert_array_equal(a, b)


def test_a_batch_of_zero_weight_teaches_nothing():
    loss = nbp.get_loss("cross_entropy")
    grad = np.full_like(X, 7.0)
    assert loss.forward_backward(X, LABELS, grad, sample_weight=np.zeros(N)) == 0.0
    assert not grad.any()


@pytest.mark.parametrize("weight, error, match", [
    (np.ones(N - 1), ValueError, r"shape \(11,\)"),
    (-W, ValueError, ">= 0"),
    (np.full(N, np.nan), ValueError, "NaN"),
    (np.array(["a"] * N), TypeError, "numbers"),
])
def test_bad_sample_weights_are_refused(weight, error, match):
    with pytest.raises(error, match=match):
        nbp.get_loss("mse").forward(X, DENSE, sample_weight=weight)
