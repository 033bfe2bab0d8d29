"""numbanet.jit: the public way for plugin authors to compile kernels."""

from __future__ import annotations


def test_plugin_authors_compile_through_the_public_jit_module():
    """numbanet.jit is the documented way; numbanet._jit stays as the old spelling."""
    import numpy as np

    from numbanet import _jit, jit

    assert jit.kernel is _jit.kernel and jit.parallel_kernel is _jit.parallel_kernel

    @jit.kernel(cache=False)
    def twice(x):
        return 2 * x

    assert twice(np.float32(1.5)) == 3.0
