"""The code checks the project promises: ruff (lint and format) and mypy on the packages are clean."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import ROOT, child_env


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


def test_pyproject_reads_without_deprecation_warnings(monkeypatch):
    """setuptools applies pyproject.toml with no warning (make install printed its deprecation of the license
    table; warnings are errors in this suite)."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)
    distribution = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert distribution.metadata.license_expression == "Apache-2.0"


def test_readme_names_the_make_targets_a_newcomer_runs():
    """The README names make install, test, test-fast, demo and lint (test-fast was missing)."""
    readme = (ROOT / "README.md").read_text()
    for target in ("install", "test", "test-fast", "demo", "lint"):
        assert f"make {target}" in readme, target


def test_help_has_no_type_noise():
    """--help of both commands and of every `report` command: no Typer type labels (<bool>, <str>) and no
    {argument} in the usage line."""
    commands = [["trafficgen"], ["smartsink"], *(["trafficgen", "report", c] for c in ("show", "html", "merge"))]
    commands += [["trafficgen", "report", c] for c in ("compare", "reconcile")]
    commands += [["trafficgen", "workload", "from-logs"], ["smartsink", "policy", "from-logs"]]
    for command in commands:
        module, *rest = command
        done = subprocess.run(
            [sys.executable, "-m", module, *rest, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**child_env(), "COLUMNS": "120"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        for noise in ("<bool>", "<str>", "<float>", "<int>", "{"):
            assert noise not in done.stdout, (command, noise, done.stdout)
