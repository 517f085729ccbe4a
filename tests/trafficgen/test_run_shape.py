"""A run does what was asked, or says it did not: --concurrency connections held for the whole run (with or
without --throttle), a rate that could not be reached, a run with no answered message, a target that never
greets, the sending window of a --duration run."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from harness.net import GreetOnly
from harness.policies import ACCEPT_ALL
from harness.sink import running_sink
from harness.trafficgen import error_lines, run_report, run_trafficgen, start_trafficgen

SLOW_REPLIES = """
[default]
bounce = 0
defer = 0
latency = "50ms"
"""


class TestHeldConnections:
    """KumoMTA's traffic-gen opens every connection, then paces the sends: so does trafficgen."""

    @pytest.mark.slow
    @pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
    def test_concurrency_held_for_the_whole_run_under_a_throttle(self, tmp_path, processes):
        """--concurrency 600 --throttle 50/s: the sink holds 600 connections from early in the run to its end,
        and each connection was opened once (reused, not one per message)."""
        with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
            generator = start_trafficgen(
                "--target", sink.target, "--concurrency", "600", "--throttle", "50/s", "--duration", "6",
                "--processes", str(processes), "-q", "--json", "-",
            )  # fmt: skip
            samples: list[tuple[float, float]] = []
            started = time.monotonic()
            while generator.poll() is None:
                samples.append((time.monotonic() - started, sink.metrics()["smartsink_connections_active"]))
                time.sleep(0.25)  # a sampling period, not a wait for readiness
            out, err = generator.communicate()
        assert generator.returncode == 0, err
        report = json.loads(out)
        # The connections open at 2,000/s once the processes have started (0.3 s nominal, a few seconds on a
        # loaded machine), then all 600 are held until the sending ends at 6 s.
        reached = next((at for at, active in samples if active == 600), None)
        assert reached is not None, samples
        assert reached < 4.0, samples
        assert all(active == 600 for at, active in samples if reached <= at <= 5.5), samples
        assert report["connections"] == {"opened": 600, "peak": 600, "failed": 0, "errors": []}
        assert report["totals"]["accepted"] == report["totals"]["attempted"] == 300

    def test_ramp_follows_connect_rate(self, tmp_path):
        """--connect-rate 200/s: 100 connections open over about half a second, not in one burst."""
        with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
            generator = start_trafficgen(
                "--target", sink.target, "--concurrency", "100", "--connect-rate", "200/s", "--throttle", "20/s",
                "--duration", "3", "-q", "--json", "-",
            )  # fmt: skip
            first_ten = all_hundred = None
            while generator.poll() is None and all_hundred is None:
                active = sink.metrics()["smartsink_connections_active"]
                now = time.monotonic()
                if first_ten is None and active >= 10:
                    first_ten = now
                if active >= 100:
                    all_hundred = now
                time.sleep(0.01)  # a sampling period
            out, err = generator.communicate()
        assert generator.returncode == 0, err
        assert first_ten is not None
        assert all_hundred is not None
        # Nominally 0.45 s from the 10th to the 100th (slot k opens at k / 200 s); a burst would take ~0.
        assert 0.3 < all_hundred - first_ten < 2.0
        assert json.loads(out)["connections"]["peak"] == 100

    def test_message_count_run_opens_no_connection_it_does_not_need(self, tmp_path):
        """--message-count 4 --messages-per-connection 1 --concurrency 2: four connections, not more."""
        with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
            report, _ = run_report(
                "--target", sink.target, "--message-count", "4", "--messages-per-connection", "1",
                "--concurrency", "2",
            )  # fmt: skip
        assert report["connections"]["opened"] == 4
        assert report["totals"]["accepted"] == 4


class TestSaysWhatWentWrong:
    def test_behind_schedule(self, tmp_path):
        """--throttle 2000/s over 2 connections to a sink answering in 50 ms: the report, the summary and the
        live lines say the rate was not reached, and how many messages due were never sent."""
        with running_sink(policy=SLOW_REPLIES, tmp=tmp_path) as sink:
            done = run_trafficgen(
                "--target", sink.target, "--concurrency", "2", "--throttle", "2000/s", "--duration", "3",
                "--json", str(tmp_path / "r.json"),
            )  # fmt: skip
        assert done.returncode == 0, done.stderr
        plan = json.loads((tmp_path / "r.json").read_text())["schedule"]
        assert plan["behind"] is True
        assert plan["asked_per_s"] == 2000.0
        assert plan["due"] == 6000
        assert plan["achieved_per_s"] < 100
        assert plan["never_sent"] == 6000 - json.loads((tmp_path / "r.json").read_text())["totals"]["attempted"]
        assert "behind schedule: asked 2,000.0/s" in done.stdout
        assert "BEHIND: asked 2,000.0/s" in done.stderr, "the live progress lines say it as it happens"

    def test_on_schedule_is_not_behind(self, tmp_path):
        """A throttle the target keeps up with is not reported as behind."""
        with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
            report, _ = run_report("--target", sink.target, "--throttle", "100/s", "--duration", "2")
        assert report["schedule"] == {
            "asked_per_s": 100.0, "achieved_per_s": 100.0, "due": 200, "never_sent": 0, "behind": False
        }  # fmt: skip

    def test_silent_port_shorter_than_timeout(self):
        """A port that accepts and never greets, --duration 2 (--timeout 60): exit 1, one line naming it."""
        with GreetOnly(None) as target:
            done = run_trafficgen("--target", target, "--duration", "2", "--concurrency", "5", "-q")
        assert done.returncode == 1
        (line,) = error_lines(done)
        assert line.startswith(f"trafficgen: error: timeout: {target} sent no SMTP greeting in 2.")
        assert "is it an SMTP server?" in line
        assert "cut:" not in done.stderr

    def test_greeting_then_silence_names_ehlo(self):
        """A server that greets and never answers EHLO, --duration 2: exit 1, one line naming EHLO (it did greet)."""
        with GreetOnly(b"220 mute.test ESMTP\r\n") as target:
            done = run_trafficgen("--target", target, "--duration", "2", "--concurrency", "5", "-q")
        assert done.returncode == 1
        (line,) = error_lines(done)
        assert line.startswith(f"trafficgen: error: timeout: {target} greeted, then sent no reply to EHLO in 2.")
        assert "greeting" not in line.replace("greeted", "")

    def test_http_server_is_not_smtp(self):
        """python3 -m http.server as the target: exit 1, no greeting named as the problem."""
        with subprocess.Popen(
            [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as server:
            try:
                assert server.stdout is not None
                first = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N ..."
                port = first.split(" port ")[1].split()[0]
                done = run_trafficgen("--target", f"127.0.0.1:{port}", "--duration", "2", "-q")
            finally:
                server.terminate()
        assert done.returncode == 1
        assert "sent no SMTP greeting" in error_lines(done)[-1]

    def test_duration_window_is_the_duration(self, tmp_path):
        """--throttle 1,000/hr --duration 3: the sending window is 3 s and the rate is counted over it."""
        with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
            report, _ = run_report("--target", sink.target, "--throttle", "1,000/hr", "--duration", "3")
        assert report["sending_s"] == 3.0
        assert report["elapsed_s"] >= 3.0
        assert report["totals"]["attempted"] == 1  # due at 0 s; the next at 3.6 s
        assert report["throughput"]["per_hour"] == 1200
