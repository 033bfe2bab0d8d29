"""Numba kernels: the linear algebra of training.

Every kernel works on preallocated arrays, takes its output array(s) last and returns
``None``. The array kernels check their arguments and dispatch to a parallel kernel, or
to a serial twin when the work is too small to pay for waking the thread pool.
This package imports only numpy, numba and ``numbanet._jit``.
"""
