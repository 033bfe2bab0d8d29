"""``check_layer``: the conformance check for layers (re-exported by :mod:`numbanet.testing`).

Every built-in layer passes it and a layer plugin's tests should call it. It drives the
layer through the public layer contract only (:mod:`numbanet.nn.module`): the layer is
wrapped in a one-layer :class:`~numbanet.nn.Sequential` with ``input_shape=``, and the
model's public methods (``forward``, ``backward``, ``get_weights``, ``save``,
:func:`numbanet.load`) plus the layer's own contract methods do the rest.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import tracemalloc
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from numbanet._validation import check_positive_int
from numbanet.nn.module import Module
from numbanet.nn.sequential import Sequential

__all__ = ["LAYER_CHECKS", "check_layer"]

#: The properties :func:`check_layer` checks, in the order it checks them; names accepted
#: by its ``skip`` argument.
LAYER_CHECKS = ("shapes", "gradients", "buffers", "config", "dtypes", "threads", "save_load",
                "allocations")

# Central differences check at most this many entries of each array (chosen at random,
# seeded), so a layer with thousands of weights still checks in well under a second.
_FD_MAX_ENTRIES = 200
_FD_STEP = 1e-6
# Rows of the finite-difference batch: each checked entry costs two forward passes.
_FD_ROWS = 4
# Steady-state steps measured by the allocation check.
_ALLOC_STEPS = 10
# tracemalloc bounds for those steps. A step's Python objects (views, tuples, small ints)
# peak at well under 1 KiB for the built-in layers; an array allocated per step of the
# check's batch is larger than this. What stays allocated must not grow with the steps.
_TRANSIENT_LIMIT = 2048
_GROWTH_LIMIT = 1024

Sample = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


def away_from_zero(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float64 samples pushed at least 0.1 away from zero.

    ``check_layer``'s default inputs: ReLU-like kinks at zero are then never within a
    finite-difference step of an input.
    """
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + 0.1, x - 0.1)


