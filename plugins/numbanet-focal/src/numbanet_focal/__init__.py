"""Softmax focal loss for numbanet, on logits with integer class labels.

For row ``r`` with label ``y``, ``p = softmax(x_r)``, focusing parameter ``γ`` and
optional per-class weights ``w`` (the ``alpha`` of the paper, passed as ``weight``)::

    loss_r = -w_y (1 - p_y)^γ log p_y

``γ = 0`` is weighted cross-entropy. ``reduction="mean"`` divides by the number of rows.
The gradient with respect to the logits is, with ``δ`` the one-hot of ``y``::

    dloss_r/dx_c = w_y (δ_c - p_c) [γ p_y (1 - p_y)^(γ-1) log p_y - (1 - p_y)^γ]

Reference: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.

Example:
    >>> import numbanet as nbn
    >>> loss = nbn.get_loss("focal", gamma=2.0)
"""

from __future__ import annotations

import math

from numbanet import hookspecs
from numbanet.jit import kernel
from numbanet.specs import LossSpec

__version__ = "0.1.0"


@kernel
def focal_row(r, x, t, aux, hp, gs, grad):
    """Loss of row ``r`` and ``grad[r, :] = gs * dloss_r/dx[r, :]``; ``hp = (gamma,)``.

    The host calls this from a ``prange`` over rows; it writes row ``r`` only. Arithmetic
    is float64 whatever the dtype of ``x``.
    """
    gamma = hp[0]
    xr = x[r]
    gr = grad[r]
    k = xr.shape[0]
    m = -math.inf
    for j in range(k):
        if xr[j] > m:
            m = float(xr[j])
    s = 0.0
    for j in range(k):
        s += math.exp(xr[j] - m)
    y = t[r]
    logp = float(xr[y]) - m - math.log(s)
    p = math.exp(logp)
    q = 1.0 - p
    qg = q**gamma
    wy = aux[y]
    # As p_y -> 1 the first term tends to 0 for any gamma > 0 (log p_y ~ -(1 - p_y)).
    first = gamma * p * logp * qg / q if q > 1e-300 else 0.0
    a = gs * wy * (first - qg)
    for j in range(k):
        gr[j] = -a * math.exp(xr[j] - m) / s
    gr[y] += a
    return -wy * qg * logp


FOCAL = LossSpec(
    name="focal",
    kernel=focal_row,
    target="labels",
    hyperparams={"gamma": 2.0},
    mean_over="rows",
    supports_weight=True,
    output_activation="softmax",
    description="softmax focal loss on logits (Lin et al. 2017)",
    bounds={"gamma": "[0, inf)"},
)


@hookspecs.hookimpl
def numbanet_register_losses() -> list[LossSpec]:
    return [FOCAL]
