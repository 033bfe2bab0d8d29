"""Running scripts under ``mpiexec`` for the distributed tests.

The tests start ``mpiexec -n N python tests/distributed/scripts/<script>.py ...`` in a
subprocess and check what the ranks printed and wrote. Where mpiexec or mpi4py is
missing they skip, except in CI (``CI`` set), where they fail: CI installs
``numbanet[mpi]`` and must run them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def _find_mpiexec() -> str | None:
    found = shutil.which("mpiexec")
    if found:
        return found
    # The mpich wheel puts mpiexec next to the interpreter of an unactivated venv.
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else None


@pytest.fixture(scope="session")
def mpiexec() -> str:
    path = _find_mpiexec()
    missing = [what for what, ok in (("mpiexec", path is not None),
                                     ("mpi4py", importlib.util.find_spec("mpi4py") is not None))
               if not ok]
    if missing:
        message = (f"{' and '.join(missing)} not found: pip install 'numbanet[mpi]' to run "
                   f"the distributed tests")
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the distributed tests: {message}")
        pytest.skip(message)
    assert path is not None
    return path


class Run:
    """What one mpiexec run left: exit code, stdout, stderr."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    def __repr__(self) -> str:
        return (f"exit code {self.returncode}\n--- stdout ---\n{self.stdout}\n"
                f"--- stderr ---\n{self.stderr}")


def run_command(command: list[str], timeout: float, env: dict[str, str] | None = None) -> Run:
    """Run ``command`` in its own process group; on timeout kill the whole group (every
    rank), so a hang fails the test instead of outliving it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full_env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(command)} ran past {timeout} s (a hang?)\n"
                             f"{Run(-9, out, err)}") from None
    return Run(proc.returncode, out, err)


@pytest.fixture
def mpirun(mpiexec: str) -> Callable[..., Run]:
    """``mpirun(script, *args, n=2, timeout=180, check=True, env=None)``."""

    def run(script: str, *args: object, n: int = 2, timeout: float = 180,
            check: bool = True, env: dict[str, str] | None = None) -> Run:
        command = [mpiexec, "-n", str(n), sys.executable, str(SCRIPTS / script),
                   *(str(a) for a in args)]
        result = run_command(command, timeout, env)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed\n{result}")
        return result

    return run


def load_script(name: str) -> ModuleType:
    """Import a script (its ``if __name__ == "__main__"`` part does not run), so a test
    can run the single-process reference with the very same code."""
    spec = importlib.util.spec_from_file_location(f"_nbn_mpi_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def script() -> Callable[[str], ModuleType]:
    """``script(name)``: the module of ``scripts/<name>.py`` (see :func:`load_script`)."""
    return load_script


@pytest.fixture
def command() -> Callable[..., Run]:
    """``command(argv, timeout, env=None)``: :func:`run_command`."""
    return run_command
