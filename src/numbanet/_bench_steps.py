"""One float32 training step per framework, for :mod:`numbanet.bench`: the MLPs here,
the CNNs in :mod:`numbanet._bench_cnn`.

This module imports only the standard library and NumPy at the top, and each framework
inside its own builder, so that a cold-start child process (:func:`cold_child_main`) can
load it *by file path* and time a peer framework without importing numbanet (and Numba)
first. :mod:`numbanet.bench` re-exports the public names.

Every builder trains the same network on the same data: ``Dense`` layers with ReLU
between them and a linear last layer, the same float32 initial weights
(:func:`initial_weights`, copied into each framework), the same batch
(:func:`make_batch`), softmax cross-entropy averaged over the batch and one Adam step
(``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``). Each returns ``step() -> float``, the
loss of the batch before the update; converting it to a Python float waits for the
step to finish, in every framework alike.

The CNNs (``"lenet5@64"``, ``"resnet-small@64"``) live in :mod:`numbanet._bench_cnn`, which
uses the helpers here (Adam settings, the torch, JAX and Keras training loops); this
module finds it through :func:`cnn_module`, by import inside numbanet or by file path
beside this file in a cold-start child.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

#: The frameworks :mod:`numbanet.bench` knows, in report order: numbanet, its peers
#: (JAX's ``jax.jit`` of the whole step, ``torch.compile``, PyTorch eager, Keras 3 on
#: JAX) and a plain NumPy reference.
FRAMEWORKS = ("numbanet", "jax", "torch.compile", "torch", "keras", "numpy")

#: What to install for each optional framework.
INSTALL_HINTS = {
    "jax": "pip install 'jax[cpu]'",
    "torch.compile": "pip install torch (the CPU build) and a C++ compiler",
    "torch": "pip install torch (the CPU build)",
    "keras": "pip install keras 'jax[cpu]' (Keras 3 runs on its JAX backend here)",
    "numpy": "pip install numpy",
}

#: Modules each framework needs (found without importing them).
_REQUIRES = {
    "numbanet": ("numbanet",),
    "jax": ("jax", "jaxlib"),
    "torch.compile": ("torch",),
    "torch": ("torch",),
    "keras": ("keras", "jax", "jaxlib"),
    "numpy": ("numpy",),
}

LEARNING_RATE = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8

#: Prefix of the line a cold-start child prints its JSON report on.
REPORT_MARK = "NUMBANET-BENCH-REPORT "


@dataclass(frozen=True)
class ModelSpec:
    """An MLP and the batch size it is trained at.

    Attributes:
        sizes: layer widths, input first: ``(784, 256, 128, 10)`` is two ReLU hidden
            layers of 256 and 128 units and 10 output logits.
        batch: samples per training step.
    """

    sizes: tuple[int, ...]
    batch: int

    @property
    def name(self) -> str:
        """``"784-256-128-10@64"``: the form :func:`parse_model` reads."""
        return "-".join(map(str, self.sizes)) + f"@{self.batch}"

    @property
    def num_parameters(self) -> int:
        """Weights and biases of all layers."""
        return sum(i * o + o for i, o in zip(self.sizes[:-1], self.sizes[1:], strict=True))

    @property
    def flops_per_step(self) -> int:
        """Multiply-adds times two of the three GEMMs per layer (forward, dW, dX).

        The first layer's input gradient is not needed, so it is not counted.
        """
        total = 0
        for index, (i, o) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True)):
            gemms = 2 if index == 0 else 3
            total += gemms * 2 * self.batch * i * o
        return total


class BenchSpec(Protocol):
    """What :func:`numbanet.bench.compare` needs of a model: :class:`ModelSpec` (MLPs)
    and :class:`numbanet._bench_cnn.CNNSpec` (CNNs) both provide it."""

    @property
    def name(self) -> str: ...  # the form parse_model reads back
    @property
    def batch(self) -> int: ...
    @property
    def num_parameters(self) -> int: ...
    @property
    def flops_per_step(self) -> int: ...  # 2 x multiply-adds of forward and backward


def cnn_module() -> Any:
    """:mod:`numbanet._bench_cnn`, imported as numbanet's module when this one is, else
    loaded by file path beside this file (a cold-start child that must not import
    numbanet; the CNN module then finds this one in ``sys.modules``)."""
    if __name__ == "numbanet._bench_steps":
        from numbanet import _bench_cnn

        return _bench_cnn
    name = "_numbanet_bench_cnn"
    if name not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bench_cnn.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


#: The MLPs of the benchmark issue, by name.
STANDARD_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec((64, 32, 10), 32),
        ModelSpec((784, 256, 128, 10), 64),
        ModelSpec((784, 256, 128, 10), 256),
        ModelSpec((784, 1024, 1024, 10), 512),
    )
}


def parse_model(model: str | BenchSpec) -> Any:
    """Read a model name: an MLP ``"784-256-128-10@64"`` (widths, input first, ``@``
    batch size; a :class:`ModelSpec`) or a CNN ``"lenet5@64"``, ``"resnet-small@64"``
    (``@64`` may be left out; a :class:`numbanet._bench_cnn.CNNSpec`).

    Raises:
        TypeError: ``model`` is neither a string nor a spec.
        ValueError: the string is malformed (the message shows the expected forms).
    """
    cnn = cnn_module()
    if isinstance(model, (ModelSpec, cnn.CNNSpec)):
        return model
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a string like '784-256-128-10@64' or 'lenet5@64', got "
            f"{type(model).__name__}"
        )
    text = model.strip()
    if text.split("@")[0].strip().lower() in cnn.ARCHITECTURES:
        return cnn.parse_cnn(text)
    try:
        widths, batch = text.split("@")
        sizes = tuple(int(w) for w in widths.split("-"))
        spec = ModelSpec(sizes, int(batch))
    except ValueError:
        raise ValueError(
            f"model must look like '784-256-128-10@64' (MLP widths, input first, then "
            f"@batch) or name a CNN ({', '.join(a + '@64' for a in cnn.ARCHITECTURES)}), "
            f"got {model!r}"
        ) from None
    if len(spec.sizes) < 2 or min(spec.sizes) < 1 or spec.batch < 1:
        raise ValueError(f"model {model!r} needs at least two positive widths and a positive batch")
    return spec


def initial_weights(spec: Any, seed: int = 0) -> list[Any]:
    """He-uniform float32 weights ``(in, out)`` and small biases ``(out,)`` per layer.

    Non-zero biases make a wrong bias gradient show up in the loss after one step. For a
    CNN spec: its flat list of parameter arrays (:func:`numbanet._bench_cnn.initial_weights`).
    """
    if not isinstance(spec, ModelSpec):
        return cnn_module().initial_weights(spec, seed)
    rng = np.random.default_rng(seed)
    layers = []
    for i, o in zip(spec.sizes[:-1], spec.sizes[1:], strict=True):
        bound = np.sqrt(6.0 / i)
        w = rng.uniform(-bound, bound, size=(i, o)).astype(np.float32)
        b = rng.uniform(-0.1, 0.1, size=o).astype(np.float32)
        layers.append((w, b))
    return layers


def make_batch(spec: Any, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A random batch: inputs ``(batch, sizes[0])`` float32 (a CNN's: channels-last
    images ``(batch, H, W, C)``) and int64 labels ``(batch,)``."""
    rng = np.random.default_rng(seed)
    if isinstance(spec, ModelSpec):
        shape, classes = (spec.batch, spec.sizes[0]), spec.sizes[-1]
    else:
        shape, classes = (spec.batch, *spec.input_shape), spec.classes
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, classes, size=spec.batch, dtype=np.int64)
    return x, y


