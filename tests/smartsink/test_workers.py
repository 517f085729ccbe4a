"""--workers 2: one port served by two processes under a supervisor; /metrics sums them; a killed worker is
restarted without losing counts; SIGTERM/SIGINT stop everything cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from harness.metrics import Metrics
from harness.net import listen_sockets, listening
from harness.policies import PROVIDERS
from harness.processes import gone, worker_pids
from harness.sink import running_sink, start_sink, wait_for, write_policy
from harness.smtp import BODY, close, connect, connected, needs_smtp_source, send, transaction
from smartsink.supervisor import REPLACE_AFTER, STUCK_AFTER

# One message per connection, cycling through these (recipient, reply code, metrics key).
PLAN = [
    ("user@gmail.com", 250, ("gmail.com", "accepted")),
    ("tempfail@gmail.com", 452, ("gmail.com", "tempfailed")),
    ("permfail@yahoo.com", 554, ("yahoo.com", "permfailed")),
    ("someone@example.org", 250, ("other", "accepted")),
]
QUEUED = re.compile(r"^2\.0\.0 Ok: queued as ([0-9A-F]+)$")


def worker_of(reply: tuple[int, str]) -> int | None:
    """Which worker accepted a message: with --seed, worker i numbers its queue ids from i << 24."""
    m = QUEUED.match(reply[1])
    return int(m[1], 16) >> 24 if m else None


def send_plan(sink, connections: int) -> tuple[dict[tuple[str, str], int], set[int]]:
    """One message per new connection; (expected message counts, the workers that accepted)."""
    expected: dict[tuple[str, str], int] = {}
    workers: set[int] = set()
    for i in range(connections):
        recipient, code, key = PLAN[i % len(PLAN)]
        reply = send(sink, [recipient])
        assert reply[0] == code, reply
        expected[key] = expected.get(key, 0) + 1
        if code == 250:
            workers.add(worker_of(reply))
    return expected, workers


@pytest.fixture
def policy(tmp_path):
    return write_policy(tmp_path, PROVIDERS)


class TestSums:
    def test_metrics_sum_over_both_workers(self, policy):
        """Messages over 120 connections reach both workers; every scrape of /metrics shows the sum."""
        connections = 120
        with running_sink("--workers", "2", "--seed", "5", policy=policy) as sink:
            assert sink.health()["workers"] == {"configured": 2, "alive": 2, "stuck": [], "restarts": 0}
            expected, workers = send_plan(sink, connections)
            assert workers == {0, 1}, "the kernel gave every connection to one worker; the sum proves nothing"
            for _ in range(5):
                metrics = Metrics.scrape(sink)
                assert metrics.messages() == expected
                assert metrics.value("smartsink_connections_total") == connections
                assert metrics.value("smartsink_bytes_received_total") == connections * len(BODY)
            wait_for(
                lambda: Metrics.scrape(sink).value("smartsink_connections_active") == 0,
                timeout=5,
                what="every closed connection to leave the gauge",
            )

    @needs_smtp_source
    def test_postfix_smtp_source_many_connections(self, policy):
        """Postfix's smtp-source, 20 sessions and a new connection per message: all 400 counted, summed."""
        with running_sink("--workers", "2", policy=policy) as sink:
            result = subprocess.run(
                [
                    "smtp-source",
                    "-s",
                    "20",
                    "-m",
                    "400",
                    "-f",
                    "a@client.test",
                    "-t",
                    "b@gmail.com",
                    sink.target,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            metrics = Metrics.scrape(sink)
        assert metrics.messages() == {("gmail.com", "accepted"): 400}
        assert metrics.value("smartsink_connections_total") == 400


class TestRestart:
    def test_killed_worker_is_restarted_and_counts_survive(self, policy):
        """SIGKILL a worker: the other serves on, the supervisor restarts it, and no count is lost."""
        with running_sink("--workers", "2", "--seed", "5", policy=policy) as sink:
            supervisor = sink.process.pid
            expected, _ = send_plan(sink, 40)
            workers = worker_pids(supervisor)
            assert len(workers) == 2, workers
            held = [connect(sink) for _ in range(6)]
            try:
                victim = min(workers)
                assert listen_sockets(sink.port) == 2
                os.kill(victim, signal.SIGKILL)
                wait_for(lambda: gone(victim), timeout=5, what="the worker to die")
                # The kernel releases a dead process's listening socket a moment after it dies (connections
                # it queued meanwhile are reset: SO_REUSEPORT without net.ipv4.tcp_migrate_req). Once it has,
                # the port is still served while the supervisor restarts the worker.
                wait_for(lambda: listen_sockets(sink.port) <= 1, timeout=5, what="its socket to be released")
                for _ in range(10):
                    assert send(sink, ["survivor@example.org"])[0] == 250
                expected[("other", "accepted")] += 10

                health = wait_for(
                    lambda: (h := sink.health())["workers"]["alive"] == 2 and h["status"] == "ok" and h,
                    timeout=10,
                    what="the worker to be restarted",
                )
                assert health["workers"]["restarts"] == 1
                now = worker_pids(supervisor)
                assert len(now) == 2
                assert victim not in now
                assert (workers - {victim}) <= now
                assert listen_sockets(sink.port) == 2
                assert Metrics.scrape(sink).messages() == expected
            finally:
                for client in held:
                    close(client)

            more, _ = send_plan(sink, 40)
            for key, count in more.items():
                expected[key] = expected.get(key, 0) + count
            metrics = Metrics.scrape(sink)
            assert metrics.messages() == expected
            assert metrics.value("smartsink_connections_total") == 40 + 10 + 6 + 40
            # the dead worker's open connections leave the gauge with it
            wait_for(
                lambda: Metrics.scrape(sink).value("smartsink_connections_active") == 0,
                timeout=5,
                what="connections_active back to 0",
            )


class TestFrozen:
    @pytest.mark.slow
    def test_a_frozen_worker_is_reported_then_replaced(self, policy):
        """kill -STOP one worker: /health says which within STUCK_AFTER (503, not ready, still live), and the
        supervisor replaces it past REPLACE_AFTER; then the sink is whole again (200)."""
        with running_sink("--workers", "2", policy=policy) as sink:
            supervisor = sink.process.pid
            workers = worker_pids(supervisor)
            victim = min(workers)
            frozen_at = time.monotonic()
            os.kill(victim, signal.SIGSTOP)
            try:
                health = wait_for(
                    lambda: (h := sink.health())["workers"]["stuck"] and h,
                    timeout=STUCK_AFTER + 10,
                    what="the frozen worker to be reported",
                )
                assert sink.get("/health")[0] == 503
                assert health["serving"] is False
                assert sink.get("/health/ready")[0] == 503
                assert sink.get("/health/live")[0] == 200
                wait_for(lambda: gone(victim), timeout=REPLACE_AFTER + 20, what="the frozen worker to be replaced")
                assert time.monotonic() - frozen_at > REPLACE_AFTER
                wait_for(lambda: sink.get("/health")[0] == 200, timeout=30, what="the sink whole again")
                assert sink.health()["workers"]["stuck"] == []
                assert victim not in worker_pids(supervisor)
                assert send(sink, ["after@example.org"])[0] == 250
            finally:
                if not gone(victim):
                    os.kill(victim, signal.SIGKILL)


class TestStop:
    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
    def test_signal_stops_everything_cleanly(self, policy, sig):
        """SIGTERM or SIGINT to the supervisor: exit 0, no worker left, nothing listening any more."""
        sink = start_sink("--workers", "2", "--policy", str(policy))
        try:
            workers = worker_pids(sink.process.pid)
            assert len(workers) == 2
            assert send(sink, ["user@gmail.com"])[0] == 250
        finally:
            code = sink.stop(sig)
        assert code == 0, sink.log()
        assert "Traceback" not in sink.log()
        assert all(gone(pid) for pid in workers), [pid for pid in workers if not gone(pid)]
        assert not listening(sink.address)
        host, port = sink.http.rsplit(":", 1)
        assert not listening((host, int(port)))


class TestReloadWithWorkers:
    def test_edit_reaches_every_worker(self, policy):
        """A policy edit is pushed to both workers: every new connection answers with the new policy."""
        with running_sink("--workers", "2", "--seed", "5", policy=policy) as sink:
            policy.write_text(PROVIDERS.replace("[default]\nbounce = 0", "[default]\nbounce = 100"))
            wait_for(lambda: sink.health()["policy"]["generation"] == 1, timeout=2.0, what="the reload")
            seen = set()
            for _ in range(40):
                with connected(sink) as client:
                    # 250-... is accepted whatever the percentages, and its queue id names the worker
                    reply = transaction(client, ["250-probe@example.org"])
                    seen.add(worker_of(reply))
                    assert transaction(client, ["user@example.org"])[0] == 550
            assert seen == {0, 1}
            sink.process.send_signal(signal.SIGHUP)
            wait_for(lambda: sink.health()["policy"]["generation"] == 2, timeout=2.0, what="the SIGHUP reload")
