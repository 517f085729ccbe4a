"""End-to-end reconciliation: trafficgen -> an MTA that loses and duplicates mail -> smartsink. trafficgen asks
the sink at the end and must report exactly what the MTA lost and duplicated.

The MTA in the middle is built on aiosmtpd and aiosmtplib (nobody here wrote them): it accepts every message,
then relays it to the sink in the background, except that it drops some and sends some twice, and remembers
which, so the test knows the truth the report must match.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP
from conftest import ACCEPT_ALL, running_sink

TRACE = re.compile(rb"X-Trafficgen-Id: ([^;\s]+)")


class LossyRelay:
    """aiosmtpd handler: 250 to everything, relayed later; every `drop`-th message lost, every `twice`-th doubled."""

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
            )


def run_trafficgen(target: str, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "trafficgen", "--target", target, "--quiet", "--json", "-", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class Relay:
    """aiosmtpd's SMTP server for a LossyRelay, on a free port, in a thread with its own event loop."""

    def __init__(self, handler: LossyRelay):
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            self.loop.create_server(lambda: SMTP(handler, hostname="relay.test"), "127.0.0.1", 0)
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def relay_to():  # type: ignore[no-untyped-def]
    relays: list[Relay] = []

    def start(sinks: list[tuple[str, int]], drop: int, twice: int) -> tuple[LossyRelay, str]:
        handler = LossyRelay(sinks, drop, twice)
        relays.append(Relay(handler))
        return handler, relays[-1].target

    yield start
    for relay in relays:
        relay.stop()


def test_reports_exactly_what_the_mta_lost_and_duplicated(tmp_path, relay_to):
    """200 messages through an MTA that loses every 10th and doubles every 7th: lost and duplicated are exact."""
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        relay, target = relay_to([sink.address], drop=10, twice=7)
        report = run_trafficgen(
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
    result = report["reconciliation"]
    assert report["totals"]["accepted"] == 200
    assert result["lost"] == len(relay.lost) == 20
    assert result["duplicated"] == len(relay.doubled)
    assert set(result["lost_ids"]) == relay.lost
    assert set(result["duplicated_ids"]) == relay.doubled
    assert result["delivered"] == 200 - len(relay.lost)
    assert result["bounced"] == result["deferred_pending"] == result["unexpected"] == 0


def test_bounced_and_deferred_by_the_sink(tmp_path, relay_to):
    """When the sink refuses what the MTA relays, those messages are bounced or deferred, not lost."""
    policy = "[default]\nbounce = 20\ndefer = 20\n"
    with running_sink("--seed", "2", policy=policy, tmp=tmp_path) as sink:
        relay, target = relay_to([sink.address], drop=1000, twice=1000)
        report = run_trafficgen(
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
    result = report["reconciliation"]
    counted = {
        o: metrics.get(f'smartsink_messages_total{{domain="other",outcome="{o}"}}', 0)
        for o in ("accepted", "tempfailed", "permfailed")
    }
    assert result["delivered"] == counted["accepted"]
    assert result["bounced"] == counted["permfailed"]
    assert result["deferred_pending"] == counted["tempfailed"]
    assert result["lost"] == 0
    assert result["bounced"] > 0
    assert result["deferred_pending"] > 0


def test_several_sinks_behind_one_address(tmp_path, relay_to):
    """The MTA spreads mail over two sinks; --reconcile with both admin URLs combines their ledgers exactly."""
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as one, running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as two:
        relay, target = relay_to([one.address, two.address], drop=9, twice=5)
        report = run_trafficgen(
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
    result = report["reconciliation"]
    assert result["lost"] == len(relay.lost)
    assert result["duplicated"] == len(relay.doubled)
    assert result["delivered"] == 120 - len(relay.lost)


def test_unreachable_sink_is_one_clear_line(tmp_path):
    """A --reconcile URL where nothing answers: the run's report is written, then one error line and exit 1."""
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "trafficgen",
                "--target",
                sink.target,
                "--message-count",
                "5",
                "--quiet",
                "--reconcile",
                "http://127.0.0.1:1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("trafficgen: error: reconciliation: cannot read")
