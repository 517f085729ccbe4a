"""The tests' harness: what the tests start and talk to, and nothing that fakes the tools under test.

- sink:      a real smartsink in a subprocess on free ports (running_sink), its CLI run to the end, wait_for
- trafficgen: the real trafficgen CLI in a subprocess (run_trafficgen, run_report, start_trafficgen)
- capture:   one threaded aiosmtpd server that records what a client sends (CaptureServer)
- smtp:      conversations with smtplib and raw sockets, wire replies, swaks and smtp-source
- metrics:   one scrape of a sink's /metrics, by name and labels
- mail:      message content as the wire carries it: transactions, dot-stuffing, headers, DSNs
- net:       ports: free (or outside the ephemeral range), refusing, busy; silent servers; /proc/net/tcp; netns
- processes: child processes and resident memory, from /proc
- postfix:   a private Postfix between the two tools, relaying to the sink or routing by MX in a namespace
- docker:    a dockerd of the tests' own, the image's Debian base built from packages, the host left as found
- policies:  the policy texts several test files share, and the policy files in the repository
- stats:     binomial bounds and chi-square, for counts drawn at random
- lag:       how late the machine wakes a sleeping process while a test runs: timing tolerances derive from it

pyproject.toml puts tests/ on sys.path (pytest's `pythonpath`): `from harness.sink import running_sink`.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a tool the tests start: this process's, without TRAFFICGEN_* and SMARTSINK_* variables
    (none of the test run's own may leak into a test), unbuffered output, then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAFFICGEN_", "SMARTSINK_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env
