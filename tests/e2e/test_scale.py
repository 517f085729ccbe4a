"""20,000 concurrent connections on one machine: `trafficgen --concurrency 20000 --processes 2` against
`smartsink --workers 2`. All connections are established and held, there are no errors, mail keeps flowing while
they are held, and the whole sink (supervisor and workers) stays under 1 GiB."""

from __future__ import annotations

import json
import resource
import time

import pytest

from harness.policies import ACCEPT_ALL
from harness.processes import tree_rss_mb
from harness.sink import running_sink, wait_for
from harness.trafficgen import start_trafficgen

CONNECTIONS = 20_000
SINK_MEMORY_LIMIT_MB = 1024


@pytest.mark.slow
def test_twenty_thousand_connections(tmp_path):
    """20,000 connections established and held without errors, mail flowing, the sink under 1 GiB."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_process = CONNECTIONS // 2 + 200
    if hard != resource.RLIM_INFINITY and hard < per_process:
        pytest.skip(f"the open-files hard limit is {hard}; each process needs {per_process} (raise ulimit -Hn)")
    with running_sink("--workers", "2", "--timeout", "120", policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        idle = tree_rss_mb(sink.process.pid)
        generator = start_trafficgen(
            "--target", sink.target, "--concurrency", str(CONNECTIONS), "--processes", "2", "--duration", "40",
            "--timeout", "60", "--quiet", "--json", "-",
        )  # fmt: skip
        try:
            wait_for(
                lambda: sink.metrics()["smartsink_connections_active"] >= CONNECTIONS,
                timeout=35,
                interval=0.5,
                what=f"{CONNECTIONS} connections to be held",
            )
            held = tree_rss_mb(sink.process.pid)
            first, since = _accepted(sink), time.monotonic()
            wait_for(
                lambda: _accepted(sink) >= first + 5000,
                timeout=20,
                interval=0.5,
                what="mail to flow over the held connections",
            )
            flowing = (_accepted(sink) - first) / (time.monotonic() - since)
            assert sink.metrics()["smartsink_connections_active"] == CONNECTIONS
            held = max(held, tree_rss_mb(sink.process.pid))
            out, err = generator.communicate(timeout=120)
        finally:
            if generator.poll() is None:
                generator.kill()
                generator.communicate()
    assert generator.returncode == 0, err
    report = json.loads(out)
    print(
        f"sink memory: {idle:.0f} MB idle, {held:.0f} MB holding {CONNECTIONS} connections; "
        f"{flowing:.0f} msg/s while holding them; {report['throughput']['per_second']:.0f} msg/s over the run"
    )
    assert held < SINK_MEMORY_LIMIT_MB
    assert flowing > 0
    assert report["totals"]["errors"] == 0
    assert report["connections"]["opened"] == CONNECTIONS
    assert report["totals"]["accepted"] == report["totals"]["attempted"] > CONNECTIONS


def _accepted(sink) -> float:  # type: ignore[no-untyped-def]
    return sum(v for k, v in sink.metrics().items() if k.startswith("smartsink_messages_total"))