def check_layer(
    layer_or_factory: Module | Callable[[], Module],
    input_shape: Sequence[int] | int,
    *,
    batch: int = 64,
    sample: Sample | None = None,
    seed: int = 0,
    grad_rtol: float = 1e-5,
    grad_atol: float = 1e-7,
    dtype_rtol: float = 1e-4,
    skip: Collection[str] = (),
) -> None:
    """Check that a layer honours numbanet's layer contract.

    The layer is wrapped alone in ``Sequential([layer], input_shape=input_shape)``; the
    "loss" is ``sum(outputs * u)`` for a random upstream gradient ``u``, so
    ``model.backward(u)`` must return its exact input gradient. Properties checked, in
    this order (names as accepted by ``skip``):

    1. ``shapes``: ``output_shape(input_shape)`` equals the shape of what ``forward``
       returns, in training and inference; outputs and input gradients hold the model's
       dtype, are C-contiguous and have the shapes of the output and input; ``forward``
       leaves its input and ``backward`` its incoming gradient unchanged.
    2. ``gradients`` (float64): the input gradient and every parameter gradient agree with
       central differences of the loss (step 1e-6, at most 200 random entries per array);
       the forward pass is deterministic given the model's random generator (the check
       resets the generator before every forward, so Dropout is checked in training mode
       with the same mask); ``backward`` overwrites the gradients rather than adding to
       them; ``backward(dy, need_input_grad=False)`` returns ``None`` and the same
       parameter gradients.
    3. ``buffers``: ``backward`` and an inference ``forward`` leave the buffers unchanged.
    4. ``config``: ``get_config()`` is JSON-serialisable, its ``"type"`` is the class's
       ``layer_type``, and :func:`numbanet.nn.layer_from_config` (the layer registry, as
       :func:`numbanet.load` uses it) rebuilds an instance of the same class with the same
       config, parameter and buffer shapes and roles, that computes the same outputs and
       gradients with the same weights. The layer must be registered (through the
       ``numbanet_register_layers`` hook, or :func:`numbanet.plugins.register_plugin` in a
       test).
    5. ``dtypes``: float32 and float64 models with the same (float32-representable)
       weights and inputs agree on outputs, input gradients and parameter gradients to
       ``dtype_rtol`` times the largest magnitude of each array. A layer that draws random
       numbers in training (the generator's state moves) is compared in inference only:
       float32 and float64 draws differ.
    6. ``threads``: 1 thread and :func:`numbanet.threads.max_threads` threads give
       bit-identical outputs and gradients, in float32 and float64 (nothing to compare on
       a one-core machine). Pick ``batch`` and ``input_shape`` large enough that the
       layer's kernels take their parallel paths.
    7. ``save_load``: ``model.save`` then :func:`numbanet.load` gives the same layer
       config, parameters and buffers, and bit-identical outputs and gradients.
    8. ``allocations``: a steady-state training step of the layer (``forward`` then
       ``backward``, float32, after a warm-up) hands back the same output and gradient
       buffers every step (``self.workspace.get``), its compiled kernels allocate nothing
       beyond the records Numba makes for the arrays it unboxes (Numba's NRT statistics,
       as ``tests/perf/test_allocations.py`` measures a whole training step), and
       tracemalloc sees no array-sized temporary and no growth.

    Each property that fails raises :class:`AssertionError` naming the layer and the
    property. Small shapes keep it fast: a few seconds per layer once its kernels are
    compiled (compilation is cached on disk).

    Args:
        layer_or_factory: a zero-argument callable returning a fresh layer, or a layer
            instance, which serves as a template: each model gets a deep copy of it (the
            instance itself is never put in a model). An instance that is already part
            of a model is rebuilt from its ``get_config()`` instead, which cannot catch
            a config that leaves out an argument: pass a factory then.
        input_shape: one sample's input shape, batch axis excluded (``(8,)``,
            ``(8, 8, 3)``).
        batch: rows of the batches for the dtype, thread, save/load and allocation
            checks (the finite differences use the first 4).
        sample: ``sample(rng, shape) -> float64 array``, the inputs; the default is
            standard normal pushed at least 0.1 away from zero (:func:`away_from_zero`),
            which keeps ReLU-like kinks at zero away. Pass one for layers with kinks
            elsewhere or with a restricted domain. A layer with ``input_kind = "index"``
            (Embedding) needs one that returns integer indices; it is then checked
            without an input gradient (``backward(dy, need_input_grad=False)``).
        seed: seeds the models, the inputs and the upstream gradients.
        grad_rtol: relative tolerance of the finite-difference comparison.
        grad_atol: absolute tolerance of the finite-difference comparison.
        dtype_rtol: tolerance of the float32 vs float64 comparison, relative to the
            largest magnitude of each compared array.
        skip: names from :data:`LAYER_CHECKS` not to check (say why in your test).

    Raises:
        AssertionError: a property does not hold; the message names the layer and it.
        TypeError, ValueError: bad arguments (an unknown name in ``skip``, a factory that
            does not return a layer, an ``input_shape`` the layer cannot take).

    Example:
        >>> import numbanet as nbn
        >>> from numbanet.testing import check_layer
        >>> check_layer(lambda: nbn.Dense(6, 3, activation="tanh"), (6,), batch=8)
        >>> check_layer(nbn.Dropout(0.25), (5,), batch=8)   # an instance as template
    """
    make = _factory(layer_or_factory)
    batch = check_positive_int("batch", batch)
    unknown = sorted(set(skip) - set(LAYER_CHECKS))
    if isinstance(skip, str) or unknown:
        raise ValueError(f"check_layer: skip must be a collection of names from "
                         f"{LAYER_CHECKS}, got {skip!r}")
    model = _model(make, input_shape, np.float64, seed)
    in_shape = model.input_shape
    assert in_shape is not None and model.output_shape is not None
    label = f"check_layer({_describe(model.layers[0])})"
    if sample is None:
        if _takes_indices(model):
            raise ValueError(f"{label}: the layer takes integer indices (input_kind "
                             "'index'): pass sample=lambda rng, shape: rng.integers(0, n, "
                             "shape)")
        sample = away_from_zero
    rng = np.random.default_rng(seed)
    X = _draw(sample, rng, (batch, *in_shape), label, _takes_indices(model))
    U = rng.standard_normal((batch, *model.output_shape))
    fd_rows = min(batch, _FD_ROWS)
    checks: dict[str, Callable[[], None]] = {
        "shapes": lambda: _check_shapes(label, model, X),
        "gradients": lambda: _check_gradients(label, model, X[:fd_rows].copy(),
                                              U[:fd_rows].copy(), rng, grad_rtol, grad_atol),
        "buffers": lambda: _check_buffers(label, model, X, U),
        "config": lambda: _check_config(label, model, X, U),
        "dtypes": lambda: _check_dtypes(label, make, in_shape, seed, X, U, dtype_rtol),
        "threads": lambda: _check_threads(label, make, in_shape, seed, X, U),
        "save_load": lambda: _check_save_load(label, model, X, U),
        "allocations": lambda: _check_allocations(label, make, in_shape, seed, X, U),
    }
    for name in LAYER_CHECKS:
        if name not in skip:
            checks[name]()


