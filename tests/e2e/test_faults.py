"""Faults between the generator and the sink: a sink killed mid-run and started again, a server that never
answers. Neither side hangs: every network wait has a timeout."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from harness.capture import CaptureHandler, CaptureServer
from harness.net import GreetOnly
from harness.policies import ACCEPT_ALL
from harness.sink import running_sink, wait_for, write_policy
from harness.trafficgen import run_trafficgen, start_trafficgen


def accepted_by(sink) -> float:  # type: ignore[no-untyped-def]
    return sum(v for k, v in sink.metrics().items() if k.startswith("smartsink_messages_total") and "accepted" in k)


@pytest.mark.slow
def test_sink_killed_and_restarted_with_keep_going(tmp_path):
    """--keep-going: errors are counted while the sink is down, the run resumes on the new sink, finishes on
    time, and the report adds up."""
    policy = write_policy(tmp_path, ACCEPT_ALL)
    first = running_sink("--policy", str(policy))
    with first as sink:
        port = sink.port
        generator = start_trafficgen(
            "--target", sink.target, "--quiet", "--json", "-", "--duration", "8", "--concurrency", "10",
            "--keep-going", "--timeout", "5",
        )  # fmt: skip
        started = time.monotonic()
        wait_for(lambda: accepted_by(sink) > 200, what="the first sink to take mail")
        sink.stop(signal.SIGKILL)
    time.sleep(1.0)  # the outage: the sink is down for a second
    with running_sink("--policy", str(policy), "--listen", f"127.0.0.1:{port}") as again:
        out, err = generator.communicate(timeout=60)
        took = time.monotonic() - started
        second = accepted_by(again)
    assert generator.returncode == 0, err
    report = json.loads(out)
    totals = report["totals"]
    assert totals["errors"] > 0
    assert second > 0
    assert totals["attempted"] == sum(totals[k] for k in ("accepted", "tempfailed", "permfailed", "errors"))
    assert totals["accepted"] >= second
    assert took < 8 + 12  # the duration and the end-of-run grace; never a hang
    kinds = {e["text"].split(":")[0] for e in report["errors"]}
    assert kinds <= {"lost", "refused", "timeout", "connect"}


def test_sink_killed_without_keep_going(tmp_path):
    """Without --keep-going the run stops at the loss with one clear line and exit 1."""
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        generator = start_trafficgen(
            "--target",
            sink.target,
            "--quiet",
            "--json",
            "-",
            "--duration",
            "30",
            "--concurrency",
            "5",
            "--timeout",
            "5",
        )
        wait_for(lambda: accepted_by(sink) > 50, what="the sink to take mail")
        sink.stop(signal.SIGKILL)
        out, err = generator.communicate(timeout=60)
    assert generator.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("trafficgen: error: ")
    assert "lost" in last or "refused" in last
    report = json.loads(out)
    assert report["stopped_by"].startswith("error:")
    assert report["totals"]["errors"] >= 1


@pytest.mark.parametrize(
    ("greeting", "waited_for"),
    [(None, "the greeting"), (b"220 silent ESMTP\r\n", "EHLO")],
    ids=["no-greeting", "silent-after-greeting"],
)
def test_trafficgen_never_hangs_on_a_silent_server(greeting, waited_for):
    """A server that goes silent makes trafficgen give up after --timeout with a clear line naming what it waited
    for, not hang."""
    with GreetOnly(greeting) as target:
        started = time.monotonic()
        result = run_trafficgen(
            "--target", target, "--message-count", "3", "--concurrency", "1", "--timeout", "2", "--quiet", timeout=60
        )
        took = time.monotonic() - started
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"trafficgen: error: timeout: no reply to {waited_for} in 2 s")
    )
    assert took < 15


def test_sink_never_hangs_on_a_silent_client(tmp_path):
    """A client that connects and says nothing is closed by the sink after --timeout with 421."""
    with running_sink("--timeout", "2", policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        with socket.create_connection(sink.address, timeout=20) as s:
            started = time.monotonic()
            data = b""
            while chunk := s.recv(1024):
                data += chunk
            took = time.monotonic() - started
        assert data.endswith(b"421 4.4.2 Error: timeout exceeded\r\n")
        assert 1.5 < took < 10


class ClosesWhenIdle(CaptureHandler):
    """Closes each connection shortly after answering a message: the way a server's idle timeout looks to a
    throttled generator."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        asyncio.get_running_loop().call_later(0.05, server.transport.close)  # type: ignore[union-attr]
        return "250 2.0.0 Ok"


def test_server_closing_idle_connections_is_not_an_error():
    """A server that closes idle connections between throttled messages: trafficgen reconnects, every message gets
    its one outcome, none is lost and none counts as an error."""
    with CaptureServer(ClosesWhenIdle(), hostname="idle.test", pipelining=False) as server:
        result = run_trafficgen(
            "--target", server.target, "--message-count", "12", "--throttle", "8/s", "--concurrency", "2", "--quiet",
            "--json", "-", "--timeout", "10", timeout=60,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    totals = json.loads(result.stdout)["totals"]
    assert totals == {"attempted": 12, "accepted": 12, "tempfailed": 0, "permfailed": 0, "errors": 0}
