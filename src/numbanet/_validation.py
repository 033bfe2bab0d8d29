"""Argument checks shared by the public API.

Kernels compiled by Numba raise typing errors that name Numba internals, or read out of
bounds, when given the wrong rank, dtype or layout. Every public entry point therefore
checks its arguments here first and raises a ``TypeError``/``ValueError`` that names the
argument, says what was expected and shows what it got.

Scalar arguments are declared, not checked by hand (scikit-learn's
``_parameter_constraints`` with ``validate_params``): a small constraint object per
argument, written next to the signature, and one place that writes every message::

    @validate_args({"lr": Real(min=0, closed="neither"), "step_size": Integer(min=1)})
    def step_decay(lr: float, step_size: int) -> Schedule: ...

    kp = check_arg("keep_prob", keep_prob, Real(min=0, max=1))  # inside a function

The rules every constraint follows:

* the wrong *type* raises ``TypeError`` saying which type is expected
  (``"epochs must be an int, got float 2.5"``); the right type out of *range* raises
  ``ValueError`` saying the range (``"epochs must be >= 0, got -1"``);
* ``bool`` is never a number (``True`` is not ``1`` here), while numpy integer and
  floating scalars are numbers like ``int`` and ``float``;
* the checked value comes back normalized: ``int(...)`` from :class:`Integer`,
  ``float(...)`` from :class:`Real`, ``bool(...)`` from :class:`Boolean`;
* NaN is never accepted and :class:`Real` rejects infinities unless ``finite=False``;
* where the fix is evident the message says it (``"...; did you mean 'mean'?"``).

The checks run once per call, not per element: a passing :func:`check_arg` costs a
few hundred nanoseconds.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import numbers
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, ParamSpec, TypeVar

import numpy as np

__all__ = [
    "AnyOf",
    "Boolean",
    "Constraint",
    "FloatDtype",
    "InstanceOf",
    "Integer",
    "OneOf",
    "Optional",
    "Real",
    "check_arg",
    "check_float_array",
    "check_positive_int",
    "resolve_dtype",
    "validate_args",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

P = ParamSpec("P")
R = TypeVar("R")

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40


# --------------------------------------------------------------------------- messages


def _shown(value: object) -> str:
    """``value`` as a message shows it: numbers plainly (``0.5``, ``nan``), else a short repr."""
    if isinstance(value, (numbers.Number, np.bool_)) and not isinstance(value, complex):
        return str(value)
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return _repr.repr(value)


def _shown_with_type(value: object) -> str:
    """``value`` with its type, for type errors: ``str '0.1'``, ``float 2.5``, ``None``."""
    if value is None or isinstance(value, np.ndarray):
        return _shown(value)
    return f"{type(value).__name__} {_shown(value)}"


def _join_or(items: Sequence[str]) -> str:
    """``"a, b or c"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def _bound(x: float) -> str:
    """A bound as written in a message: ``0``, ``1``, ``0.5``, ``1e-08``, ``inf``."""
    if math.isfinite(x) and float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