# -- building -------------------------------------------------------------------------


def _factory(layer_or_factory: Any) -> Callable[[], Module]:
    if isinstance(layer_or_factory, Module):
        template = layer_or_factory
        try:
            _ = template.workspace  # raises unless the layer is part of a model
        except RuntimeError:
            return lambda: copy.deepcopy(template)
        # Part of a model already: its caches may hold that model's dtype and buffers, so
        # rebuild it from its config instead of copying it.
        config = template.get_config()
        kwargs = {k: v for k, v in config.items() if k != "type"}
        cls = type(template)

        def from_template() -> Module:
            return cls(**json.loads(json.dumps(kwargs)))

        return from_template
    if isinstance(layer_or_factory, type) or not callable(layer_or_factory):
        raise TypeError(
            "check_layer: pass a layer instance or a zero-argument function returning a "
            f"fresh layer (lambda: MyLayer(...)), got {layer_or_factory!r:.80}"
        )

    def checked() -> Module:
        layer = layer_or_factory()
        if not isinstance(layer, Module):
            raise TypeError(f"check_layer: the factory returned {type(layer).__name__}, "
                            "not a numbanet layer (a subclass of numbanet.Module)")
        return layer

    return checked


def _describe(layer: Module) -> str:
    """The layer's repr if it names the class (a subclass may inherit a repr naming its
    base), else ``ClassName(...)``."""
    name = type(layer).__name__
    shown = repr(layer)
    return shown if shown.startswith(f"{name}(") else f"{name}(...)"


def _model(make: Callable[[], Module], input_shape: Any, dtype: Any, seed: int) -> Sequential:
    return Sequential([make()], seed=seed, dtype=dtype, input_shape=input_shape)


def _takes_indices(model: Sequential) -> bool:
    return model.layers[0].input_kind == "index"


def _draw(sample: Sample, rng: np.random.Generator, shape: tuple[int, ...],
          label: str, indices: bool) -> np.ndarray:
    x = np.asarray(sample(rng, shape))
    if x.shape != shape:
        raise ValueError(f"{label}: sample(rng, {shape}) returned shape {x.shape}")
    if indices:
        if x.dtype.kind not in "iu":
            raise ValueError(f"{label}: the layer takes integer indices, but sample returned "
                             f"dtype {x.dtype}")
        return np.ascontiguousarray(x, dtype=np.int64)
    x = x.astype(np.float64)
    # float32-representable, so float32 and float64 models see the same numbers.
    return np.ascontiguousarray(x.astype(np.float32).astype(np.float64))


