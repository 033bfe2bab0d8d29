"""Learning-rate schedules: plain callables ``schedule(t) -> lr``.

``t`` is a 0-based count: epochs or optimizer steps, whichever the caller uses. Pass a
schedule to :class:`numbanet.callbacks.LearningRateScheduler` (``per="epoch"`` or
``per="step"``), or call it yourself and set ``optimizer.lr``. Each schedule is a pure
function of ``t``, so a resumed run (which continues ``t``) follows the same curve.

The formulas match PyTorch's ``StepLR``, ``ExponentialLR``, ``CosineAnnealingLR`` (the
closed form, with an optional linear warmup in front) and ``OneCycleLR`` (learning rate
only), so the same numbers drive both libraries.

Example:
    >>> from numbanet import schedules
    >>> s = schedules.cosine_decay(0.1, total=100, warmup=10)
    >>> round(s(0), 4), round(s(10), 4), round(s(100), 4)
    (0.01, 0.1, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["Schedule", "cosine_decay", "exponential_decay", "one_cycle", "step_decay"]


class Schedule:
    """A named learning-rate schedule: ``schedule(t) -> float`` for integer ``t >= 0``."""

    __slots__ = ("_fn", "_repr")

    def __init__(self, fn: Callable[[int], float], description: str) -> None:
        self._fn = fn
        self._repr = description

    def __call__(self, t: int) -> float:
        if isinstance(t, bool) or not isinstance(t, int):
            try:
                import operator

                t = operator.index(t)
            except TypeError:
                raise TypeError(f"schedule: t must be an int, got {type(t).__name__}") from None
        if t < 0:
            raise ValueError(f"schedule: t must be >= 0, got {t}")
        return float(self._fn(t))

    def __repr__(self) -> str:
        return self._repr


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return float(value)


def _nonneg(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be >= 0 and finite, got {value}")
    return float(value)


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def step_decay(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``lr * gamma ** (t // step_size)``: drop by ``gamma`` every ``step_size`` (``StepLR``)."""
    lr, gamma = _positive("lr", lr), _nonneg("gamma", gamma)
    step_size = _count("step_size", step_size, 1)
    return Schedule(lambda t: lr * gamma ** (t // step_size),
                    f"step_decay(lr={lr}, step_size={step_size}, gamma={gamma})")


def exponential_decay(lr: float, gamma: float) -> Schedule:
    """``lr * gamma ** t`` (``ExponentialLR``)."""
    lr, gamma = _positive("lr", lr), _nonneg("gamma", gamma)
    return Schedule(lambda t: lr * gamma**t, f"exponential_decay(lr={lr}, gamma={gamma})")


def cosine_decay(lr: float, total: int, warmup: int = 0, min_lr: float = 0.0,
                 warmup_start: float | None = None) -> Schedule:
    """Linear warmup, then half a cosine from ``lr`` down to ``min_lr``.

    For ``t < warmup``: linear from ``warmup_start`` (default ``lr / warmup``, so the
    first step is not wasted at zero) to ``lr`` at ``t = warmup``. Then
    ``min_lr + (lr - min_lr) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2``,
    reaching ``min_lr`` at ``t = total`` and staying there. With ``warmup=0`` this is
    PyTorch's ``CosineAnnealingLR(T_max=total, eta_min=min_lr)``.

    Args:
        lr: the peak rate.
        total: ``t`` at which the rate reaches ``min_lr``; ``total > warmup``.
        warmup: warmup length (0 for none).
        min_lr: the final rate, ``0 <= min_lr <= lr``.
        warmup_start: the rate at ``t = 0`` when ``warmup > 0``.
    """
    lr, min_lr = _positive("lr", lr), _nonneg("min_lr", min_lr)
    total, warmup = _count("total", total, 1), _count("warmup", warmup, 0)
    if warmup >= total:
        raise ValueError(f"warmup ({warmup}) must be smaller than total ({total})")
    if min_lr > lr:
        raise ValueError(f"min_lr ({min_lr}) must not exceed lr ({lr})")
    start = lr / warmup if warmup and warmup_start is None else (
        _nonneg("warmup_start", warmup_start) if warmup_start is not None else lr)
    span = total - warmup

    def fn(t: int) -> float:
        if t < warmup:
            return start + (lr - start) * t / warmup
        if t >= total:
            return min_lr
        return min_lr + (lr - min_lr) * (1.0 + math.cos(math.pi * (t - warmup) / span)) / 2.0

    return Schedule(fn, f"cosine_decay(lr={lr}, total={total}, warmup={warmup}, "
                        f"min_lr={min_lr})")


def one_cycle(max_lr: float, total: int, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4) -> Schedule:
    """The one-cycle policy (Smith & Topin 2017), as PyTorch's ``OneCycleLR`` sets the rate.

    Rises from ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of
    ``total`` steps, then falls to ``max_lr / div_factor / final_div_factor`` at step
    ``total - 1``, both along half cosines. Momentum is not cycled here.

    Args:
        max_lr: the peak rate.
        total: number of steps in the cycle (``>= 2``); later ``t`` keep the final rate.
        pct_start: fraction of the cycle spent rising, in ``(0, 1)``.
        div_factor: ``max_lr / initial_lr``.
        final_div_factor: ``initial_lr / final_lr``.
    """
    max_lr = _positive("max_lr", max_lr)
    total = _count("total", total, 2)
    if isinstance(pct_start, bool) or not isinstance(pct_start, (int, float)) or not (
        0.0 < pct_start < 1.0
    ):
        raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}")
    initial = max_lr / _positive("div_factor", div_factor)
    final = initial / _positive("final_div_factor", final_div_factor)
    # PyTorch's phase boundaries, kept as floats like theirs.
    peak = float(pct_start * total) - 1.0
    end = float(total - 1)
    if peak <= 0 or peak >= end:
        raise ValueError(f"pct_start={pct_start} with total={total} leaves an empty phase")

    def anneal(a: float, b: float, pct: float) -> float:
        return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1.0)

    def fn(t: int) -> float:
        if t <= peak:
            return anneal(initial, max_lr, t / peak)
        if t >= end:
            return final
        return anneal(max_lr, final, (t - peak) / (end - peak))

    return Schedule(fn, f"one_cycle(max_lr={max_lr}, total={total}, pct_start={pct_start})")
