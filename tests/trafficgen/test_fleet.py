"""Results that combine exactly across processes and machines: --shard, report merge and compare, --hdr-log,
--metrics."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

from harness.net import free_port
from harness.policies import ACCEPT_ALL
from harness.sink import running_sink, wait_for
from harness.trafficgen import run_trafficgen, start_trafficgen


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    policy = tmp_path_factory.mktemp("fleet") / "responses.toml"
    policy.write_text("[default]\nbounce = 5\ndefer = 5\n")
    with running_sink("--seed", "8", "--policy", str(policy)) as running:
        yield running


class TestShards:
    def test_two_instances_share_one_run_without_overlap(self, sink, tmp_path):
        """Two instances with --shard 0/2 and 1/2 and one --run-id: ids never collide, each reconciles its own."""
        reports = []
        for shard in ("0/2", "1/2"):
            path = tmp_path / f"shard-{shard[0]}.json"
            done = run_trafficgen(
                "--quiet",
                "--target",
                sink.target,
                "--message-count",
                "150",
                "--concurrency",
                "5",
                "--run-id",
                "fleet1",
                "--shard",
                shard,
                "--reconcile",
                f"http://{sink.http}",
                "--json",
                str(path),
            )
            assert done.returncode == 0, done.stderr
            reports.append(json.loads(path.read_text()))
        ledger = json.loads(sink.get("/runs/fleet1")[1])
        assert ledger["seen"] == 300
        assert ledger["duplicated"] == 0
        for report in reports:
            reconciled = report["reconciliation"]["recipients"]
            assert reconciled["lost"] == reconciled["duplicated"] == 0
            assert reconciled["delivered"] == report["totals"]["accepted"]
        merged = run_trafficgen("report", "merge", *(str(tmp_path / f"shard-{i}.json") for i in (0, 1)), "--json", "-")
        combined = json.loads(merged.stdout)
        assert combined["run_id"] == "fleet1"
        merged_counts = combined["reconciliation"]["recipients"]
        assert merged_counts["delivered"] == sum(r["reconciliation"]["recipients"]["delivered"] for r in reports)

    @pytest.mark.parametrize("shard", ["2/2", "x/3", "1/0", "-1/2"])
    def test_bad_shard(self, shard):
        """A --shard that is not INDEX/COUNT with 0 <= INDEX < COUNT is one line and exit 2."""
        done = run_trafficgen("--quiet", "--shard", shard)
        assert done.returncode == 2
        assert "--shard" in done.stderr
        assert len(done.stderr.splitlines()) == 1


class TestMerge:
    def test_merged_percentiles_are_those_of_all_messages(self, sink, tmp_path):
        """report merge adds the counts and merges the histograms: its p99 is the p99 of both runs together."""
        paths = []
        for seed, size in ((1, "1kb"), (2, "200kb")):
            path = tmp_path / f"run-{seed}.json"
            done = run_trafficgen(
                "--quiet",
                "--target",
                sink.target,
                "--message-count",
                "200",
                "--concurrency",
                "4",
                "--seed",
                str(seed),
                "--body-size",
                size,
                "--json",
                str(path),
            )
            assert done.returncode == 0, done.stderr
            paths.append(path)
        reports = [json.loads(p.read_text()) for p in paths]
        merged_path = tmp_path / "merged.json"
        done = run_trafficgen("report", "merge", *map(str, paths), "--json", str(merged_path))
        assert done.returncode == 0, done.stderr
        merged = json.loads(merged_path.read_text())
        for key in ("attempted", "accepted", "tempfailed", "permfailed", "errors"):
            assert merged["totals"][key] == sum(r["totals"][key] for r in reports)
        union = HdrHistogram.decode(reports[0]["histogram"])
        union.add(HdrHistogram.decode(reports[1]["histogram"]))
        assert merged["latency_ms"]["p99"] == round(union.get_value_at_percentile(99) / 1000, 3)
        assert merged["latency_ms"]["count"] == union.get_total_count()
        assert merged["domains"].keys() == reports[0]["domains"].keys()

    def test_compare_shows_the_changes(self, sink, tmp_path):
        """report compare prints throughput, success rate and every percentile with the change."""
        paths = []
        for n in (1, 2):
            path = tmp_path / f"r{n}.json"
            done = run_trafficgen("--quiet", "--target", sink.target, "--message-count", "100", "--json", str(path))
            assert done.returncode == 0
            paths.append(str(path))
        done = run_trafficgen("report", "compare", *paths, env={"COLUMNS": "200", "PATH": ""}, inherit=False)
        assert done.returncode == 0, done.stderr
        for row in ("throughput (msg/s)", "success rate", "latency p50 (ms)", "latency p99.9 (ms)", "latency max (ms)"):
            assert row in done.stdout

    @pytest.mark.parametrize(
        ("content", "problem"),
        [(None, "no such file"), ("{not json", "not JSON"), ('{"schema": 7}', "schema 2")],
        ids=["missing", "not-json", "other-schema"],
    )
    def test_bad_report_files(self, tmp_path, content, problem):
        """A report file that cannot be read is one line naming it, exit 2."""
        path = tmp_path / "bad.json"
        if content is not None:
            path.write_text(content)
        done = run_trafficgen("report", "show", str(path))
        assert done.returncode == 2
        assert problem in done.stderr
        assert len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize("processes", ["1", "2"])
def test_hdr_log_holds_every_transaction(sink, tmp_path, processes):
    """--hdr-log writes a standard interval log whose histograms add up to the report's latency count."""
    log, report = tmp_path / "latency.hdr", tmp_path / "report.json"
    done = run_trafficgen(
        "--quiet",
        "--target",
        sink.target,
        "--duration",
        "3",
        "--concurrency",
        "4",
        "--processes",
        processes,
        "--hdr-log",
        str(log),
        "--json",
        str(report),
    )
    assert done.returncode == 0, done.stderr
    reader = HistogramLogReader(str(log), HdrHistogram(1, 3_600_000_000, 3))
    total, intervals = 0, 0
    while (histogram := reader.get_next_interval_histogram()) is not None:
        total += histogram.get_total_count()
        intervals += 1
    reader.close()
    assert total == json.loads(report.read_text())["latency_ms"]["count"] > 0
    assert intervals >= 3


@pytest.mark.parametrize("processes", ["1", "2"])
def test_metrics_are_served_while_running(tmp_path, processes):
    """--metrics serves the live counters and a latency histogram for Prometheus during the run."""
    port = free_port()
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        generator = start_trafficgen(
            "--target", sink.target, "--duration", "6", "--concurrency", "4", "--processes", processes, "--quiet",
            "--metrics", f"127.0.0.1:{port}", "--domain", "example.com",
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:

            def scrape() -> dict[str, float] | None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                        text = response.read().decode()
                except OSError:
                    return None
                samples = {}
                for line in text.splitlines():
                    if line and not line.startswith("#"):
                        name, _, value = line.rpartition(" ")
                        samples[name] = float(value)
                return (
                    samples
                    if samples.get('trafficgen_messages_total{domain="example.com",outcome="accepted"}')
                    else None
                )

            samples = wait_for(scrape, timeout=20, interval=0.3, what="trafficgen's /metrics to count messages")
        finally:
            _, err = generator.communicate(timeout=60)
        assert generator.returncode == 0, err
    buckets = [v for k, v in samples.items() if k.startswith("trafficgen_latency_seconds_bucket")]
    assert buckets == sorted(buckets)
    assert buckets[-1] == samples["trafficgen_latency_seconds_count"] > 0
    assert any(k.startswith("trafficgen_run_info") for k in samples)
    assert "trafficgen_connections_open" in samples
