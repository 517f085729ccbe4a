"""The code checks the project promises: ruff (lint and format) and mypy on the packages are clean."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import ROOT


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint():
    """ruff check (the families pyproject.toml selects: E, F, I, UP, B, ASYNC, PT, SIM, RUF, PERF) finds nothing."""
    result = run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    """Every file is formatted as ruff format would."""
    result = run("ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy():
    """mypy --strict on the packages and the bench (pyproject's [tool.mypy]) finds nothing."""
    result = run("mypy", "--no-incremental")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_strict():
    """The promise holds in the configuration itself: strict mode, on every package."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    assert set(config["packages"]) == {"mailload", "smartsink", "trafficgen", "bench"}