class _State(NamedTuple):
    """What a training forward may move: the generator and the buffers (running
    statistics). Runs that are compared start from the same one."""

    rng: dict[str, Any]
    buffers: dict[str, np.ndarray]


def _rng_state(model: Sequential) -> _State:
    return _State(model.rng.bit_generator.state,
                  {name: b.copy() for name, b in model.buffers().items()})


def _restore(model: Sequential, state: _State) -> None:
    """Also across dtypes: a float32 model takes a float64 model's buffers, by name."""
    model.rng.bit_generator.state = state.rng
    for name, buffer in model.buffers().items():
        buffer[...] = state.buffers[name]


class _Run:
    """What one training forward + backward produced (copies)."""

    def __init__(self, model: Sequential, X: np.ndarray, U: np.ndarray,
                 state: _State) -> None:
        _restore(model, state)
        self.out = model.forward(X, training=True)
        self.dx: np.ndarray | None = None
        if _takes_indices(model):  # integer input: no input gradient
            model.layers[0].backward(np.ascontiguousarray(U, dtype=model.dtype),
                                     need_input_grad=False)
        else:
            self.dx = model.backward(U)
        self.grads = {p.name: p.grad.copy() for p in model.parameters()}
        _restore(model, state)
        self.inference = model.forward(X, training=False)

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        yield "training output", self.out
        yield "inference output", self.inference
        if self.dx is not None:
            yield "input gradient", self.dx
        for name, grad in self.grads.items():
            yield f"gradient of {name}", grad


def _assert_runs_equal(label: str, what: str, a: _Run, b: _Run) -> None:
    for (name, x), (_, y) in zip(a.arrays(), b.arrays(), strict=True):
        if x.shape != y.shape or not np.array_equal(x, y):
            diff = (np.abs(x.astype(np.float64) - y).max() if x.shape == y.shape
                    else f"shapes {x.shape} and {y.shape}")
            raise AssertionError(f"{label}: {what}: {name} differs (max |diff| {diff})")


# -- 1. shapes ------------------------------------------------------------------------


def _check_shapes(label: str, model: Sequential, X: np.ndarray) -> None:
    layer = model.layers[0]
    in_shape, out_shape = model.input_shape, model.output_shape
    x = model.validate_input(X)
    x_before = x.copy()
    for training in (True, False):
        y = layer.forward(x, training)
        mode = "training" if training else "inference"
        if not isinstance(y, np.ndarray) or y.shape != (x.shape[0], *out_shape):
            got = y.shape[1:] if isinstance(y, np.ndarray) else type(y).__name__
            raise AssertionError(
                f"{label}: output_shape({in_shape}) says {out_shape} but forward "
                f"({mode}) returned samples of shape {got}")
        _check_array(label, f"forward ({mode}) output", y, model.dtype)
        if not np.array_equal(x, x_before):
            raise AssertionError(f"{label}: forward ({mode}) modified its input in place "
                                 "(the layer below may still need it)")
    layer.forward(x, True)
    dy = np.ones((x.shape[0], *out_shape), dtype=model.dtype)
    if _takes_indices(model):
        layer.backward(dy, need_input_grad=False)
        if not (dy == 1).all():
            raise AssertionError(f"{label}: backward modified its incoming gradient in place")
        return
    dx = layer.backward(dy, need_input_grad=True)
    if not isinstance(dx, np.ndarray) or dx.shape != x.shape:
        got = dx.shape if isinstance(dx, np.ndarray) else repr(dx)
        raise AssertionError(f"{label}: backward returned an input gradient of shape {got}, "
                             f"expected the input's {x.shape}")
    _check_array(label, "backward's input gradient", dx, model.dtype)
    if not (dy == 1).all():
        raise AssertionError(f"{label}: backward modified its incoming gradient in place")
    for p in model.parameters():
        _check_array(label, f"parameter {p.name}", p.value, model.dtype)


