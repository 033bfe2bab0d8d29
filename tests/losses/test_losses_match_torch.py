"""Every built-in loss value and gradient matches torch.nn.functional in float64."""

from __future__ import annotations

import numpy as np
import pytest

import numbanet.plugins as nbp

torch = pytest.importorskip("torch")
F = torch.nn.functional

N, K = 9, 5
RNG = np.random.default_rng(0)
X = RNG.standard_normal((N, K)) * 2.0
LABELS = RNG.integers(0, K, N)
DENSE = RNG.standard_normal((N, K))
PROBS = RNG.uniform(0.05, 1.0, (N, K))
PROBS /= PROBS.sum(axis=1, keepdims=True)
BITS = (RNG.random((N, K)) > 0.5).astype(np.float64)
WEIGHT = RNG.uniform(0.2, 2.0, K)
LABELS_IGNORED = LABELS.copy()
LABELS_IGNORED[[1, 4]] = -100
IGNORED_CLASS = int(LABELS[3])  # a real class that occurs in LABELS, ignored as a label


def _log_softmax(x):
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


LOGP = _log_softmax(X)


def _t(a):
    return torch.tensor(a)


# (our name, our kwargs, inputs, targets, torch function of (input, target))
CASES = [
    ("mse", {}, X, DENSE, lambda x, t, r: F.mse_loss(x, t, reduction=r)),
    ("mae", {}, X, DENSE, lambda x, t, r: F.l1_loss(x, t, reduction=r)),
    ("l1", {}, X, DENSE, lambda x, t, r: F.l1_loss(x, t, reduction=r)),
    ("huber", {}, X, DENSE, lambda x, t, r: F.huber_loss(x, t, reduction=r)),
    ("huber", {"delta": 0.5}, X, DENSE,
     lambda x, t, r: F.huber_loss(x, t, reduction=r, delta=0.5)),
    ("smooth_l1", {"beta": 0.7}, X, DENSE,
     lambda x, t, r: F.smooth_l1_loss(x, t, reduction=r, beta=0.7)),
    ("smooth_l1", {"beta": 0.0}, X, DENSE,
     lambda x, t, r: F.smooth_l1_loss(x, t, reduction=r, beta=0.0)),
    ("binary_cross_entropy", {}, X, BITS,
     lambda x, t, r: F.binary_cross_entropy_with_logits(x, t, reduction=r)),
    ("binary_cross_entropy", {"pos_weight": 3.0}, X, PROBS,
     lambda x, t, r: F.binary_cross_entropy_with_logits(
         x, t, reduction=r, pos_weight=torch.full((K,), 3.0, dtype=torch.float64))),
    ("cross_entropy", {}, X, LABELS, lambda x, t, r: F.cross_entropy(x, t, reduction=r)),
    ("cross_entropy", {"label_smoothing": 0.2}, X, LABELS,
     lambda x, t, r: F.cross_entropy(x, t, reduction=r, label_smoothing=0.2)),
    ("cross_entropy", {"weight": WEIGHT}, X, LABELS,
     lambda x, t, r: F.cross_entropy(x, t, reduction=r, weight=_t(WEIGHT))),
    ("cross_entropy", {"weight": WEIGHT, "label_smoothing": 0.1}, X, LABELS,
     lambda x, t, r: F.cross_entropy(x, t, reduction=r, weight=_t(WEIGHT),
                                     label_smoothing=0.1)),
    ("cross_entropy", {}, X, PROBS, lambda x, t, r: F.cross_entropy(x, t, reduction=r)),
    ("cross_entropy", {"weight": WEIGHT, "label_smoothing": 0.3}, X, PROBS,
     lambda x, t, r: F.cross_entropy(x, t, reduction=r, weight=_t(WEIGHT),
                                     label_smoothing=0.3)),
    ("cross_entropy", {}, X, LABELS_IGNORED, lambda x, t, r: F.cross_entropy(x, t, reduction=r)),
    ("cross_entropy", {"ignore_index": IGNORED_CLASS, "weight": WEIGHT, "label_smoothing": 0.2},
     X, LABELS,
     lambda x, t, r: F.cross_entropy(x, t, reduction=r, ignore_index=IGNORED_CLASS,
                                     weight=_t(WEIGHT), label_smoothing=0.2)),
    ("cross_entropy", {"weight": WEIGHT, "label_smoothing": 0.1}, X, LABELS_IGNORED,
     lambda x, t, r: F.cross_entropy(x, t, reduction=r, weight=_t(WEIGHT),
                                     label_smoothing=0.1)),
    ("nll", {}, LOGP, LABELS, lambda x, t, r: F.nll_loss(x, t, reduction=r)),
    ("nll", {"weight": WEIGHT}, LOGP, LABELS_IGNORED,
     lambda x, t, r: F.nll_loss(x, t, reduction=r, weight=_t(WEIGHT))),
    ("nll", {"weight": WEIGHT}, LOGP, LABELS,
     lambda x, t, r: F.nll_loss(x, t, reduction=r, weight=_t(WEIGHT))),
    ("kl_div", {}, LOGP, PROBS, lambda x, t, r: F.kl_div(x, t, reduction=r)),
    ("kl_div", {"log_target": True}, LOGP, np.log(PROBS),
     lambda x, t, r: F.kl_div(x, t, reduction=r, log_target=True)),
    ("hinge", {}, X, LABELS, lambda x, t, r: F.multi_margin_loss(x, t, reduction=r)),
    ("hinge", {"margin": 0.5, "p": 2.0, "weight": WEIGHT}, X, LABELS,
     lambda x, t, r: F.multi_margin_loss(x, t, reduction=r, p=2, margin=0.5,
                                         weight=_t(WEIGHT))),
]


