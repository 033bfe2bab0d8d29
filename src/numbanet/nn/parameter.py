"""Parameters: named views into a model's flat value and gradient buffers."""

from __future__ import annotations

import numpy as np

#: What a parameter is for, declared by its layer (``Module.parameter_roles``). The
#: gradient pipeline's weight decay applies to ``"weight"`` parameters by default and
#: skips biases and normalization scales/shifts.
ROLES = ("weight", "bias", "norm")


class Parameter:
    """A trainable array and its gradient.

    Attributes:
        name: qualified name, ``"<layer index>.<local name>"`` (e.g. ``"0.weight"``).
        value: the array itself, a C-contiguous view into the model's flat parameter buffer.
        grad: same shape and dtype, a view into the model's flat gradient buffer; it holds
            d(loss)/d(value) after ``model.backward``.
        role: ``"weight"``, ``"bias"`` or ``"norm"`` (see :data:`ROLES`), declared by the
            layer; decides default weight decay.

    Writing into ``value`` (``p.value[...] = new``) changes the model; rebinding the
    attribute would detach it from the flat buffer, so it is read-only.
    """

    __slots__ = ("_name", "_value", "_grad", "_role")

    def __init__(self, name: str, value: np.ndarray, grad: np.ndarray,
                 role: str = "weight") -> None:
        if value.shape != grad.shape or value.dtype != grad.dtype:
            raise ValueError(
                f"Parameter {name!r}: value {value.shape}/{value.dtype} and grad "
                f"{grad.shape}/{grad.dtype} must match"
            )
        self._name = name
        self._value = value
        self._grad = grad
        if role not in ROLES:
            raise ValueError(f"Parameter {name!r}: role must be one of {ROLES}, got {role!r}")
        self._role = role

    @property
    def name(self) -> str:
        return self._name

    @property
    def value(self) -> np.ndarray:
        return self._value

    @property
    def grad(self) -> np.ndarray:
        return self._grad

    @property
    def role(self) -> str:
        return self._role

    @property
    def shape(self) -> tuple[int, ...]:
        return self._value.shape

    def __repr__(self) -> str:
        return f"Parameter({self._name!r}, shape={self._value.shape}, dtype={self._value.dtype})"
