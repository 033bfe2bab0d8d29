"""The CPU that numbanet's kernels are compiled for: a portable x86-64 ISA level.

Numba compiles for the exact host CPU by default (``znver4``, ``skylake-avx512``, ...)
and keys its disk cache on that name and the host's full feature list, so machine code
compiled on one machine is never reused on another. numbanet ships kernels compiled
ahead of time (:mod:`numbanet._precompiled`), and those must match every machine of a
class, not one model. So, at import, numbanet points Numba at the x86-64
micro-architecture level the host supports:

* ``x86-64-v4``: AVX-512 F/BW/CD/DQ/VL on top of v3 (Skylake-SP and later Xeons,
  AMD Zen 4 and later); the GEMM uses 512-bit vectors.
* ``x86-64-v3``: AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE (Haswell and later, AMD Zen 1-3);
  256-bit vectors.

Both are LLVM CPU names with fixed feature lists, so the cache key (Numba's "magic
tuple": triple, CPU name, features) is the same on every machine of a level. The
kernels use explicit SIMD vectors of the level's width (:mod:`numbanet.kernels._simd`),
so the level's code runs as fast as the host-specific code: measured on an AMD EPYC
(Zen 4), 784-256-128-10 and 784-1024-1024-10 training steps and the 64-32-10 step were
within noise of the ``znver4`` build.

Nothing changes when:

* the user chose a target (``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES`` set);
* ``NUMBANET_PORTABLE_TARGET=0``;
* the host is not x86-64, or supports neither level (it keeps Numba's host target);
* Numba's CPU target was already built in this process (something compiled before
  numbanet was imported), since its LLVM target machine is fixed at creation.

The choice is made by setting :mod:`numba.core.config` attributes, not environment
variables, so child processes (MPI ranks on other machines, for one) choose for
themselves. It applies to the whole process: other ``@njit`` code compiled after
``import numbanet`` also targets the level.
"""

from __future__ import annotations

import os
import platform

__all__ = [
    "LEVEL_FEATURES",
    "apply_portable_target",
    "host_level",
    "target_level",
]

_V3 = (
    "+64bit,+cmov,+cx8,+fxsr,+mmx,+sse,+sse2,+cx16,+sahf,+popcnt,+sse3,+sse4.1,+sse4.2,"
    "+ssse3,+avx,+avx2,+bmi,+bmi2,+f16c,+fma,+lzcnt,+movbe,+xsave"
)

#: The exact ``NUMBA_CPU_FEATURES`` string of each level. It is part of every cache key,
#: so it must never change for a level (add a level rather than edit one).
LEVEL_FEATURES: dict[str, str] = {
    "x86-64-v4": _V3 + ",+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl",
    "x86-64-v3": _V3,
}

_X86_64 = ("x86_64", "amd64")


def host_level(host_features: str | None = None) -> str | None:
    """The highest level in :data:`LEVEL_FEATURES` that the host CPU supports.

    Args:
        host_features: LLVM's feature string (``"+avx2,-avx512f,..."``); the host's own
            (:func:`llvmlite.binding.get_host_cpu_features`) when ``None``.

    Returns:
        ``"x86-64-v4"``, ``"x86-64-v3"``, or ``None`` off x86-64 or below v3.
    """
    if host_features is None:
        if platform.machine().lower() not in _X86_64:
            return None
        from numba.core.codegen import get_host_cpu_features

        host_features = get_host_cpu_features()
    available = {f[1:] for f in host_features.split(",") if f.startswith("+")}
    for level, features in LEVEL_FEATURES.items():
        if {f[1:] for f in features.split(",")} <= available:
            return level
    return None


def target_level() -> str | None:
    """The level Numba compiles for in this process, or ``None`` if it is not one of ours.

    True exactly when both ``numba.core.config.CPU_NAME`` and ``CPU_FEATURES`` equal a
    level's, whoever set them (numbanet at import, or the user's environment).
    """
    from numba.core import config

    features = LEVEL_FEATURES.get(config.CPU_NAME or "")
    return config.CPU_NAME if features is not None and config.CPU_FEATURES == features else None


def _cpu_target_built() -> bool:
    from numba.core.registry import cpu_target

    # The target context (and with it the LLVM target machine) is a lazily cached
    # property; once in the instance dict, changing the config no longer changes the code.
    return "_toplevel_target_context" in vars(cpu_target)


def apply_portable_target() -> str | None:
    """Point Numba at the host's level (see the module docstring); returns the level.

    Returns the level now in effect, which is also the case when the user's own
    ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` name one; ``None`` when Numba keeps
    another target.
    """
    from numba.core import config

    if config.CPU_NAME is not None or config.CPU_FEATURES is not None:
        return target_level()
    if os.environ.get("NUMBANET_PORTABLE_TARGET", "1").strip() in ("0", "false", "no", "off"):
        return None
    level = host_level()
    if level is None or _cpu_target_built():
        return None
    config.CPU_NAME = level
    config.CPU_FEATURES = LEVEL_FEATURES[level]
    return level
