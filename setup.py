"""Build hook: compile numbanet's standard kernels ahead of time, like a C extension.

Everything else about the package is declared in pyproject.toml. After setuptools
copies the sources (``build_py``), this runs ``python -m numbanet._precompiled`` on them,
which trains the standard jobs once and keeps the machine code Numba produced in
``numbanet/_precompiled/`` (see that module's docstring). A new environment's first
training step then loads it instead of compiling for ~20 s.

``NUMBANET_PRECOMPILE`` chooses the x86-64 levels: ``host`` (the default: this
machine's), ``all`` (every level this machine can run, for a wheel meant for other
machines), a list such as ``x86-64-v3,x86-64-v4``, or ``0`` to skip. A failure only
prints a warning: the kernels then compile on first use, as they would without this.
"""

from __future__ import annotations

import os
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithKernels(build_py):
    def run(self) -> None:
        super().run()
        levels = os.environ.get("NUMBANET_PRECOMPILE", "host").strip()
        if levels.lower() in ("0", "no", "none", "off", "false"):
            return
        if self.editable_mode:  # an editable install imports the sources in place
            package_dir = os.path.abspath(self.get_package_dir("numbanet"))
        else:
            package_dir = os.path.join(os.path.abspath(self.build_lib), "numbanet")
        # pip's build isolation rebuilds sys.path in a sitecustomize, dropping PYTHONPATH
        # entries, so the child puts the sources on its path itself.
        code = (f"import sys; sys.path.insert(0, {os.path.dirname(package_dir)!r}); "
                "from numbanet._precompiled import main; sys.exit(main(sys.argv[1:]))")
        command = [sys.executable, "-c", code, "--levels", levels,
                   "--out", os.path.join(package_dir, "_precompiled")]
        try:
            subprocess.run(command, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"warning: numbanet's kernels were not compiled ahead of time ({exc}); "
                  "they will compile on first use", file=sys.stderr)


setup(cmdclass={"build_py": BuildPyWithKernels})