def _torch_rows(values: torch.Tensor) -> np.ndarray:
    v = values.detach().numpy()
    return v.sum(axis=1) if v.ndim == 2 else v


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("name", "kwargs", "x", "y", "ref"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_loss_value_and_gradient_match_torch(name, kwargs, x, y, ref, reduction):
    loss = nbp.get_loss(name, reduction=reduction, **kwargs)
    targets = loss.prepare_targets(y, K, "float64")
    grad = np.empty_like(x)
    value = loss.forward_backward(x, targets, grad)

    tx = torch.tensor(x, requires_grad=True)
    ty = torch.tensor(y)
    out = ref(tx, ty, reduction)
    # For reduction='none' numbanet returns one value per row and the gradient of the sum.
    out.sum().backward()
    if reduction == "none":
        np.testing.assert_allclose(loss.forward(x, targets), _torch_rows(out), rtol=1e-12,
                                   atol=1e-12)
        assert np.isclose(value, float(out.detach().sum()), rtol=1e-12, atol=1e-12)
    else:
        assert np.isclose(value, float(out.detach()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_kl_div_batchmean_matches_torch():
    loss = nbp.get_loss("kl_div", reduction="batchmean")
    grad = np.empty_like(LOGP)
    value = loss.forward_backward(LOGP, loss.prepare_targets(PROBS, K, "float64"), grad)
    tx = torch.tensor(LOGP, requires_grad=True)
    out = F.kl_div(tx, torch.tensor(PROBS), reduction="batchmean")
    out.backward()
    assert np.isclose(value, float(out.detach()), rtol=1e-12)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-10, atol=1e-13)


def test_cross_entropy_float32_matches_torch_float32():
    x = X.astype(np.float32)
    loss = nbp.get_loss("cross_entropy", label_smoothing=0.1)
    grad = np.empty_like(x)
    value = loss.forward_backward(x, loss.prepare_targets(LABELS, K, "float32"), grad)
    tx = torch.tensor(x, requires_grad=True)
    out = F.cross_entropy(tx, torch.tensor(LABELS), label_smoothing=0.1)
    out.backward()
    assert grad.dtype == np.float32
    assert np.isclose(value, float(out.detach()), rtol=1e-6)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_every_builtin_loss_has_a_torch_case():
    builtins = {q.split(":")[1] for q in nbp.list_losses(qualified=True)
                if q.startswith("numbanet:")}
    assert builtins == {c[0] for c in CASES}