def unsupported(framework: str, spec: Any) -> str | None:
    """Why ``framework`` has no step for ``spec`` (a note), or ``None``."""
    if isinstance(spec, ModelSpec):
        return None
    return cnn_module().unsupported(framework)


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook refusing it
        return False


def missing(framework: str) -> str | None:
    """Why ``framework`` cannot run here (a note naming what to install), or ``None``.

    Looks for the modules without importing them: importing JAX or PyTorch in the
    process that coordinates a comparison would cost seconds and load thread runtimes.
    """
    absent = [name for name in _REQUIRES[framework] if not _findable(name)]
    if not absent:
        return None
    return f"not installed ({', '.join(absent)} missing: {INSTALL_HINTS.get(framework, '')})"


# ---------------------------------------------------------------------------------------
# Process set-up: cores and thread pools, before and after the framework is imported
# ---------------------------------------------------------------------------------------


def bench_cores(threads: int) -> list[int]:
    """The ``threads`` cores every framework's process is pinned to: the first ones this
    process may run on (all of them if there are fewer)."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    return sorted(os.sched_getaffinity(0))[:threads]


def pin_process(cores: Iterable[int]) -> bool:
    """Pin every thread of this process (and the threads it starts later) to ``cores``.

    ``os.sched_setaffinity(0, ...)`` pins only the calling thread on Linux; thread pools
    started at import (OpenBLAS's, for one) keep running anywhere, so each task in
    ``/proc/self/task`` is pinned. Returns ``False`` where affinity cannot be set.
    """
    cores = set(cores)
    if not cores or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        tasks = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tasks = [0]
    for task in tasks:
        try:
            os.sched_setaffinity(task, cores)
        except OSError:  # a thread that exited meanwhile
            pass
    os.sched_setaffinity(0, cores)
    return True


def prepare_process(framework: str, threads: int) -> None:
    """Set what must be set before ``framework`` is imported in a fresh process.

    XLA sizes its CPU thread pool from ``PJRT_NPROC`` when JAX starts (it ignores an
    ``intra_op_parallelism_threads`` flag silently); Keras 3 picks its backend from
    ``KERAS_BACKEND`` when imported (this environment has no TensorFlow).
    """
    if framework in ("jax", "keras"):
        os.environ["PJRT_NPROC"] = str(threads)
    if framework == "keras":
        os.environ["KERAS_BACKEND"] = "jax"


def limit_threads(framework: str, threads: int) -> dict[str, Any]:
    """Give ``framework`` (already imported) ``threads`` threads, for good; returns notes.

    For a process that runs only this framework; :mod:`numbanet.bench` restores the
    previous settings itself when it runs frameworks in its own process.
    """
    notes: dict[str, Any] = {}
    if framework == "numbanet":
        import numbanet

        numbanet.set_num_threads(threads)
    elif framework in ("torch", "torch.compile"):
        import torch

        torch.set_num_threads(threads)
    elif framework in ("jax", "keras"):
        notes["xla_threads"] = f"PJRT_NPROC={os.environ.get('PJRT_NPROC', 'unset')}"
    elif framework == "numpy":
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            notes["numpy_blas_threads"] = "not limited (install threadpoolctl)"
        else:
            threadpool_limits(limits=threads, user_api="blas")
            notes["numpy_blas_threads"] = threads
    return notes


# ---------------------------------------------------------------------------------------
# One training step per framework. Each builder returns ``step() -> float`` (the loss of
# the batch before the update) after copying the same initial weights in.
# ---------------------------------------------------------------------------------------


def _numbanet_step(spec: ModelSpec, weights, x, y) -> Callable[[], float]:
    from numbanet.nn import Dense, Sequential
    from numbanet.plugins import get_optimizer

    last = len(weights) - 1
    model = Sequential(
        [
            Dense(w.shape[0], w.shape[1], activation=None if i == last else "relu")
            for i, (w, _) in enumerate(weights)
        ],
        seed=0,
        dtype="float32",
    )
    dense = [layer for layer in model.layers if isinstance(layer, Dense)]
    for layer, (w, b) in zip(dense, weights, strict=True):
        layer.weight.value[...] = w
        layer.bias.value[...] = b
    model.compile(loss="cross_entropy", optimizer=get_optimizer("adam", lr=LEARNING_RATE))

    # The public train_step: it validates X and y each call, as a user's loop would.
    def step() -> float:
        return float(model.train_step(x, y))

    return step


def _torch_model(weights) -> Any:
    import torch

    layers: list[Any] = []
    last = len(weights) - 1
    for i, (w, b) in enumerate(weights):
        linear = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            # torch keeps the weight as (out, in).
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
        if i != last:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_train_step(net: Any, xt: Any, yt: Any) -> Callable[[], float]:
    """PyTorch eager: ``net`` (already holding the shared weights) on the batch ``xt``,
    ``yt``, with ``CrossEntropyLoss`` and ``torch.optim.Adam`` (default, foreach)."""
    import torch

    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE, betas=BETAS, eps=EPS)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def torch_compiled_train_step(net: Any, xt: Any, yt: Any) -> Callable[[], float]:
    """PyTorch with ``torch.compile`` (Inductor, the default backend): the forward pass
    and loss compiled as one graph (AOTAutograd compiles its backward), and Adam's step
    compiled as PyTorch's "compiling the optimizer" recipe does."""
    import torch

    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE, betas=BETAS, eps=EPS)

    @torch.compile
    def forward(inputs: Any, labels: Any) -> Any:
        return loss_fn(net(inputs), labels)

    @torch.compile(fullgraph=False)
    def update() -> None:
        opt.step()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = forward(xt, yt)
        loss.backward()
        update()
        return float(loss.detach())

    return step


