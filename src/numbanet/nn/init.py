"""Weight initialisation chosen by the activation that follows the layer.

* ReLU family (relu, leaky_relu, elu, gelu, silu): He/Kaiming uniform,
  ``U(-sqrt(6 / fan_in), sqrt(6 / fan_in))`` (He et al., 2015), which keeps the variance of
  activations constant through layers that zero half their inputs.
* selu: LeCun normal, ``N(0, 1 / fan_in)`` (Klambauer et al., 2017), required for
  self-normalisation.
* everything else (identity, sigmoid, tanh, softplus, softmax, log_softmax): Glorot/Xavier
  uniform, ``U(-sqrt(6 / (fan_in + fan_out)), ...)`` (Glorot & Bengio, 2010).

Biases start at zero.
"""

from __future__ import annotations

import numpy as np

HE_ACTIVATIONS = frozenset({"relu", "leaky_relu", "elu", "gelu", "silu"})
LECUN_ACTIVATIONS = frozenset({"selu"})


def init_scheme(activation: str) -> str:
    """Name of the scheme used for a layer followed by ``activation``."""
    if activation in HE_ACTIVATIONS:
        return "he_uniform"
    if activation in LECUN_ACTIVATIONS:
        return "lecun_normal"
    return "glorot_uniform"


def init_weight(
    rng: np.random.Generator, fan_in: int, fan_out: int, activation: str, out: np.ndarray
) -> None:
    """Fill ``out`` (shape ``(fan_in, fan_out)``) with initial weights.

    Draws in float64 and casts, so float32 and float64 models with one seed start from
    the same numbers (rounded).
    """
    scheme = init_scheme(activation)
    shape = (fan_in, fan_out)
    if scheme == "he_uniform":
        limit = np.sqrt(6.0 / fan_in)
        out[...] = rng.uniform(-limit, limit, size=shape)
    elif scheme == "lecun_normal":
        out[...] = rng.normal(0.0, np.sqrt(1.0 / fan_in), size=shape)
    else:
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        out[...] = rng.uniform(-limit, limit, size=shape)
