"""Activation functions and their derivatives, forward and backward side by side.

:data:`ACTIVATION_TABLE` is the single source of truth: one :class:`ActivationSpec` row
per activation gives its name, kind, kernel id, parameter and default, parallel-size
thresholds, weight-init scheme, whether its derivative can be computed from the output
alone, and float64 NumPy (and PyTorch) references for the tests.
:data:`ACTIVATION_IDS`, :data:`ACTIVATIONS`, :func:`get_activation`,
:mod:`numbanet.nn.init` and the activation tests are all derived from it.

Elementwise activations (``kind="elementwise"``: ``relu``, ``gelu``, ``softplus``, ...)
work on any rank: the kernels see a flat 1-D view of C-contiguous arrays. Row-wise
activations (``kind="rowwise"``: ``softmax``, ``log_softmax``) normalise along the last
axis of a 2-D array. :data:`ACTIVATIONS` lists them all.

How to add an activation (all in this file; no other code or test to edit):

1. An id constant next to the others (``SWISH = 10``: the next elementwise id; for a
   row-wise activation the next row mode) and its row in :data:`ACTIVATION_TABLE` (name,
   kind, id or mode, thresholds, ``init``, ``derivative_from_output``, ``reference``,
   ``reference_backward``, ``torch_reference``, and ``param_name``/``default_param`` if
   it takes a parameter). The table is checked at import.
2. Its maths: an ``elif act_id == SWISH:`` branch in :func:`activation_forward_1d` and
   one in :func:`activation_backward_1d` (row-wise: a ``mode`` branch in
   ``_row_forward`` and ``_row_backward``). Constants via ``z.dtype.type(...)``, and
   ``fast_exp``-style helpers rather than ``math.exp``, so the loop stays float32 and
   vectorizes.

That is four edits: the constant, the row and the two kernel branches. Optional: a
hand-written public pair ``swish(x, out)`` / ``swish_backward(x, y, dy, dx)`` (needed
only to accept the parameter as a keyword, like :func:`leaky_relu`); without it,
``get_activation("swish").forward``/``.backward`` run the checked kernels at the default
parameter. The tests (``tests/kernels/test_activations.py``, ``tests/nn/test_training.py``,
``tests/nn/test_sequential.py``) parametrize over the table and pick the new row up by
themselves; layers read ``init`` and ``derivative_from_output`` from it. Compiled kernels
that inline this module (the GEMM epilogue) recompile by themselves: the disk cache is
stamped with a hash of every numbanet source file a kernel's module imports
(:mod:`numbanet._kernel_cache`), so no cache needs deleting.

Every public function follows the kernel contract of ``docs/dev/contracts.md``:

* ``name(x, out)`` writes ``act(x)`` into ``out`` (``out is x`` is allowed);
* ``name_backward(x, y, dy, dx)`` writes ``dL/dx`` into ``dx`` given the activation input
  ``x``, its output ``y = name(x)`` and ``dy = dL/dy`` (``dx is dy`` is allowed);
* all arrays are C-contiguous float32 or float64 of one dtype and one shape; outputs are
  writeable; the functions return ``None``.

The hot path for fused GEMM epilogues is :func:`activation_forward_1d` /
:func:`activation_backward_1d`, serial ``@njit`` functions that take an integer id from
:data:`ACTIVATION_IDS`. They branch on the id once, outside the element loop, so each
activation's loop is a plain loop that LLVM can vectorize.

Vectorizable transcendentals: ``math.exp`` and friends are scalar libm calls in numba
0.68 (no SVML), and one such call keeps a whole loop scalar. :func:`fast_exp`,
:func:`fast_expm1`, :func:`fast_tanh`, :func:`fast_softplus` and :func:`fast_ndtr` are
plain-arithmetic replacements (1-3 ulp, tested against long-double references) that
LLVM vectorizes; every activation loop uses them, so all of them vectorize except
float64 GELU (``math.erfc``). Other kernels (losses) may call them too.

Parallel contract: the public elementwise functions split the flat array into
fixed-size chunks of :data:`CHUNK` elements and run ``prange`` over the chunks; each
chunk is written by exactly one thread and each output element depends on the same
index of the inputs only, so the loop is race-free. Chunk boundaries do not depend on the
thread count, so results are bit-identical under any number of threads (and identical
to the serial twin, which walks the same chunks). Row-wise kernels run ``prange`` over
rows; a row is reduced by one thread in a fixed order.

Numerical notes: sigmoid, silu and softplus evaluate ``exp(-|x|)`` only, so they never
overflow (``|x| = 1000`` is fine in float32); softmax and log_softmax subtract the row
maximum before exponentiating. Constants are built with ``x.dtype.type(...)`` so float32
kernels stay float32 (a bare ``0.5`` literal is float64 and would promote the loop).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

from numbanet._jit import ELEMENTWISE_FASTMATH, kernel, parallel_kernel
from numbanet._validation import check_float_array

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_IDS",
    "ACTIVATION_TABLE",
    "CHUNK",
    "INIT_SCHEMES",
    "Activation",
    "ActivationSpec",
    "activation_backward_1d",
    "activation_forward_1d",
    "elementwise_forward_unchecked",
    "elu",
    "elu_backward",
    "fast_exp",
    "fast_expm1",
    "fast_ndtr",
    "fast_softplus",
    "fast_tanh",
    "gelu",
    "gelu_backward",
    "get_activation",
    "identity",
    "identity_backward",
    "leaky_relu",
    "leaky_relu_backward",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp_rows",
    "relu",
    "relu_backward",
    "selu",
    "selu_backward",
    "sigmoid",
    "sigmoid_backward",
    "silu",
    "silu_backward",
    "softmax",
    "softmax_backward",
    "softplus",
    "softplus_backward",
    "tanh",
    "tanh_backward",
]

# ---------------------------------------------------------------------------------------
# Kernel ids and constants. The ids are compile-time constants inside the kernels and the
# GEMM epilogue; each is stated once here and used by its row of ACTIVATION_TABLE below.
# ---------------------------------------------------------------------------------------

# Elementwise ids: dense, 0..n-1, in table order.
IDENTITY = 0
SIGMOID = 1
RELU = 2
LEAKY_RELU = 3
TANH = 4
GELU = 5
ELU = 6
SELU = 7
SILU = 8
SOFTPLUS = 9
# Row-wise modes of the row kernels (a separate numbering: row-wise activations have id -1).
SOFTMAX = 0
LOG_SOFTMAX = 1

# SELU constants as in PyTorch (Klambauer et al. 2017, "Self-Normalizing Neural Networks").
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
# PyTorch's softplus(beta=1, threshold=20) returns x itself above the threshold.
SOFTPLUS_THRESHOLD = 20.0
_INV_SQRT2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327

#: Elements per parallel task. Fixed (not derived from the thread count) so results are
#: bit-identical under any number of threads; a multiple of 64 so every chunk but the last
#: runs whole vector iterations. Small enough that a 4096-element sigmoid (~9 us serial)
#: already splits across two threads; the per-chunk call costs nanoseconds.
CHUNK = 2048

#: Below these many elements the elementwise functions run the serial twin: a parallel
#: launch costs a few microseconds, more than the whole job for small arrays. Measured
#: crossovers on 2 threads, float32, serial time / parallel time: relu 0.81 at 32768
#: elements and 1.14 at 65536 (~5 us serial); vectorized sigmoid 0.75 at 4096 and 1.09
#: at 8192; gelu 0.70 at 1024 and 1.47 at 4096. Three cost classes, per direction: no
#: transcendental (cheap), one vectorized exp-like call (medium), GELU's erfc (heavy).
PARALLEL_MIN_CHEAP = 1 << 16
PARALLEL_MIN_MEDIUM = 1 << 13
PARALLEL_MIN_HEAVY = 1 << 12
#: Row-wise kernels: total elements (rows x columns) from which rows go to ``prange``
#: (measured: softmax 1.7x faster in parallel at 1024 elements of 10 columns, 1.04x at
#: 1024 elements of 100 columns, 1.6x at 4096).
PARALLEL_MIN_ROWWISE = 1 << 11

#: Weight initialisation schemes a table row may name (implemented in :mod:`numbanet.nn.init`).
INIT_SCHEMES = ("he_uniform", "lecun_normal", "glorot_uniform")


# ---------------------------------------------------------------------------------------
# The activation table
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ActivationSpec:
    """One row of :data:`ACTIVATION_TABLE`: everything numbanet knows about an activation
    except its kernel code.

    Attributes:
        name: the public name, e.g. ``"relu"``.
        kind: ``"elementwise"`` (any shape, each element on its own) or ``"rowwise"``
            (normalises along the last axis of a 2-D array).
        id: for elementwise activations the kernel id (a constant such as :data:`RELU`,
            an entry of :data:`ACTIVATION_IDS`, usable in fused GEMM epilogues); ``-1``
            for row-wise ones.
        mode: for row-wise activations the row kernels' mode (:data:`SOFTMAX`,
            :data:`LOG_SOFTMAX`); ``-1`` for elementwise ones.
        param_name: keyword of the public function's one parameter (``"negative_slope"``
            for leaky_relu, ``"alpha"`` for elu), ``None`` when there is none.
        default_param: the parameter's default, the value layers pass as ``param`` to
            :func:`activation_forward_1d` (``0.0`` when there is no parameter).
        forward_parallel_min: input size (elements) from which the forward pass runs the
            ``prange`` kernel instead of the serial twin.
        backward_parallel_min: the same for the backward pass.
        init: weight initialisation scheme for a layer followed by this activation, one of
            :data:`INIT_SCHEMES` (read by :func:`numbanet.nn.init.init_scheme`).
        derivative_from_output: ``True`` when the backward kernel gives the same ``dx``
            if it is handed the output ``y`` in place of the input ``x``, so a layer may
            overwrite its pre-activation with the output and keep one array (relu,
            sigmoid, tanh).
        reference: float64 NumPy forward ``reference(x) -> y`` at the default parameter,
            written independently of the kernels; the tests' ground truth.
        reference_backward: float64 NumPy ``reference_backward(x, dy) -> dx`` (the
            vector-Jacobian product) at the default parameter.
        torch_reference: ``torch_reference(F, t) -> tensor`` with ``F`` the module
            ``torch.nn.functional``: PyTorch's equivalent, for parity tests (no torch
            import happens here).
    """

    name: str
    kind: str
    id: int = -1
    mode: int = -1
    param_name: str | None = None
    default_param: float = 0.0
    forward_parallel_min: int
    backward_parallel_min: int
    init: str = "glorot_uniform"
    derivative_from_output: bool = False
    reference: Callable[[np.ndarray], np.ndarray]
    reference_backward: Callable[[np.ndarray, np.ndarray], np.ndarray]
    torch_reference: Callable[[Any, Any], Any]

    @property
    def elementwise(self) -> bool:
        """``True`` for activations that act on each element independently."""
        return self.kind == "elementwise"


# NumPy references: float64 truth, written independently of the kernels (different
# formulas where that is possible: the tanh form of the logistic, erf for GELU).
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _ref_sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _ref_normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))


def _ref_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _ref_log_softmax(x: np.ndarray) -> np.ndarray:
    s = x - x.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def _elementwise_vjp(
    derivative: Callable[[np.ndarray], np.ndarray],
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``reference_backward`` of an elementwise activation: ``dy * act'(x)``."""
    return lambda x, dy: dy * derivative(x)


