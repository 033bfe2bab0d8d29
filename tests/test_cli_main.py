"""The top-level ``numbanet`` command: --version, --help, and a closed pipe."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

import numbanet
from numbanet import cli


def test_version_prints_the_package_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"numbanet {numbanet.__version__}\n"


def test_help_lists_every_subcommand_with_its_description(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, text) in cli._SUBCOMMANDS.items():
        assert f"  {name}" in out and text in out, name


def test_no_arguments_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "commands:" in capsys.readouterr().out


@pytest.mark.skipif(not hasattr(signal, "SIGPIPE"), reason="POSIX pipes only")
def test_a_closed_pipe_ends_train_quietly_like_a_unix_tool():
    """``numbanet train | head -2``: no 'Broken pipe' error, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "numbanet", "train", "--epochs", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # what head does after its lines
    stderr = proc.stderr.read().decode()
    code = proc.wait(timeout=300)
    assert "Broken pipe" not in stderr and "Traceback" not in stderr, stderr
    assert code in (0, -signal.SIGPIPE), (code, stderr)

