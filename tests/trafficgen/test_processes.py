"""Run length and rate: --throttle as one rate across every connection and process, --duration, and
--processes N splitting a run exactly and merging its histograms (issue 3, "Reports", "Command")."""

from __future__ import annotations

import time

import pytest
from hdrh.histogram import HdrHistogram

from harness.capture import CaptureServer
from harness.net import refusing_port
from harness.sink import running_sink
from harness.trafficgen import check_invariants, error_lines, run_report, run_trafficgen


def answered(report: dict) -> int:
    return sum(report["totals"][k] for k in ("accepted", "tempfailed", "permfailed"))


class TestThrottle:
    """--throttle: one rate for the whole run, whatever the number of connections or processes."""

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            # One connection must finish each message within the interval: 50/s leaves the capture server 20 ms.
            (["--concurrency", "1", "--throttle", "50/s"], 100),
            (["--concurrency", "8", "--throttle", "100/s"], 200),
            (["--concurrency", "4", "--processes", "2", "--throttle", "100/s"], 200),
        ],
        ids=["one-connection", "eight-connections", "two-processes"],
    )
    def test_rate_across_connections(self, args, expected):
        """The asked rate for 2 s gives its count within 2%, not that rate per connection or per process."""
        with CaptureServer() as server:
            report, _ = run_report("--target", server.target, "--duration", "2", *args)
        assert abs(report["totals"]["attempted"] - expected) <= 0.02 * expected, report["totals"]
        assert report["totals"]["accepted"] == len(server.messages) == report["totals"]["attempted"]

    @pytest.mark.slow
    def test_ten_seconds_at_200_per_second(self):
        """The issue's promise: a 10 s run at 200/s sends within 2% of 2,000 and reports that rate."""
        with CaptureServer() as server:
            report, _ = run_report(
                "--target", server.target, "--throttle", "200/s", "--duration", "10", "--concurrency", "8"
            )
        assert abs(report["totals"]["attempted"] - 2000) <= 40
        assert report["throughput"]["per_second"] == pytest.approx(200, rel=0.02)
        assert len(server.messages) == report["totals"]["accepted"]

    @pytest.mark.parametrize(("spec", "expected"), [("10/s", 10), ("10/s,max_burst=5", 14)], ids=["no-burst", "burst"])
    def test_max_burst(self, spec, expected):
        """In 1 s at 10/s: 10 messages; with max_burst=5 the first five go at once, so 14 fit (within one)."""
        with CaptureServer() as server:
            report, _ = run_report("--target", server.target, "--throttle", spec, "--duration", "1")
        assert abs(report["totals"]["attempted"] - expected) <= 1

    def test_latency_from_intended_time(self):
        """With --throttle the report measures latency from each message's due time too, for every answer."""
        with CaptureServer() as server:
            report, _ = run_report("--target", server.target, "--throttle", "200/s", "--message-count", "100")
        intended = report["latency_from_intended_ms"]
        assert intended is not None
        assert intended["count"] == answered(report) == 100
        assert intended["min"] >= 0
        assert intended["max"] >= report["latency_ms"]["min"]


class TestDuration:
    """--duration bounds the sending; in-flight messages get a short grace to finish."""

    def test_duration_band(self):
        """--duration 1.5 without a throttle: sending stops at 1.5 s and the run ends within a second after."""
        with CaptureServer() as server:
            started = time.monotonic()
            report, _ = run_report("--target", server.target, "--duration", "1.5", "--concurrency", "2")
            wall = time.monotonic() - started
        assert 1.5 <= report["elapsed_s"] < 2.5
        assert report["sending_s"] == pytest.approx(1.5, abs=0.05)
        assert wall < 1.5 + 8  # interpreter start and stop included, well under the 10 s grace
        assert report["totals"]["attempted"] == len(server.messages) > 0


class TestProcesses:
    """--processes N: the connections and messages split exactly, one report for all."""

    def test_exact_count_and_merged_histograms(self):
        """--processes 2 --message-count 301: exactly 301 attempts and merged histograms."""
        # each recipient once; the histograms hold every answer and every connection of both processes.
        with CaptureServer() as server:
            report, _ = run_report(
                "--target", server.target, "--processes", "2", "--concurrency", "4", "--message-count", "301"
            )
        check_invariants(report)
        assert report["totals"]["attempted"] == 301 == report["totals"]["accepted"] == len(server.messages)
        numbers = sorted(int(m.rcpt_tos[0].split("@")[0].split(".")[0].removeprefix("user-")) for m in server.messages)
        assert numbers == list(range(301))
        assert HdrHistogram.decode(report["histogram"]).get_total_count() == 301 == report["latency_ms"]["count"]
        assert report["connections"]["opened"] == 4 == len(server.connections)
        assert report["phases_ms"]["connect"]["count"] == 4
        assert report["phases_ms"]["data"]["count"] == 301
        assert {c.number for c in server.connections} == set(range(4))

    def test_error_stops_every_process(self):
        """Without --keep-going an error in any process ends the whole run: exit 1, one line."""
        with refusing_port() as sock:
            target = f"127.0.0.1:{sock.getsockname()[1]}"
            done = run_trafficgen(
                "--target", target, "--processes", "2", "--concurrency", "2", "--duration", "30", "-q"
            )
        assert done.returncode == 1
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error: ")
        assert "refused" in line
        assert target in line


def test_a_large_process_report_reaches_the_parent(tmp_path):
    """A process's final state larger than a pipe's buffer (hundreds of distinct reply texts) still reaches the
    parent whole: every message is counted, none reported as from a process that "died"."""
    texts = "".join(
        f'[[defer."default"]]\ncode = 451\nmsg = "4.7.1 deferral text number {n:04d} {"padding " * 30}"\n\n'
        for n in range(800)
    )
    policy = f"[default]\nbounce = 0\ndefer = 100\n\n{texts}"
    with running_sink("--seed", "5", policy=policy, tmp=tmp_path) as sink:
        report, done = run_report(
            "--target", sink.target, "--message-count", "4000", "--concurrency", "20", "--processes", "2"
        )  # fmt: skip
    assert report["stopped_by"] is None, done.stderr
    assert report["totals"]["attempted"] == report["totals"]["tempfailed"] == 4000
    assert len(report["replies"]) > 700