def _check_array(label: str, what: str, a: np.ndarray, dtype: np.dtype) -> None:
    if a.dtype != dtype:
        raise AssertionError(f"{label}: {what} has dtype {a.dtype}, expected the model's "
                             f"{dtype}")
    if not a.flags.c_contiguous:
        raise AssertionError(f"{label}: {what} is not C-contiguous (the next layer's "
                             "kernels need C-contiguous arrays)")


# -- 2. config ------------------------------------------------------------------------


def _check_config(label: str, model: Sequential, X: np.ndarray, U: np.ndarray) -> None:
    from numbanet.nn.module import check_roles
    from numbanet.nn.registry import layer_from_config
    from numbanet.plugins import resolve_layer

    layer = model.layers[0]
    cls = type(layer)
    config = layer.get_config()
    if not isinstance(config, dict):
        raise AssertionError(f"{label}: get_config() returned {type(config).__name__}, "
                             "expected a dict")
    if config.get("type") != cls.layer_type:
        raise AssertionError(f"{label}: get_config()['type'] is {config.get('type')!r}, "
                             f"expected the class's layer_type {cls.layer_type!r}")
    try:
        text = json.dumps(config, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{label}: get_config() is not JSON-serialisable: {exc}") from None
    try:
        qid, registered = resolve_layer(cls.layer_type)
    except ValueError as exc:
        raise AssertionError(
            f"{label}: config round trip: layer type {cls.layer_type!r} is not in the layer "
            f"registry, so saved models cannot load it ({exc}); return the class from a "
            "numbanet_register_layers hook (numbanet.plugins.register_plugin in a test)"
        ) from None
    if registered is not cls:
        raise AssertionError(
            f"{label}: config round trip: the registry resolves {cls.layer_type!r} to "
            f"{qid} ({registered.__module__}.{registered.__qualname__}), not "
            f"{cls.__module__}.{cls.__qualname__}; give the class a layer_type no other "
            "layer uses")
    rebuilt = layer_from_config(json.loads(text))
    if type(rebuilt) is not cls:
        raise AssertionError(f"{label}: config round trip: layer_from_config built a "
                             f"{type(rebuilt).__name__}, not a {cls.__name__}")
    again = rebuilt.get_config()
    if json.dumps(again, sort_keys=True, default=repr) != text:
        raise AssertionError(f"{label}: config round trip: the rebuilt layer's get_config() "
                             f"is {again!r}, the original's {config!r}")
    for what, of in (("parameter_shapes", lambda m: [(n, tuple(s)) for n, s in
                                                     m.parameter_shapes()]),
                     ("buffer_shapes", lambda m: [(n, tuple(s)) for n, s in m.buffer_shapes()]),
                     ("parameter roles", check_roles)):
        if of(rebuilt) != of(layer):
            raise AssertionError(f"{label}: config round trip: the rebuilt layer's {what} "
                                 f"{of(rebuilt)} differ from the original's {of(layer)}")
    copy = Sequential([rebuilt], seed=model.seed, dtype=model.dtype,
                      input_shape=model.input_shape)
    copy.set_weights(model.get_weights())
    state = _rng_state(model)
    _assert_runs_equal(label, "config round trip (a layer rebuilt from get_config() with the "
                       "same weights computes something else: does get_config() leave out a "
                       "constructor argument?)", _Run(model, X, U, state),
                       _Run(copy, X, U, state))


# -- 3. gradients ---------------------------------------------------------------------


def _check_gradients(label: str, model: Sequential, X: np.ndarray, U: np.ndarray,
                     rng: np.random.Generator, rtol: float, atol: float) -> None:
    state = _rng_state(model)

    def loss() -> float:
        _restore(model, state)
        return float(np.sum(model.forward(X, training=True) * U))

    first, second = loss(), loss()
    if first != second:
        raise AssertionError(
            f"{label}: forward (training) gives different outputs for the same input and "
            "generator state; a layer that draws random numbers must take them from the "
            "generator the model hands to set_rng")
    model.flat_gradients[...] = 0  # an accumulating backward is caught below, not here
    run = _Run(model, X, U, state)
    if run.dx is not None:
        _finite_differences(label, "input gradient", loss, X, run.dx, rng, rtol, atol)
    for p in model.parameters():
        _finite_differences(label, f"gradient of parameter {p.name!r}", loss, p.value,
                            run.grads[p.name], rng, rtol, atol)
    # backward overwrites: garbage in the gradient buffer must not show through.
    model.flat_gradients[...] = 1e3
    again = _Run(model, X, U, state)
    for name, grad in run.grads.items():
        if not np.array_equal(grad, again.grads[name]):
            raise AssertionError(f"{label}: backward does not overwrite the gradient of "
                                 f"{name} (it adds to it, or leaves entries unwritten)")
    layer = model.layers[0]
    _restore(model, state)
    model.forward(X, training=True)
    model.flat_gradients[...] = 1e3
    result = layer.backward(np.ascontiguousarray(U), need_input_grad=False)
    if result is not None:
        raise AssertionError(f"{label}: backward(dy, need_input_grad=False) returned "
                             f"{type(result).__name__}, expected None")
    for p in model.parameters():
        if not np.array_equal(p.grad, run.grads[p.name]):
            raise AssertionError(f"{label}: backward(dy, need_input_grad=False) gives a "
                                 f"different gradient of {p.name}")


def _finite_differences(label: str, what: str, loss: Callable[[], float], array: np.ndarray,
                        analytic: np.ndarray, rng: np.random.Generator, rtol: float,
                        atol: float) -> None:
    flat = array.reshape(-1)
    assert np.shares_memory(flat, array)
    size = flat.shape[0]
    if size == 0:
        return
    index = (np.arange(size) if size <= _FD_MAX_ENTRIES
             else np.sort(rng.choice(size, _FD_MAX_ENTRIES, replace=False)))
    numeric = np.empty(index.shape[0])
    h = _FD_STEP
    for n, j in enumerate(index):
        old = flat[j]
        flat[j] = old + h
        up = loss()
        flat[j] = old - h
        down = loss()
        flat[j] = old
        numeric[n] = (up - down) / (2 * h)
    got = analytic.reshape(-1)[index]
    bad = ~np.isclose(got, numeric, rtol=rtol, atol=atol)
    if bad.any():
        worst = int(np.argmax(np.abs(got - numeric)))
        raise AssertionError(
            f"{label}: {what} differs from central differences at {int(bad.sum())} of "
            f"{index.shape[0]} checked entries; worst at flat index {int(index[worst])}: "
            f"backward {got[worst]:.8g}, finite difference {numeric[worst]:.8g} (float64, "
            f"step {h:g}; a kink within a step of an input? pass sample=)")


# -- 4. buffers -----------------------------------------------------------------------


def _check_buffers(label: str, model: Sequential, X: np.ndarray, U: np.ndarray) -> None:
    buffers = model.buffers()
    if not buffers:
        return
    layer = model.layers[0]
    x = model.validate_input(X)
    dy = np.ascontiguousarray(U, dtype=model.dtype)
    layer.forward(x, True)
    before = {name: b.copy() for name, b in buffers.items()}
    layer.backward(dy, need_input_grad=not _takes_indices(model))
    for name, b in buffers.items():
        if not np.array_equal(b, before[name]):
            raise AssertionError(f"{label}: backward changed buffer {name!r} (buffers are "
                                 "state the forward pass keeps, never gradients)")
    layer.forward(x, False)
    for name, b in buffers.items():
        if not np.array_equal(b, before[name]):
            raise AssertionError(f"{label}: an inference forward changed buffer {name!r}")


# -- 5. dtypes ------------------------------------------------------------------------


def _check_dtypes(label: str, make: Callable[[], Module], in_shape: tuple[int, ...],
                  seed: int, X: np.ndarray, U: np.ndarray, rtol: float) -> None:
    m32 = _model(make, in_shape, np.float32, seed)
    m64 = _model(make, in_shape, np.float64, seed)
    m64.set_weights([w.astype(np.float64) for w in m32.get_weights()])
    U = U.astype(np.float32).astype(np.float64)
    state = _rng_state(m64)
    _restore(m64, state)
    m64.forward(X, training=True)
    random = m64.rng.bit_generator.state != state.rng
    r32, r64 = _Run(m32, X, U, state), _Run(m64, X, U, state)
    for (name, a), (_, b) in zip(r32.arrays(), r64.arrays(), strict=True):
        if random and name != "inference output":
            continue
        err = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
        scale = float(np.abs(b).max()) if b.size else 0.0
        if not err <= rtol * max(scale, np.finfo(np.float32).tiny):
            raise AssertionError(
                f"{label}: float32 and float64 disagree on the {name}: max |diff| {err:.3g} "
                f"> {rtol:g} x largest magnitude {scale:.3g} (a float64 literal or "
                "accumulator in a float32 path, or a precision loss?)")


# -- 6. threads -----------------------------------------------------------------------


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    from numbanet.threads import get_num_threads, set_num_threads

    before = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(before)


def _check_threads(label: str, make: Callable[[], Module], in_shape: tuple[int, ...],
                   seed: int, X: np.ndarray, U: np.ndarray) -> None:
    from numbanet.threads import max_threads

    many = max_threads()
    if many < 2:
        return
    for dtype in (np.float32, np.float64):
        model = _model(make, in_shape, dtype, seed)
        state = _rng_state(model)
        with _threads(1):
            one = _Run(model, X, U, state)
        with _threads(many):
            all_ = _Run(model, X, U, state)
        _assert_runs_equal(label, f"1 and {many} threads are not bit-identical "
                           f"({np.dtype(dtype).name}; reduce in an order fixed by the data, "
                           "not by the thread count)", one, all_)


# -- 7. save and load -----------------------------------------------------------------


def _check_save_load(label: str, model: Sequential, X: np.ndarray, U: np.ndarray) -> None:
    from numbanet.io import load

    state = _rng_state(model)
    original = _Run(model, X, U, state)
    with tempfile.TemporaryDirectory(prefix="numbanet-check-layer-") as tmp:
        path = os.path.join(tmp, "layer.npz")
        model.save(path)
        loaded = load(path)
    layer, other = model.layers[0], loaded.layers[0]
    if type(other) is not type(layer) or other.get_config() != layer.get_config():
        raise AssertionError(f"{label}: save/load: the loaded layer is {other!r} "
                             f"({type(other).__name__}), config {other.get_config()!r}")
    a, b = model.get_weights(), loaded.get_weights()
    if len(a) != len(b) or not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)):
        raise AssertionError(f"{label}: save/load: parameters differ after loading")
    ours, theirs = model.buffers(), loaded.buffers()
    if sorted(ours) != sorted(theirs) or not all(np.array_equal(ours[k], theirs[k])
                                                 for k in ours):
        raise AssertionError(f"{label}: save/load: buffers {sorted(ours)} came back as "
                             f"{sorted(theirs)} or with other values")
    _assert_runs_equal(label, "save/load: the loaded model computes something else",
                       original, _Run(loaded, X, U, state))