def _torch_step(spec: ModelSpec, weights, x, y) -> Callable[[], float]:
    import torch

    return torch_train_step(_torch_model(weights), torch.from_numpy(x), torch.from_numpy(y))


def _torch_compile_step(spec: ModelSpec, weights, x, y) -> Callable[[], float]:
    import torch

    return torch_compiled_train_step(_torch_model(weights), torch.from_numpy(x),
                                     torch.from_numpy(y))


def jax_train_step(loss_fn: Callable[..., Any], params: Any, extra: Any, x: np.ndarray,
                   y: np.ndarray) -> Callable[[], float]:
    """The whole step under one ``jax.jit``: ``loss_fn``, ``jax.value_and_grad`` and
    Adam (written out, as ``optax.adam`` computes it: bias corrections from a step count
    carried in the state, in float32), with the state donated so XLA updates in place.

    ``loss_fn(params, extra, inputs, labels) -> (loss, extra)``: ``extra`` is state
    carried from step to step without gradients (BatchNorm's running statistics).
    """
    import jax
    import jax.numpy as jnp

    b1, b2 = BETAS

    def train_step(state: Any, inputs: Any, labels: Any) -> Any:
        params, m, v, t, extra = state
        (loss, extra), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, extra, inputs, labels)
        t = t + 1
        tf = t.astype(jnp.float32)
        step_size = LEARNING_RATE / (1 - b1**tf)
        inv_sqrt_bc2 = 1 / jnp.sqrt(1 - b2**tf)
        m = jax.tree.map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
        v = jax.tree.map(lambda v_, g: b2 * v_ + (1 - b2) * (g * g), v, grads)
        params = jax.tree.map(
            lambda p, m_, v_: p - step_size * m_ / (jnp.sqrt(v_) * inv_sqrt_bc2 + EPS),
            params, m, v,
        )
        return (params, m, v, t, extra), loss

    jitted = jax.jit(train_step, donate_argnums=0)
    params = jax.tree.map(jnp.asarray, params)
    state = [(params, jax.tree.map(jnp.zeros_like, params),
              jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32),
              jax.tree.map(jnp.asarray, extra))]
    xj = jnp.asarray(x)
    yj = jnp.asarray(y.astype(np.int32))  # JAX runs without 64-bit types by default

    def step() -> float:
        state[0], loss = jitted(state[0], xj, yj)
        return float(loss)

    return step


