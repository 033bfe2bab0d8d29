"""The Loss host: conformance of every built-in, target checks, argument errors."""

from __future__ import annotations

import numpy as np
import pytest

import numbanet.plugins as nbp
from numbanet.kernels.losses import SERIAL_THRESHOLD
from numbanet.testing import check_loss

BUILTIN_LOSSES = ["binary_cross_entropy", "cross_entropy", "hinge", "huber", "kl_div", "l1",
                  "mae", "mse", "nll", "smooth_l1"]


@pytest.mark.parametrize("name", BUILTIN_LOSSES)
def test_builtin_loss_passes_conformance(name):
    check_loss(name)


def test_weighted_and_smoothed_cross_entropy_pass_conformance():
    check_loss("cross_entropy", label_smoothing=0.1, weight=[1.0, 2.0, 0.5, 1.5])


def test_every_registered_builtin_loss_is_checked():
    builtins = {q.split(":")[1] for q in nbp.list_losses(qualified=True)
                if q.startswith("numbanet:")}
    assert builtins == set(BUILTIN_LOSSES)


@pytest.mark.parametrize(
    ("y", "exc", "match"),
    [
        (np.array([0, 1, 3]), ValueError, r"y must hold class labels in \[0, 3\).*found 3"),
        (np.array([0, -1, 2]), ValueError, r"y must hold class labels in \[0, 3\)"),
        (np.array([0.0, 1.5, 2.0]), ValueError, r"y must hold integer class labels"),
        (np.array(["a", "b", "c"]), TypeError, r"y must be numeric"),
        (np.array([[0, 1], [1, 2]]), ValueError, r"y must be a 1-D array of class labels"),
        (np.array([True, False, True]), TypeError, r"y must hold integer class labels"),
    ],
)
def test_cross_entropy_rejects_bad_labels_naming_y(y, exc, match):
    with pytest.raises(exc, match=match):
        nbp.get_loss("cross_entropy").prepare_targets(y, 3, "float32")


def test_integral_float_labels_are_accepted():
    t = nbp.get_loss("cross_entropy").prepare_targets(np.array([0.0, 2.0]), 3, "float32")
    assert t.dtype == np.int64 and t.tolist() == [0, 2]


def test_forward_backward_checks_labels_passed_without_prepare():
    loss = nbp.get_loss("cross_entropy")
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="y must hold class labels"):
        loss.forward_backward(x, np.array([0, 5]), np.empty_like(x))


def test_dense_targets_are_shaped_and_converted():
    loss = nbp.get_loss("mse")
    t = loss.prepare_targets([1, 2, 3], 1, "float32")
    assert t.shape == (3, 1) and t.dtype == np.float32
    with pytest.raises(ValueError, match=r"y must have shape \(n, 2\)"):
        loss.prepare_targets(np.zeros((3, 3)), 2, "float64")
    with pytest.raises(ValueError, match="y contains NaN"):
        loss.prepare_targets([[np.nan]], 1, "float64")


@pytest.mark.parametrize(
    ("name", "kwargs", "exc", "match"),
    [
        ("cross_entropy", {"reduction": "avg"}, ValueError, "reduction must be one of"),
        ("cross_entropy", {"label_smoothing": 1.5}, ValueError,
         r"loss 'cross_entropy': label_smoothing must be in \[0, 1\]"),
        ("cross_entropy", {"label_smoothing": "x"}, TypeError, "label_smoothing must be a number"),
        ("cross_entropy", {"weight": [[1.0]]}, ValueError, "weight must be a non-empty 1-D"),
        ("cross_entropy", {"weight": [1.0, -1.0]}, ValueError, "non-negative"),
        ("mse", {"weight": [1.0]}, ValueError, "loss 'mse': does not accept a class weight"),
        ("huber", {"delta": 0.0}, ValueError, r"delta must be in \(0, inf\)"),
        ("hinge", {"p": 3.0}, ValueError, "p must be 1 or 2"),
        ("mse", {"gamma": 1.0}, ValueError, "loss 'mse': unknown hyperparameter 'gamma'"),
        ("msee", {}, ValueError, "unknown loss 'msee'; did you mean 'mse'"),
    ],
)
def test_bad_loss_arguments_raise_clear_errors(name, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        nbp.get_loss(name, **kwargs)


def test_weight_length_must_match_classes():
    loss = nbp.get_loss("cross_entropy", weight=[1.0, 2.0])
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="weight has 2 entries but the outputs have 3"):
        loss.forward_backward(x, np.array([0, 1]), np.empty_like(x))


def test_bad_output_and_grad_arrays_raise():
    loss = nbp.get_loss("mse")
    x = np.zeros((2, 2))
    with pytest.raises(ValueError, match="outputs must be 2-D"):
        loss.forward(np.zeros(3), np.zeros(3))
    with pytest.raises(TypeError, match="grad must have dtype float64"):
        loss.forward_backward(x, np.zeros((2, 2)), np.zeros((2, 2), np.float32))


def test_output_activation_is_declared():
    assert nbp.get_loss("cross_entropy").output_activation == "softmax"
    assert nbp.get_loss("binary_cross_entropy").output_activation == "sigmoid"
    assert nbp.get_loss("mse").output_activation is None


def test_large_batch_parallel_path_matches_numpy_softmax_cross_entropy():
    rng = np.random.default_rng(3)
    n, k = SERIAL_THRESHOLD // 8 + 5, 10
    x = rng.standard_normal((n, k)).astype(np.float32)
    y = rng.integers(0, k, n)
    loss = nbp.get_loss("cross_entropy")
    grad = np.empty_like(x)
    value = loss.forward_backward(x, loss.prepare_targets(y, k, "float32"), grad)
    z = x.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert np.isclose(value, -np.log(p[np.arange(n), y]).mean(), rtol=1e-6)
    p[np.arange(n), y] -= 1
    np.testing.assert_allclose(grad, p / n, rtol=1e-4, atol=1e-9)


def test_loss_value_does_not_depend_on_the_thread_count():
    import numba

    rng = np.random.default_rng(5)
    n, k = SERIAL_THRESHOLD // 4, 7
    x = rng.standard_normal((n, k))
    y = rng.integers(0, k, n)
    loss = nbp.get_loss("cross_entropy", label_smoothing=0.05)
    values, grads = [], []
    old = numba.get_num_threads()
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            g = np.empty_like(x)
            values.append(loss.forward_backward(x, y, g))
            grads.append(g)
    finally:
        numba.set_num_threads(old)
    assert values[0] == values[1]
    np.testing.assert_array_equal(grads[0], grads[1])


def test_ignore_index_rows_are_accepted_and_skipped_but_other_bad_labels_are_not():
    loss = nbp.get_loss("cross_entropy")
    t = loss.prepare_targets(np.array([0, -100, 2]), 3, "float64")
    x = np.zeros((3, 3))
    grad = np.empty_like(x)
    assert loss.forward_backward(x, t, grad) == pytest.approx(np.log(3.0))
    np.testing.assert_array_equal(grad[1], 0.0)
    with pytest.raises(ValueError, match="y must hold class labels"):
        loss.prepare_targets(np.array([0, -5]), 3, "float64")
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        nbp.get_loss("nll", ignore_index=1.5)
    assert nbp.get_loss("nll", ignore_index=3.0).hyperparams["ignore_index"] == 3
