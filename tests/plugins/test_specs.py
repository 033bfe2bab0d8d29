"""Spec validation: authors get clear errors at import time, not Numba typing errors."""

from __future__ import annotations

import pytest

from numbanet._builtin.sgd import sgd_kernel
from numbanet.kernels.losses import mse_row
from numbanet.specs import LossSpec, OptimizerSpec, flatten_hyperparams


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"name": "Adam"}, ValueError, "lowercase identifier"),
        ({"kernel": 3}, TypeError, "kernel must be an @njit function"),
        ({"hyperparams": {"momentum": 0.9}}, ValueError, "must include 'lr'"),
        ({"hyperparams": {"lr": "fast"}}, TypeError, "default of hyperparameter 'lr'"),
        ({"slots": "buf"}, TypeError, "slots must be a tuple of names"),
        ({"bounds": {"lr": "0..1"}}, ValueError, "is not an interval"),
        ({"bounds": {"beta": "[0, 1]"}}, ValueError, "bound for unknown 'beta'"),
    ],
)
def test_bad_optimizer_spec_is_rejected(kwargs, exc, match):
    args = {"name": "opt", "kernel": sgd_kernel, "hyperparams": {"lr": 0.1}, **kwargs}
    with pytest.raises(exc, match=match):
        OptimizerSpec(**args)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"target": "probs"}, ValueError, "target must be one of"),
        ({"mean_over": "batch"}, ValueError, "mean_over must be"),
        ({"output_activation": "relu"}, ValueError, "output_activation must be one of"),
        ({"hyperparams": {"reduction": 1.0}}, ValueError, "handled by the host"),
        ({"target": "labels_or_dense"}, TypeError, "kernel must be an @njit function"),
    ],
)
def test_bad_loss_spec_is_rejected(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LossSpec(**{"name": "l", "kernel": mse_row, **kwargs})


def test_hyperparameters_flatten_in_declaration_order():
    spec = OptimizerSpec("o", sgd_kernel, {"lr": 0.1, "betas": (0.9, 0.99), "flag": True})
    assert flatten_hyperparams(spec.hyperparams) == (0.1, 0.9, 0.99, 1.0)
    assert spec.hp_index("betas") == 1 and spec.hp_index("flag") == 3
    assert flatten_hyperparams({}) == (0.0,)
