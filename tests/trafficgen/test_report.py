"""The JSON report (schema 2) and the human summary: a golden key structure, the invariants, the histogram,
where each output goes, and saved reports shown and merged (issue 3, "Reports")."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from harness.sink import running_sink
from harness.trafficgen import COUNTS, OUTCOMES, check_invariants, error_lines, run_report, run_trafficgen
from trafficgen.stats import report as reports
from trafficgen.stats.recorder import Recorder

MIXED = "[default]\nbounce = 10\ndefer = 10\ndisconnect = 3\n"
STATS = {k: "number" for k in ("min", "mean", "p50", "p75", "p90", "p95", "p99", "p99_9", "max")} | {"count": "int"}
FIVE = dict.fromkeys(COUNTS, "int")
# The key structure of a report: every key and the type of its value ("a|b" when it may be either).
GOLDEN: dict[str, Any] = {
    "schema": "int",
    "tool": "str",
    "run_id": "str",
    "target": "str",
    "started_at": "str",
    "elapsed_s": "number",
    "sending_s": "number",
    "stopped_by": "str|null",
    "config": "config",
    "totals": FIVE,
    "success_rate": "number|null",
    "recipients": dict.fromkeys(OUTCOMES, "int"),
    "throughput": {"per_second": "number", "per_minute": "number", "per_hour": "number"},
    "latency_ms": STATS,
    "latency_from_intended_ms": STATS,
    "phases_ms": dict.fromkeys(("connect", "banner", "ehlo", "mail", "rcpt", "data"), STATS),
    "domains": "domains",
    # per value of the other dimensions (none given in these runs: {}); tests/trafficgen/test_mix.py fills them
    "tenants": "dimension",
    "campaigns": "dimension",
    "sender_domains": "dimension",
    "source_addresses": "dimension",
    "replies": [{"code": "int", "text": "str", "count": "int", "domains": "counts"}],
    "errors": [{"text": "str", "count": "int"}],
    "connections": {"opened": "int", "peak": "int", "failed": "int", "errors": "list"},
    "schedule": {
        "asked_per_s": "number",
        "achieved_per_s": "number",
        "due": "int",
        "never_sent": "int",
        "behind": "bool",
    },
    "histogram": "str",
    "histograms": {
        "latency_from_intended": "str",
        "phases": dict.fromkeys(("connect", "banner", "ehlo", "mail", "rcpt", "data"), "str"),
    },
    # null without --profile and --fail-if; their structure is pinned in test_profile.py and test_thresholds.py
    "profile": "null",
    "thresholds": "null",
    "timeline": {
        "interval_s": "int",
        "points": [
            {
                "at": "int",
                "t_s": "number",
                **FIVE,
                "connections": "int|null",
                "latency_ms": "percentiles",
                "latency_from_intended_ms": "percentiles",
            }
        ],
        "domains": {"interval_s": "int", "points": [{"at": "int", "t_s": "number", "domains": "dimension"}]},
        "histograms": {"latency": "list", "intended": "list"},
    },
}
# config holds at least these (more may be added as options are): what other tools read from it.
CONFIG = {
    "target": "str",
    "concurrency": "int",
    "processes": "int",
    "duration_s": "number|null",
    "message_count": "int|null",
    "domains": "weights",
    "domain_suffix": "str",
    "body_size": ["int"],
    "throttle_per_s": "number|null",
    "max_burst": "int|null",
    "recipients_per_message": "int",
    "pipelining": "bool",
    "keep_going": "bool",
    "seed": "int|null",
    "workload": "null",
    "tenants": "weights",
    "campaigns": "weights",
    "sender_domains": "weights",
    "source_address": "str|null",
    "source_addresses": "weights",
    "content": "str",
    "attachment_share": "number",
    "body_size_median": "int|null",
    "body_size_p99": "int|null",
    "profile": "str|null",
    "fail_if": "list",
    "fail_fast": "bool",
}
TYPES = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "list": lambda v: isinstance(v, list),
}


def conforms(value: Any, spec: Any, where: str = "report") -> None:
    """Assert that `value` has exactly the keys and the types `spec` describes."""
    if spec == "config":
        assert isinstance(value, dict), where
        assert set(CONFIG) <= set(value), f"{where} lacks {set(CONFIG) - set(value)}"
        for key, sub in CONFIG.items():
            conforms(value[key], sub, f"{where}.{key}")
    elif spec == "domains":
        assert isinstance(value, dict), where
        assert value, where
        for name, row in value.items():
            conforms(row, FIVE, f"{where}.{name}")
    elif spec == "dimension":
        assert isinstance(value, dict), where
        for name, row in value.items():
            conforms(row, FIVE, f"{where}.{name}")
    elif spec == "counts":  # name -> count, at least one
        assert isinstance(value, dict), where
        assert value, where
        assert all(TYPES["int"](n) and n > 0 for n in value.values()), where
    elif spec == "percentiles":  # an interval's, or null when it had no reply
        if value is not None:
            conforms(value, {"p50": "number", "p90": "number", "p99": "number"}, where)
    elif spec == "weights":
        assert isinstance(value, dict), where
        assert all(TYPES["number"](w) for w in value.values()), where
    elif isinstance(spec, dict):
        assert isinstance(value, dict), where
        assert set(value) == set(spec), f"{where}: extra {set(value) - set(spec)}, missing {set(spec) - set(value)}"
        for key, sub in spec.items():
            conforms(value[key], sub, f"{where}.{key}")
    elif isinstance(spec, list):
        assert isinstance(value, list), f"{where} should be a list"
        assert value, f"{where} should not be empty"
        for i, item in enumerate(value):
            conforms(item, spec[0], f"{where}[{i}]")
    else:
        assert any(TYPES[t](value) for t in spec.split("|")), f"{where}: {value!r} is not {spec}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    """Against a sink that bounces, defers and drops: one run writing --json PATH, one writing --json -."""
    tmp = tmp_path_factory.mktemp("report")
    path = tmp / "run.json"
    with running_sink("--seed", "2", policy=MIXED, tmp=tmp) as sink:
        common = ["--target", sink.target, "--concurrency", "4", "--keep-going", "--throttle", "3000/s", "-q"]
        to_file = run_trafficgen(*common, "--message-count", "300", "--run-id", "golden", "--json", str(path))
        to_stdout = run_trafficgen(*common, "--message-count", "200", "--seed", "4", "--json", "-")
        plain, _ = run_report("--target", sink.target, "--message-count", "50", "--concurrency", "2", "--keep-going")
    assert to_file.returncode == 0 == to_stdout.returncode, (to_file.stderr, to_stdout.stderr)
    return {
        "report": json.loads(path.read_text()),
        "path": path,
        "to_file": to_file,
        "to_stdout": to_stdout,
        "plain": plain,
        "target": sink.target,
        "dir": tmp,
    }


class TestStructure:
    """The keys other tools rely on."""

    def test_golden_key_structure(self, runs):
        """Every key and value type of the report, as pinned here (config: at least the listed keys)."""
        conforms(runs["report"], GOLDEN)
        conforms(json.loads(runs["to_stdout"].stdout), GOLDEN)

    def test_identity(self, runs):
        """schema 2, the run id given, the target, a UTC start time of this run, and the options used."""
        report = runs["report"]
        assert report["schema"] == 2
        assert report["run_id"] == "golden"
        assert report["target"] == runs["target"]
        started = datetime.datetime.fromisoformat(report["started_at"])
        assert started.utcoffset() == datetime.timedelta(0)
        assert abs((datetime.datetime.now(datetime.UTC) - started).total_seconds()) < 300
        assert report["elapsed_s"] > 0
        assert report["stopped_by"] is None
        config = report["config"]
        assert (config["message_count"], config["concurrency"], config["throttle_per_s"]) == (300, 4, 3000.0)
        assert config["keep_going"] is True
        assert config["duration_s"] is None

    def test_domains_are_named_without_suffix(self, runs):
        """domains{} is keyed by the names as given, not the suffixed ones on the wire."""
        assert set(runs["report"]["domains"]) == {"aol.com", "gmail.com", "hotmail.com", "yahoo.com"}


class TestInvariants:
    """Numbers that must agree with each other."""

    def test_outcomes_add_up(self, runs):
        """Outcomes add up to attempted, in total and per domain, with all four kinds present."""
        report = runs["report"]
        check_invariants(report)
        assert report["totals"]["attempted"] == 300
        assert all(report["totals"][k] > 0 for k in OUTCOMES), report["totals"]
        assert sum(e["count"] for e in report["errors"]) == report["totals"]["errors"]
        assert report["success_rate"] == pytest.approx(report["totals"]["accepted"] / 300, abs=1e-6)

    def test_histogram_holds_every_answer(self, runs):
        """The histogram decodes and counts every non-error outcome; latency_ms is read from it."""
        report = runs["report"]
        histogram = HdrHistogram.decode(report["histogram"])
        answered = sum(report["totals"][k] for k in ("accepted", "tempfailed", "permfailed"))
        assert histogram.get_total_count() == answered == report["latency_ms"]["count"]
        assert histogram.get_value_at_percentile(99) / 1000 == pytest.approx(report["latency_ms"]["p99"], abs=0.001)
        assert histogram.get_max_value() / 1000 == pytest.approx(report["latency_ms"]["max"], abs=0.001)
        intended = HdrHistogram.decode(report["histograms"]["latency_from_intended"])
        assert intended.get_total_count() == answered == report["latency_from_intended_ms"]["count"]

    def test_percentiles_are_ordered(self, runs):
        """min <= p50 <= ... <= p99.9 <= max and min <= mean <= max, for the transaction and every phase."""
        report = runs["report"]
        blocks = [report["latency_ms"], report["latency_from_intended_ms"], *report["phases_ms"].values()]
        for stats in blocks:
            values = [stats[k] for k in ("min", "p50", "p75", "p90", "p95", "p99", "p99_9", "max")]
            assert values == sorted(values), stats
            assert stats["min"] <= stats["mean"] <= stats["max"], stats

    def test_throughput_units_agree(self, runs):
        """per_minute and per_hour are per_second times 60 and 3600; per_second is attempts over sending time."""
        report = runs["report"]
        t = report["throughput"]
        # per_second is rounded to 0.001, per_minute to 0.1 and per_hour to 1: the products differ by that much.
        assert t["per_minute"] == pytest.approx(t["per_second"] * 60, abs=60 * 0.0005 + 0.05)
        assert t["per_hour"] == pytest.approx(t["per_second"] * 3600, abs=3600 * 0.0005 + 0.5)
        assert t["per_second"] == pytest.approx(300 / report["sending_s"], rel=0.01)

    def test_replies_sorted_and_complete(self, runs):
        """replies are the most frequent first, and add up to every answered message."""
        report = runs["report"]
        counts = [r["count"] for r in report["replies"]]
        assert counts == sorted(counts, reverse=True)
        assert sum(counts) == report["totals"]["attempted"] - report["totals"]["errors"]
        assert {r["code"] // 100 for r in report["replies"]} == {2, 4, 5}

    def test_intended_latency_only_with_throttle(self, runs):
        """Without --throttle there is no intended send time: latency_from_intended_ms is null."""
        assert runs["plain"]["latency_from_intended_ms"] is None
        assert runs["report"]["latency_from_intended_ms"]["count"] > 0


class TestOutputs:
    """Where the report and the summary go."""

    def test_json_path_puts_the_summary_on_stdout(self, runs):
        """--json PATH writes the report to the file; stdout holds the human summary with every section."""
        out = runs["to_file"].stdout
        for words in ("success rate", "throughput", "latency (ms)", "p99.9", "transaction", "from intended send",
                      "domains", "most frequent replies", "errors"):  # fmt: skip
            assert words in out, words
        for name, row in runs["report"]["domains"].items():
            assert any(line.split()[:2] == [name, f"{row['attempted']:,}"] for line in out.splitlines()), name
        assert runs["to_file"].stderr == ""

    def test_json_dash_keeps_stdout_pure(self, runs):
        """--json -: stdout is one JSON document and nothing else; the summary goes to stderr."""
        done = runs["to_stdout"]
        assert done.stdout.lstrip().startswith("{")
        assert json.loads(done.stdout)["totals"]["attempted"] == 200
        assert "latency (ms)" in done.stderr
        assert "success rate" in done.stderr

    def test_unwritable_json_path(self, runs, tmp_path: Path):
        """A --json path that cannot be written is refused before anything is sent: exit 2, one line naming it."""
        path = tmp_path / "missing" / "report.json"
        done = run_trafficgen(
            "--target", runs["target"], "--message-count", "1", "-q", "--keep-going", "--json", str(path)
        )
        assert done.returncode == 2
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error: ")
        assert str(path) in line
        assert "cannot write" in line
        assert not done.stdout

    def test_report_show_prints_the_same_summary(self, runs):
        """`trafficgen report show PATH` prints exactly the summary the run printed, with the run over time
        before the replies."""
        done = run_trafficgen("report", "show", str(runs["path"]))
        assert done.returncode == 0
        before, over_time = done.stdout.split("over time (", 1)
        rest = over_time[over_time.index("most frequent replies") :]
        assert before + rest == runs["to_file"].stdout

    def test_report_merge_adds_everything(self, runs):
        """`trafficgen report merge` of two runs: counts per domain add up and the histograms merge exactly."""
        second = runs["dir"] / "second.json"
        second.write_text(runs["to_stdout"].stdout)
        done = run_trafficgen("report", "merge", str(runs["path"]), str(second), "--json", "-")
        assert done.returncode == 0, done.stderr
        merged, first, other = json.loads(done.stdout), runs["report"], json.loads(runs["to_stdout"].stdout)
        check_invariants(merged)
        for key in COUNTS:
            assert merged["totals"][key] == first["totals"][key] + other["totals"][key], key
        for name in first["domains"]:
            assert merged["domains"][name]["attempted"] == (
                first["domains"][name]["attempted"] + other["domains"][name]["attempted"]
            )
        both = HdrHistogram.decode(first["histogram"])
        both.add(HdrHistogram.decode(other["histogram"]))
        assert HdrHistogram.decode(merged["histogram"]).get_total_count() == both.get_total_count()
        assert merged["latency_ms"]["p99"] == pytest.approx(both.get_value_at_percentile(99) / 1000, abs=0.001)


class TestBuild:
    """report.build() on its own."""

    def test_empty_run(self):
        """A run with no messages: zero counts, no success rate, latency counts 0 with null statistics."""
        document = reports.build(Recorder(["a.test"]), run_id="e", target="t", started=0.0, elapsed=0.0, config={})
        assert document["totals"] == dict.fromkeys(COUNTS, 0)
        assert document["success_rate"] is None
        assert document["throughput"]["per_second"] == 0
        assert document["latency_ms"]["count"] == 0
        assert document["latency_ms"]["p99"] is None
        assert document["latency_from_intended_ms"] is None


class TestMergeChecks:
    """`report merge` refuses to count one instance twice and warns about runs that were not one test (issue 29)."""

    def test_the_same_report_twice_is_refused(self, runs):
        """One line naming the file and --force; nothing merged. With --force the counts add up, with a warning."""
        path = str(runs["path"])
        done = run_trafficgen("report", "merge", path, path, "--json", "-")
        assert done.returncode == 2, done.stderr
        (line,) = error_lines(done)
        assert line.startswith(f"trafficgen: error: {path} is given twice (run golden, shard 0/1)"), line
        assert "--force" in line
        assert not done.stdout
        forced = run_trafficgen("report", "merge", path, path, "--force", "--json", "-")
        assert forced.returncode == 0, forced.stderr
        assert "warning: " in forced.stderr
        assert json.loads(forced.stdout)["totals"]["attempted"] == 2 * runs["report"]["totals"]["attempted"]

    def test_a_copy_or_a_merged_part_is_refused(self, runs, tmp_path):
        """A copy of a report under another name, or a merged report with one of its parts: refused too."""
        copy = tmp_path / "copy.json"
        copy.write_text(runs["path"].read_text())
        done = run_trafficgen("report", "merge", str(runs["path"]), str(copy))
        assert done.returncode == 2, done.stderr
        (line,) = error_lines(done)
        assert f"{runs['path']} and {copy} are one instance" in line, line
        other = tmp_path / "other.json"
        other.write_text(runs["to_stdout"].stdout)
        merged = tmp_path / "merged.json"
        assert run_trafficgen("report", "merge", str(runs["path"]), str(other), "--json", str(merged)).returncode == 0
        done = run_trafficgen("report", "merge", str(merged), str(other))
        assert done.returncode == 2, done.stderr
        assert "are one instance" in error_lines(done)[0]

    def test_runs_apart_or_against_other_targets_are_merged_with_a_warning(self, runs, tmp_path):
        """Two runs 17 minutes apart against different targets: merged (exit 0), each difference said on stderr."""
        later = json.loads(runs["to_stdout"].stdout)
        start = datetime.datetime.fromisoformat(runs["report"]["started_at"]) + datetime.timedelta(minutes=17)
        later["started_at"] = start.isoformat(timespec="milliseconds")
        later["target"] = "127.0.0.9:2525"
        path = tmp_path / "later.json"
        path.write_text(json.dumps(later))
        done = run_trafficgen("report", "merge", str(runs["path"]), str(path), "--json", "-")
        assert done.returncode == 0, done.stderr
        warnings = [line for line in error_lines(done) if line.startswith("trafficgen: warning: ")]
        assert any("differ in target" in w and "127.0.0.9:2525" in w for w in warnings), warnings
        apart = [w for w in warnings if "do not overlap in time" in w]
        assert len(apart) == 1, warnings
        assert f"{path} started " in apart[0], apart
        assert json.loads(done.stdout)["totals"]["attempted"] == runs["report"]["totals"]["attempted"] + 200
