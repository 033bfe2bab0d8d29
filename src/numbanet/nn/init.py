"""Weight initialisation chosen by the activation that follows the layer.

The scheme for each activation is the ``init`` field of its row in
:data:`numbanet.kernels.activations.ACTIVATION_TABLE`; this module implements the schemes:

* ``"he_uniform"`` (the ReLU family, e.g. relu, gelu): He/Kaiming uniform,
  ``U(-sqrt(6 / fan_in), sqrt(6 / fan_in))`` (He et al., 2015), which keeps the variance
  of activations constant through layers that zero half their inputs.
* ``"lecun_normal"`` (selu): ``N(0, 1 / fan_in)`` (Klambauer et al., 2017), required for
  self-normalisation.
* ``"glorot_uniform"`` (e.g. tanh, sigmoid, softmax, and names not in the table):
  Glorot/Xavier uniform, ``U(-sqrt(6 / (fan_in + fan_out)), ...)`` (Glorot & Bengio, 2010).

Biases start at zero.
"""

from __future__ import annotations

import numpy as np

from numbanet.kernels.activations import ACTIVATION_TABLE

_SCHEMES: dict[str, str] = {spec.name: spec.init for spec in ACTIVATION_TABLE}

#: Activations initialised with He uniform (derived from the table).
HE_ACTIVATIONS = frozenset(name for name, scheme in _SCHEMES.items() if scheme == "he_uniform")
#: Activations initialised with LeCun normal (derived from the table).
LECUN_ACTIVATIONS = frozenset(
    name for name, scheme in _SCHEMES.items() if scheme == "lecun_normal"
)


def init_scheme(activation: str) -> str:
    """Name of the scheme used for a layer followed by ``activation``."""
    return _SCHEMES.get(activation, "glorot_uniform")


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