def jax_cross_entropy(logits: Any, labels: Any) -> Any:
    """Softmax cross-entropy averaged over the batch, in JAX."""
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def _jax_step(spec: ModelSpec, weights, x, y) -> Callable[[], float]:
    import jax

    last = len(weights) - 1

    def loss_fn(params: Any, extra: Any, inputs: Any, labels: Any) -> Any:
        h = inputs
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i != last:
                h = jax.nn.relu(h)
        return jax_cross_entropy(h, labels), extra

    return jax_train_step(loss_fn, [tuple(layer) for layer in weights], (), x, y)


def import_keras() -> Any:
    """Keras 3 on its JAX backend (``KERAS_BACKEND=jax`` unless already imported)."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(
            f"keras was imported with the {keras.backend.backend()!r} backend; the "
            "comparison runs Keras on JAX (set KERAS_BACKEND=jax before importing keras)"
        )
    return keras


def keras_train_step(model: Any, x: np.ndarray, y: np.ndarray) -> Callable[[], float]:
    """``model.train_on_batch`` (one jitted train function) with Keras's Adam and sparse
    softmax cross-entropy on logits.

    Keras's Adam adds ``epsilon`` to ``sqrt(v)`` before the bias correction of ``v``
    (PyTorch after), a difference far below float32 rounding of the loss here.
    """
    keras = import_keras()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE, beta_1=BETAS[0],
                                        beta_2=BETAS[1], epsilon=EPS),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

    def step() -> float:
        return float(model.train_on_batch(x, y))

    return step


def _keras_step(spec: ModelSpec, weights, x, y) -> Callable[[], float]:
    """Keras 3 on its JAX backend (see :func:`keras_train_step`)."""
    keras = import_keras()
    last = len(weights) - 1
    model = keras.Sequential(
        [keras.Input(shape=(spec.sizes[0],))]
        + [keras.layers.Dense(w.shape[1], activation=None if i == last else "relu")
           for i, (w, _) in enumerate(weights)]
    )
    for layer, (w, b) in zip(model.layers, weights, strict=True):
        layer.set_weights([w, b])  # Keras keeps the kernel as (in, out), like numbanet
    return keras_train_step(model, x, y)


class _NumpyMLP:
    """The reference: a float32 MLP with softmax cross-entropy and Adam in plain NumPy.

    Written as a careful user would: buffers allocated once, ``out=`` everywhere on the
    hot path, BLAS through ``np.matmul``. Adam follows PyTorch's formulation
    (``p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)``).
    """

    def __init__(self, weights, x: np.ndarray, y: np.ndarray) -> None:
        self.params = [a.copy() for w, b in weights for a in (w, b)]
        self.grads = [np.zeros_like(p) for p in self.params]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.tmp = [np.zeros_like(p) for p in self.params]
        self.x, self.y = x, y
        rows = x.shape[0]
        widths = [w.shape[1] for w, _ in weights]
        self.z = [np.empty((rows, n), np.float32) for n in widths]
        self.h = [np.empty((rows, n), np.float32) for n in widths[:-1]]
        self.dz = [np.empty((rows, n), np.float32) for n in widths]
        self.onehot = np.zeros((rows, widths[-1]), np.float32)
        self.onehot[np.arange(rows), y] = 1.0
        self.t = 0
        (self.b1, self.b2), self.eps = BETAS, EPS

    def step(self) -> float:
        n_layers = len(self.z)
        rows = self.x.shape[0]
        inp = self.x
        for i in range(n_layers):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            np.matmul(inp, w, out=self.z[i])
            self.z[i] += b
            if i < n_layers - 1:
                np.maximum(self.z[i], 0.0, out=self.h[i])
                inp = self.h[i]
        logits = self.z[-1]
        # Stable softmax cross-entropy; dz[-1] holds the probabilities, then the gradient.
        p = self.dz[-1]
        np.subtract(logits, logits.max(axis=1, keepdims=True), out=p)
        np.exp(p, out=p)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(rows), self.y]).mean())
        p -= self.onehot
        p *= np.float32(1.0 / rows)
        for i in range(n_layers - 1, -1, -1):
            inp = self.x if i == 0 else self.h[i - 1]
            np.matmul(inp.T, self.dz[i], out=self.grads[2 * i])
            np.sum(self.dz[i], axis=0, out=self.grads[2 * i + 1])
            if i > 0:
                dh = self.dz[i - 1]
                np.matmul(self.dz[i], self.params[2 * i].T, out=dh)
                dh *= self.z[i - 1] > 0
        self.t += 1
        bc1 = 1.0 - self.b1**self.t
        bc2 = 1.0 - self.b2**self.t
        step_size = np.float32(LEARNING_RATE / bc1)
        inv_sqrt_bc2 = np.float32(1.0 / np.sqrt(bc2))
        for p_, g, m, v, tmp in zip(
            self.params, self.grads, self.m, self.v, self.tmp, strict=True
        ):
            m *= np.float32(self.b1)
            m += np.float32(1.0 - self.b1) * g
            v *= np.float32(self.b2)
            np.multiply(g, g, out=tmp)
            tmp *= np.float32(1.0 - self.b2)
            v += tmp
            np.sqrt(v, out=tmp)
            tmp *= inv_sqrt_bc2
            tmp += np.float32(self.eps)
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p_ -= tmp
        return loss


def _numpy_step(spec: ModelSpec, weights, x, y) -> Callable[[], float]:
    return _NumpyMLP(weights, x, y).step


_BUILDERS: dict[str, Callable[..., Callable[[], float]]] = {
    "numbanet": _numbanet_step,
    "jax": _jax_step,
    "torch.compile": _torch_compile_step,
    "torch": _torch_step,
    "keras": _keras_step,
    "numpy": _numpy_step,
}


def build_step(framework: str, model: str | BenchSpec, seed: int = 0) -> Callable[[], float]:
    """``framework``'s training step on the shared weights (``seed``) and batch
    (``seed + 1``); unchecked (:func:`numbanet.bench.make_step` checks).

    Raises:
        ValueError: ``framework`` has no step for this model (NumPy's for a CNN).
    """
    spec = parse_model(model)
    note = unsupported(framework, spec)
    if note is not None:
        raise ValueError(f"{framework}: {note}")
    x, y = make_batch(spec, seed + 1)
    builders = _BUILDERS if isinstance(spec, ModelSpec) else cnn_module().BUILDERS
    return builders[framework](spec, initial_weights(spec, seed), x, y)


# ---------------------------------------------------------------------------------------
# Cold start: the body of the fresh process numbanet.bench.cold_start launches
# ---------------------------------------------------------------------------------------


def cold_child_main(framework: str, model: str, seed: int, threads: int,
                    started: float) -> None:
    """Build ``framework``'s step, run it once, print a JSON report line and return.

    Runs in a fresh interpreter that loaded this file by path (so for a peer framework
    neither numbanet nor Numba is imported). ``started`` is the ``time.time()`` of the
    child's first statement. The report (after :data:`REPORT_MARK`) holds wall-clock
    stamps, the loss and the process's CPU time.
    """
    prepare_process(framework, threads)
    t_build = time.time()
    step = build_step(framework, model, seed)
    notes = limit_threads(framework, threads)
    t_step = time.time()
    loss = step()
    t_end = time.time()
    try:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
    except ImportError:  # pragma: no cover - not POSIX
        cpu = float("nan")
    report = {
        "started": started, "build": t_build, "step": t_step, "end": t_end,
        "loss": loss, "cpu_seconds": cpu, "notes": notes,
    }
    sys.stdout.flush()
    print(REPORT_MARK + json.dumps(report), flush=True)


#: Environment variables that point a framework at its compile cache (removed or
#: redirected to an empty directory for a cold start).
CACHE_VARIABLES = ("NUMBA_CACHE_DIR", "NUMBANET_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")


def cold_environment(base: dict[str, str], scratch: str,
                     shipped_kernels: bool = True) -> dict[str, str]:
    """``base`` with every compile cache pointed at empty directories under ``scratch``.

    numbanet's kernels compiled at install time (``numbanet/_precompiled``) are part of
    the package, not a cache, and stay visible unless ``shipped_kernels`` is false (then
    ``NUMBANET_PRECOMPILED_DIR`` points at an empty directory too).

    * Numba: ``NUMBA_CACHE_DIR``. Numba consults its ``UserProvidedCacheLocator`` first
      when the variable is set, so numbanet's own kernel caches in the package's
      ``__pycache__`` directories are never read: :mod:`numbanet._kernel_cache` wraps
      whichever locator Numba picked and changes only the source stamp.
    * numbanet: ``NUMBANET_CACHE_DIR`` (the generated optimizer and loss driver modules).
    * PyTorch Inductor: ``TORCHINDUCTOR_CACHE_DIR`` (FX graph and AOTAutograd caches).
    * JAX keeps no compilation cache on disk unless configured; a configured one is
      switched off (``JAX_COMPILATION_CACHE_DIR`` and ``JAX_ENABLE_COMPILATION_CACHE``).
    """
    env = dict(base)
    for variable in CACHE_VARIABLES:
        path = os.path.join(scratch, variable.lower())
        os.makedirs(path, exist_ok=True)
        env[variable] = path
    if shipped_kernels:
        env.pop("NUMBANET_PRECOMPILED_DIR", None)
    else:
        env["NUMBANET_PRECOMPILED_DIR"] = os.path.join(scratch, "no_precompiled_kernels")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    return env


def cold_command(framework: str, model: str, seed: int, threads: int,
                 cores: Iterable[int] = ()) -> list[str]:
    """The command line of a cold-start child (``python -c ...``).

    The child pins itself to ``cores`` first, while it has one thread (so every thread
    started later inherits the mask; pinning it from the parent would need
    ``preexec_fn``, which is unsafe when the parent runs threads, as JAX does).
    """
    pin = f"os.sched_setaffinity(0, {sorted(cores)!r})\n" if list(cores) else ""
    code = (
        "import time; _t = time.time()\n"
        f"import importlib.util, os, sys\n{pin}"
        f"_spec = importlib.util.spec_from_file_location('_numbanet_bench_steps', {__file__!r})\n"
        "_mod = importlib.util.module_from_spec(_spec)\n"
        "sys.modules[_spec.name] = _mod\n"
        "_spec.loader.exec_module(_mod)\n"
        f"_mod.cold_child_main({framework!r}, {model!r}, {seed!r}, {threads!r}, _t)\n"
    )
    return [sys.executable, "-c", code]


def remove_tree(path: str) -> None:
    """Delete a scratch directory, ignoring errors."""
    shutil.rmtree(path, ignore_errors=True)
