"""Runs that repeat: `trafficgen --reset-sink URL` makes the sink forget what earlier runs taught it before a run,
so identical runs against one sink (the shipped policy) give the same outcome shares, where without it they drift:
hotmail.com's `escalate` remembers the deferrals of every run and blocks the sender for 30 minutes."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest

from harness.net import free_port
from harness.policies import SHIPPED_POLICY
from harness.sink import running_sink, write_policy
from harness.trafficgen import check_invariants, error_lines, run_report, run_trafficgen

# hotmail.com in the shipped policy: each recipient is answered at RCPT, 3% deferred (451), 2% bounced (550); the
# 50th deferral within 5 minutes puts the sending address on the block list (550 ... S3150) for 30 minutes, and
# every recipient after it is refused. A run of 300 messages of 10 recipients (3,000) meets its 50th deferral after
# 1,667 recipients on average (a negative binomial: sd 232), so it is blocked part-way: about 46% of its recipients
# are refused (bounced or blocked), sd 7.6%.
RUN = (
    "--domain", "hotmail.com", "--recipients-per-message", "10", "--message-count", "300", "--concurrency", "10",
    "--seed", "5",
)  # fmt: skip
RECIPIENTS = 3000
ESCALATE_AFTER = 50
REFUSED_SHARE, REFUSED_SD = 0.455, 0.076
SIGMAS = 4.5  # a run's refused share: within 4.5 sd of the expected one, 0.11 to 0.80


def recipients_of(report: dict) -> dict[str, int]:  # type: ignore[type-arg]
    """The run's recipients by outcome (all of them hotmail.com's)."""
    check_invariants(report)
    recipients = report["recipients"]
    assert sum(recipients.values()) == RECIPIENTS
    return recipients


def refused_share(report: dict) -> float:  # type: ignore[type-arg]
    return recipients_of(report)["permfailed"] / RECIPIENTS


@pytest.mark.slow
class TestRepeatedRuns:
    """Three identical runs against one sink with the shipped policy (the sink and trafficgen seeded)."""

    def test_after_a_reset_each_run_gives_the_same_shares(self):
        """--reset-sink before each run: each run is deferred exactly 50 times before the block, as the policy
        says, and refuses the same share of recipients (within the stated tolerance); the report records it."""
        with running_sink("--seed", "7", "--policy", str(SHIPPED_POLICY)) as sink:
            url = f"http://{sink.http}"
            runs = [run_report("--target", sink.target, *RUN, "--reset-sink", url)[0] for _ in range(3)]
        low, high = REFUSED_SHARE - SIGMAS * REFUSED_SD, REFUSED_SHARE + SIGMAS * REFUSED_SD
        for n, report in enumerate(runs, start=1):
            assert recipients_of(report)["tempfailed"] == ESCALATE_AFTER, f"run {n}"
            assert low <= refused_share(report) <= high, f"run {n}: {refused_share(report):.3f} refused"
            assert report["config"]["reset_sink"] == [url]

    def test_without_a_reset_the_runs_drift(self):
        """The same three runs without --reset-sink: the first is as above; the sink remembers its block, so the
        second and the third are refused whole (S3150), never deferred."""
        with running_sink("--seed", "7", "--policy", str(SHIPPED_POLICY)) as sink:
            runs = [run_report("--target", sink.target, *RUN)[0] for _ in range(3)]
            (blocked,) = sink.state()["blocked"]["entries"]
        assert (blocked["domain"], blocked["client"]) == ("hotmail.com", "127.0.0.1")
        first, *later = runs
        assert recipients_of(first)["tempfailed"] == ESCALATE_AFTER
        assert refused_share(first) <= REFUSED_SHARE + SIGMAS * REFUSED_SD
        for report in later:
            assert recipients_of(report)["tempfailed"] == 0
            assert refused_share(report) == 1.0
            assert all("S3150" in r["text"] for r in report["replies"])
            assert report["config"]["reset_sink"] == []


class TestResetSink:
    POLICY = (
        '[domain."blocked.test"]\ndefer = 100\nreject_at = "rcpt"\nper = "ip"\n'
        'escalate = { after = 2, within = "1m", to = "block", for = "10m" }\n'
    )

    def test_a_blocked_sender_starts_clean(self, tmp_path: Path):
        """A sink that blocks the sender (escalated after earlier runs): with --reset-sink the run is deferred as
        the policy says, not blocked; stderr says what the sink forgot."""
        with running_sink(policy=self.POLICY, tmp=tmp_path) as sink:
            args = ("--target", sink.target, "--domain", "blocked.test", "--message-count", "3", "--concurrency", "1")
            before, _ = run_report(*args)
            assert before["totals"]["permfailed"] == 1  # two deferrals, then the block
            done = run_trafficgen(*args, "--reset-sink", f"http://{sink.http}", "--json", "-")
        assert done.returncode == 0, done.stderr
        after = json.loads(done.stdout)
        assert (after["totals"]["tempfailed"], after["totals"]["permfailed"]) == (2, 1)
        said = f"trafficgen: reset the sink at http://{sink.http}: forgot 1 reputations, 0 rate buckets, 0 greylist"
        assert said in done.stderr

    def test_each_sink_is_reset_and_recorded(self, tmp_path: Path):
        """Repeated, and comma-separated: every sink named is reset once; the report lists them."""
        with running_sink(policy=self.POLICY, tmp=tmp_path) as a, running_sink(policy=self.POLICY, tmp=tmp_path) as b:
            urls = [f"http://{a.http}", f"http://{b.http}"]
            report, _ = run_report(
                "--target", a.target, "--message-count", "1", "--reset-sink", urls[0],
                "--reset-sink", f"{urls[1]},{urls[0]}",
            )  # fmt: skip
            resets = [s.health()["state"]["resets"] for s in (a, b)]
        assert report["config"]["reset_sink"] == urls
        assert resets == [1, 1]

    def test_a_workload_key(self, tmp_path: Path):
        """`reset-sink` in a workload file, as every option: the run resets that sink."""
        with running_sink(policy=self.POLICY, tmp=tmp_path) as sink:
            workload = tmp_path / "w.toml"
            workload.write_text(f'message-count = 1\nreset-sink = ["http://{sink.http}"]\n')
            report, _ = run_report("--target", sink.target, "--workload", str(workload))
            assert sink.health()["state"]["resets"] == 1
        assert report["config"]["reset_sink"] == [f"http://{sink.http}"]

    def test_a_sink_that_does_not_answer_stops_the_run_before_it_starts(self, tmp_path: Path):
        """Nothing listens at the URL: exit 1, one line naming it, and not one message sent."""
        url = f"http://127.0.0.1:{free_port()}"
        with running_sink(policy=self.POLICY, tmp=tmp_path) as sink:
            done = run_trafficgen("--target", sink.target, "--message-count", "5", "--reset-sink", url, "-q")
            assert sink.metrics().get("smartsink_connections_total", 0) == 0
        assert done.returncode == 1
        (line,) = error_lines(done)
        assert line.startswith(f"trafficgen: error: --reset-sink {url}: cannot reset the sink: ")
        assert done.stdout == ""

    def test_not_a_sink_is_named(self, tmp_path: Path):
        """An HTTP server that is not a sink's admin listener (Python's http.server: 501 to DELETE): exit 1, one
        line saying so."""
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            with running_sink(policy=self.POLICY, tmp=tmp_path) as sink:
                done = run_trafficgen("--target", sink.target, "--message-count", "1", "--reset-sink", url, "-q")
        finally:
            server.shutdown()
            server.server_close()
        assert done.returncode == 1
        (line,) = error_lines(done)
        assert line.startswith(f"trafficgen: error: --reset-sink {url}: DELETE /state answered HTTP 501")
        assert line.endswith("(is it a smartsink's admin URL?)")

    @pytest.mark.parametrize("value", ["127.0.0.1:8026", "ftp://x", ""], ids=["no-scheme", "ftp", "empty"])
    def test_a_bad_url_is_usage(self, value: str):
        """Not an http(s) URL: exit 2 and one line, before anything starts."""
        done = run_trafficgen("--reset-sink", value, "--message-count", "1")
        assert done.returncode == 2
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error: --reset-sink")

    def test_compare_warns_when_only_one_run_reset(self, tmp_path: Path):
        """report compare names the unfair comparison: one run started from a reset sink, the other did not."""
        with running_sink(policy=self.POLICY, tmp=tmp_path) as sink:
            plain, _ = run_report("--target", sink.target, "--message-count", "2")
            reset, _ = run_report(
                "--target", sink.target, "--message-count", "2", "--reset-sink", f"http://{sink.http}"
            )
        paths = []
        for name, report in (("before", plain), ("after", reset)):
            paths.append(write_policy(tmp_path, json.dumps(report), f"{name}.json"))
        done = run_trafficgen("report", "compare", *map(str, paths))
        assert done.returncode == 0, done.stderr
        assert "only the run after reset its sinks (--reset-sink)" in done.stderr


class TestAdminToken:
    TOKEN = "reset-token-0123456789abcdef"

    def test_a_sink_with_a_token_takes_it_in_the_url(self, tmp_path: Path):
        """A sink with --admin-token refuses DELETE /state without it (exit 1, the line says where the token goes);
        given in the URL it resets, and neither the report nor the terminal shows it."""
        with running_sink("--admin-token", self.TOKEN, policy=TestResetSink.POLICY, tmp=tmp_path) as sink:
            bare = run_trafficgen(
                "--target", sink.target, "--message-count", "1", "--reset-sink", f"http://{sink.http}"
            )
            with_token = f"http://:{self.TOKEN}@{sink.http}"
            done = run_trafficgen("--target", sink.target, "--message-count", "1", "--reset-sink", with_token,
                                  "--json", "-")  # fmt: skip
            resets = sink.health()["state"]["resets"]
        assert bare.returncode == 1
        assert error_lines(bare)[-1] == (
            f"trafficgen: error: --reset-sink http://{sink.http}: DELETE /state answered HTTP 401 (the sink has an "
            "admin token: give it in the URL, http://:TOKEN@host:port)"
        )
        assert done.returncode == 0, done.stderr
        assert resets == 1
        assert json.loads(done.stdout)["config"]["reset_sink"] == [f"http://{sink.http}"]
        assert self.TOKEN not in done.stdout + done.stderr
