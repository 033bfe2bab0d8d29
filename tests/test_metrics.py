"""Tests for numbanet.metrics against hand-computed cases, NumPy and PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numbanet import metrics
from numbanet.metrics import accuracy, get_metric, mae, mse, top_k_accuracy

# Three samples, four classes. Row maxima are at columns 1, 3, 0.
LOGITS = np.array(
    [
        [0.1, 2.0, -1.0, 0.5],
        [1.0, 0.0, 0.2, 3.0],
        [0.9, 0.8, 0.7, -2.0],
    ],
    dtype=np.float32,
)

# --------------------------------------------------------------------------- accuracy


def test_accuracy_multiclass_hand_computed():
    assert accuracy(LOGITS, np.array([1, 3, 0])) == 1.0
    assert accuracy(LOGITS, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert accuracy(LOGITS, np.array([0, 0, 2])) == 0.0


def test_accuracy_is_the_same_for_logits_and_softmax_probabilities():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 6))
    y = rng.integers(0, 6, 50)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert accuracy(logits, y) == accuracy(probs, y) == np.mean(logits.argmax(1) == y)


def test_accuracy_accepts_one_hot_soft_and_whole_float_targets():
    one_hot = np.eye(4, dtype=np.float32)[[1, 0, 0]]
    assert accuracy(LOGITS, one_hot) == pytest.approx(2 / 3)
    soft = np.array([[0.1, 0.7, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]])
    assert accuracy(LOGITS, soft) == pytest.approx(2 / 3)
    assert accuracy(LOGITS, np.array([1.0, 0.0, 0.0])) == pytest.approx(2 / 3)
    assert accuracy(LOGITS, np.array([[1], [0], [0]])) == pytest.approx(2 / 3)


def test_accuracy_single_column_threshold_depends_on_from_logits():
    outputs = np.array([[0.3], [0.7], [-0.2], [0.5]])
    y = np.array([0, 1, 0, 0])
    # Logits: positive above 0 -> predictions 1, 1, 0, 1.
    assert accuracy(outputs, y) == 0.5
    # Probabilities: positive above 0.5 -> predictions 0, 1, 0, 0.
    assert accuracy(outputs, y, from_logits=False) == 1.0


def test_accuracy_single_column_accepts_1d_outputs_and_soft_targets():
    outputs = np.array([2.0, -1.0, 0.5, -0.5])
    targets = np.array([0.9, 0.2, 0.4, 0.0])  # positive above 0.5: 1, 0, 0, 0
    assert accuracy(outputs, targets) == 0.75
    assert accuracy(outputs[:, None], targets[:, None]) == 0.75
    # Predictions are 1, 0, 1, 0; boolean labels count as 0/1.
    assert accuracy(outputs, np.array([True, False, False, True])) == 0.5


def test_accuracy_matches_torch_binary_and_multiclass():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((40, 5)).astype(np.float32)
    y = rng.integers(0, 5, 40)
    ref = (torch.from_numpy(logits).argmax(1) == torch.from_numpy(y)).float().mean().item()
    assert accuracy(logits, y) == pytest.approx(ref)
    binary = rng.standard_normal((40, 1)).astype(np.float32)
    yb = rng.integers(0, 2, 40)
    pred = (torch.sigmoid(torch.from_numpy(binary))[:, 0] > 0.5).long()
    ref_b = (pred == torch.from_numpy(yb)).float().mean().item()
    assert accuracy(binary, yb) == pytest.approx(ref_b)
    probs = torch.sigmoid(torch.from_numpy(binary)).numpy()
    assert accuracy(probs, yb, from_logits=False) == pytest.approx(ref_b)


def test_accuracy_counts_non_finite_rows_as_wrong():
    outputs = LOGITS.copy()
    outputs[0, 1] = np.nan
    outputs[1, 0] = np.inf
    assert accuracy(outputs, np.array([1, 3, 0])) == pytest.approx(1 / 3)
    assert accuracy(np.array([np.nan, 1.0]), np.array([0, 1])) == 0.5


@pytest.mark.parametrize(
    ("outputs", "y", "error", "match"),
    [
        (LOGITS, np.array([1, 4, 0]), ValueError, r"0\.\.3"),
        (LOGITS, np.array([1, -1, 0]), ValueError, r"0\.\.3"),
        (LOGITS, np.array([1.0, 0.5, 0.0]), ValueError, "whole numbers"),
        (LOGITS, np.array([1, 0]), ValueError, "samples"),
        (LOGITS, np.zeros((3, 2)), ValueError, "targets"),
        (LOGITS, np.zeros((3, 4, 1)), ValueError, "y"),
        (LOGITS, np.array(["a", "b", "c"]), TypeError, "y"),
        (LOGITS.astype(str), np.array([1, 3, 0]), TypeError, "outputs"),
        (LOGITS > 0, np.array([1, 3, 0]), TypeError, "outputs"),
        (LOGITS[None], np.array([1, 3, 0]), ValueError, "outputs"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), ValueError, "outputs"),
        (np.zeros((3, 1)), np.array([0, 2, 1]), ValueError, r"\[0, 1\]"),
        (np.zeros((3, 1)), np.array([0.0, 1.5, 1.0]), ValueError, r"\[0, 1\]"),
        (np.zeros((3, 1)), np.zeros((3, 2)), ValueError, r"\(n, 1\)"),
    ],
)
def test_accuracy_rejects_bad_inputs(outputs, y, error, match):
    with pytest.raises(error, match=match):
        accuracy(outputs, y)


def test_accuracy_rejects_non_bool_from_logits():
    with pytest.raises(TypeError, match="from_logits"):
        accuracy(LOGITS, np.array([1, 3, 0]), from_logits="yes")


# --------------------------------------------------------------------------- top-k


def test_top_k_accuracy_hand_computed():
    y = np.array([3, 2, 3])
    # Ranks of the true class (0 = best): row 0 -> 1, row 1 -> 2, row 2 -> 3.
    assert top_k_accuracy(LOGITS, y, k=1) == 0.0
    assert top_k_accuracy(LOGITS, y, k=2) == pytest.approx(1 / 3)
    assert top_k_accuracy(LOGITS, y, k=3) == pytest.approx(2 / 3)
    assert top_k_accuracy(LOGITS, y, k=4) == 1.0


def test_top_k_accuracy_ties_favour_the_sample():
    outputs = np.array([[1.0, 1.0, 1.0, 0.0]])
    for label in range(3):
        assert top_k_accuracy(outputs, np.array([label]), k=1) == 1.0
    assert top_k_accuracy(outputs, np.array([3]), k=3) == 0.0


@settings(max_examples=40, deadline=None)
@given(
    data=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 12), st.integers(2, 7)),
        elements=st.floats(-100, 100),
        unique=True,  # no ties: sorting then gives the same answer
    ),
    seed=st.integers(0, 1000),
)
def test_top_k_accuracy_matches_sorting_reference(data, seed):
    n, c = data.shape
    y = np.random.default_rng(seed).integers(0, c, n)
    top = np.argsort(-data, axis=1)
    for k in range(1, c + 1):
        expected = np.mean([y[i] in top[i, :k] for i in range(n)])
        assert top_k_accuracy(data, y, k=k) == pytest.approx(expected)
    assert top_k_accuracy(data, y, k=1) == accuracy(data, y)


def test_top_k_accuracy_matches_torch_topk():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((64, 10)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    top5 = torch.topk(torch.from_numpy(logits), 5, dim=1).indices
    ref = (top5 == torch.from_numpy(y)[:, None]).any(1).float().mean().item()
    assert top_k_accuracy(logits, y, k=5) == pytest.approx(ref)
    assert top_k_accuracy(logits, np.eye(10)[y], k=5) == pytest.approx(ref)


@pytest.mark.parametrize(
    ("outputs", "k", "error", "match"),
    [
        (LOGITS, 0, ValueError, "k"),
        (LOGITS, 5, ValueError, "exceeds"),
        (LOGITS, 2.0, TypeError, "k"),
        (np.zeros((3, 1)), 1, ValueError, "at least 2 columns"),
    ],
)
def test_top_k_accuracy_rejects_bad_arguments(outputs, k, error, match):
    with pytest.raises(error, match=match):
        top_k_accuracy(outputs, np.array([0, 0, 0]), k=k)


# --------------------------------------------------------------------------- regression


def test_mse_and_mae_hand_computed():
    outputs = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    y = np.array([[0.0, 2.0], [5.0, 1.0]], dtype=np.float32)
    # Differences 1, 0, -2, 3.
    assert mse(outputs, y) == pytest.approx((1 + 0 + 4 + 9) / 4)
    assert mae(outputs, y) == pytest.approx((1 + 0 + 2 + 3) / 4)


def test_mse_and_mae_accept_1d_targets_for_one_column():
    outputs = np.array([[1.5], [2.0], [-1.0]])
    y = np.array([1, 2, 1])
    assert mse(outputs, y) == pytest.approx((0.25 + 0 + 4) / 3)
    assert mae(outputs, y) == pytest.approx((0.5 + 0 + 2) / 3)
    assert mse(outputs[:, 0], y) == pytest.approx((0.25 + 0 + 4) / 3)


def test_mse_and_mae_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    outputs = rng.standard_normal((33, 7)).astype(np.float32)
    y = rng.standard_normal((33, 7)).astype(np.float32)
    o, t = torch.from_numpy(outputs).double(), torch.from_numpy(y).double()
    assert mse(outputs, y) == pytest.approx(torch.nn.functional.mse_loss(o, t).item(), rel=1e-12)
    assert mae(outputs, y) == pytest.approx(torch.nn.functional.l1_loss(o, t).item(), rel=1e-12)


def test_mse_is_accurate_in_float64_for_float32_inputs():
    outputs = np.full((1000, 1), 1e4 + 1, dtype=np.float32)
    y = np.full((1000, 1), 1e4, dtype=np.float32)
    assert mse(outputs, y) == 1.0 and mae(outputs, y) == 1.0


def test_mse_propagates_nan():
    assert np.isnan(mse(np.array([[np.nan]]), np.array([[0.0]])))


@pytest.mark.parametrize("metric", [mse, mae])
def test_regression_metrics_reject_mismatched_shapes(metric):
    with pytest.raises(ValueError, match="one-hot"):
        metric(LOGITS, np.array([1, 3, 0]))
    with pytest.raises(ValueError, match="shape"):
        metric(LOGITS, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="samples"):
        metric(LOGITS, np.zeros((2, 4)))


# --------------------------------------------------------------------------- lookup


@pytest.mark.parametrize(
    ("name", "expected_name", "fn", "kwargs", "greater_is_better"),
    [
        ("accuracy", "accuracy", accuracy, {}, True),
        ("Accuracy ", "accuracy", accuracy, {}, True),
        ("top_k_accuracy", "top5_accuracy", top_k_accuracy, {"k": 5}, True),
        ("top5_accuracy", "top5_accuracy", top_k_accuracy, {"k": 5}, True),
        ("top_3_accuracy", "top3_accuracy", top_k_accuracy, {"k": 3}, True),
        ("mse", "mse", mse, {}, False),
        ("mean_squared_error", "mse", mse, {}, False),
        ("mae", "mae", mae, {}, False),
        ("mean_absolute_error", "mae", mae, {}, False),
    ],
)
def test_get_metric_resolves_names(name, expected_name, fn, kwargs, greater_is_better):
    metric = get_metric(name)
    assert metric.name == expected_name
    assert metric.fn is fn and metric.kwargs == kwargs
    assert metric.greater_is_better is greater_is_better


def test_get_metric_binds_keyword_arguments():
    top3 = get_metric("top_k_accuracy", k=3)
    assert top3.name == "top3_accuracy"
    assert top3(LOGITS, np.array([3, 2, 3])) == pytest.approx(2 / 3)
    probs = get_metric("accuracy", from_logits=False)
    assert probs(np.array([[0.3], [0.7]]), np.array([0, 1])) == 1.0
    assert "from_logits=False" in repr(probs)


def test_get_metric_wraps_callables_and_passes_metrics_through():
    def balanced_error(outputs, y):
        return 0.25

    wrapped = get_metric(balanced_error)
    assert wrapped.name == "balanced_error" and wrapped.greater_is_better is None
    assert wrapped(LOGITS, np.array([0, 0, 0])) == 0.25
    assert get_metric(wrapped) is wrapped
    assert get_metric(mse).greater_is_better is False


def test_get_metric_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown metric 'f1'") as info:
        get_metric("f1")
    for name in ("accuracy", "top5_accuracy", "mse", "mae"):
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("mse",), {"k": 3}, TypeError, "unexpected"),
        (("accuracy",), {"from_logits": 1}, TypeError, "from_logits"),
        (("top5_accuracy",), {"k": 3}, ValueError, "already sets k"),
        (("top_k_accuracy",), {"k": 0}, ValueError, "k"),
        (("top0_accuracy",), {}, ValueError, "k"),
        ((42,), {}, TypeError, "metric"),
    ],
)
def test_get_metric_rejects_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        get_metric(*args, **kwargs)


def test_get_metric_cannot_rebind_a_metric():
    with pytest.raises(TypeError, match="Metric instance"):
        get_metric(get_metric("accuracy"), from_logits=False)


def test_list_metrics_names_resolve():
    names = metrics.list_metrics()
    assert names == ["accuracy", "mae", "mse", "top_k_accuracy"]
    for name in names:
        assert isinstance(get_metric(name), metrics.Metric)
