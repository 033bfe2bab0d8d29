"""The declared argument constraints of numbanet._validation, against hand-written answers.

Every expectation here is written out by hand: which values pass, what they come back
as (``int``/``float``/``bool``), and the exact message a caller sees when they do not.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from numbanet._validation import (
    AnyOf,
    Boolean,
    FloatDtype,
    InstanceOf,
    Integer,
    OneOf,
    Optional,
    Real,
    check_arg,
    check_positive_int,
    validate_args,
)

GENERATOR = InstanceOf(np.random.Generator, what="a numpy.random.Generator")


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize(
    ("constraint", "value", "expected", "expected_type"),
    [
        (Integer(), 0, 0, int),
        (Integer(), -7, -7, int),
        (Integer(min=1), np.int64(3), 3, int),
        (Integer(min=1), np.uint8(255), 255, int),
        (Integer(min=0, max=4), 4, 4, int),
        (Integer(min=0, max=4), 0, 0, int),
        (Integer(max=-1), -1, -1, int),
        (Real(), 2, 2.0, float),
        (Real(), -1e300, -1e300, float),
        (Real(min=0, max=1), np.float32(0.5), 0.5, float),
        (Real(min=0, max=1), np.int16(1), 1.0, float),
        (Real(min=0, max=1), 0, 0.0, float),
        (Real(min=0, max=1, closed="left"), 0.0, 0.0, float),
        (Real(min=0, max=1, closed="right"), 1.0, 1.0, float),
        (Real(min=0, closed="neither"), 5e-324, 5e-324, float),
        (Real(finite=False), math.inf, math.inf, float),
        (Real(min=0, finite=False), math.inf, math.inf, float),
        (Boolean(), True, True, bool),
        (Boolean(), np.False_, False, bool),
        (OneOf("mean", "sum"), "sum", "sum", str),
        (OneOf(None, "softmax"), None, None, type(None)),
        (OneOf("mean", "sum"), np.str_("sum"), "sum", str),
        (OneOf(0, 1, True), True, True, bool),
        (InstanceOf(str), "adam", "adam", str),
        (InstanceOf(int, str), "x", "x", str),
        (Optional(Integer(min=0)), None, None, type(None)),
        (Optional(Integer(min=0)), np.int32(5), 5, int),
        (AnyOf(Integer(min=1), Real(min=0, max=1, closed="neither")), 0.25, 0.25, float),
        (AnyOf(Integer(min=1), Real(min=0, max=1, closed="neither")), np.int64(10), 10, int),
    ],
)
def test_accepted_values_come_back_normalized(constraint, value, expected, expected_type):
    got = check_arg("x", value, constraint)
    assert got == expected and type(got) is expected_type


def test_instance_and_generator_come_back_as_the_same_object():
    rng = np.random.default_rng(0)
    assert check_arg("seed", rng, Optional(AnyOf(Integer(min=0), GENERATOR))) is rng


def test_float_dtype_resolves_names_and_types():
    assert check_arg("dtype", "float32", FloatDtype()) == np.float32
    assert check_arg("dtype", np.float64, FloatDtype()) == np.dtype("float64")


# --------------------------------------------------------------------------- rejected


@pytest.mark.parametrize(
    ("constraint", "value", "error", "message"),
    [
        # Types: a bool is never a number; a float is not an int even when integral.
        (Integer(), True, TypeError,
         "x must be an int, got bool True; a bool is not accepted as a number"),
        (Integer(), np.True_, TypeError,
         "x must be an int, got bool True; a bool is not accepted as a number"),
        (Integer(), 2.5, TypeError, "x must be an int, got float 2.5"),
        (Integer(), 3.0, TypeError, "x must be an int, got float 3.0; pass the int 3"),
        (Integer(), "3", TypeError,
         "x must be an int, got str '3'; pass the number 3, not the string '3'"),
        (Integer(), None, TypeError, "x must be an int, got None"),
        (Real(), False, TypeError,
         "x must be a real number, got bool False; a bool is not accepted as a number"),
        (Real(), "abc", TypeError, "x must be a real number, got str 'abc'"),
        (Real(), 1 + 2j, TypeError, "x must be a real number, got complex (1+2j)"),
        (Real(), np.ones(3), TypeError,
         "x must be a real number, got an array of shape (3,) and dtype float64"),
        (Real(what="a number of seconds"), [1], TypeError,
         "x must be a number of seconds, got list [1]"),
        (Boolean(), 1, TypeError, "x must be a bool, got int 1; pass True or False"),
        (Boolean(), "yes", TypeError, "x must be a bool, got str 'yes'; pass True or False"),
        (InstanceOf(dict), [], TypeError, "x must be a dict, got list []"),
        (InstanceOf(int, str), 1.5, TypeError, "x must be an int or a str, got float 1.5"),
        (Optional(Real(min=0)), "x", TypeError, "x must be a real number or None, got str 'x'"),
        (Optional(AnyOf(Integer(min=0), GENERATOR)), 1.5, TypeError,
         "x must be an int, a numpy.random.Generator or None, got float 1.5"),
        # Ranges of integers: closed at both ends.
        (Integer(min=1), 0, ValueError, "x must be >= 1, got 0"),
        (Integer(min=1), np.int64(-5), ValueError, "x must be >= 1, got -5"),
        (Integer(max=3), 4, ValueError, "x must be <= 3, got 4"),
        (Integer(min=1, max=8), 9, ValueError, r"x must be in [1, 8], got 9"),
        # Ranges of reals: each kind of bound, and NaN / infinity.
        (Real(min=0), -0.1, ValueError, "x must be >= 0 and finite, got -0.1"),
        (Real(min=0, closed="neither"), 0.0, ValueError, "x must be > 0 and finite, got 0.0"),
        (Real(min=0, closed="right"), 0, ValueError, "x must be > 0 and finite, got 0"),
        (Real(max=1), 1.5, ValueError, "x must be <= 1 and finite, got 1.5"),
        (Real(max=1, closed="left"), 1.0, ValueError, "x must be < 1 and finite, got 1.0"),
        (Real(min=0, max=1), 1.5, ValueError, "x must be in [0, 1], got 1.5"),
        (Real(min=0, max=1, closed="left"), 1.0, ValueError, "x must be in [0, 1), got 1.0"),
        (Real(min=0, max=1, closed="right"), 0.0, ValueError, "x must be in (0, 1], got 0.0"),
        (Real(min=0, max=1, closed="neither"), 1, ValueError, "x must be in (0, 1), got 1"),
        (Real(min=1e-8, max=0.5), 0.0, ValueError, "x must be in [1e-08, 0.5], got 0.0"),
        (Real(min=0, max=1), math.nan, ValueError, "x must be in [0, 1], got nan"),
        (Real(), math.nan, ValueError, "x must be finite, got nan"),
        (Real(), -math.inf, ValueError, "x must be finite, got -inf"),
        (Real(min=0), math.inf, ValueError, "x must be >= 0 and finite, got inf"),
        (Real(finite=False), math.nan, ValueError, "x must be a number (not NaN), got nan"),
        (Real(min=0, finite=False), math.nan, ValueError, "x must be >= 0, got nan"),
        (Real(min=0, max=1), np.float32(2), ValueError, "x must be in [0, 1], got 2.0"),
        # Options: compared with their type, so True is not 1; a near miss is named.
        (OneOf("mean", "sum", "none"), "meen", ValueError,
         "x must be one of 'mean', 'sum', 'none', got 'meen'; did you mean 'mean'?"),
        (OneOf("mean", "sum", "none"), 1, ValueError,
         "x must be one of 'mean', 'sum', 'none', got 1"),
        (OneOf(0, 1), True, ValueError, "x must be one of 0, 1, got True"),
        (OneOf(0, 1), 1.0, ValueError, "x must be one of 0, 1, got 1.0"),
        (OneOf(None, "softmax"), "sigmoid", ValueError,
         "x must be one of None, 'softmax', got 'sigmoid'"),
        (OneOf("a", "b"), np.array(["a"]), ValueError,
         "x must be one of 'a', 'b', got an array of shape (1,) and dtype <U1"),
        # A range error of the alternative whose type matched stands.
        (Optional(Integer(min=0)), -1, ValueError, "x must be >= 0, got -1"),
        (AnyOf(Integer(min=1), Real(min=0, max=1, closed="neither")), 0.0, ValueError,
         "x must be in (0, 1), got 0.0"),
        (AnyOf(Integer(min=1), Real(min=0, max=1, closed="neither")), 0, ValueError,
         "x must be >= 1, got 0"),
        (AnyOf(Integer(), Boolean()), "t", TypeError,
         "x must be an int or a bool, got str 't'; pass True or False"),
        (FloatDtype(), "int8", TypeError, "x must be 'float32' or 'float64', got int8"),
    ],
)
def test_rejected_values_get_the_exact_message(constraint, value, error, message):
    with pytest.raises(error) as info:
        check_arg("x", value, constraint)
    assert str(info.value) == message


def test_where_and_hint_frame_the_message():
    with pytest.raises(ValueError) as info:
        check_arg("lr", -1.0, Real(min=0, hint="see the optimizer's docs"), where="optimizer 'sgd'")
    assert str(info.value) == (
        "optimizer 'sgd': lr must be >= 0 and finite, got -1.0; see the optimizer's docs"
    )
    with pytest.raises(TypeError) as info:
        check_arg("dtype", "int8", FloatDtype(), where="model")
    assert str(info.value) == "model: dtype must be 'float32' or 'float64', got int8"


def test_long_values_are_shortened_in_messages():
    with pytest.raises(TypeError) as info:
        check_arg("x", "y" * 500, Integer())
    assert len(str(info.value)) < 100 and "..." in str(info.value)


def test_check_positive_int_is_integer_min_1():
    assert check_positive_int("n", np.int8(2)) == 2
    with pytest.raises(ValueError, match="^n must be >= 1, got 0$"):
        check_positive_int("n", 0)
    with pytest.raises(TypeError, match="^n must be an int, got bool True"):
        check_positive_int("n", True)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Integer(min=2, max=1),
        lambda: Real(min=1.0, max=0.0),
        lambda: Real(closed="open"),
        lambda: OneOf(),
        lambda: InstanceOf(),
        lambda: AnyOf(),
    ],
)
def test_malformed_constraints_are_refused(build):
    with pytest.raises(ValueError):
        build()


# --------------------------------------------------------------------------- validate_args


@validate_args({"n": Integer(min=1), "p": Real(min=0, max=1), "flag": Boolean(),
                "seed": Optional(Integer(min=0))})
def _sample(n: int, p: float = 0.5, *, flag: bool = False, seed: int | None = None):
    return n, p, flag, seed


def test_validate_args_normalizes_positional_and_keyword_arguments():
    got = _sample(np.int32(3), 1, flag=np.True_, seed=np.uint16(7))
    assert got == (3, 1.0, True, 7)
    assert [type(v) for v in got] == [int, float, bool, int]
    assert _sample(n=2, p=np.float64(0.25)) == (2, 0.25, False, None)
    assert _sample(1) == (1, 0.5, False, None)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((0,), {}, ValueError, "n must be >= 1, got 0"),
        ((), {"n": 1.5}, TypeError, "n must be an int, got float 1.5"),
        ((1, 2), {}, ValueError, r"p must be in [0, 1], got 2"),
        ((1,), {"flag": 1}, TypeError, "flag must be a bool, got int 1; pass True or False"),
        ((1,), {"seed": -1}, ValueError, "seed must be >= 0, got -1"),
    ],
)
def test_validate_args_rejects_with_the_constraint_message(args, kwargs, error, message):
    with pytest.raises(error) as info:
        _sample(*args, **kwargs)
    assert str(info.value) == message


def test_validate_args_passes_omitted_defaults_in_their_checked_form():
    @validate_args({"dtype": FloatDtype(), "scale": Real(), "n": Integer()})
    def f(n: int = 2, *, dtype: object = "float32", scale: float = 1) -> tuple:
        return n, dtype, scale

    n, dtype, scale = f()
    assert n == 2 and dtype == np.dtype("float32") and isinstance(dtype, np.dtype)
    assert scale == 1.0 and type(scale) is float
    assert f(dtype="float64")[1] == np.dtype("float64")


def test_validate_args_keeps_signature_docs_and_declared_constraints():
    assert list(inspect.signature(_sample).parameters) == ["n", "p", "flag", "seed"]
    assert _sample.__name__ == "_sample"
    assert set(_sample.arg_constraints) == {"n", "p", "flag", "seed"}


def test_validate_args_works_on_methods():
    class Model:
        @validate_args({"rate": Real(min=0, max=1, closed="left")})
        def set_rate(self, rate: float) -> float:
            return rate

    assert Model().set_rate(np.float32(0.5)) == 0.5
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\), got 1"):
        Model().set_rate(1)


def test_validate_args_refuses_unknown_names_and_bad_defaults_when_decorating():
    with pytest.raises(TypeError, match="has no argument 'q'"):
        validate_args({"q": Integer()})(lambda n: n)
    with pytest.raises(TypeError, match="the default of .*'n' breaks its constraint: n must be"):
        @validate_args({"n": Integer(min=1)})
        def f(n: int = 0) -> int:
            return n
    with pytest.raises(TypeError, match="positional-only 'x' as 1.0"):
        @validate_args({"x": Real()})
        def g(x: float = 1, /) -> float:
            return x
