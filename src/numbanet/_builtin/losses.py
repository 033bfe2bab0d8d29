"""numbanet's built-in losses (PyTorch's ``torch.nn.functional`` semantics).

Every loss takes the raw network outputs ``x`` of shape ``(n, k)`` and accepts
``reduction`` = ``"mean"`` | ``"sum"`` | ``"none"``. Row kernels (value and gradient fused)
are in :mod:`numbanet.kernels.losses`.

=====================  ==========  ==========================================  ==============
name                   targets     loss per element / row                      mean divides by
=====================  ==========  ==========================================  ==============
mse                    dense       (x - t)²                                    n·k
mae (alias l1)         dense       |x - t|                                     n·k
huber                  dense       0.5 d² if |d| < δ else δ(|d| - δ/2)         n·k
smooth_l1              dense       0.5 d²/β if |d| < β else |d| - β/2          n·k
binary_cross_entropy   dense       BCE on logits (sigmoid fused), pos_weight   n·k
cross_entropy          labels or   log-softmax fused; label_smoothing,         Σ w[y] (labels)
                       probs       class ``weight``, ``ignore_index``          n (probs)
nll                    labels      -w_y x_y (x = log-probabilities)            Σ w[y]
kl_div                 dense       t (log t - x) (x = log-probabilities)       n·k; batchmean n
hinge                  labels      w_y/k Σ_{c≠y} max(0, margin - x_y + x_c)^p  n
=====================  ==========  ==========================================  ==============
"""

from __future__ import annotations

from typing import Any

from numbanet.hookspecs import hookimpl
from numbanet.kernels import losses as K
from numbanet.specs import LossSpec


def _hinge_p(hp: dict[str, Any]) -> None:
    if hp["p"] not in (1.0, 2.0):
        raise ValueError(f"loss 'hinge': p must be 1 or 2, got {hp['p']!r}")


MSE = LossSpec("mse", K.mse_row, target="dense", mean_over="elements",
               description="mean squared error (F.mse_loss)")
MAE = LossSpec("mae", K.mae_row, target="dense", mean_over="elements",
               description="mean absolute error (F.l1_loss)")
L1 = LossSpec("l1", K.mae_row, target="dense", mean_over="elements",
              description="alias of mae (F.l1_loss)")
HUBER = LossSpec("huber", K.huber_row, target="dense", hyperparams={"delta": 1.0},
                 mean_over="elements", bounds={"delta": "(0, inf)"},
                 description="Huber loss (F.huber_loss)")
SMOOTH_L1 = LossSpec("smooth_l1", K.smooth_l1_row, target="dense", hyperparams={"beta": 1.0},
                     mean_over="elements", bounds={"beta": "[0, inf)"},
                     description="smooth L1 loss (F.smooth_l1_loss)")
BCE = LossSpec("binary_cross_entropy", K.bce_logits_row, target="dense",
               hyperparams={"pos_weight": 1.0}, mean_over="elements",
               output_activation="sigmoid", bounds={"pos_weight": "[0, inf)"},
               target_range=(0.0, 1.0),
               description="binary cross-entropy on logits (F.binary_cross_entropy_with_logits)")
CROSS_ENTROPY = LossSpec(
    "cross_entropy", K.cross_entropy_labels_row, target="labels_or_dense",
    hyperparams={"label_smoothing": 0.0, "ignore_index": -100},
    dense_kernel=K.cross_entropy_dense_row, ignore_label="ignore_index",
    mean_over="weights", supports_weight=True, output_activation="softmax",
    bounds={"label_smoothing": "[0, 1]"},
    description="softmax cross-entropy on logits, labels or probabilities (F.cross_entropy)",
)
NLL = LossSpec("nll", K.nll_row, target="labels", hyperparams={"ignore_index": -100},
               ignore_label="ignore_index", mean_over="weights", supports_weight=True,
               description="negative log-likelihood of log-probabilities (F.nll_loss)")
KL_DIV = LossSpec("kl_div", K.kl_div_row, target="dense", hyperparams={"log_target": False},
                  mean_over="elements", extra_reductions={"batchmean": "rows"},
                  description="KL divergence, input log-probabilities (F.kl_div)")
HINGE = LossSpec("hinge", K.hinge_row, target="labels", hyperparams={"margin": 1.0, "p": 1.0},
                 mean_over="rows", supports_weight=True, validate=_hinge_p,
                 bounds={"margin": "[0, inf)"},
                 description="multi-class hinge loss (F.multi_margin_loss)")

LOSSES = (MSE, MAE, L1, HUBER, SMOOTH_L1, BCE, CROSS_ENTROPY, NLL, KL_DIV, HINGE)


@hookimpl
def numbanet_register_losses() -> list[LossSpec]:
    return list(LOSSES)
