"""Thresholds that fail CI (issue 12): --fail-if parsed and measured, printed and in the report, exit status 3,
--fail-fast, and `report compare --json --fail-if-regressed`."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from harness.capture import CaptureServer
from harness.sink import running_sink
from harness.trafficgen import error_lines, run_report, run_trafficgen
from trafficgen.thresholds import Threshold, evaluate, parse

THRESHOLD_EXIT = 3
DEFER_GMAIL = '[default]\nbounce = 0\ndefer = 0\n\n[domain."gmail.com"]\nbounce = 0\ndefer = 100\n'


class TestParse:
    """`[SCOPE:] METRIC OP VALUE`, each value in its metric's unit."""

    @pytest.mark.parametrize(
        ("text", "metric", "op", "limit", "share", "scope"),
        [
            ("p99 < 2s", "p99", "<", 2000.0, False, None),
            ("p99.9 <= 300ms", "p99_9", "<=", 300.0, False, None),
            ("mean<1.5s", "mean", "<", 1500.0, False, None),
            ("success_rate > 0.95", "success_rate", ">", 0.95, False, None),
            ("success_rate >= 95%", "success_rate", ">=", 0.95, False, None),
            ("tempfailed < 5%", "tempfailed", "<", 0.05, True, None),
            ("tempfail < 5%", "tempfailed", "<", 0.05, True, None),
            ("errors == 0", "errors", "==", 0.0, False, None),
            ("throughput >= 500/s", "throughput", ">=", 500.0, False, None),
            ("throughput > 30,000/m", "throughput", ">", 500.0, False, None),
            ("gmail.com: tempfailed < 10%", "tempfailed", "<", 0.1, True, ("domains", "gmail.com")),
            ("tenant=acme: success_rate > 99%", "success_rate", ">", 0.99, False, ("tenants", "acme")),
            ("source=[::1]: errors < 1", "errors", "<", 1.0, False, ("source_addresses", "::1")),
        ],
        ids=lambda v: v if isinstance(v, str) and " " in v else None,
    )
    def test_parsed(self, text, metric, op, limit, share, scope):
        """The canonical metric, operator, limit (ms, fractions, counts, msg/s) and scope."""
        t = parse(text)
        assert (t.metric, t.op, t.share) == (metric, op, share)
        assert t.limit == pytest.approx(limit)
        assert ((t.scope_key, t.scope) if t.scope else None) == scope

    @pytest.mark.parametrize(
        ("text", "words"),
        [
            ("p42 < 1s", "unknown metric 'p42'"),
            ("p99 < 2000", "give the latency a unit"),
            ("success_rate > 1.5", "between 0 and 1"),
            ("tempfailed < 150%", "between 0% and 100%"),
            ("gmail.com: p99 < 2s", "measured for the whole run, not per domain"),
            ("sky=blue: errors < 1", "unknown scope 'sky'"),
            ("errors are few", "is not a threshold like"),
            ("errors < many", "'many' is not a number"),
        ],
    )
    def test_rejected(self, text, words):
        """ValueError with the expression and what is wrong."""
        with pytest.raises(ValueError, match=re.escape(words)):
            parse(text)


def document(**more: object) -> dict:
    base = {
        "totals": {"attempted": 1000, "accepted": 900, "tempfailed": 80, "permfailed": 15, "errors": 5},
        "success_rate": 0.9,
        "latency_ms": {"p50": 10.0, "p99": 900.0},
        "latency_from_intended_ms": {"p50": 12.0, "p99": 2500.0},
        "sending_s": 10.0,
        "domains": {"gmail.com": {"attempted": 100, "accepted": 70, "tempfailed": 30, "permfailed": 0, "errors": 0}},
        "schedule": {"due": 1010, "never_sent": 10},
    }
    base.update(more)
    return base


class TestEvaluate:
    """Measured on a report: latency from the intended time when there is one, shares of attempted, scopes."""

    @pytest.mark.parametrize(
        ("text", "value", "passed"),
        [
            ("p99 < 2s", 2500.0, False),
            ("p50 < 20ms", 12.0, True),
            ("success_rate > 0.95", 0.9, False),
            ("tempfailed < 10%", 0.08, True),
            ("errors <= 5", 5.0, True),
            ("throughput >= 100", 100.0, True),
            ("never_sent == 0", 10.0, False),
            ("gmail.com: tempfailed < 10%", 0.3, False),
            ("gmail.com: success_rate > 0.6", 0.7, True),
        ],
    )
    def test_results(self, text, value, passed):
        """Each result holds the expression, the measured value and whether it passed."""
        (result,) = evaluate([parse(text)], document())
        assert result["expression"] == text
        assert result["passed"] is passed
        assert result["value"] == pytest.approx(value)

    def test_transaction_latency_without_a_schedule(self):
        """Without latency from the intended time, the transaction's is measured."""
        (result,) = evaluate([parse("p99 < 2s")], document(latency_from_intended_ms=None))
        assert result["value"] == 900.0
        assert result["passed"]

    def test_nothing_measured_fails(self):
        """A threshold with nothing to measure (no messages) does not pass."""
        empty = {"totals": {"attempted": 0, "accepted": 0}, "success_rate": None, "latency_ms": {"p99": None}}
        results = evaluate([parse("success_rate > 0.5"), parse("p99 < 1s")], empty)
        assert [r["passed"] for r in results] == [False, False]
        assert results[0]["shown"] == "nothing measured"

    def test_holds(self):
        """Threshold.holds compares with its operator."""
        t = Threshold("x", "errors", "<", 3.0)
        assert t.holds(2.0)
        assert not t.holds(3.0)
        assert not t.holds(None)


