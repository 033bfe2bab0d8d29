"""Numba kernels: the linear algebra of training.

Every kernel works on preallocated arrays, takes its output array(s) last and returns
``None``. The public kernels check their arguments and dispatch to a parallel kernel, or
to a serial twin when the work is too small to pay for waking the thread pool.
This package imports only numpy, numba and ``numbanet._jit`` (and ``_validation``).

Modules: :mod:`~numbanet.kernels.activations` (``relu``/``relu_backward`` and the other
pairs), :mod:`~numbanet.kernels.reductions`, :mod:`~numbanet.kernels.dropout`,
:mod:`~numbanet.kernels.losses` and :mod:`~numbanet.kernels.updates` (the drivers that
run plugin kernels), and the GEMM, whose module ``numbanet.kernels.matmul`` is shadowed
here by its main function: import the module with
``importlib.import_module("numbanet.kernels.matmul")`` when you need its internals.
"""

from numbanet.kernels import activations, dropout, reductions
from numbanet.kernels.activations import (
    ACTIVATIONS,
    get_activation,
    log_softmax,
    logsumexp_rows,
    softmax,
)
from numbanet.kernels.checks import all_finite
from numbanet.kernels.dropout import dropout_backward, dropout_forward
from numbanet.kernels.matmul import dense_forward, matmul
from numbanet.kernels.reductions import column_sum, sum_of_squares, total_sum

__all__ = [
    "ACTIVATIONS",
    "activations",
    "all_finite",
    "column_sum",
    "dense_forward",
    "dropout",
    "dropout_backward",
    "dropout_forward",
    "get_activation",
    "log_softmax",
    "logsumexp_rows",
    "matmul",
    "reductions",
    "softmax",
    "sum_of_squares",
    "total_sum",
]