def _ref_selu(x: np.ndarray) -> np.ndarray:
    return SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))


def _ref_softmax_backward(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    p = _ref_softmax(x)
    return p * (dy - (dy * p).sum(axis=-1, keepdims=True))


def _ref_log_softmax_backward(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return dy - _ref_softmax(x) * dy.sum(axis=-1, keepdims=True)

#: The single source of truth for every activation (see "How to add an activation" in
#: the module docstring). Elementwise rows first, ids in order.
ACTIVATION_TABLE: tuple[ActivationSpec, ...] = (
    ActivationSpec(
        name="identity", kind="elementwise", id=IDENTITY,
        forward_parallel_min=PARALLEL_MIN_CHEAP, backward_parallel_min=PARALLEL_MIN_CHEAP,
        reference=lambda x: x.copy(),
        reference_backward=lambda x, dy: dy.copy(),
        torch_reference=lambda F, t: t * 1,
    ),
    ActivationSpec(
        name="sigmoid", kind="elementwise", id=SIGMOID,
        # Backward reads y only: no transcendental.
        forward_parallel_min=PARALLEL_MIN_MEDIUM, backward_parallel_min=PARALLEL_MIN_CHEAP,
        derivative_from_output=True,
        reference=_ref_sigmoid,
        reference_backward=_elementwise_vjp(lambda x: _ref_sigmoid(x) * (1 - _ref_sigmoid(x))),
        torch_reference=lambda F, t: F.sigmoid(t),
    ),
    ActivationSpec(
        name="relu", kind="elementwise", id=RELU,
        forward_parallel_min=PARALLEL_MIN_CHEAP, backward_parallel_min=PARALLEL_MIN_CHEAP,
        init="he_uniform", derivative_from_output=True,
        reference=lambda x: np.maximum(x, 0.0),
        reference_backward=_elementwise_vjp(lambda x: (x > 0).astype(np.float64)),
        torch_reference=lambda F, t: F.relu(t),
    ),
    ActivationSpec(
        name="leaky_relu", kind="elementwise", id=LEAKY_RELU,
        param_name="negative_slope", default_param=0.01,
        forward_parallel_min=PARALLEL_MIN_CHEAP, backward_parallel_min=PARALLEL_MIN_CHEAP,
        init="he_uniform",
        reference=lambda x: np.where(x >= 0, x, 0.01 * x),
        reference_backward=_elementwise_vjp(lambda x: np.where(x > 0, 1.0, 0.01)),
        torch_reference=lambda F, t: F.leaky_relu(t, 0.01),
    ),
    ActivationSpec(
        name="tanh", kind="elementwise", id=TANH,
        # Backward reads y only: no transcendental.
        forward_parallel_min=PARALLEL_MIN_MEDIUM, backward_parallel_min=PARALLEL_MIN_CHEAP,
        derivative_from_output=True,
        reference=np.tanh,
        reference_backward=_elementwise_vjp(lambda x: 1 - np.tanh(x) ** 2),
        torch_reference=lambda F, t: F.tanh(t),
    ),
    ActivationSpec(
        name="gelu", kind="elementwise", id=GELU,
        forward_parallel_min=PARALLEL_MIN_HEAVY, backward_parallel_min=PARALLEL_MIN_HEAVY,
        init="he_uniform",
        reference=lambda x: x * _ref_normal_cdf(x),
        reference_backward=_elementwise_vjp(
            lambda x: _ref_normal_cdf(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        ),
        torch_reference=lambda F, t: F.gelu(t),
    ),
    ActivationSpec(
        name="elu", kind="elementwise", id=ELU, param_name="alpha", default_param=1.0,
        forward_parallel_min=PARALLEL_MIN_MEDIUM, backward_parallel_min=PARALLEL_MIN_MEDIUM,
        init="he_uniform",
        reference=lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
        reference_backward=_elementwise_vjp(
            lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))
        ),
        torch_reference=lambda F, t: F.elu(t),
    ),
    ActivationSpec(
        name="selu", kind="elementwise", id=SELU,
        forward_parallel_min=PARALLEL_MIN_MEDIUM, backward_parallel_min=PARALLEL_MIN_MEDIUM,
        init="lecun_normal",
        reference=_ref_selu,
        reference_backward=_elementwise_vjp(
            lambda x: SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0)))
        ),
        torch_reference=lambda F, t: F.selu(t),
    ),
    ActivationSpec(
        name="silu", kind="elementwise", id=SILU,
        forward_parallel_min=PARALLEL_MIN_MEDIUM, backward_parallel_min=PARALLEL_MIN_MEDIUM,
        init="he_uniform",
        reference=lambda x: x * _ref_sigmoid(x),
        reference_backward=_elementwise_vjp(
            lambda x: _ref_sigmoid(x) * (1 + x * (1 - _ref_sigmoid(x)))
        ),
        torch_reference=lambda F, t: F.silu(t),
    ),
    ActivationSpec(
        name="softplus", kind="elementwise", id=SOFTPLUS,
        forward_parallel_min=PARALLEL_MIN_MEDIUM, backward_parallel_min=PARALLEL_MIN_MEDIUM,
        reference=lambda x: np.where(x > SOFTPLUS_THRESHOLD, x, np.logaddexp(0.0, x)),
        reference_backward=_elementwise_vjp(
            lambda x: np.where(x > SOFTPLUS_THRESHOLD, 1.0, _ref_sigmoid(x))
        ),
        torch_reference=lambda F, t: F.softplus(t),
    ),
    ActivationSpec(
        name="softmax", kind="rowwise", mode=SOFTMAX,
        forward_parallel_min=PARALLEL_MIN_ROWWISE, backward_parallel_min=PARALLEL_MIN_ROWWISE,
        reference=_ref_softmax,
        reference_backward=_ref_softmax_backward,
        torch_reference=lambda F, t: F.softmax(t, dim=-1),
    ),
    ActivationSpec(
        name="log_softmax", kind="rowwise", mode=LOG_SOFTMAX,
        forward_parallel_min=PARALLEL_MIN_ROWWISE, backward_parallel_min=PARALLEL_MIN_ROWWISE,
        reference=_ref_log_softmax,
        reference_backward=_ref_log_softmax_backward,
        torch_reference=lambda F, t: F.log_softmax(t, dim=-1),
    ),
)