def _number_in_string(value: object) -> str | None:
    """A fix for a number passed as a string (``"0.1"``), else None."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return None
        return f"pass the number {value.strip()}, not the string {value!r}"
    return None


# --------------------------------------------------------------------------- constraints


class Constraint:
    """What one argument accepts. Subclasses set :attr:`what` and implement :meth:`check`.

    Attributes:
        what: the expected type, as a message says it after "must be" (``"an int"``).
        hint: an extra sentence appended to every error from this constraint (the fix).
    """

    __slots__ = ("hint", "what")

    def __init__(self, what: str, hint: str | None = None) -> None:
        self.what = what
        self.hint = hint

    def matches_type(self, value: object) -> bool:
        """Whether ``value`` has an accepted type (its range is not looked at)."""
        raise NotImplementedError

    def check(self, name: str, value: Any, where: str | None = None) -> Any:
        """Return ``value`` normalized, or raise ``TypeError``/``ValueError`` naming ``name``.

        Args:
            name: the argument's name, as the caller spells it.
            value: what the caller passed.
            where: who is checking (``"optimizer 'adam'"``), put before the message.
        """
        raise NotImplementedError

    def fix(self, value: object) -> str | None:
        """A suggestion for a value of the wrong type, or None."""
        return _number_in_string(value)

    # The two messages, built only on failure.
    def type_error(self, name: str, value: object, where: str | None) -> TypeError:
        return TypeError(self._message(name, self.what, _shown_with_type(value), where,
                                       self.fix(value)))

    def value_error(
        self, name: str, expected: str, value: object, where: str | None, fix: str | None = None
    ) -> ValueError:
        return ValueError(self._message(name, expected, _shown(value), where, fix))

    def _message(
        self, name: str, expected: str, got: str, where: str | None, fix: str | None
    ) -> str:
        text = f"{name} must be {expected}, got {got}"
        if where:
            text = f"{where}: {text}"
        for extra in (fix, self.hint):
            if extra:
                text += f"; {extra}"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.what!r})"


class Integer(Constraint):
    """An ``int`` or numpy integer (never a ``bool``) in ``[min, max]``; returns an ``int``.

    Example:
        >>> Integer(min=1).check("epochs", np.int64(3))
        3
    """

    __slots__ = ("max", "min", "range_text")

    def __init__(
        self,
        min: int | None = None,
        max: int | None = None,
        *,
        what: str = "an int",
        hint: str | None = None,
    ) -> None:
        super().__init__(what, hint)
        self.min = None if min is None else int(min)
        self.max = None if max is None else int(max)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"Integer: min ({min}) > max ({max})")
        if self.min is not None and self.max is not None:
            self.range_text = f"in [{self.min}, {self.max}]"
        elif self.min is not None:
            self.range_text = f">= {self.min}"
        elif self.max is not None:
            self.range_text = f"<= {self.max}"
        else:
            self.range_text = ""

    def matches_type(self, value: object) -> bool:
        return type(value) is int or (
            isinstance(value, numbers.Integral) and not isinstance(value, bool)
        )

    def check(self, name: str, value: Any, where: str | None = None) -> int:
        if type(value) is int:  # the common case first: no ABC lookup
            v = value
        elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
            v = int(value)
        else:
            raise self.type_error(name, value, where)
        if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
            raise self.value_error(name, self.range_text, value, where)
        return v

    def __repr__(self) -> str:
        return f"Integer({self.range_text})"

    def fix(self, value: object) -> str | None:
        if isinstance(value, (float, np.floating)) and math.isfinite(value) and (
            float(value).is_integer()
        ):
            return f"pass the int {int(value)}"
        if isinstance(value, (bool, np.bool_)):
            return "a bool is not accepted as a number"
        return _number_in_string(value)


_Closed = Literal["both", "left", "right", "neither"]


class Real(Constraint):
    """A real number (``int``, ``float`` or numpy scalar; never a ``bool``); returns a ``float``.

    Args:
        min, max: bounds, or None for none.
        closed: which bounds are included: ``"both"`` (default), ``"left"``, ``"right"``
            or ``"neither"``. ``Real(min=0, max=1, closed="left")`` is ``[0, 1)``.
        finite: reject infinities (NaN is always rejected).
        what: the expected type as messages say it.
        hint: appended to every error message.

    Example:
        >>> Real(min=0, closed="neither").check("lr", 1)
        1.0
    """

    __slots__ = ("closed", "finite", "max", "min", "range_text")

    def __init__(
        self,
        min: float | None = None,
        max: float | None = None,
        *,
        closed: _Closed = "both",
        finite: bool = True,
        what: str = "a real number",
        hint: str | None = None,
    ) -> None:
        super().__init__(what, hint)
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(
                f"Real: closed must be 'both', 'left', 'right' or 'neither', got {closed!r}"
            )
        self.min = None if min is None else float(min)
        self.max = None if max is None else float(max)
        if self.min is not None and self.max is not None and not self.min <= self.max:
            raise ValueError(f"Real: min ({min}) > max ({max})")
        self.closed = closed
        self.finite = finite
        lo_in = closed in ("both", "left")
        hi_in = closed in ("both", "right")
        if self.min is not None and self.max is not None:
            self.range_text = (f"in {'[' if lo_in else '('}{_bound(self.min)}, "
                               f"{_bound(self.max)}{']' if hi_in else ')'}")
        elif self.min is not None:
            self.range_text = f"{'>=' if lo_in else '>'} {_bound(self.min)}"
        elif self.max is not None:
            self.range_text = f"{'<=' if hi_in else '<'} {_bound(self.max)}"
        else:
            self.range_text = ""
        if finite and (self.min is None or self.max is None):
            self.range_text = f"{self.range_text} and finite" if self.range_text else "finite"
        elif not self.range_text:
            self.range_text = "a number (not NaN)"

    def matches_type(self, value: object) -> bool:
        t = type(value)
        return t is float or t is int or (
            isinstance(value, numbers.Real) and not isinstance(value, bool)
        )

    def check(self, name: str, value: Any, where: str | None = None) -> float:
        t = type(value)
        if t is float or t is int or (
            isinstance(value, numbers.Real) and not isinstance(value, bool)
        ):
            v = float(value)
        else:
            raise self.type_error(name, value, where)
        # Every comparison with NaN is False, so NaN fails the bound tests below; the
        # explicit tests catch it (and infinities) when there are no bounds.
        if self.finite:
            ok = math.isfinite(v)
        else:
            ok = v == v
        if ok and self.min is not None:
            ok = v >= self.min if self.closed in ("both", "left") else v > self.min
        if ok and self.max is not None:
            ok = v <= self.max if self.closed in ("both", "right") else v < self.max
        if not ok:
            raise self.value_error(name, self.range_text, value, where)
        return v

    def __repr__(self) -> str:
        return f"Real({self.range_text})"

    def fix(self, value: object) -> str | None:
        if isinstance(value, (bool, np.bool_)):
            return "a bool is not accepted as a number"
        return _number_in_string(value)


class Boolean(Constraint):
    """``True`` or ``False`` (``bool`` or ``numpy.bool_``; not ``0``/``1``); returns a ``bool``."""

    __slots__ = ()

    def __init__(self, *, what: str = "a bool", hint: str | None = None) -> None:
        super().__init__(what, hint)

    def matches_type(self, value: object) -> bool:
        return isinstance(value, (bool, np.bool_))

    def check(self, name: str, value: Any, where: str | None = None) -> bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise self.type_error(name, value, where)

    def fix(self, value: object) -> str | None:
        return "pass True or False"


class OneOf(Constraint):
    """One of a few fixed values (strings, usually); anything else raises ``ValueError``.

    A misspelt string gets a "did you mean" suggestion. Returns the matching option
    (so ``numpy.str_("sum")`` comes back as the ``str`` ``"sum"``).

    Example:
        >>> OneOf("mean", "sum", "none").check("reduction", "sum")
        'sum'
    """

    __slots__ = ("options",)

    def __init__(self, *options: Any, what: str | None = None, hint: str | None = None) -> None:
        if not options:
            raise ValueError("OneOf needs at least one option")
        super().__init__(what or "one of " + ", ".join(repr(o) for o in options), hint)
        self.options = options

    def matches_type(self, value: object) -> bool:
        return any(isinstance(value, type(o)) for o in self.options)

    def check(self, name: str, value: Any, where: str | None = None) -> Any:
        for option in self.options:
            # Compare types too: True == 1 and 1.0 == 1, but neither is the option 1
            # (while numpy.str_("sum") is the option "sum").
            if value is option or (
                isinstance(value, type(option))
                and (not isinstance(value, bool) or isinstance(option, bool))
                and value == option
            ):
                return option
        raise self.value_error(name, self.what, value, where, self.fix(value))

    def fix(self, value: object) -> str | None:
        if isinstance(value, str):
            words = [o for o in self.options if isinstance(o, str)]
            close = difflib.get_close_matches(value, words, n=1)
            if close:
                return f"did you mean {close[0]!r}?"
        return None

    def __repr__(self) -> str:
        return f"OneOf{self.options!r}"


class InstanceOf(Constraint):
    """An instance of one of ``types``; returned unchanged.

    Example:
        >>> InstanceOf(str).check("name", "adam")
        'adam'
    """

    __slots__ = ("types",)

    def __init__(self, *types: type, what: str | None = None, hint: str | None = None) -> None:
        if not types:
            raise ValueError("InstanceOf needs at least one type")
        super().__init__(what or _join_or([_article(t.__name__) for t in types]), hint)
        self.types = types

    def matches_type(self, value: object) -> bool:
        return isinstance(value, self.types)

    def check(self, name: str, value: Any, where: str | None = None) -> Any:
        if isinstance(value, self.types):
            return value
        raise self.type_error(name, value, where)

    def fix(self, value: object) -> str | None:
        return None


class AnyOf(Constraint):
    """The first of ``constraints`` whose type matches decides (its range error stands).

    Example:
        >>> size = AnyOf(Integer(min=1), Real(min=0, max=1, closed="neither"))
        >>> size.check("test_size", 0.25), size.check("test_size", 10)
        (0.25, 10)
    """

    __slots__ = ("constraints",)

    def __init__(
        self, *constraints: Constraint, what: str | None = None, hint: str | None = None
    ) -> None:
        if not constraints:
            raise ValueError("AnyOf needs at least one constraint")
        super().__init__(what or _join_or([c.what for c in constraints]), hint)
        self.constraints = constraints

    def matches_type(self, value: object) -> bool:
        return any(c.matches_type(value) for c in self.constraints)

    def check(self, name: str, value: Any, where: str | None = None) -> Any:
        for c in self.constraints:
            if c.matches_type(value):
                return c.check(name, value, where)
        raise self.type_error(name, value, where)

    def fix(self, value: object) -> str | None:
        for c in self.constraints:
            suggestion = c.fix(value)
            if suggestion:
                return suggestion
        return None

    def __repr__(self) -> str:
        return f"AnyOf{self.constraints!r}"


class Optional(Constraint):
    """``None`` (returned as is) or whatever ``constraint`` accepts.

    Example:
        >>> Optional(Integer(min=0)).check("seed", None) is None
        True
    """

    __slots__ = ("constraint",)

    def __init__(self, constraint: Constraint, *, hint: str | None = None) -> None:
        parts = (
            [c.what for c in constraint.constraints]
            if isinstance(constraint, AnyOf)
            else [constraint.what]
        )
        super().__init__(_join_or([*parts, "None"]), hint)
        self.constraint = constraint

    def matches_type(self, value: object) -> bool:
        return value is None or self.constraint.matches_type(value)

    def check(self, name: str, value: Any, where: str | None = None) -> Any:
        if value is None:
            return None
        if self.constraint.matches_type(value):
            return self.constraint.check(name, value, where)
        raise self.type_error(name, value, where)

    def fix(self, value: object) -> str | None:
        return self.constraint.fix(value)

    def __repr__(self) -> str:
        return f"Optional({self.constraint!r})"


class FloatDtype(Constraint):
    """``"float32"``/``"float64"`` or anything ``numpy.dtype`` reads as one; returns the dtype.

    The message is :func:`resolve_dtype`'s.
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("'float32' or 'float64'")

    def matches_type(self, value: object) -> bool:
        return True

    def check(self, name: str, value: Any, where: str | None = None) -> np.dtype:
        try:
            return resolve_dtype(value, name)
        except TypeError as exc:
            if where:
                raise TypeError(f"{where}: {exc}") from None
            raise


