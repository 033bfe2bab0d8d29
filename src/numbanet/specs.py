"""What a plugin returns: :class:`OptimizerSpec` and :class:`LossSpec`.

A spec is plain data plus one serial ``@njit`` kernel. The host (:mod:`numbanet.optim`,
:mod:`numbanet.losses`) owns allocation, validation, reductions and the ``prange`` loop,
so a plugin author writes only the maths of one element (optimizers) or one row (losses).

Hyperparameters are declared as an ordered mapping of defaults. The kernel receives them
as ``hp``, a flat tuple built in declaration order: a float or int contributes one entry,
a bool contributes ``1.0``/``0.0``, a tuple of floats (``betas``) contributes one entry
per element. Because the tuple's *type* never changes, setting a new learning rate never
recompiles anything. :meth:`OptimizerSpec.hp_index` tells where a name landed.

Optimizer kernels receive ``hp``, ``sc`` and ``gs`` in the parameters' dtype (float32
scalars for a float32 model; the host keeps the float64 master values and ``prepare``
works in float64). Keep float literals out of the kernel's arithmetic: ``(1.0 - b1) * g``
is float64 in Numba and halves the vector width of a float32 update; compute ``1 - b1``
in ``prepare`` and read it from ``sc`` (literals in comparisons are harmless). Loss
kernels get float64 ``hp`` and compute in float64.

Example (a complete plugin optimizer)::

    from numbanet import OptimizerSpec, hookimpl
    from numbanet._jit import kernel

    @kernel
    def sign_sgd_kernel(i, p, g, gs, slots, hp, sc):
        # hp = (lr,); the host runs this for every i of the flat buffer, in parallel.
        if g[i] > 0:
            p[i] -= hp[0]
        elif g[i] < 0:
            p[i] += hp[0]

    @hookimpl
    def numbanet_register_optimizers():
        return [OptimizerSpec("sign_sgd", sign_sgd_kernel, {"lr": 1e-3},
                              bounds={"lr": "[0, inf)"})]
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from numbanet._validation import OneOf, Real, check_arg

__all__ = [
    "HyperparamValue",
    "LossSpec",
    "OptimizerSpec",
    "PluginError",
    "flatten_hyperparams",
    "numba_root_cause",
    "validate_hyperparams",
]

HyperparamValue = float | int | bool | tuple[float, ...]


class PluginError(RuntimeError):
    """An optimizer's or loss's own code (kernel, ``prepare``) failed while running.

    The message names the item's qualified id (``distribution:name``), so the user knows
    which plugin to report; the original exception is chained as ``__cause__``.
    """

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_INTERVAL_RE = re.compile(
    r"^\s*([\[(])\s*([-+]?(?:inf|[0-9.eE+-]+))\s*,\s*([-+]?(?:inf|[0-9.eE+-]+))\s*([\])])\s*$"
)

LOSS_TARGETS = ("labels", "dense", "labels_or_dense")
OUTPUT_ACTIVATIONS = (None, "softmax", "sigmoid")
_MEAN_OVER = ("rows", "elements", "weights")
# A user's hyperparameter value (the spec's bounds are checked once all are merged).
_HYPERPARAM_NUMBER = Real(what="a number")


@dataclass(frozen=True)
class _Interval:
    low: float
    high: float
    low_closed: bool
    high_closed: bool
    text: str

    def contains(self, x: float) -> bool:
        if math.isnan(x):
            return False
        above = x >= self.low if self.low_closed else x > self.low
        below = x <= self.high if self.high_closed else x < self.high
        return above and below


def _parse_interval(text: str, where: str) -> _Interval:
    m = _INTERVAL_RE.match(text)
    if m is None:
        raise ValueError(
            f"{where}: bound {text!r} is not an interval such as '[0, 1)' or '[0, inf)'"
        )
    low, high = float(m.group(2)), float(m.group(3))
    return _Interval(low, high, m.group(1) == "[", m.group(4) == "]", text)


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"{kind}.name must be a lowercase identifier such as 'adam' or 'focal', got {name!r}"
        )
    return name


def _check_kernel(kind: str, name: str, kernel: object) -> None:
    # A numba Dispatcher is callable and has py_func; a plain function is accepted too and
    # compiled by the host with numbanet's flags.
    if not callable(kernel):
        raise TypeError(f"{kind} {name!r}: kernel must be an @njit function, got {kernel!r}")


def _check_defaults(kind: str, name: str, hyperparams: Mapping[str, Any]) -> None:
    if not isinstance(hyperparams, Mapping):
        raise TypeError(f"{kind} {name!r}: hyperparams must be a dict of defaults")
    for key, value in hyperparams.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"{kind} {name!r}: hyperparameter name {key!r} is not an identifier")
        ok = isinstance(value, (bool, int, float)) or (
            isinstance(value, tuple)
            and len(value) > 0
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        )
        if not ok:
            raise TypeError(
                f"{kind} {name!r}: default of hyperparameter {key!r} must be a float, int, "
                f"bool or tuple of floats, got {value!r}"
            )


@dataclass(frozen=True)
class _SpecBase:
    def hp_index(self, hp_name: str) -> int:
        """Position of hyperparameter ``hp_name`` (its first element for tuples) in ``hp``."""
        pos = 0
        for key, value in self.hyperparams.items():  # type: ignore[attr-defined]
            if key == hp_name:
                return pos
            pos += len(value) if isinstance(value, tuple) else 1
        raise KeyError(hp_name)


@dataclass(frozen=True)
class OptimizerSpec(_SpecBase):
    """An optimizer, as a plugin registers it.

    Attributes:
        name: short lowercase name (``"adam"``); users may also write the qualified id
            ``"distribution:name"``.
        kernel: serial ``@njit`` per-element update
            ``kernel(i, p, g, gs, slots, hp, sc) -> None``. ``p`` (parameters, updated in
            place) and ``g`` (gradients, read only) are 1-D C-contiguous arrays of one
            float dtype; the effective gradient is ``gs * g[i]`` (``gs`` folds gradient
            clipping and loss scaling into one scalar). ``slots`` is a tuple of 1-D state
            arrays, one per name in :attr:`slots`, same length and dtype as ``p``, zero at
            the first step. ``hp`` is the hyperparameter tuple and ``sc`` the tuple
            returned by :attr:`prepare`; ``gs``, ``hp`` and ``sc`` arrive in ``p``'s dtype.
            ``i`` may be unsigned (Numba's ``prange`` index). The kernel must touch index ``i``
            only: the host calls it for every ``i`` from a ``prange`` loop, which is
            race-free exactly because each call reads and writes its own element.
        hyperparams: ordered defaults, in PyTorch's names; their order is the order of
            ``hp``. Users may pass only these names.
        slots: names of the per-element state buffers (``("exp_avg", "exp_avg_sq")``).
        prepare: ``prepare(step, hp) -> tuple[float, ...]``, per-step scalars computed once
            on the host in float64 from the float64 ``hp`` (bias corrections, ``1 - β``
            terms, schedules); ``step`` counts from 1. Must return the same length every
            step. ``None`` gives ``sc == (0.0,)``.
        description: one line shown by ``numbanet plugins``.
        bounds: allowed values per hyperparameter as interval strings, e.g.
            ``{"lr": "[0, inf)", "betas": "[0, 1)"}`` (tuples are checked per element).
        validate: optional ``validate(hyperparams: dict) -> None`` raising ``ValueError``
            for conditions intervals cannot express (``nesterov`` needs ``momentum > 0``).
    """

    name: str
    kernel: Callable[..., None]
    hyperparams: Mapping[str, HyperparamValue] = field(default_factory=dict)
    slots: tuple[str, ...] = ()
    prepare: Callable[[int, tuple[float, ...]], tuple[float, ...]] | None = None
    description: str = ""
    bounds: Mapping[str, str] = field(default_factory=dict)
    validate: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        _check_name("OptimizerSpec", self.name)
        _check_kernel("OptimizerSpec", self.name, self.kernel)
        _check_defaults("OptimizerSpec", self.name, self.hyperparams)
        if isinstance(self.slots, str) or not all(
            isinstance(s, str) and s.isidentifier() for s in tuple(self.slots)
        ):
            raise TypeError(
                f"OptimizerSpec {self.name!r}: slots must be a tuple of names, got {self.slots!r}"
            )
        object.__setattr__(self, "slots", tuple(self.slots))
        object.__setattr__(self, "hyperparams", dict(self.hyperparams))
        if "lr" not in self.hyperparams:
            raise ValueError(f"OptimizerSpec {self.name!r}: hyperparams must include 'lr'")
        for key, text in self.bounds.items():
            if key not in self.hyperparams:
                raise ValueError(f"OptimizerSpec {self.name!r}: bound for unknown {key!r}")
            _parse_interval(text, f"OptimizerSpec {self.name!r}")
        if self.prepare is not None and not callable(self.prepare):
            raise TypeError(f"OptimizerSpec {self.name!r}: prepare must be callable")


@dataclass(frozen=True)
class LossSpec(_SpecBase):
    """A loss, as a plugin registers it.

    Attributes:
        name: short lowercase name (``"focal"``).
        kernel: serial ``@njit`` fused per-row value and gradient
            ``kernel(r, x, t, aux, hp, gs, grad) -> float``. ``x`` is the 2-D ``(n, k)``
            network output, ``t`` the targets (1-D int64 labels ``(n,)`` or 2-D float
            ``(n, k)`` in ``x``'s dtype), ``aux`` a 1-D float64 array of per-class weights
            (length ``k``; all ones when the user gave none, empty for ``target="dense"``
            losses without ``weight``), ``hp`` the float64 hyperparameter tuple. It returns
            the loss of row ``r`` (float64, before reduction) and writes
            ``grad[r, :] = gs * d(row loss)/d(x[r, :])``. The host calls it from a ``prange``
            over rows; it is race-free because each call writes row ``r`` only.
        target: ``"labels"`` (integer class indices), ``"dense"`` (float targets shaped
            like the outputs) or ``"labels_or_dense"`` (both; then :attr:`dense_kernel`
            handles float targets).
        hyperparams: ordered float/bool/tuple defaults (``reduction`` and ``weight`` are
            handled by the host and are not listed here).
        dense_kernel: kernel for float targets when ``target == "labels_or_dense"``.
        mean_over: what ``reduction="mean"`` divides by: ``"rows"`` (classification),
            ``"elements"`` (regression, like PyTorch's ``mse_loss``) or ``"weights"``
            (sum of the targets' class weights, PyTorch's weighted mean for labels).
        supports_weight: accepts a per-class ``weight`` array (passed as ``aux``).
        ignore_label: name of an integer hyperparameter (``"ignore_index"``) whose value,
            found in the labels, marks rows that contribute nothing (PyTorch's
            ``ignore_index``): the host accepts that label, leaves those rows out of the
            mean's divisor, and the kernel must return 0 and zero the row's gradient.
        output_activation: what ``predict_proba`` applies: ``None``, ``"softmax"`` or
            ``"sigmoid"``.
        extra_reductions: reductions beyond mean/sum/none, mapped to what they divide by
            (``{"batchmean": "rows"}`` for ``kl_div``).
        description: one line shown by ``numbanet plugins``.
        bounds: allowed values per hyperparameter as interval strings.
        validate: optional ``validate(hyperparams: dict) -> None`` raising ``ValueError``.
        target_range: ``(low, high)`` that every dense target must lie in (checked once
            when targets are prepared), e.g. ``(0.0, 1.0)`` for binary cross-entropy, so
            labels such as ``2`` are named as a mistake instead of training silently.
    """

    name: str
    kernel: Callable[..., float]
    target: str = "dense"
    hyperparams: Mapping[str, HyperparamValue] = field(default_factory=dict)
    dense_kernel: Callable[..., float] | None = None
    mean_over: str = "rows"
    supports_weight: bool = False
    ignore_label: str | None = None
    output_activation: str | None = None
    extra_reductions: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    bounds: Mapping[str, str] = field(default_factory=dict)
    validate: Callable[[dict[str, Any]], None] | None = None
    target_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _check_name("LossSpec", self.name)
        _check_kernel("LossSpec", self.name, self.kernel)
        _check_defaults("LossSpec", self.name, self.hyperparams)
        object.__setattr__(self, "hyperparams", dict(self.hyperparams))
        where = f"LossSpec {self.name!r}"
        check_arg("target", self.target, OneOf(*LOSS_TARGETS), where=where)
        if self.target == "labels_or_dense":
            _check_kernel("LossSpec", self.name, self.dense_kernel)
        check_arg("mean_over", self.mean_over, OneOf(*_MEAN_OVER), where=where)
        check_arg("output_activation", self.output_activation, OneOf(*OUTPUT_ACTIVATIONS),
                  where=where)
        if self.ignore_label is not None and (
            self.ignore_label not in self.hyperparams or self.target == "dense"
        ):
            raise ValueError(
                f"LossSpec {self.name!r}: ignore_label must name a hyperparameter of a "
                "label loss"
            )
        for key in ("reduction", "weight"):
            if key in self.hyperparams:
                raise ValueError(
                    f"LossSpec {self.name!r}: {key!r} is handled by the host; do not list it"
                )
        for key, text in self.bounds.items():
            if key not in self.hyperparams:
                raise ValueError(f"LossSpec {self.name!r}: bound for unknown {key!r}")
            _parse_interval(text, f"LossSpec {self.name!r}")


def validate_hyperparams(
    kind: str, spec: OptimizerSpec | LossSpec, given: Mapping[str, Any]
) -> dict[str, HyperparamValue]:
    """Merge user hyperparameters into ``spec``'s defaults, checking names, types and bounds.

    Args:
        kind: ``"optimizer"`` or ``"loss"``, used in messages.
        spec: the spec that declares the defaults.
        given: what the user passed.

    Returns:
        The complete, normalised hyperparameter dict (floats, bools, tuples of floats).

    Raises:
        ValueError: unknown name, wrong tuple length, value outside its bounds.
        TypeError: a value of the wrong type (``lr="x"``).
    """
    where = f"{kind} {spec.name!r}"
    out: dict[str, HyperparamValue] = dict(spec.hyperparams)
    for key, value in given.items():
        if key not in spec.hyperparams:
            known = ", ".join(spec.hyperparams) or "none"
            raise ValueError(f"{where}: unknown hyperparameter {key!r}; known: {known}")
        default = spec.hyperparams[key]
        if isinstance(default, bool):
            if isinstance(value, np.bool_):
                value = bool(value)
            if not isinstance(value, (bool, int)) or (
                not isinstance(value, bool) and value not in (0, 1)
            ):
                raise TypeError(f"{where}: {key} must be a bool, got {value!r}")
            out[key] = bool(value)
        elif isinstance(default, tuple):
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise TypeError(
                    f"{where}: {key} must be a tuple of {len(default)} floats, got {value!r}"
                )
            if len(value) != len(default):
                raise ValueError(
                    f"{where}: {key} must have {len(default)} elements, got {len(value)}"
                )
            out[key] = tuple(_as_float(where, f"{key}[{j}]", v) for j, v in enumerate(value))
        else:
            out[key] = _as_float(where, key, value)
    for key, value in out.items():
        vals = value if isinstance(value, tuple) else (value,)
        for v in vals:
            if not isinstance(v, bool) and not math.isfinite(float(v)):
                raise ValueError(f"{where}: {key} must be finite, got {value!r}")
    for key, text in spec.bounds.items():
        interval = _parse_interval(text, where)
        value = out[key]
        vals = value if isinstance(value, tuple) else (value,)
        for v in vals:
            if not interval.contains(float(v)):
                raise ValueError(f"{where}: {key} must be in {interval.text}, got {value!r}")
    if spec.validate is not None:
        spec.validate(dict(out))
    return out


def _as_float(where: str, key: str, value: Any) -> float:
    return check_arg(key, value, _HYPERPARAM_NUMBER, where=where)  # type: ignore[no-any-return]


_NUMBA_NOISE = ("Failed in ", "During:", "File ", "<source ")


def numba_root_cause(exc: BaseException, kernel: object) -> str:
    """The line of a Numba typing error a plugin author needs, and where it points.

    Numba reports a plugin kernel that does not type-check as "Failed in nopython mode
    pipeline (step: nopython frontend)" and puts the real error (``NameError: name 'x'
    is not defined``, ``tuple index out of range``, an operator that has no
    implementation for the types) further down, between ``During:`` lines. This returns
    that error and the first source location outside numbanet's generated drivers (or
    the kernel's own ``file:line`` when Numba names none), e.g.
    ``NameError: name 'lr' is not defined (in the kernel my_update, plug.py:12)``.
    """
    lines = [line.strip() for line in str(exc).splitlines()]
    cause = next((line for line in lines
                  if line and not line.startswith(_NUMBA_NOISE) and not line.startswith("^")),
                 None)
    if cause is None:
        cause = next((line for line in lines if line), type(exc).__name__)
    elif cause.endswith("found for signature:"):
        # "No implementation of function mul found for signature:" / ">>> mul(float64, ...)"
        signature = next((line for line in lines if line.startswith(">>>")), None)
        if signature:
            cause = f"{cause} {signature[3:].strip()}"
    where = None
    for line in lines:
        match = re.match(r'File "(.+)", line (\d+)', line)
        if match and not os.path.basename(match.group(1)).startswith("_numbanet_"):
            where = f"{os.path.basename(match.group(1))}:{match.group(2)}"
            break
    func = getattr(kernel, "py_func", kernel)
    code = getattr(func, "__code__", None)
    name = getattr(func, "__name__", "?")
    if where is None and code is not None:
        where = f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}"
    return f"{cause} (in the kernel {name}, {where})" if where else f"{cause} (in {name})"


def flatten_hyperparams(values: Mapping[str, HyperparamValue]) -> tuple[float, ...]:
    """The float64 ``hp`` tuple a kernel receives, in declaration order."""
    flat: list[float] = []
    for value in values.values():
        if isinstance(value, tuple):
            flat.extend(float(v) for v in value)
        else:
            flat.append(float(value))
    # Numba types () and (x,) differently from (x, y); a fixed minimum length keeps
    # kernels without hyperparameters simple.
    return tuple(flat) if flat else (0.0,)