def _check_table(table: tuple[ActivationSpec, ...]) -> None:
    """Fail at import on an inconsistent table (the one edit an author makes)."""
    names = [s.name for s in table]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate activation names in ACTIVATION_TABLE: {names}")
    elementwise = [s for s in table if s.kind == "elementwise"]
    rowwise = [s for s in table if s.kind == "rowwise"]
    if len(elementwise) + len(rowwise) != len(table):
        raise ValueError("ACTIVATION_TABLE: kind must be 'elementwise' or 'rowwise'")
    if [s.id for s in elementwise] != list(range(len(elementwise))):
        raise ValueError("ACTIVATION_TABLE: elementwise ids must be 0, 1, ... in table order")
    if any(s.id != -1 for s in rowwise) or any(s.mode != -1 for s in elementwise):
        raise ValueError("ACTIVATION_TABLE: row-wise rows have id -1, elementwise mode -1")
    if sorted(s.mode for s in rowwise) != list(range(len(rowwise))):
        raise ValueError("ACTIVATION_TABLE: row-wise modes must be 0, 1, ...")
    for s in table:
        if s.init not in INIT_SCHEMES:
            raise ValueError(f"{s.name}: init must be one of {INIT_SCHEMES}, got {s.init!r}")
        if s.param_name is None and s.default_param != 0.0:
            raise ValueError(f"{s.name}: default_param without a param_name")


_check_table(ACTIVATION_TABLE)

#: Ids of the elementwise activations, for :func:`activation_forward_1d` and fused epilogues.
ACTIVATION_IDS: dict[str, int] = {s.name: s.id for s in ACTIVATION_TABLE if s.elementwise}

#: Every activation name, elementwise first, then the row-wise ones.
ACTIVATIONS: tuple[str, ...] = (
    *ACTIVATION_IDS,
    *(s.name for s in ACTIVATION_TABLE if not s.elementwise),
)

_FORWARD_THRESHOLD = {s.id: s.forward_parallel_min for s in ACTIVATION_TABLE if s.elementwise}
_BACKWARD_THRESHOLD = {s.id: s.backward_parallel_min for s in ACTIVATION_TABLE if s.elementwise}
_ROWWISE_FORWARD_THRESHOLD = {
    s.mode: s.forward_parallel_min for s in ACTIVATION_TABLE if not s.elementwise
}
_ROWWISE_BACKWARD_THRESHOLD = {
    s.mode: s.backward_parallel_min for s in ACTIVATION_TABLE if not s.elementwise
}


# ---------------------------------------------------------------------------------------
# Vectorizable exp and tanh
#
# numba 0.68 has no vector math library: math.exp / math.tanh are scalar libm calls and
# any loop containing one stays scalar (measured: float32 math.exp ~150 Melem/s, math.tanh
# ~70 Melem/s on one core, against ~2.5 Gelem/s for torch's sigmoid). The functions below
# are plain arithmetic (Cody-Waite range reduction, the Cephes polynomials, 2**n built
# from its bits), so LLVM vectorizes loops that call them: float32 exp runs ~7x faster
# than math.exp, float64 ~2x; accuracy is about 1 ulp (see tests).
#
# They are compiled WITHOUT 'reassoc': reassociation would fold the two-step subtraction
# x - n*C1 - n*C2 into x - n*(C1 + C2) and the split scaling y * 2**n1 * 2**n2 into an
# overflowing 2**n, destroying accuracy (measured: inf error with 'reassoc'). Numba
# compiles an overload as its own function, so its instruction flags survive inlining
# into callers that do use 'reassoc'. fast_tanh is inlined at the Numba IR level instead
# (LLVM declines to inline it whole, which leaves a call in the loop and blocks
# vectorization); only its call to fast_exp needs the no-reassoc flags.
# ---------------------------------------------------------------------------------------

_NO_REASSOC = {"fastmath": set(ELEMENTWISE_FASTMATH), "error_model": "numpy"}


@intrinsic
def _pow2(typingctx, n):
    """``2.0 ** n`` for an integral float ``n`` in the normal exponent range, from its bits."""
    if not isinstance(n, types.Float):
        return None

    def codegen(context, builder, sig, args):
        (v,) = args
        if n.bitwidth == 32:
            ity, bias, shift = ir.IntType(32), 127, 23
        else:
            ity, bias, shift = ir.IntType(64), 1023, 52
        k = builder.add(builder.fptosi(v, ity), ir.Constant(ity, bias))
        return builder.bitcast(builder.shl(k, ir.Constant(ity, shift)), context.get_value_type(n))

    return n(n), codegen


@intrinsic
def _select(typingctx, cond, a, b):
    """``a if cond else b`` as one LLVM ``select``: no branch in the Numba IR, so inlined
    callers stay a single basic block (and Numba's IR checks stay quiet)."""
    if not isinstance(cond, types.Boolean) or a != b:
        return None

    def codegen(context, builder, sig, args):
        return builder.select(args[0], args[1], args[2])

    return a(cond, a, b), codegen


def fast_exp(x):
    """``exp(x)`` in ``x``'s float type; vectorizable inside kernels (about 1 ulp).

    Outside Numba this is ``math.exp`` (so ``kernel.py_func`` runs); inside, the
    overload below. Results below the smallest normal number flush to 0.
    """
    return type(x)(math.exp(x)) if isinstance(x, np.floating) else math.exp(x)


def fast_tanh(x):
    """``tanh(x)`` in ``x``'s float type; vectorizable inside kernels (a few ulp)."""
    return type(x)(math.tanh(x)) if isinstance(x, np.floating) else math.tanh(x)


