"""Noticing Numba at work during training: compiling kernels, or loading cached ones.

The first training step of a new model shape compiles kernels (10-20 s on a cold
cache) or loads them from numbanet's disk cache (a second or two). :class:`CompileWatch`
tells the fit loop when either happens in its thread, through Numba's public event API
(:mod:`numba.core.event`): ``"numba:compile"`` starts only when a kernel is really
compiled (a cache miss), ``"numba:compiler_lock"`` wraps compiling and cache loading
alike. Steady-state calls of compiled kernels take neither, so the watch costs nothing
per step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from numba.core import event

__all__ = ["COMPILING_MESSAGE", "CompileWatch"]

#: What the progress display prints when kernels are being compiled.
COMPILING_MESSAGE = "compiling kernels (first run only, cached afterwards)..."


class _Listener(event.Listener):
    def __init__(self, on_start: Callable[[], None], on_end: Callable[[], None]) -> None:
        self._on_start, self._on_end = on_start, on_end

    def on_start(self, event: Any) -> None:
        self._on_start()

    def on_end(self, event: Any) -> None:
        self._on_end()


class CompileWatch:
    """A context manager measuring the time this thread spends in Numba's compiler.

    Attributes:
        seconds: time spent compiling or loading cached kernels since entering.
        compiled: whether any kernel was compiled (not just loaded from the cache).

    Args:
        on_compile: called once, from inside Numba, when the first compilation starts
            (the progress display prints :data:`COMPILING_MESSAGE` there).
    """

    def __init__(self, on_compile: Callable[[], None] | None = None) -> None:
        self.seconds = 0.0
        self.compiled = False
        self._on_compile = on_compile
        self._thread = threading.get_ident()
        self._depth = 0
        self._started = 0.0
        self._lock = _Listener(self._lock_start, self._lock_end)
        self._compile = _Listener(self._compile_start, lambda: None)

    def _mine(self) -> bool:
        # Numba's listeners are process-wide; another thread's compilation is not ours.
        return threading.get_ident() == self._thread

    def _lock_start(self) -> None:
        if self._mine():
            self._depth += 1
            if self._depth == 1:  # the compiler lock is re-entrant: time the outermost
                self._started = time.perf_counter()

    def _lock_end(self) -> None:
        if self._mine() and self._depth > 0:
            self._depth -= 1
            if self._depth == 0:
                self.seconds += time.perf_counter() - self._started

    def _compile_start(self) -> None:
        if self._mine() and not self.compiled:
            self.compiled = True
            if self._on_compile is not None:
                self._on_compile()

    def __enter__(self) -> CompileWatch:
        event.register("numba:compiler_lock", self._lock)
        event.register("numba:compile", self._compile)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        event.unregister("numba:compile", self._compile)
        event.unregister("numba:compiler_lock", self._lock)
