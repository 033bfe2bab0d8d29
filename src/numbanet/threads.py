"""One knob for the number of threads every numbanet kernel uses."""

from __future__ import annotations

import numba

__all__ = ["get_num_threads", "max_threads", "set_num_threads"]


def max_threads() -> int:
    """The size of Numba's thread pool (``NUMBA_NUM_THREADS``, by default the core count)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in every parallel kernel launched from the calling thread.

    Args:
        n: between 1 and :func:`max_threads` inclusive.

    Raises:
        TypeError: ``n`` is not an integer.
        ValueError: ``n`` is outside ``1..max_threads()``.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        try:
            import operator

            n = operator.index(n)
        except TypeError:
            raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}") from None
    limit = max_threads()
    if not 1 <= n <= limit:
        raise ValueError(
            f"set_num_threads: n must be between 1 and {limit} (NUMBA_NUM_THREADS), got {n}"
        )
    numba.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads parallel kernels launched from the calling thread use."""
    return int(numba.get_num_threads())
