"""End-to-end reconciliation: trafficgen -> an MTA that loses and duplicates mail -> smartsink. trafficgen asks
the sink at the end and must report exactly what the MTA lost and duplicated.

The MTA in the middle is the harness's capture server (aiosmtpd) relaying with aiosmtplib (nobody here wrote
them): it accepts every message, then relays it to the sink in the background, except that it drops some and
sends some twice, and remembers which, so the test knows the truth the report must match.
"""

from __future__ import annotations

import asyncio
import re
import threading

import aiosmtplib
import pytest

from harness.capture import CaptureHandler, CaptureServer
from harness.policies import ACCEPT_ALL
from harness.sink import running_sink
from harness.trafficgen import run_report

TRACE = re.compile(rb"X-Trafficgen-Id: ([^;\s]+)")


class LossyRelay(CaptureHandler):
    """250 to everything, relayed later; every `drop`-th message lost, every `twice`-th doubled."""

    def __init__(self, sinks: list[tuple[str, int]], drop: int, twice: int):
        self.sinks = sinks
        self.drop, self.twice = drop, twice
        self.count = 0
        self.lost: set[str] = set()
        self.doubled: set[str] = set()
        self.pending: set[asyncio.Task[None]] = set()
        self.idle = threading.Event()
        self.idle.set()

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.count += 1
        trace = TRACE.search(envelope.original_content).group(1).decode()
        if self.count % self.drop == 0:
            self.lost.add(trace)
        else:
            copies = 2 if self.count % self.twice == 0 else 1
            if copies == 2:
                self.doubled.add(trace)
            self.idle.clear()
            task = asyncio.get_running_loop().create_task(self._relay(envelope, copies, self.count))
            self.pending.add(task)
            task.add_done_callback(self._done)
        return "250 2.0.0 Ok: queued"

    def _done(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        if not self.pending:
            self.idle.set()

    async def _relay(self, envelope, copies: int, number: int) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.2)  # a queue, not a pipe: delivery happens after the 250
        for copy in range(copies):
            target = self.sinks[(number + copy) % len(self.sinks)]
            await aiosmtplib.send(
                envelope.original_content,
                sender=envelope.mail_from,
                recipients=envelope.rcpt_tos,
                hostname=target[0],
                port=target[1],
                timeout=10,
                # In the clear, as Postfix's own default (smtp_tls_security_level empty): a handshake per relayed
                # message would make delivery outlast --reconcile-wait (test_postfix.py covers TLS to the sink).
                start_tls=False,
            )


@pytest.fixture
def relay_to():  # type: ignore[no-untyped-def]
    """Start a lossy relay to these sinks (aiosmtpd as plain as it comes: no PIPELINING offered)."""
    servers: list[CaptureServer] = []

    def start(sinks: list[tuple[str, int]], drop: int, twice: int) -> tuple[LossyRelay, str]:
        handler = LossyRelay(sinks, drop, twice)
        servers.append(CaptureServer(handler, hostname="relay.test", pipelining=False).start())
        return handler, servers[-1].target

    yield start
    for server in servers:
        server.stop()


def test_reports_exactly_what_the_mta_lost_and_duplicated(tmp_path, relay_to):
    """200 messages through an MTA that loses every 10th and doubles every 7th: lost and duplicated are exact."""
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        relay, target = relay_to([sink.address], drop=10, twice=7)
        report, _ = run_report(
            "--target",
            target,
            "--message-count",
            "200",
            "--concurrency",
            "4",
            "--reconcile",
            f"http://{sink.http}",
            "--reconcile-wait",
            "3",
            "--domain",
            "example.com",
        )
        assert relay.idle.wait(10)
    reconciled = report["reconciliation"]
    result = reconciled["recipients"]
    assert report["totals"]["accepted"] == 200
    assert result["lost"] == len(relay.lost) == 20
    assert result["duplicated"] == len(relay.doubled)
    assert {s["id"] for s in reconciled["samples"]["lost"]} == relay.lost
    assert {s["sink_saw"] for s in reconciled["samples"]["lost"]} == {"nothing"}
    assert {s["id"] for s in reconciled["samples"]["duplicated"]} == relay.doubled
    assert result["delivered"] + result["duplicated"] == 200 - len(relay.lost)
    assert result["bounced"] == result["pending"] == result["unexpected"] == 0
    assert reconciled["messages"]["lost"] == 20


def test_bounced_and_deferred_by_the_sink(tmp_path, relay_to):
    """When the sink refuses what the MTA relays, those messages are bounced or deferred, not lost."""
    policy = "[default]\nbounce = 20\ndefer = 20\n"
    with running_sink("--seed", "2", policy=policy, tmp=tmp_path) as sink:
        relay, target = relay_to([sink.address], drop=1000, twice=1000)
        report, _ = run_report(
            "--target",
            target,
            "--message-count",
            "150",
            "--concurrency",
            "3",
            "--reconcile",
            f"http://{sink.http}",
            "--reconcile-wait",
            "3",
            "--domain",
            "example.com",
        )
        assert relay.idle.wait(10)
        metrics = sink.metrics()
    result = report["reconciliation"]["recipients"]
    counted = {
        o: metrics.get(f'smartsink_messages_total{{domain="other",outcome="{o}"}}', 0)
        for o in ("accepted", "tempfailed", "permfailed")
    }
    assert result["delivered"] == counted["accepted"]
    assert result["bounced"] == counted["permfailed"]
    assert result["pending"] == counted["tempfailed"]
    assert result["lost"] == 0
    assert result["bounced"] > 0
    assert result["pending"] > 0


def test_several_sinks_behind_one_address(tmp_path, relay_to):
    """The MTA spreads mail over two sinks; --reconcile with both admin URLs combines their ledgers exactly."""
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as one, running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as two:
        relay, target = relay_to([one.address, two.address], drop=9, twice=5)
        report, _ = run_report(
            "--target",
            target,
            "--message-count",
            "120",
            "--concurrency",
            "3",
            "--reconcile",
            f"http://{one.http},http://{two.http}",
            "--reconcile-wait",
            "3",
            "--domain",
            "example.com",
        )
        assert relay.idle.wait(10)
    result = report["reconciliation"]["recipients"]
    assert result["lost"] == len(relay.lost)
    assert result["duplicated"] == len(relay.doubled)
    assert result["delivered"] + result["duplicated"] == 120 - len(relay.lost)
