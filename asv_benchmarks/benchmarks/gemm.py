"""The GEMM: every transpose variant, float32 and float64, 1 and 2 threads.

``time_`` records seconds per product; ``track_gflops`` the same run as GFLOP/s
(``2 m n k`` per product), the figure to set beside BLAS.
"""

from __future__ import annotations

import time

import numpy as np

from numbanet.kernels.activations import ACTIVATION_IDS
from numbanet.kernels.matmul import dense_forward, matmul

from .common import DTYPES, GEMM_SIZE, GEMM_THREADS, TRANSPOSES, gflops, random_array, set_threads


class MatmulSuite:
    """``matmul(a, b, out, transpose_a, transpose_b)`` on square ``GEMM_SIZE`` operands."""

    params = (DTYPES, TRANSPOSES, GEMM_THREADS)
    param_names = ["dtype", "transpose", "threads"]
    # Each (dtype, layout) pair compiles separately on its first call (seconds each).
    timeout = 300

    def setup(self, dtype: str, transpose: str, threads: int) -> None:
        set_threads(threads)
        n = GEMM_SIZE
        self.a = random_array((n, n), dtype, seed=1)
        self.b = random_array((n, n), dtype, seed=2)
        self.out = np.empty((n, n), dtype=dtype)
        self.ta, self.tb = transpose[0] == "t", transpose[1] == "t"
        matmul(self.a, self.b, self.out, transpose_a=self.ta, transpose_b=self.tb)

    def time_matmul(self, dtype: str, transpose: str, threads: int) -> None:
        matmul(self.a, self.b, self.out, transpose_a=self.ta, transpose_b=self.tb)

    def track_gflops(self, dtype: str, transpose: str, threads: int) -> float:
        # The median of a few products: a track_ value is recorded once per run.
        times = []
        for _ in range(7):
            start = time.perf_counter()
            matmul(self.a, self.b, self.out, transpose_a=self.ta, transpose_b=self.tb)
            times.append(time.perf_counter() - start)
        return gflops(2.0 * GEMM_SIZE**3, float(np.median(times)))

    track_gflops.unit = "GFLOP/s"  # type: ignore[attr-defined]


class DenseForwardSuite:
    """``dense_forward``: the GEMM with the bias + activation epilogue fused, as a Dense
    layer of 784 -> 1024 runs it at batch 512 (float32)."""

    params = (["identity", "relu", "tanh"], GEMM_THREADS)
    param_names = ["activation", "threads"]
    timeout = 300

    def setup(self, activation: str, threads: int) -> None:
        set_threads(threads)
        self.x = random_array((512, 784), "float32", seed=1)
        self.w = random_array((784, 1024), "float32", seed=2)
        self.bias = random_array((1024,), "float32", seed=3)
        self.z = np.empty((512, 1024), dtype=np.float32)
        self.y = np.empty_like(self.z)
        self.act_id = ACTIVATION_IDS[activation]
        dense_forward(self.x, self.w, self.bias, self.z, self.y, self.act_id)

    def time_dense_forward(self, activation: str, threads: int) -> None:
        dense_forward(self.x, self.w, self.bias, self.z, self.y, self.act_id)


class NarrowOutputSuite:
    """A classifier's output layer (10 columns, float32): the forward product and dW.

    The plan tiles the transpose of such narrow outputs (``GemmPlan.swap``); a
    regression here means the planner stopped choosing it or the transpose got slow.
    """

    params = (["forward", "weight_grad"], GEMM_THREADS)
    param_names = ["product", "threads"]
    timeout = 300

    def setup(self, product: str, threads: int) -> None:
        set_threads(threads)
        self.x = random_array((256, 128), "float32", seed=1)
        if product == "forward":  # (256 x 128) @ (128 x 10)
            self.b = random_array((128, 10), "float32", seed=2)
            self.out = np.empty((256, 10), dtype=np.float32)
            self.ta = False
        else:  # (256 x 128)^T @ (256 x 10)
            self.b = random_array((256, 10), "float32", seed=2)
            self.out = np.empty((128, 10), dtype=np.float32)
            self.ta = True
        matmul(self.x, self.b, self.out, transpose_a=self.ta)

    def time_matmul(self, product: str, threads: int) -> None:
        matmul(self.x, self.b, self.out, transpose_a=self.ta)