# -- 8. allocations -------------------------------------------------------------------


def _address(a: Any) -> int | None:
    return a.__array_interface__["data"][0] if isinstance(a, np.ndarray) else None


@contextlib.contextmanager
def _counting_unboxed_arrays() -> Iterator[list[int]]:
    """Count the array arguments handed to compiled functions from Python: Numba's
    runtime makes one short-lived allocation record per array it unboxes."""
    import numba._dispatcher
    from numba.core.dispatcher import Dispatcher

    base_call = numba._dispatcher.Dispatcher.__call__
    had_own = "__call__" in Dispatcher.__dict__
    previous = Dispatcher.__dict__.get("__call__")
    counter = [0]

    def count(value: Any) -> int:
        if isinstance(value, np.ndarray):
            return 1
        if isinstance(value, tuple):
            return sum(count(v) for v in value)
        return 0

    def counting_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        counter[0] += count(args) + count(tuple(kwargs.values()))
        return base_call(self, *args, **kwargs)

    Dispatcher.__call__ = counting_call  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        if had_own:
            Dispatcher.__call__ = previous  # type: ignore[method-assign]
        else:
            del Dispatcher.__call__


@contextlib.contextmanager
def _nrt_stats() -> Iterator[Callable[[], Any] | None]:
    """Numba's runtime allocation counters, switched on for the duration if they were off
    (``NUMBA_NRT_STATS=1`` does it for a whole process); ``None`` if unavailable."""
    try:
        from numba.core.runtime import _nrt_python, rtsys
    except ImportError:  # pragma: no cover - numba without the runtime module
        yield None
        return
    was_on = bool(_nrt_python.memsys_stats_enabled())
    if not was_on:
        _nrt_python.memsys_enable_stats()
    try:
        yield rtsys.get_allocation_stats
    finally:
        if not was_on:
            _nrt_python.memsys_disable_stats()


