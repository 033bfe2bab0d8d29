"""Every built-in optimizer matches torch.optim over 12 steps in float64.

One kwargs dict drives both libraries; the gradient at each step is a fixed function of
the current parameters (a non-convex toy objective), computed identically on both sides,
so any divergence in the update rule compounds and shows.
"""

from __future__ import annotations

import numpy as np
import pytest

import numbanet.plugins as nbp

torch = pytest.importorskip("torch")

CASES = [
    ("sgd", "SGD", {"lr": 0.1}),
    ("sgd", "SGD", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", "SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.5, "weight_decay": 0.01}),
    ("sgd", "SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01}),
    ("adagrad", "Adagrad", {"lr": 0.1}),
    ("adagrad", "Adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01,
                            "initial_accumulator_value": 0.1, "eps": 1e-8}),
    ("rmsprop", "RMSprop", {"lr": 0.01}),
    ("rmsprop", "RMSprop", {"lr": 0.01, "momentum": 0.5}),
    ("rmsprop", "RMSprop", {"lr": 0.01, "alpha": 0.9, "centered": True, "momentum": 0.9,
                            "weight_decay": 0.01}),
    ("adadelta", "Adadelta", {}),
    ("adadelta", "Adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.01}),
    ("adam", "Adam", {"lr": 0.01}),
    ("adam", "Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.01,
                      "amsgrad": True}),
    ("adamw", "AdamW", {"lr": 0.01}),
    ("adamw", "AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    ("adamax", "Adamax", {"lr": 0.01}),
    ("adamax", "Adamax", {"lr": 0.01, "betas": (0.8, 0.9), "weight_decay": 0.01}),
    ("nadam", "NAdam", {"lr": 0.01}),
    ("nadam", "NAdam", {"lr": 0.01, "weight_decay": 0.01, "momentum_decay": 0.01}),
    ("nadam", "NAdam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("radam", "RAdam", {"lr": 0.01}),
    ("radam", "RAdam", {"lr": 0.01, "weight_decay": 0.01}),
    ("radam", "RAdam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
]

STEPS = 12


@pytest.fixture(autouse=True)
def _torch_float64_scalars():
    # torch keeps per-step scalars such as NAdam's mu_product in float32 unless the default
    # dtype is float64; compare against its full-precision arithmetic.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _grad(p: np.ndarray, t: int) -> np.ndarray:
    return np.sin(3.0 * p) + 0.5 * p + 0.1 * np.cos(t + np.arange(p.size))


def _run_pair(name, torch_name, kwargs, lr_change_at=None):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(41)
    p = p0.copy()
    opt = nbp.get_optimizer(name, **kwargs)
    tp = torch.tensor(p0.copy(), dtype=torch.float64, requires_grad=True)
    topt = getattr(torch.optim, torch_name)([tp], **kwargs)
    for t in range(STEPS):
        if t == lr_change_at:
            opt.lr = opt.lr * 0.3
            for group in topt.param_groups:
                group["lr"] = group["lr"] * 0.3
        opt.step(p, _grad(p, t))
        tp.grad = torch.tensor(_grad(tp.detach().numpy().copy(), t))
        topt.step()
    return p, tp.detach().numpy()


@pytest.mark.parametrize(("name", "torch_name", "kwargs"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_optimizer_matches_torch_12_steps(name, torch_name, kwargs):
    ours, theirs = _run_pair(name, torch_name, kwargs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,torch_name", [("sgd", "SGD"), ("adam", "Adam"),
                                             ("radam", "RAdam"), ("nadam", "NAdam")])
def test_learning_rate_change_between_steps_matches_torch(name, torch_name):
    kwargs = {"lr": 0.05, "momentum": 0.9} if name == "sgd" else {"lr": 0.05}
    ours, theirs = _run_pair(name, torch_name, kwargs, lr_change_at=5)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_every_builtin_optimizer_has_a_torch_case():
    builtins = {q.split(":")[1] for q in nbp.list_optimizers(qualified=True)
                if q.startswith("numbanet:")}
    assert builtins == {c[0] for c in CASES}


FLOAT32_CASES = [c for c in CASES if c[2].get("lr", 1.0) >= 0.01][::3]


@pytest.mark.parametrize(("name", "torch_name", "kwargs"), FLOAT32_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(FLOAT32_CASES)])
def test_float32_optimizer_tracks_torch_float32(name, torch_name, kwargs):
    # float32 parameters update in float32 arithmetic, as in PyTorch: agreement to float32
    # rounding after 12 steps, not bit-for-bit (operation order differs).
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(41).astype(np.float32)
    p = p0.copy()
    opt = nbp.get_optimizer(name, **kwargs)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    topt = getattr(torch.optim, torch_name)([tp], **kwargs)
    for t in range(STEPS):
        opt.step(p, _grad(p.astype(np.float64), t).astype(np.float32))
        tp.grad = torch.tensor(_grad(tp.detach().numpy().astype(np.float64), t).astype(np.float32))
        topt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=2e-5, atol=2e-6)