class TestExitStatus:
    """The run's thresholds: printed, in the report, and a failed one makes the exit status 3."""

    def test_failed_threshold_exits_3(self):
        """Against an accepting server: 'accepted < 5' fails, 'success_rate > 0.99' passes; exit 3, one line per
        failed threshold on stderr, both in the report and the summary."""
        with CaptureServer() as server:
            report, done = run_report(
                "--target", server.target, "--message-count", "20",
                "--fail-if", "success_rate > 0.99", "--fail-if", "accepted < 5", expect=THRESHOLD_EXIT,
            )  # fmt: skip
        thresholds = report["thresholds"]
        assert thresholds["passed"] is False
        assert thresholds["aborted"] is None
        assert [(r["expression"], r["passed"], r["value"]) for r in thresholds["results"]] == [
            ("success_rate > 0.99", True, 1.0),
            ("accepted < 5", False, 20.0),
        ]
        assert set(thresholds["results"][0]) == {
            "expression",
            "metric",
            "scope",
            "value",
            "shown",
            "limit",
            "unit",
            "passed",
        }
        assert "trafficgen: threshold failed: accepted < 5 (20)" in done.stderr
        assert "pass  success_rate > 0.99" in done.stderr
        assert "FAIL  accepted < 5" in done.stderr

    def test_passing_thresholds_exit_0(self):
        """All thresholds met: exit 0, `passed` true."""
        with CaptureServer() as server:
            report, _ = run_report(
                "--target", server.target, "--message-count", "20", "--fail-if", "errors == 0",
                "--fail-if", "p99 < 10s", "--fail-if", "tempfailed < 1%",
            )  # fmt: skip
        assert report["thresholds"]["passed"] is True

    def test_per_domain(self, tmp_path):
        """A sink deferring all of gmail.com: 'gmail.com: tempfailed < 10%' fails, 'yahoo.com: ...' passes."""
        with running_sink(policy=DEFER_GMAIL, tmp=tmp_path) as sink:
            report, _ = run_report(
                "--target", sink.target, "--message-count", "200", "--seed", "3", "--keep-going",
                "--domain", "gmail.com", "--domain", "yahoo.com",
                "--fail-if", "gmail.com: tempfailed < 10%", "--fail-if", "yahoo.com: tempfailed < 10%",
                expect=THRESHOLD_EXIT,
            )  # fmt: skip
        gmail, yahoo = report["thresholds"]["results"]
        assert (gmail["passed"], yahoo["passed"]) == (False, True)
        assert gmail["value"] == 1.0
        assert yahoo["value"] == 0.0

    def test_variable_holds_one_per_line(self):
        """TRAFFICGEN_FAIL_IF holds one threshold per line (they hold spaces)."""
        with CaptureServer() as server:
            report, _ = run_report(
                "--target", server.target, "--message-count", "5",
                env={"TRAFFICGEN_FAIL_IF": "errors == 0\nsuccess_rate > 50%\n"},
            )  # fmt: skip
        assert [r["expression"] for r in report["thresholds"]["results"]] == ["errors == 0", "success_rate > 50%"]

    @pytest.mark.parametrize(
        ("args", "words"),
        [
            (["--fail-if", "p42 < 1s"], "--fail-if 'p42 < 1s': unknown metric 'p42'"),
            (["--fail-if", "gmail.con: errors < 1"], "'gmail.con' is not a domain of this run"),
            (["--fail-if", "tenant=acme: errors < 1"], "'acme' is not a tenant of this run"),
            (["--fail-fast"], "--fail-fast stops the run at the first failed --fail-if: give --fail-if"),
        ],
        ids=["metric", "domain", "tenant", "fail-fast-alone"],
    )
    def test_bad_threshold_is_one_line_and_exit_2(self, args, words):
        """One line naming --fail-if and the problem, exit 2."""
        done = run_trafficgen(*args)
        assert done.returncode == 2, done.stderr
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error: "), line
        assert words in line, line


class TestFailFast:
    @pytest.mark.slow
    def test_stops_at_the_first_failed_threshold(self, tmp_path):
        """--fail-fast against a sink deferring everything: stopped within seconds of a 30 s run, exit 3, the
        report says which threshold stopped it and when."""
        with running_sink(policy="[default]\nbounce = 0\ndefer = 100\n", tmp=tmp_path) as sink:
            report, _ = run_report(
                "--target", sink.target, "--duration", "30", "--throttle", "300/s", "--keep-going",
                "--fail-if", "tempfailed < 5%", "--fail-fast", expect=THRESHOLD_EXIT,
            )  # fmt: skip
        aborted = report["thresholds"]["aborted"]
        assert aborted["expression"] == "tempfailed < 5%"
        assert aborted["value"] == 1.0
        assert aborted["at_s"] < 10
        assert report["sending_s"] < 10
        assert report["stopped_by"].startswith("threshold: tempfailed < 5% failed")
        assert report["thresholds"]["passed"] is False