def _exp32(x):
    f = np.float32
    lo = f(-87.33654)
    hi = f(88.72283)
    xc = _select(x > lo, x, lo)
    xc = _select(xc < hi, xc, hi)
    n = np.floor(xc * f(1.4426950408889634) + f(0.5))
    # Cody-Waite: ln 2 = C1 + C2 with C1 short enough that n * C1 is exact.
    r = xc - n * f(0.693359375)
    r = r - n * f(-2.12194440e-4)
    # Cephes expf minimax polynomial on |r| <= ln(2) / 2.
    p = f(1.9875691500e-4)
    p = p * r + f(1.3981999507e-3)
    p = p * r + f(8.3334519073e-3)
    p = p * r + f(4.1665795894e-2)
    p = p * r + f(1.6666665459e-1)
    p = p * r + f(5.0000001201e-1)
    y = p * (r * r) + r + f(1.0)
    # 2**n in two factors: n reaches 128 and -126, outside one normal exponent field.
    n1 = np.floor(n * f(0.5))
    y = y * _pow2(n1) * _pow2(n - n1)
    y = _select(x < lo, f(0.0), y)
    y = _select(x > hi, f(np.inf), y)
    return _select(x != x, x, y)


def _exp64(x):
    lo = -708.3964185322641
    hi = 709.782712893384
    xc = _select(x > lo, x, lo)
    xc = _select(xc < hi, xc, hi)
    n = np.floor(xc * 1.4426950408889634 + 0.5)
    r = xc - n * 6.93145751953125e-1
    r = r - n * 1.42860682030941723212e-6
    # Cephes exp: exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)).
    rr = r * r
    px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 1.0)
    q = (
        (3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
        + 2.27265548208155028766e-1
    ) * rr + 2.0
    y = 1.0 + 2.0 * (px / (q - px))
    n1 = np.floor(n * 0.5)
    y = y * _pow2(n1) * _pow2(n - n1)
    y = _select(x < lo, 0.0, y)
    y = _select(x > hi, np.inf, y)
    return _select(x != x, x, y)


def _tanh32(x):
    f = np.float32
    a = abs(x)
    # |x| >= 0.625: 1 - 2 / (exp(2|x|) + 1) has no cancellation (tanh >= 0.55); an
    # overflowing exp gives exactly 1.
    big = f(1.0) - f(2.0) / (fast_exp(a + a) + f(1.0))
    # |x| < 0.625: Cephes tanhf odd polynomial.
    z = a * a
    p = f(-5.70498872745e-3)
    p = p * z + f(2.06390887954e-2)
    p = p * z + f(-5.37397155531e-2)
    p = p * z + f(1.33314422036e-1)
    p = p * z + f(-3.33332819422e-1)
    small = p * z * a + a
    t = _select(a < f(0.625), small, big)
    # Computed on |x| and signed at the end, so tanh(-x) == -tanh(x) exactly.
    return _select(x >= f(0.0), t, -t)


def _tanh64(x):
    a = abs(x)
    big = 1.0 - 2.0 / (fast_exp(a + a) + 1.0)
    # |x| < 0.625: Cephes tanh rational approximation x + x z P(z) / Q(z).
    z = a * a
    pz = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z - 1.61468768441708447952e3
    qz = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
    qz = qz + 4.84406305325125486048e3
    small = a + a * z * (pz / qz)
    t = _select(a < 0.625, small, big)
    return _select(x >= 0.0, t, -t)


def fast_expm1(x):
    """``exp(x) - 1`` in ``x``'s float type without cancellation near 0; vectorizable.

    Inside kernels: the Taylor polynomial for ``|x| < 0.7`` and ``fast_exp(x) - 1``
    elsewhere (where the result is at least 0.5 in magnitude, so the subtraction loses
    at most one bit). Outside Numba: ``math.expm1``.
    """
    return type(x)(math.expm1(x)) if isinstance(x, np.floating) else math.expm1(x)


def _expm1_32(x):
    f = np.float32
    # Taylor terms to x**10 / 10!: the next one is below float32 rounding for |x| < 0.7.
    p = f(1.0 / 3628800.0)
    p = p * x + f(1.0 / 362880.0)
    p = p * x + f(1.0 / 40320.0)
    p = p * x + f(1.0 / 5040.0)
    p = p * x + f(1.0 / 720.0)
    p = p * x + f(1.0 / 120.0)
    p = p * x + f(1.0 / 24.0)
    p = p * x + f(1.0 / 6.0)
    p = p * x + f(0.5)
    small = x + x * x * p
    big = fast_exp(x) - f(1.0)
    return _select(abs(x) < f(0.7), small, big)


def _expm1_64(x):
    # Taylor terms to x**17 / 17!: the next one is below float64 rounding for |x| < 0.7.
    p = 1.0 / 355687428096000.0
    p = p * x + 1.0 / 20922789888000.0
    p = p * x + 1.0 / 1307674368000.0
    p = p * x + 1.0 / 87178291200.0
    p = p * x + 1.0 / 6227020800.0
    p = p * x + 1.0 / 479001600.0
    p = p * x + 1.0 / 39916800.0
    p = p * x + 1.0 / 3628800.0
    p = p * x + 1.0 / 362880.0
    p = p * x + 1.0 / 40320.0
    p = p * x + 1.0 / 5040.0
    p = p * x + 1.0 / 720.0
    p = p * x + 1.0 / 120.0
    p = p * x + 1.0 / 24.0
    p = p * x + 1.0 / 6.0
    p = p * x + 0.5
    small = x + x * x * p
    big = fast_exp(x) - 1.0
    return _select(abs(x) < 0.7, small, big)


def fast_softplus(x):
    """``log(1 + exp(x))`` without overflow, in ``x``'s float type; vectorizable (~1 ulp).

    Evaluated as ``max(x, 0) + log1p(exp(-|x|))`` with ``log1p(e) = 2 atanh(e / (2 + e))``
    summed as a short odd series (``e`` is in ``(0, 1]``, so ``|s| <= 1/3``). Useful for
    BCE-with-logits losses too.
    """
    v = float(x)
    r = max(v, 0.0) + math.log1p(math.exp(-abs(v)))
    return type(x)(r) if isinstance(x, np.floating) else r


def _softplus32(x):
    f = np.float32
    e = fast_exp(-abs(x))
    s = e / (f(2.0) + e)
    z = s * s
    # 2 atanh(s) = 2 (s + s^3/3 + ... + s^13/13); the next term is below float32 rounding.
    p = f(1.0 / 13.0)
    p = p * z + f(1.0 / 11.0)
    p = p * z + f(1.0 / 9.0)
    p = p * z + f(1.0 / 7.0)
    p = p * z + f(1.0 / 5.0)
    p = p * z + f(1.0 / 3.0)
    lg = f(2.0) * (s + s * z * p)
    return _select(x > f(0.0), x, f(0.0)) + lg


def _softplus64(x):
    e = fast_exp(-abs(x))
    s = e / (2.0 + e)
    z = s * s
    # Odd series up to s^35: (1/9)^17 / 37 is below float64 rounding.
    p = 1.0 / 35.0
    for k in range(16, 0, -1):
        p = p * z + 1.0 / (2 * k + 1)
    lg = 2.0 * (s + s * z * p)
    return _select(x > 0.0, x, 0.0) + lg


def fast_ndtr(x):
    """Standard normal CDF ``Phi(x) = erfc(-x / sqrt(2)) / 2`` in ``x``'s float type.

    float32, inside kernels: vectorizable, ``erfc(z) = t exp(-z^2 + P(2t - 1))`` with
    ``t = 2 / (2 + z)``, ``z = |x| / sqrt(2)`` (the Chebyshev form of Numerical Recipes'
    ``erfccheb``) evaluated in float64, so the result is within about 0.5 ulp of float32;
    ``Phi(x) = 1 - erfc(z) / 2`` for ``x >= 0``. float64, and outside Numba:
    ``math.erfc`` (a scalar call, so float64 GELU loops do not vectorize).
    """
    v = float(x)
    r = 0.5 * math.erfc(-v * _INV_SQRT2)
    return type(x)(r) if isinstance(x, np.floating) else r


# Chebyshev coefficients of P(y) above, computed for numbanet by interpolating
# log(erfc(z) exp(z^2) / t) at 80 Chebyshev nodes in 50-digit arithmetic (mpmath) and
# truncating after 14 terms (the dropped tail is below 2e-9, under float32 rounding).
_ERFC_CHEB = (
    -0.6513268598908547,
    0.6419697923564902,
    0.019476473204185836,
    -0.009561514786808632,
    -0.0009465953444820369,
    0.00036683949785276145,
    4.252332480690777e-05,
    -2.0278578112534242e-05,
    -1.6242900046470256e-06,
    1.3036558355805232e-06,
    1.5626441722066142e-08,
    -8.523809591492654e-08,
    6.5290544390988515e-09,
    5.059343495551469e-09,
)


def _ndtr32(x):
    # float64 arithmetic inside: a float32 evaluation measured up to 16 ulp for x > -3
    # (the exponent -z**2 + P loses bits); in float64 the rounding to float32 dominates,
    # and 14 terms suffice.
    xd = np.float64(x)
    z = abs(xd) * _INV_SQRT2
    t = 2.0 / (2.0 + z)
    y = t + t - 1.0
    y2 = y + y
    # Clenshaw recurrence written out: a loop over the table would leave an inner loop
    # (with a switch on the index) in every element and block vectorization.
    u = _ERFC_CHEB[13]
    v = y2 * u + _ERFC_CHEB[12]
    u = y2 * v - u + _ERFC_CHEB[11]
    v = y2 * u - v + _ERFC_CHEB[10]
    u = y2 * v - u + _ERFC_CHEB[9]
    v = y2 * u - v + _ERFC_CHEB[8]
    u = y2 * v - u + _ERFC_CHEB[7]
    v = y2 * u - v + _ERFC_CHEB[6]
    u = y2 * v - u + _ERFC_CHEB[5]
    v = y2 * u - v + _ERFC_CHEB[4]
    u = y2 * v - u + _ERFC_CHEB[3]
    v = y2 * u - v + _ERFC_CHEB[2]
    u = y2 * v - u + _ERFC_CHEB[1]
    p = y * u - v + _ERFC_CHEB[0]
    half_erfc = 0.5 * t * fast_exp(p - z * z)
    return np.float32(_select(xd < 0.0, half_erfc, 1.0 - half_erfc))


def _ndtr64(x):
    # A vectorized float64 version (28 Chebyshev terms) measured no faster than the libm
    # call: the Clenshaw chain is latency-bound. Use the correctly rounded erfc.
    return 0.5 * math.erfc(-x * _INV_SQRT2)


@overload(fast_exp, jit_options=_NO_REASSOC)
def _fast_exp_impl(x):
    if isinstance(x, types.Float):
        return _exp32 if x.bitwidth == 32 else _exp64
    return None


@overload(fast_expm1, inline="always")
def _fast_expm1_impl(x):
    if isinstance(x, types.Float):
        return _expm1_32 if x.bitwidth == 32 else _expm1_64
    return None


@overload(fast_softplus, inline="always")
def _fast_softplus_impl(x):
    if isinstance(x, types.Float):
        return _softplus32 if x.bitwidth == 32 else _softplus64
    return None


@overload(fast_ndtr, inline="always")
def _fast_ndtr_impl(x):
    if isinstance(x, types.Float):
        return _ndtr32 if x.bitwidth == 32 else _ndtr64
    return None


@overload(fast_tanh, inline="always")
def _fast_tanh_impl(x):
    if isinstance(x, types.Float):
        return _tanh32 if x.bitwidth == 32 else _tanh64
    return None


# ---------------------------------------------------------------------------------------
# Serial 1-D building blocks (the GEMM epilogue calls these directly)
# ---------------------------------------------------------------------------------------


@kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def activation_forward_1d(act_id, param, z, y):  # noqa: C901 - one branch per activation
    """Serial unchecked forward pass ``y = act(z)`` on 1-D views.

    Args:
        act_id: an id from :data:`ACTIVATION_IDS` (unknown ids leave ``y`` untouched).
        param: negative slope of ``leaky_relu`` or ``alpha`` of ``elu``; ignored otherwise.
            Passed as a float64; cast to ``z``'s dtype once.
        z: activation input, 1-D float32/float64, length ``n``.
        y: output, 1-D, same length and dtype; may alias ``z``.

    Each element of ``y`` depends only on the same element of ``z``, so any split of the
    index range across callers is race-free.
    """
    n = z.shape[0]
    zero = z.dtype.type(0)
    one = z.dtype.type(1)
    p = z.dtype.type(param)
    if act_id == IDENTITY:
        for i in range(n):
            y[i] = z[i]
    elif act_id == SIGMOID:
        for i in range(n):
            v = z[i]
            # exp(-|v|) <= 1 never overflows; the two halves are s and 1 - s = e * s.
            e = fast_exp(-abs(v))
            s = one / (one + e)
            y[i] = s if v >= zero else e * s
    elif act_id == RELU:
        for i in range(n):
            v = z[i]
            # `v < 0` is False for NaN, so NaN propagates like numpy.maximum.
            y[i] = zero if v < zero else v
    elif act_id == LEAKY_RELU:
        for i in range(n):
            v = z[i]
            y[i] = v * p if v < zero else v
    elif act_id == TANH:
        for i in range(n):
            y[i] = fast_tanh(z[i])
    elif act_id == GELU:
        for i in range(n):
            v = z[i]
            y[i] = v * fast_ndtr(v)
    elif act_id == ELU:
        for i in range(n):
            v = z[i]
            y[i] = v if v > zero else p * fast_expm1(v)
    elif act_id == SELU:
        scale = z.dtype.type(SELU_SCALE)
        sa = z.dtype.type(SELU_SCALE * SELU_ALPHA)
        for i in range(n):
            v = z[i]
            y[i] = scale * v if v > zero else sa * fast_expm1(v)
    elif act_id == SILU:
        for i in range(n):
            v = z[i]
            e = fast_exp(-abs(v))
            s = one / (one + e)
            y[i] = v * (s if v >= zero else e * s)
    elif act_id == SOFTPLUS:
        t = z.dtype.type(SOFTPLUS_THRESHOLD)
        for i in range(n):
            v = z[i]
            y[i] = v if v > t else fast_softplus(v)


@kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def activation_backward_1d(act_id, param, z, y, dy, dz):  # noqa: C901
    """Serial unchecked backward pass ``dz = act'(z) * dy`` on 1-D views.

    Args:
        act_id: an id from :data:`ACTIVATION_IDS`.
        param: as in :func:`activation_forward_1d`.
        z: activation input, 1-D float32/float64, length ``n``.
        y: activation output ``act(z)``, same length and dtype.
        dy: gradient w.r.t. ``y``.
        dz: receives the gradient w.r.t. ``z``; may alias ``dy``.

    Sigmoid and tanh read ``y``; the others read ``z`` (elu/selu recompute ``exp(z)``
    rather than use ``y + alpha``, which cancels catastrophically for very negative
    ``z``). At kinks the derivative follows PyTorch: relu' (0) = 0, leaky_relu'(0) =
    slope, elu'(0) = alpha.
    """
    n = z.shape[0]
    zero = z.dtype.type(0)
    one = z.dtype.type(1)
    half = z.dtype.type(0.5)
    p = z.dtype.type(param)
    if act_id == IDENTITY:
        for i in range(n):
            dz[i] = dy[i]
    elif act_id == SIGMOID:
        for i in range(n):
            s = y[i]
            dz[i] = dy[i] * s * (one - s)
    elif act_id == RELU:
        for i in range(n):
            # PyTorch's threshold_backward: zero where z <= 0 (so NaN z passes dy on).
            dz[i] = zero if z[i] <= zero else dy[i]
    elif act_id == LEAKY_RELU:
        for i in range(n):
            g = dy[i]
            dz[i] = g if z[i] > zero else g * p
    elif act_id == TANH:
        for i in range(n):
            t = y[i]
            dz[i] = dy[i] * (one - t * t)
    elif act_id == GELU:
        d = z.dtype.type(_INV_SQRT_2PI)
        for i in range(n):
            v = z[i]
            cdf = fast_ndtr(v)
            pdf = d * fast_exp(-half * v * v)
            dz[i] = dy[i] * (cdf + v * pdf)
    elif act_id == ELU:
        for i in range(n):
            v = z[i]
            g = dy[i]
            dz[i] = g if v > zero else g * p * fast_exp(v)
    elif act_id == SELU:
        scale = z.dtype.type(SELU_SCALE)
        sa = z.dtype.type(SELU_SCALE * SELU_ALPHA)
        for i in range(n):
            v = z[i]
            g = dy[i]
            dz[i] = g * scale if v > zero else g * sa * fast_exp(v)
    elif act_id == SILU:
        for i in range(n):
            v = z[i]
            e = fast_exp(-abs(v))
            s = one / (one + e)
            s = s if v >= zero else e * s
            dz[i] = dy[i] * s * (one + v * (one - s))
    elif act_id == SOFTPLUS:
        t = z.dtype.type(SOFTPLUS_THRESHOLD)
        for i in range(n):
            v = z[i]
            g = dy[i]
            e = fast_exp(-abs(v))
            s = one / (one + e)
            s = s if v >= zero else e * s
            dz[i] = g if v > t else g * s


# ---------------------------------------------------------------------------------------
# Chunked drivers: one parallel kernel and one serial twin per direction, shared by all
# elementwise activations (fewer compiles: 4 per dtype instead of 40).
# ---------------------------------------------------------------------------------------


@parallel_kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _forward_parallel(act_id, param, x, y):
    """``y = act(x)`` on flat 1-D arrays; ``prange`` over fixed chunks of :data:`CHUNK`.

    Race-free: chunk ``c`` writes ``y[c*CHUNK:(c+1)*CHUNK]`` only.
    """
    n = x.shape[0]
    nchunks = (n + CHUNK - 1) // CHUNK
    for c in numba.prange(nchunks):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        activation_forward_1d(act_id, param, x[lo:hi], y[lo:hi])


@kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _forward_serial(act_id, param, x, y):
    """Serial twin of :func:`_forward_parallel` walking the same chunks."""
    n = x.shape[0]
    nchunks = (n + CHUNK - 1) // CHUNK
    for c in range(nchunks):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        activation_forward_1d(act_id, param, x[lo:hi], y[lo:hi])


@parallel_kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _backward_parallel(act_id, param, x, y, dy, dx):
    """``dx = act'(x) * dy`` on flat 1-D arrays; ``prange`` over fixed chunks.

    Race-free: chunk ``c`` writes its own slice of ``dx`` only.
    """
    n = x.shape[0]
    nchunks = (n + CHUNK - 1) // CHUNK
    for c in numba.prange(nchunks):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        activation_backward_1d(act_id, param, x[lo:hi], y[lo:hi], dy[lo:hi], dx[lo:hi])


@kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _backward_serial(act_id, param, x, y, dy, dx):
    """Serial twin of :func:`_backward_parallel` walking the same chunks."""
    n = x.shape[0]
    nchunks = (n + CHUNK - 1) // CHUNK
    for c in range(nchunks):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        activation_backward_1d(act_id, param, x[lo:hi], y[lo:hi], dy[lo:hi], dx[lo:hi])


# ---------------------------------------------------------------------------------------
# Argument checks and dispatch
# ---------------------------------------------------------------------------------------


def _check_param(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_arrays(first: tuple[str, object], *rest: tuple[str, object], writeable: str) -> None:
    """Check ``first`` is a C-contiguous float array and ``rest`` match its dtype and shape."""
    name, ref = first
    ref = check_float_array(name, ref)
    for other_name, other in rest:
        check_float_array(
            other_name,
            other,
            dtype=ref.dtype,
            shape=ref.shape,
            writeable=other_name == writeable,
        )


def _elementwise_forward(act_id: int, param: float, x: np.ndarray, out: np.ndarray) -> None:
    _check_arrays(("x", x), ("out", out), writeable="out")
    elementwise_forward_unchecked(act_id, param, x, out)


def elementwise_forward_unchecked(act_id: int, param: float, x: np.ndarray,
                                  out: np.ndarray) -> None:
    """``out = act(x)`` for an elementwise ``act_id``; unchecked.

    ``x`` and ``out`` are C-contiguous arrays of one float dtype and shape (``out`` may be
    ``x``). Parallel or serial by size, on flat views, in fixed chunks: the same result
    for any thread count.
    """
    xf = x.reshape(-1)
    yf = out.reshape(-1)
    if xf.shape[0] >= _FORWARD_THRESHOLD[act_id]:
        _forward_parallel(act_id, param, xf, yf)
    else:
        _forward_serial(act_id, param, xf, yf)


def _elementwise_backward(
    act_id: int, param: float, x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray
) -> None:
    _check_arrays(("x", x), ("y", y), ("dy", dy), ("dx", dx), writeable="dx")
    _run_elementwise_backward(act_id, param, x, y, dy, dx)


def _run_elementwise_backward(
    act_id: int, param: float, x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray
) -> None:
    """Unchecked dispatch: parallel or serial by size, on flat views."""
    args = (x.reshape(-1), y.reshape(-1), dy.reshape(-1), dx.reshape(-1))
    if args[0].shape[0] >= _BACKWARD_THRESHOLD[act_id]:
        _backward_parallel(act_id, param, *args)
    else:
        _backward_serial(act_id, param, *args)


# ---------------------------------------------------------------------------------------
# Public elementwise activations: forward and backward side by side
# ---------------------------------------------------------------------------------------

_SHAPES = """
    Args:
        x: activation input, C-contiguous float32/float64 array of any shape.
        out: writeable array of ``x``'s shape and dtype; receives the result.
            ``out is x`` is allowed.

    Raises:
        TypeError: an argument is not a float32/float64 ndarray, or dtypes differ.
        ValueError: shapes differ, an array is not C-contiguous, or ``out`` is read-only.
"""

_BACKWARD_SHAPES = """
    Args:
        x: the activation input given to the forward pass.
        y: the forward output.
        dy: gradient of the loss w.r.t. ``y``.
        dx: writeable; receives the gradient w.r.t. ``x``. ``dx is dy`` is allowed.
            All four arrays are C-contiguous, of one shape and one float dtype.

    Raises:
        TypeError: an argument is not a float32/float64 ndarray, or dtypes differ.
        ValueError: shapes differ, an array is not C-contiguous, or ``dx`` is read-only.
"""


def identity(x: np.ndarray, out: np.ndarray) -> None:
    """``out = x`` (a copy)."""
    _elementwise_forward(IDENTITY, 0.0, x, out)


def identity_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx = dy``."""
    _elementwise_backward(IDENTITY, 0.0, x, y, dy, dx)


def sigmoid(x: np.ndarray, out: np.ndarray) -> None:
    """``out = 1 / (1 + exp(-x))``, evaluated without overflow for any ``x``."""
    _elementwise_forward(SIGMOID, 0.0, x, out)


def sigmoid_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx = dy * y * (1 - y)`` (reads ``y`` only)."""
    _elementwise_backward(SIGMOID, 0.0, x, y, dy, dx)


def relu(x: np.ndarray, out: np.ndarray) -> None:
    """``out = max(x, 0)``; NaN propagates."""
    _elementwise_forward(RELU, 0.0, x, out)


def relu_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx = dy where x > 0 else 0`` (the derivative at 0 is taken as 0, like PyTorch)."""
    _elementwise_backward(RELU, 0.0, x, y, dy, dx)


def leaky_relu(x: np.ndarray, out: np.ndarray, negative_slope: float = 0.01) -> None:
    """``out = x if x >= 0 else negative_slope * x``."""
    _elementwise_forward(LEAKY_RELU, _check_param("negative_slope", negative_slope), x, out)


def leaky_relu_backward(
    x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray, negative_slope: float = 0.01
) -> None:
    """``dx = dy if x > 0 else negative_slope * dy``."""
    slope = _check_param("negative_slope", negative_slope)
    _elementwise_backward(LEAKY_RELU, slope, x, y, dy, dx)


def tanh(x: np.ndarray, out: np.ndarray) -> None:
    """``out = tanh(x)``."""
    _elementwise_forward(TANH, 0.0, x, out)


def tanh_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx = dy * (1 - y**2)`` (reads ``y`` only)."""
    _elementwise_backward(TANH, 0.0, x, y, dy, dx)


def gelu(x: np.ndarray, out: np.ndarray) -> None:
    """Exact GELU ``out = x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))`` (PyTorch's default,
    not the tanh approximation; Hendrycks & Gimpel 2016)."""
    _elementwise_forward(GELU, 0.0, x, out)


def gelu_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx = dy * (Phi(x) + x * phi(x))`` with ``phi`` the standard normal density."""
    _elementwise_backward(GELU, 0.0, x, y, dy, dx)


def elu(x: np.ndarray, out: np.ndarray, alpha: float = 1.0) -> None:
    """``out = x if x > 0 else alpha * (exp(x) - 1)`` (computed with ``expm1``)."""
    _elementwise_forward(ELU, _check_param("alpha", alpha), x, out)


def elu_backward(
    x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray, alpha: float = 1.0
) -> None:
    """``dx = dy if x > 0 else dy * alpha * exp(x)``."""
    _elementwise_backward(ELU, _check_param("alpha", alpha), x, y, dy, dx)


def selu(x: np.ndarray, out: np.ndarray) -> None:
    """``out = scale * (x if x > 0 else alpha * (exp(x) - 1))`` with PyTorch's constants
    ``alpha = 1.6732632423543772``, ``scale = 1.0507009873554805``."""
    _elementwise_forward(SELU, 0.0, x, out)


def selu_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx = dy * scale if x > 0 else dy * scale * alpha * exp(x)``."""
    _elementwise_backward(SELU, 0.0, x, y, dy, dx)


def silu(x: np.ndarray, out: np.ndarray) -> None:
    """SiLU / swish ``out = x * sigmoid(x)``."""
    _elementwise_forward(SILU, 0.0, x, out)


def silu_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx = dy * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``."""
    _elementwise_backward(SILU, 0.0, x, y, dy, dx)


def softplus(x: np.ndarray, out: np.ndarray) -> None:
    """``out = log(1 + exp(x))``, and ``x`` itself where ``x > 20`` (PyTorch's
    ``beta=1, threshold=20``). Evaluated as ``max(x, 0) + log1p(exp(-|x|))``."""
    _elementwise_forward(SOFTPLUS, 0.0, x, out)


def softplus_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx = dy * sigmoid(x)``, and ``dy`` where ``x > 20``."""
    _elementwise_backward(SOFTPLUS, 0.0, x, y, dy, dx)


for _f in (identity, sigmoid, relu, leaky_relu, tanh, gelu, elu, selu, silu, softplus):
    _f.__doc__ = (_f.__doc__ or "") + "\n" + _SHAPES
for _f in (
    identity_backward,
    sigmoid_backward,
    relu_backward,
    leaky_relu_backward,
    tanh_backward,
    gelu_backward,
    elu_backward,
    selu_backward,
    silu_backward,
    softplus_backward,
):
    _f.__doc__ = (_f.__doc__ or "") + "\n" + _BACKWARD_SHAPES
del _f


# ---------------------------------------------------------------------------------------
# Row-wise: softmax, log_softmax, logsumexp over the last axis of a 2-D array
# ---------------------------------------------------------------------------------------

@kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _row_forward(mode, xr, yr):
    """One row of softmax (``mode == 0``) or log_softmax (``mode == 1``); ``yr`` may alias ``xr``.

    Subtracting the row maximum keeps ``exp`` in ``(0, 1]``: no overflow for huge logits.
    """
    m = xr.shape[0]
    if m == 0:
        return
    mx = xr[0]
    for j in range(1, m):
        v = xr[j]
        mx = v if v > mx else mx
    s = xr.dtype.type(0)
    if mode == SOFTMAX:
        for j in range(m):
            e = fast_exp(xr[j] - mx)
            yr[j] = e
            s += e
        inv = xr.dtype.type(1) / s
        for j in range(m):
            yr[j] *= inv
    else:
        for j in range(m):
            s += fast_exp(xr[j] - mx)
        # (x - max) - log(sum) rather than x - (max + log(sum)): the small terms stay exact.
        ls = math.log(s)
        for j in range(m):
            yr[j] = (xr[j] - mx) - ls


@kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _row_backward(mode, yr, dyr, dxr):
    """One row of the softmax / log_softmax backward pass; ``dxr`` may alias ``dyr``.

    softmax: ``dx = y * (dy - sum(dy * y))``; log_softmax: ``dx = dy - exp(y) * sum(dy)``.
    """
    m = yr.shape[0]
    s = yr.dtype.type(0)
    if mode == SOFTMAX:
        for j in range(m):
            s += dyr[j] * yr[j]
        for j in range(m):
            dxr[j] = yr[j] * (dyr[j] - s)
    else:
        for j in range(m):
            s += dyr[j]
        for j in range(m):
            dxr[j] = dyr[j] - fast_exp(yr[j]) * s


@kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _row_logsumexp(xr):
    """``log(sum(exp(xr)))`` of one row, stable; ``-inf`` for an empty or all ``-inf`` row."""
    m = xr.shape[0]
    if m == 0:
        return -np.inf
    mx = xr[0]
    for j in range(1, m):
        v = xr[j]
        mx = v if v > mx else mx
    if math.isinf(mx):
        # All -inf (or some +inf): the sum below would be exp(nan); the limit is mx.
        return mx
    s = xr.dtype.type(0)
    for j in range(m):
        s += fast_exp(xr[j] - mx)
    return mx + math.log(s)


@parallel_kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _rows_forward_parallel(mode, x, y):
    """Row-wise forward on ``(n, m)`` arrays; ``prange`` over rows, each row owned by one
    thread and reduced in a fixed order, so the result is independent of the thread count."""
    for i in numba.prange(x.shape[0]):
        _row_forward(mode, x[i], y[i])


@kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _rows_forward_serial(mode, x, y):
    """Serial twin of :func:`_rows_forward_parallel`."""
    for i in range(x.shape[0]):
        _row_forward(mode, x[i], y[i])


@parallel_kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _rows_backward_parallel(mode, y, dy, dx):
    """Row-wise backward; ``prange`` over rows (row ``i`` writes ``dx[i]`` only)."""
    for i in numba.prange(y.shape[0]):
        _row_backward(mode, y[i], dy[i], dx[i])


@kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _rows_backward_serial(mode, y, dy, dx):
    """Serial twin of :func:`_rows_backward_parallel`."""
    for i in range(y.shape[0]):
        _row_backward(mode, y[i], dy[i], dx[i])


@parallel_kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _logsumexp_parallel(x, out):
    """``out[i] = logsumexp(x[i])``; ``prange`` over rows (row ``i`` writes ``out[i]``)."""
    for i in numba.prange(x.shape[0]):
        out[i] = _row_logsumexp(x[i])


@kernel(fastmath=set(ELEMENTWISE_FASTMATH))
def _logsumexp_serial(x, out):
    """Serial twin of :func:`_logsumexp_parallel`."""
    for i in range(x.shape[0]):
        out[i] = _row_logsumexp(x[i])


def _rowwise_forward(mode: int, x: np.ndarray, out: np.ndarray) -> None:
    check_float_array("x", x, ndim=2)
    check_float_array("out", out, dtype=x.dtype, shape=x.shape, writeable=True)
    _run_rowwise_forward(mode, x, out)


def _run_rowwise_forward(mode: int, x: np.ndarray, out: np.ndarray) -> None:
    """Unchecked dispatch: parallel over rows or serial by size."""
    if x.size >= _ROWWISE_FORWARD_THRESHOLD[mode]:
        _rows_forward_parallel(mode, x, out)
    else:
        _rows_forward_serial(mode, x, out)


def _rowwise_backward(
    mode: int, x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray
) -> None:
    check_float_array("x", x, ndim=2)
    for name, arr in (("y", y), ("dy", dy), ("dx", dx)):
        check_float_array(name, arr, dtype=x.dtype, shape=x.shape, writeable=name == "dx")
    _run_rowwise_backward(mode, x, y, dy, dx)


def _run_rowwise_backward(
    mode: int, x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray
) -> None:
    """Unchecked dispatch: parallel over rows or serial by size (reads ``y`` and ``dy``)."""
    if x.size >= _ROWWISE_BACKWARD_THRESHOLD[mode]:
        _rows_backward_parallel(mode, y, dy, dx)
    else:
        _rows_backward_serial(mode, y, dy, dx)


def softmax(x: np.ndarray, out: np.ndarray) -> None:
    """Row-wise softmax ``out[i] = exp(x[i] - max(x[i])) / sum(exp(x[i] - max(x[i])))``.

    Args:
        x: logits, C-contiguous float32/float64 array of shape ``(n, m)``.
        out: writeable ``(n, m)`` array of the same dtype; ``out is x`` is allowed.

    Raises:
        TypeError: not a float32/float64 ndarray, or dtypes differ.
        ValueError: ``x`` is not 2-D, shapes differ, not C-contiguous, ``out`` read-only.
    """
    _rowwise_forward(SOFTMAX, x, out)


def softmax_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx[i] = y[i] * (dy[i] - <dy[i], y[i]>)`` (reads ``y`` and ``dy``; ``x`` only for checks).

    Args:
        x: the ``(n, m)`` logits given to :func:`softmax`.
        y: its output.
        dy: gradient w.r.t. ``y``.
        dx: writeable, receives the gradient w.r.t. ``x``; ``dx is dy`` is allowed.

    Raises:
        TypeError, ValueError: as for :func:`softmax`.
    """
    _rowwise_backward(SOFTMAX, x, y, dy, dx)


def log_softmax(x: np.ndarray, out: np.ndarray) -> None:
    """Row-wise ``out[i] = (x[i] - max(x[i])) - log(sum(exp(x[i] - max(x[i]))))``.

    Args:
        x: logits, C-contiguous float32/float64 array of shape ``(n, m)``.
        out: writeable ``(n, m)`` array of the same dtype; ``out is x`` is allowed.

    Raises:
        TypeError: not a float32/float64 ndarray, or dtypes differ.
        ValueError: ``x`` is not 2-D, shapes differ, not C-contiguous, ``out`` read-only.
    """
    _rowwise_forward(LOG_SOFTMAX, x, out)


def log_softmax_backward(x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx[i] = dy[i] - exp(y[i]) * sum(dy[i])`` (``y`` is the log_softmax output).

    Args:
        x: the ``(n, m)`` logits given to :func:`log_softmax`.
        y: its output.
        dy: gradient w.r.t. ``y``.
        dx: writeable, receives the gradient w.r.t. ``x``; ``dx is dy`` is allowed.

    Raises:
        TypeError, ValueError: as for :func:`log_softmax`.
    """
    _rowwise_backward(LOG_SOFTMAX, x, y, dy, dx)


def logsumexp_rows(x: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = log(sum_j exp(x[i, j]))``, computed stably (row maximum subtracted).

    A row of all ``-inf`` gives ``-inf``; a row containing ``+inf`` gives ``+inf``.

    Args:
        x: C-contiguous float32/float64 array of shape ``(n, m)``.
        out: writeable 1-D array of shape ``(n,)`` and ``x``'s dtype.

    Raises:
        TypeError: not a float32/float64 ndarray, or dtypes differ.
        ValueError: wrong rank or shape, not C-contiguous, ``out`` read-only.
    """
    check_float_array("x", x, ndim=2)
    check_float_array("out", out, dtype=x.dtype, shape=(x.shape[0],), writeable=True)
    if x.size >= PARALLEL_MIN_ROWWISE:
        _logsumexp_parallel(x, out)
    else:
        _logsumexp_serial(x, out)


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Activation(ActivationSpec):
    """An activation's table row (every :class:`ActivationSpec` field, e.g.
    ``derivative_from_output``, ``init``, ``default_param``) plus its kernels.

    Attributes:
        forward: ``forward(x, out)``, the public checked kernel (the module-level function
            of that name when there is one, e.g. :func:`relu`).
        backward: ``backward(x, y, dy, dx)``, the public checked kernel.
        forward_unchecked: ``forward_unchecked(x, out)`` with the default parameter and
            no argument checks, for layers that validated their buffers once (the
            training step's hot path). Wrong arguments here are undefined behaviour.
        backward_unchecked: ``backward_unchecked(x, y, dy, dx)``, likewise.
        elementwise: ``True`` for activations that act on each element independently
            (``kind == "elementwise"``).
    """

    forward: Callable[..., None]
    backward: Callable[..., None]
    forward_unchecked: Callable[..., None]
    backward_unchecked: Callable[..., None]


def _public_function(name: str, fallback: Callable[..., None]) -> Callable[..., None]:
    """The hand-written public function ``name`` of this module, else ``fallback``."""
    func = globals().get(name)
    if callable(func) and getattr(func, "__module__", None) == __name__:
        return func
    return fallback


def _make_activation(spec: ActivationSpec) -> Activation:
    if spec.elementwise:
        forward_unchecked = functools.partial(
            elementwise_forward_unchecked, spec.id, spec.default_param
        )
        backward_unchecked = functools.partial(
            _run_elementwise_backward, spec.id, spec.default_param
        )
        # Rows without hand-written public functions get these (default parameter only).
        forward = functools.partial(_elementwise_forward, spec.id, spec.default_param)
        backward = functools.partial(_elementwise_backward, spec.id, spec.default_param)
    else:
        forward_unchecked = functools.partial(_run_rowwise_forward, spec.mode)
        backward_unchecked = functools.partial(_run_rowwise_backward, spec.mode)
        forward = functools.partial(_rowwise_forward, spec.mode)
        backward = functools.partial(_rowwise_backward, spec.mode)
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(ActivationSpec)}
    return Activation(
        **fields,
        forward=_public_function(spec.name, forward),
        backward=_public_function(spec.name + "_backward", backward),
        forward_unchecked=forward_unchecked,
        backward_unchecked=backward_unchecked,
    )


_REGISTRY: dict[str, Activation] = {spec.name: _make_activation(spec) for spec in ACTIVATION_TABLE}


def get_activation(name: str) -> Activation:
    """Look up an activation by name.

    Args:
        name: one of :data:`ACTIVATIONS` (case-sensitive).

    Returns:
        The :class:`Activation` record: the table row (``derivative_from_output``,
        ``init``, ``default_param``, references, ...) and the kernels.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: unknown name; the message lists the known ones.
    """
    if not isinstance(name, str):
        raise TypeError(f"activation name must be a str, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(ACTIVATIONS)
        raise ValueError(f"unknown activation {name!r}; known activations: {known}") from None