# --------------------------------------------------------------------------- checking


def check_arg(name: str, value: Any, constraint: Constraint, *, where: str | None = None) -> Any:
    """Return ``value`` normalized if ``constraint`` accepts it, else raise naming ``name``.

    For checks that depend on other arguments or on run-time state (an upper bound of
    :func:`numbanet.threads.max_threads`, the plugin's name in ``where``); otherwise
    prefer declaring the constraint with :func:`validate_args`.

    Args:
        name: the argument's name.
        value: what the caller passed.
        constraint: what the argument accepts.
        where: who is checking, prefixed to the message (``"loss 'mse'"``).

    Raises:
        TypeError: ``value`` has a type ``constraint`` does not accept.
        ValueError: the right type, out of range (or not one of the options).

    Example:
        >>> check_arg("keep_prob", 1, Real(min=0, max=1))
        1.0
    """
    return constraint.check(name, value, where)


def validate_args(
    constraints: Mapping[str, Constraint],
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Declare a function's argument constraints; the wrapper checks and normalizes them.

    Each named argument the caller passes, positionally or by keyword, is replaced by
    what its constraint returns (``int``, ``float``, ``bool``...) before the function
    runs. Defaults are checked once, here, when the function is decorated, and an
    omitted argument arrives in its checked form too (``dtype="float32"`` as a
    ``numpy.dtype``). The constraints stay readable as ``func.arg_constraints``.

    The wrapper costs about half a microsecond per call on top of the checks; for a
    function called on every training step, declare the constraint as a module constant
    and call :func:`check_arg` inside instead.

    Args:
        constraints: argument name -> :class:`Constraint`.

    Raises:
        TypeError: at decoration, for a name that is not a parameter of the function or
            a default that breaks its own constraint.

    Example:
        >>> @validate_args({"n": Integer(min=1), "p": Real(min=0, max=1)})
        ... def sample(n: int, p: float = 0.5) -> tuple[int, float]:
        ...     return n, p
        >>> sample(np.int32(3), p=1)
        (3, 1.0)
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        params = inspect.signature(func).parameters
        positional = [
            n for n, p in params.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        plan: list[tuple[str, int, Callable[[str, Any], Any]]] = []
        # Defaults whose checked form differs from the written one ("float32" -> dtype,
        # 0 -> 0.0): the wrapper passes the checked form, so the body sees one type.
        fills: dict[str, Any] = {}
        for name, constraint in constraints.items():
            param = params.get(name)
            if param is None or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"validate_args: {func.__qualname__} has no argument {name!r}")
            if param.default is not param.empty:
                try:
                    checked = constraint.check(name, param.default)
                except (TypeError, ValueError) as exc:
                    raise TypeError(
                        f"validate_args: the default of {func.__qualname__}'s {name!r} "
                        f"breaks its constraint: {exc}"
                    ) from None
                if checked is not param.default:
                    if param.kind is param.POSITIONAL_ONLY:
                        raise TypeError(
                            f"validate_args: write the default of {func.__qualname__}'s "
                            f"positional-only {name!r} as {checked!r}"
                        )
                    fills[name] = checked
            index = positional.index(name) if name in positional else len(params) + 1
            plan.append((name, index, constraint.check))
        first = min((index for _, index, _ in plan), default=0)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            n = len(args)
            values = list(args) if n > first else args
            for name, index, check in plan:
                if index < n:
                    values[index] = check(name, values[index])  # type: ignore[index]
                elif name in kwargs:
                    kwargs[name] = check(name, kwargs[name])
                elif name in fills:
                    kwargs[name] = fills[name]
            return func(*values, **kwargs)  # type: ignore[arg-type]

        wrapper.arg_constraints = dict(constraints)  # type: ignore[attr-defined]
        return wrapper

    return decorate


_POSITIVE_INT = Integer(min=1)


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
    """Return ``value`` as an int if it is a positive integer, else raise.

    The same as ``check_arg(name, value, Integer(min=1))``.
    """
    return _POSITIVE_INT.check(name, value)
