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

from numbanet._validation import Integer, Optional, Real, check_arg, validate_args

__all__ = ["Schedule", "cosine_decay", "exponential_decay", "one_cycle", "step_decay"]

_STEP = Integer(min=0)
_POSITIVE = Real(min=0, closed="neither")
_NON_NEGATIVE = Real(min=0)


class Schedule:
    """A named learning-rate schedule: ``schedule(t) -> float`` for integer ``t >= 0``."""

    __slots__ = ("_fn", "_repr")

    def __init__(self, fn: Callable[[int], float], description: str) -> None:
        self._fn = fn
        self._repr = description

    def __call__(self, t: int) -> float:
        return float(self._fn(check_arg("t", t, _STEP, where="schedule")))

    def __repr__(self) -> str:
        return self._repr


@validate_args({"lr": _POSITIVE, "step_size": Integer(min=1), "gamma": _NON_NEGATIVE})
def step_decay(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``lr * gamma ** (t // step_size)``: drop by ``gamma`` every ``step_size`` (``StepLR``)."""
    return Schedule(lambda t: lr * gamma ** (t // step_size),
                    f"step_decay(lr={lr}, step_size={step_size}, gamma={gamma})")


@validate_args({"lr": _POSITIVE, "gamma": _NON_NEGATIVE})
def exponential_decay(lr: float, gamma: float) -> Schedule:
    """``lr * gamma ** t`` (``ExponentialLR``)."""
    return Schedule(lambda t: lr * gamma**t, f"exponential_decay(lr={lr}, gamma={gamma})")


@validate_args({"lr": _POSITIVE, "total": Integer(min=1), "warmup": Integer(min=0),
                "min_lr": _NON_NEGATIVE, "warmup_start": Optional(_NON_NEGATIVE)})
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
    if warmup >= total:
        raise ValueError(f"warmup ({warmup}) must be smaller than total ({total})")
    if min_lr > lr:
        raise ValueError(f"min_lr ({min_lr}) must not exceed lr ({lr})")
    if warmup_start is not None:
        start = warmup_start
    else:
        start = lr / warmup if warmup else lr
    span = total - warmup

    def fn(t: int) -> float:
        if t < warmup:
            return start + (lr - start) * t / warmup
        if t >= total:
            return min_lr
        return min_lr + (lr - min_lr) * (1.0 + math.cos(math.pi * (t - warmup) / span)) / 2.0

    return Schedule(fn, f"cosine_decay(lr={lr}, total={total}, warmup={warmup}, "
                        f"min_lr={min_lr})")


@validate_args({"max_lr": _POSITIVE, "total": Integer(min=2),
                "pct_start": Real(min=0, max=1, closed="neither"),
                "div_factor": _POSITIVE, "final_div_factor": _POSITIVE})
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
    initial = max_lr / div_factor
    final = initial / final_div_factor
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
