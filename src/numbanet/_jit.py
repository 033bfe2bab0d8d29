"""The one place that chooses Numba compilation flags.

Every kernel in :mod:`numbanet.kernels` is compiled through :func:`kernel` (serial) or
:func:`parallel_kernel` (``parallel=True``), so flags change in one place.

Why these flags:

* ``fastmath`` is the explicit set ``{'reassoc', 'contract', 'nsz', 'arcp'}``, not
  ``True``: ``True`` also enables ``nnan``/``ninf``, which lets LLVM fold ``isnan`` to
  ``False`` and would hide the NaN checks we rely on. ``reassoc`` lets reductions
  vectorize; ``contract`` turns ``a * b + c`` into FMAs.
* ``error_model='numpy'`` makes division by zero return inf/nan instead of raising, which
  removes the per-element zero check that blocks vectorization.
* ``cache=True`` writes compiled code to ``__pycache__`` so a new process does not pay
  the compile time again. Kernels are module-level functions for this reason: closures
  built by factories miss the disk cache in every new process. The cache used is
  :class:`numbanet._kernel_cache.DependencyAwareCache`, not Numba's plain one: its index
  also goes stale when a source file the kernel's module imports changes (the GEMM
  inlines activation code from another module), so no cache ever needs deleting by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numba

from numbanet._kernel_cache import enable_dependency_cache
from numbanet._target import apply_portable_target

# The x86-64 level every kernel is compiled for (see numbanet._target): chosen here,
# before the first kernel is defined, because Numba fixes its target at the first
# compilation. numbanet._target.target_level() reports it.
apply_portable_target()

F = TypeVar("F", bound=Callable[..., Any])

FASTMATH = frozenset({"reassoc", "contract", "nsz", "arcp"})

#: For elementwise and row-wise kernels whose serial and parallel twins must agree bit
#: for bit: without ``reassoc``/``arcp`` LLVM cannot rewrite ``dy * s * (1 - s)`` (or a
#: row sum) differently in the two compilation contexts. Elementwise loops vectorize
#: without them; only reductions need ``reassoc``. Observed: sigmoid_backward's twins
#: differed by 1 ulp in 35% of elements in one cold-cache run.
ELEMENTWISE_FASTMATH = frozenset({"contract", "nsz"})

#: No fastmath flag at all: every operation rounds as written, so however LLVM
#: vectorizes or inlines a loop, its results are the same bits. Optimizer kernels take it
#: (``@kernel(fastmath=set(EXACT_MATH))``): their serial and parallel drivers then agree
#: bit for bit, which lets the update run in parallel on smaller buffers when there are
#: threads to spare (numbanet.kernels.updates.EXACT_PARALLEL_MIN). An update is
#: memory-bound; the flags bought it nothing measurable.
EXACT_MATH: frozenset[str] = frozenset()

_COMMON: dict[str, Any] = {
    "cache": True,
    "fastmath": set(FASTMATH),
    "error_model": "numpy",
    "nogil": True,
}


def _jit(options: dict[str, Any], func: F | None) -> Any:
    cache = options.pop("cache", False)
    if func is None:
        return lambda f: _jit(dict(options, cache=cache), f)
    dispatcher = numba.njit(**options)(func)
    return enable_dependency_cache(dispatcher) if cache else dispatcher


def kernel(func: F | None = None, **overrides: Any) -> Any:
    """Compile ``func`` as a serial kernel with numbanet's flags.

    Usable bare (``@kernel``) or with overrides (``@kernel(inline="always")``).
    """
    return _jit({**_COMMON, **overrides}, func)


def parallel_kernel(func: F | None = None, **overrides: Any) -> Any:
    """Compile ``func`` with ``parallel=True`` (``prange`` loops run on all threads)."""
    return _jit({**_COMMON, "parallel": True, **overrides}, func)
