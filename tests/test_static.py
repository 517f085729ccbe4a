"""The code checks the project promises: ruff (lint and format) and mypy on the packages are clean."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint():
    """ruff check (E, F, I, UP, B, ASYNC) finds nothing."""
    result = run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    """Every file is formatted as ruff format would."""
    result = run("ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy():
    """mypy on smartsink and trafficgen (pyproject's [tool.mypy]) finds nothing."""
    result = run("mypy", "--no-incremental")
    assert result.returncode == 0, result.stdout + result.stderr
