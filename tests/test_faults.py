"""Faults between the generator and the sink: a sink killed mid-run and started again, a server that never
answers. Neither side hangs: every network wait has a timeout."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import ACCEPT_ALL, running_sink, wait_for, write_policy
from tghelpers import GreetOnly


def accepted_by(sink) -> float:  # type: ignore[no-untyped-def]
    return sum(v for k, v in sink.metrics().items() if k.startswith("smartsink_messages_total") and "accepted" in k)


def start_trafficgen(target: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "trafficgen", "--target", target, "--quiet", "--json", "-", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sink_killed_and_restarted_with_keep_going(tmp_path):
    """--keep-going: errors are counted while the sink is down, the run resumes on the new sink, finishes on
    time, and the report adds up."""
    policy = write_policy(tmp_path, ACCEPT_ALL)
    first = running_sink("--policy", str(policy))
    with first as sink:
        port = sink.port
        generator = start_trafficgen(
            sink.target, "--duration", "8", "--concurrency", "10", "--keep-going", "--timeout", "5"
        )
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
        generator = start_trafficgen(sink.target, "--duration", "30", "--concurrency", "5", "--timeout", "5")
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


@pytest.mark.parametrize("greeting", [None, b"220 silent ESMTP\r\n"], ids=["no-greeting", "silent-after-greeting"])
def test_trafficgen_never_hangs_on_a_silent_server(greeting):
    """A server that goes silent makes trafficgen give up after --timeout with a clear line, not hang."""
    with GreetOnly(greeting) as target:
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "trafficgen",
                "--target",
                target,
                "--message-count",
                "3",
                "--concurrency",
                "1",
                "--timeout",
                "2",
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("trafficgen: error: timeout: no reply in 2 s")
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


class _ClosesWhenIdle:
    """aiosmtpd (nobody here wrote it) that closes each connection shortly after answering a message: the way a
    server's idle timeout looks to a throttled generator."""

    def __init__(self) -> None:
        import asyncio

        from aiosmtpd.smtp import SMTP

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
                asyncio.get_running_loop().call_later(0.05, server.transport.close)
                return "250 2.0.0 Ok"

        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            self.loop.create_server(lambda: SMTP(Handler(), hostname="idle.test"), "127.0.0.1", 0)
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_server_closing_idle_connections_is_not_an_error():
    """A server that closes idle connections between throttled messages: trafficgen reconnects, every message gets
    its one outcome, none is lost and none counts as an error."""
    server = _ClosesWhenIdle()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "trafficgen",
                "--target",
                server.target,
                "--message-count",
                "12",
                "--throttle",
                "8/s",
                "--concurrency",
                "2",
                "--quiet",
                "--json",
                "-",
                "--timeout",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    totals = json.loads(result.stdout)["totals"]
    assert totals == {"attempted": 12, "accepted": 12, "tempfailed": 0, "permfailed": 0, "errors": 0}
