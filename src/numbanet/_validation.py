"""Argument checks shared by the public API.

Kernels compiled by Numba raise typing errors that name Numba internals, or read out of
bounds, when given the wrong rank, dtype or layout. Every public entry point therefore
checks its arrays here first and raises a ``TypeError``/``ValueError`` that names the
argument and says what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def resolve_dtype(dtype: object, name: str = "dtype") -> np.dtype:
    """Return ``np.float32`` or ``np.float64`` for a user-given dtype, else raise ``TypeError``."""
    try:
        resolved = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{name} must be 'float32' or 'float64', got {dtype!r}") from None
    if resolved not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be 'float32' or 'float64', got {resolved.name}")
    return resolved


def check_float_array(
    name: str,
    array: object,
    *,
    ndim: int | None = None,
    dtype: np.dtype | None = None,
    shape: Sequence[int | None] | None = None,
    c_contiguous: bool = True,
    writeable: bool = False,
    finite: bool = False,
) -> np.ndarray:
    """Check that ``array`` is a float32/float64 ndarray with the stated properties.

    Args:
        name: the argument's name, used in error messages.
        array: the value to check. It is returned unchanged; nothing is copied.
        ndim: required number of dimensions.
        dtype: required dtype; otherwise float32 or float64 is accepted.
        shape: required shape; ``None`` entries match any size.
        c_contiguous: require C-contiguous memory (kernels index raw rows).
        writeable: require a writeable array (outputs).
        finite: reject NaN and infinity (costs one pass over the data).

    Raises:
        TypeError: not an ndarray, or the wrong dtype.
        ValueError: wrong rank, shape, layout, writeability, or non-finite values.
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(array).__name__}")
    if dtype is not None:
        if array.dtype != dtype:
            raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {array.dtype}")
    elif array.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {array.ndim}-D with shape {array.shape}")
    if shape is not None:
        expected = tuple(shape)
        if len(expected) != array.ndim or any(
            want is not None and want != got
            for want, got in zip(expected, array.shape, strict=True)
        ):
            shown = tuple("*" if s is None else s for s in expected)
            raise ValueError(f"{name} must have shape {shown}, got {array.shape}")
    if c_contiguous and not array.flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous; pass numpy.ascontiguousarray({name}) instead"
        )
    if writeable and not array.flags.writeable:
        raise ValueError(f"{name} must be writeable (it receives the result)")
    if finite and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return array


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)
