"""Lint and type checks run with the tests, so CI catches them too."""

import subprocess
import sys

from conftest import ROOT


def test_ruff() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    """The settings of pyproject.toml ([tool.mypy]: disallow_untyped_defs, warn_unused_ignores)
    over the library, the command line, the tests and the benchmarks."""
    targets = ["stream", "engines", "calibration", "run_stream.py", "tests", "bench"]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *targets], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_layers() -> None:
    """The import contracts of pyproject.toml ([tool.importlinter]): engines know no pipeline,
    the pipeline runs no calibration job and never reaches the CLI, stages do no I/O and
    know no threads."""
    lint = ROOT / ".venv" / "bin" / "lint-imports"
    command = [str(lint)] if lint.exists() else [sys.executable, "-m", "importlinter.cli"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
