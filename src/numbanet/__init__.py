"""numbanet: train neural networks on every core of your CPU.

The public API is re-exported here; implementation modules are private or live in
sub-packages (:mod:`numbanet.kernels`, :mod:`numbanet.nn`, ...).
"""

from __future__ import annotations

from numbanet.threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "get_num_threads",
    "set_num_threads",
]
