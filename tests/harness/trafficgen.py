"""The real trafficgen CLI in a subprocess, as a user runs it, and what every report must satisfy.

`run_trafficgen()` runs `python -m trafficgen ARGS` to its end and returns what it printed; `run_report()` adds
`--quiet --json -` and parses the report; `start_trafficgen()` starts one and leaves it running. All three give
it the environment of harness.child_env(): none of the test run's TRAFFICGEN_* or SMARTSINK_* variables.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import IO, Any

from harness import ROOT, child_env

RUN_TIMEOUT = 120.0
OUTCOMES = ("accepted", "tempfailed", "permfailed", "errors")
COUNTS = ("attempted", *OUTCOMES)
COMMAND = (sys.executable, "-m", "trafficgen")


def _env(env: dict[str, str] | None, inherit: bool) -> dict[str, str]:
    return child_env(env) if inherit else dict(env or {})


def run_trafficgen(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = RUN_TIMEOUT,
    argv0: Sequence[str] | None = None,
    inherit: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`python -m trafficgen ARGS` to the end; a hang fails the test after `timeout` seconds.

    `argv0` replaces `python -m trafficgen` (a wrapper, `ip netns exec NAME ...`); `inherit=False` runs it with
    `env` alone, not this process's environment."""
    command = [*(argv0 or COMMAND), *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=_env(env, inherit), cwd=ROOT, timeout=timeout, check=False
    )


def run_report(
    *args: str,
    env: dict[str, str] | None = None,
    expect: int | tuple[int, ...] = 0,
    timeout: float = RUN_TIMEOUT,
    argv0: Sequence[str] | None = None,
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """A quiet run with `--json -`: the parsed report and the finished process (exit status checked: `expect`,
    or one of them)."""
    done = run_trafficgen("--quiet", "--json", "-", *args, env=env, timeout=timeout, argv0=argv0)
    allowed = expect if isinstance(expect, tuple) else (expect,)
    assert done.returncode in allowed, f"exit {done.returncode}, expected {expect}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout), done


def start_trafficgen(
    *args: str,
    env: dict[str, str] | None = None,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """`python -m trafficgen ARGS` started and left running; the caller waits for it (communicate())."""
    return subprocess.Popen([*COMMAND, *args], stdout=stdout, stderr=stderr, text=True, env=child_env(env), cwd=ROOT)


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]


def check_invariants(report: dict[str, Any]) -> None:
    """attempted = accepted + tempfailed + permfailed + errors, in total and for every domain; domains add up."""
    totals = report["totals"]
    assert totals["attempted"] == sum(totals[k] for k in OUTCOMES), totals
    for name, row in report["domains"].items():
        assert row["attempted"] == sum(row[k] for k in OUTCOMES), (name, row)
    for key in COUNTS:
        assert totals[key] == sum(row[key] for row in report["domains"].values()), key
