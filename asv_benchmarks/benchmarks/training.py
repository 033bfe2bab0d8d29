"""Training the standard MLPs: one step, one epoch, allocations and peak memory.

Models (see :data:`numbanet.bench.STANDARD_MODELS`): 64-32-10 at batch 32,
784-256-128-10 at batch 64 and 256, 784-1024-1024-10 at batch 512; float32, ReLU hidden
layers, softmax cross-entropy, Adam.
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from numbanet.threads import max_threads

from .common import EPOCH_SAMPLES, MODELS, THREADS, build_model, epoch_data, make_batch, set_threads

# asv re-runs setup() before every sample; models are built once per process and reused.
_MODELS: dict[str, tuple[object, object]] = {}


def _model(name: str):
    if name not in _MODELS:
        _MODELS[name] = build_model(name)
    return _MODELS[name]


class TrainStepSuite:
    """``model.train_step(X, y)``: forward, loss, backward and one Adam update."""

    params = (MODELS, THREADS)
    param_names = ["model", "threads"]
    timeout = 300

    def setup(self, model: str, threads: int) -> None:
        set_threads(threads)
        self.net, spec = _model(model)
        self.x, self.y = make_batch(spec)
        self.net.train_step(self.x, self.y)

    def time_train_step(self, model: str, threads: int) -> None:
        self.net.train_step(self.x, self.y)

    def track_step_allocated_bytes(self, model: str, threads: int) -> int:
        """Peak bytes NumPy allocates during one steady-state step (design: zero but for
        a few small arrays); a jump means a workspace is no longer reused."""
        self.net.train_step(self.x, self.y)
        tracemalloc.start()
        try:
            self.net.train_step(self.x, self.y)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak

    track_step_allocated_bytes.unit = "bytes"  # type: ignore[attr-defined]


class ShardedStepSuite:
    """``train_step`` of a scikit-learn-size MLP: digits' 64-100-10 at batch 200, the
    default float64 of numbanet's estimators and float32. No product reaches the parallel
    GEMM's threshold, so the step runs as two row shards, one parallel region per pass
    (numbanet.nn.dense_stack); a regression here is one in the small-model path."""

    params = (["float64", "float32"], THREADS)
    param_names = ["dtype", "threads"]
    timeout = 120

    def setup(self, dtype: str, threads: int) -> None:
        from numbanet.nn import Dense, Sequential

        set_threads(threads)
        self.net = Sequential([Dense(64, 100, activation="relu"), Dense(100, 10)], seed=0,
                              dtype=dtype).compile(loss="cross_entropy", optimizer="adam")
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((200, 64)).astype(dtype)
        self.y = rng.integers(0, 10, size=200)
        self.net.train_step(self.x, self.y)

    def time_train_step(self, dtype: str, threads: int) -> None:
        self.net.train_step(self.x, self.y)


class TrainEpochSuite:
    """``model.fit(X, y, epochs=1)`` over ``EPOCH_SAMPLES`` samples, on every core."""

    params = (MODELS,)
    param_names = ["model"]
    timeout = 300

    def setup(self, model: str) -> None:
        set_threads(max_threads())
        self.net, spec = _model(model)
        self.batch = spec.batch
        self.x, self.y = epoch_data(spec, EPOCH_SAMPLES)
        # Warm every batch size the epoch uses (the last batch may be smaller).
        self.net.fit(self.x, self.y, epochs=1, batch_size=self.batch, verbose=0)

    def time_epoch(self, model: str) -> None:
        self.net.fit(self.x, self.y, epochs=1, batch_size=self.batch, verbose=0)


class TrainMemorySuite:
    """Peak resident memory of a process that builds a model and trains one epoch
    (imports and compiled code included, so compare it across commits, not to 0)."""

    params = (MODELS,)
    param_names = ["model"]
    timeout = 300

    def peakmem_train_epoch(self, model: str) -> None:
        net, spec = build_model(model)
        x, y = epoch_data(spec, EPOCH_SAMPLES)
        net.fit(x, y, epochs=1, batch_size=spec.batch, verbose=0)