def _check_allocations(label: str, make: Callable[[], Module], in_shape: tuple[int, ...],
                       seed: int, X: np.ndarray, U: np.ndarray) -> None:
    model = _model(make, in_shape, np.float32, seed)
    layer = model.layers[0]
    x = model.validate_input(X)
    dy = np.ascontiguousarray(U, dtype=model.dtype)

    need_dx = not _takes_indices(model)

    def step() -> tuple[Any, Any]:
        return layer.forward(x, True), layer.backward(dy, need_input_grad=need_dx)

    for _ in range(3):  # warm-up: compile, create workspaces
        step()
    y1, dx1 = step()
    y2, dx2 = step()
    for what, a, b in (("forward's output", y1, y2), ("backward's input gradient", dx1, dx2)):
        if a is not None and _address(a) != _address(b):
            raise AssertionError(
                f"{label}: allocation: {what} is a new array every step; take it from "
                "self.workspace.get(name, shape) so a training step allocates nothing")
    del y1, dx1, y2, dx2

    with _nrt_stats() as stats:
        if stats is not None:
            with _counting_unboxed_arrays() as unboxed:
                before = stats()
                for _ in range(_ALLOC_STEPS):
                    step()
                after = stats()
            made = after.alloc - before.alloc
            outstanding = (after.alloc - after.free) - (before.alloc - before.free)
            if made > unboxed[0]:
                raise AssertionError(
                    f"{label}: allocation: compiled kernels allocated {made - unboxed[0]} "
                    f"arrays in {_ALLOC_STEPS} steady-state steps (Numba runtime; "
                    f"{unboxed[0]} records were argument unboxing): no np.empty/np.zeros or "
                    "array expressions inside @njit code; pass workspaces from "
                    "self.workspace.get")
            if outstanding:
                raise AssertionError(f"{label}: allocation: {outstanding} Numba runtime "
                                     f"allocations outlived {_ALLOC_STEPS} steps")

    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        step()
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(_ALLOC_STEPS):
            step()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        if not tracing:
            tracemalloc.stop()
    if peak - start > _TRANSIENT_LIMIT:
        raise AssertionError(
            f"{label}: allocation: a steady-state step allocates temporaries of up to "
            f"{peak - start} bytes (tracemalloc; limit {_TRANSIENT_LIMIT}): NumPy "
            "expressions on batch-sized arrays? compute into self.workspace.get buffers")
    if end - start > _GROWTH_LIMIT:
        raise AssertionError(
            f"{label}: allocation: memory held grew by {end - start} bytes over "
            f"{_ALLOC_STEPS} steady-state steps (tracemalloc; limit {_GROWTH_LIMIT})")
