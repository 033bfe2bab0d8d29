"""Parameters: named views into a model's flat value and gradient buffers."""

from __future__ import annotations

import numpy as np


class Parameter:
    """A trainable array and its gradient.

    Attributes:
        name: qualified name, ``"<layer index>.<local name>"`` (e.g. ``"0.weight"``).
        value: the array itself, a C-contiguous view into the model's flat parameter buffer.
        grad: same shape and dtype, a view into the model's flat gradient buffer; it holds
            d(loss)/d(value) after ``model.backward``.

    Writing into ``value`` (``p.value[...] = new``) changes the model; rebinding the
    attribute would detach it from the flat buffer, so it is read-only.
    """

    __slots__ = ("_name", "_value", "_grad")

    def __init__(self, name: str, value: np.ndarray, grad: np.ndarray) -> None:
        if value.shape != grad.shape or value.dtype != grad.dtype:
            raise ValueError(
                f"Parameter {name!r}: value {value.shape}/{value.dtype} and grad "
                f"{grad.shape}/{grad.dtype} must match"
            )
        self._name = name
        self._value = value
        self._grad = grad

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
    def shape(self) -> tuple[int, ...]:
        return self._value.shape

    def __repr__(self) -> str:
        return f"Parameter({self._name!r}, shape={self._value.shape}, dtype={self._value.dtype})"