def saved(tmp_path: Path, name: str, document: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


@pytest.fixture(scope="module")
def before() -> dict:
    """A throttled run's report (so it has latency from the intended time)."""
    with CaptureServer() as server:
        report, _ = run_report("--target", server.target, "--message-count", "200", "--throttle", "1000/s")
    return report


class TestCompare:
    """report compare --json and --fail-if-regressed: a before/after comparison that can gate a change."""

    def test_regression_exits_3(self, before, tmp_path):
        """Throughput halved and p99 doubled: regressions named, exit 3; the JSON says the same."""
        after = copy.deepcopy(before)
        after["run_id"] = "after"
        after["throughput"]["per_second"] = before["throughput"]["per_second"] / 2
        after["latency_from_intended_ms"]["p99"] = before["latency_from_intended_ms"]["p99"] * 2
        done = run_trafficgen(
            "report", "compare", saved(tmp_path, "a.json", before), saved(tmp_path, "b.json", after),
            "--fail-if-regressed", "10", "--json", "-",
        )  # fmt: skip
        assert done.returncode == THRESHOLD_EXIT, done.stderr
        result = json.loads(done.stdout)
        assert result["regressed"] is True
        assert result["latency"] == "from_intended"
        assert {r["metric"] for r in result["regressions"]} == {"throughput", "latency p99 (from_intended)"}
        assert result["throughput_per_s"]["change_percent"] == pytest.approx(-50.0, abs=0.1)
        assert "trafficgen: regressed: throughput" in done.stderr
        assert "throughput (msg/s)" in done.stderr  # the table, on stderr when the JSON takes stdout

    def test_success_rate_is_judged_in_points(self, before, tmp_path):
        """A success rate from 50% to 45%: the table says -5.00 pt, and --fail-if-regressed judges the same 5
        points (it judged a relative 10% before: 7 passed as a regression)."""
        first, after = copy.deepcopy(before), copy.deepcopy(before)
        first["success_rate"], after["success_rate"], after["run_id"] = 0.5, 0.45, "after"
        paths = saved(tmp_path, "a.json", first), saved(tmp_path, "b.json", after)
        done = run_trafficgen("report", "compare", *paths, "--fail-if-regressed", "7", "--json", "-")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["success_rate"]["change_points"] == pytest.approx(-5.0)
        assert result["regressions"] == []
        row = next(line for line in done.stderr.splitlines() if line.strip().startswith("success rate"))
        assert row.split()[-2:] == ["-5.00", "pt"], row
        done = run_trafficgen("report", "compare", *paths, "--fail-if-regressed", "4", "--json", "-")
        assert done.returncode == THRESHOLD_EXIT, done.stderr
        (regression,) = json.loads(done.stdout)["regressions"]
        assert regression["metric"] == "success rate"
        assert "trafficgen: regressed: success rate 50.00% -> 45.00% (-5.00 pt, more than 4 pt worse)" in done.stderr

    def test_within_the_limit_exits_0(self, before, tmp_path):
        """The same report twice: nothing regressed, no warning, exit 0."""
        path = saved(tmp_path, "a.json", before)
        done = run_trafficgen("report", "compare", path, path, "--fail-if-regressed", "1", "--json", "-")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["regressions"] == []
        assert result["warnings"] == []
        assert "warning" not in done.stderr

    def test_warns_when_the_runs_differ(self, before, tmp_path):
        """Another target, concurrency and workload: each named in a warning (the comparison still runs)."""
        after = copy.deepcopy(before)
        after["target"] = "127.0.0.9:25"
        after["config"]["concurrency"] = 7
        after["config"]["domains"] = {"gmail.com": 1.0}
        after["config"]["content"] = "html"
        done = run_trafficgen("report", "compare", saved(tmp_path, "a.json", before), saved(tmp_path, "b.json", after))
        assert done.returncode == 0, done.stderr
        warnings = [line for line in done.stderr.splitlines() if line.startswith("trafficgen: warning: ")]
        assert len(warnings) == 3
        assert "target" in warnings[0]
        assert "concurrency" in warnings[1]
        assert "workload: domains, content" in warnings[2]

    def test_bad_percentage(self, before, tmp_path):
        """A negative --fail-if-regressed is one line, exit 2."""
        path = saved(tmp_path, "a.json", before)
        done = run_trafficgen("report", "compare", path, path, "--fail-if-regressed", "-5")
        assert done.returncode == 2
        assert error_lines(done)[-1].startswith("trafficgen: error: --fail-if-regressed")
        done = run_trafficgen("report", "compare", path, path, "--fail-if-regressed", "abc")
        assert done.returncode == 2
        assert error_lines(done) == ["trafficgen: error: --fail-if-regressed 'abc' is not a number"]
