"""The report over time and the HTML report, end to end: `make demo`'s run renders in a real browser (Debian's
chromium driven by Playwright) with every chart drawn from data and no console error; the timeline adds up to the
totals in one process, across --processes and through `report merge`; each reply names its domains;
`report html` and `report compare --html` write the page from saved reports (issue 14); the page holds what the
terminal shows (success rate, configuration, domains with their numbers, reconciliation), is small, and its charts
read right: no point before the start, a log axis labelled with whole values, the toolbar off the plots, a
comparison's domains paired (issue 29)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import ROOT, child_env
from harness.sink import running_sink
from harness.trafficgen import COUNTS, error_lines, run_report, run_trafficgen

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The charts a run with a timeline has, and the one a profile adds.
CHARTS = ("throughput", "latency", "connections", "domains", "replies")
POLICY = "[default]\ndefer = 10\nbounce = 5\n"


@contextlib.contextmanager
def opened(page_path: Path) -> Iterator[tuple[Any, list[str]]]:
    """The page loaded in headless chromium (Debian's), and every console error, page error or network request it
    made, as they come."""
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else problems.append(r.url))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            yield page, problems
        finally:
            browser.close()


def browser_charts(page_path: Path, screenshot: Path | None = None) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Open the page in headless chromium: per chart, its traces, its drawn points (markers and bars) and the traces
    that drew a line (a latency line with a second without replies is drawn in two segments, still one trace); and
    every console error or page error."""
    with opened(page_path) as (page, problems):
        charts = page.evaluate(
            """() => { const drawn = p => (p.getAttribute('d') || '').length > 10;
            return Object.fromEntries([...document.querySelectorAll('.chart')].map(d => [d.id, {
                traces: d.querySelectorAll('.main-svg .trace').length,
                points: d.querySelectorAll('.point').length,
                lines: [...d.querySelectorAll('.main-svg .trace')]
                    .filter(t => [...t.querySelectorAll('path.js-line')].some(drawn)).length,
                segments: [...d.querySelectorAll('path.js-line')].filter(drawn).length,
            }])); }"""
        )
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
    return charts, problems


PAGE_FACTS = """() => {
    const box = e => {
        if (!e) return null;
        const b = e.getBoundingClientRect();
        return [b.left, b.top, b.right, b.bottom];
    };
    const ticks = (d, axis) => [...d.querySelectorAll('.' + axis + 'tick text')]
        .map(t => [t.getBoundingClientRect().top, t.getBoundingClientRect().left, t.textContent]);
    const charts = Object.fromEntries([...document.querySelectorAll('.chart')].map(d => [d.id, {
        x_min: Math.min(...(d.data || []).flatMap(t => (t.x || []).filter(v => typeof v === 'number'))),
        yticks: ticks(d, 'y').sort((a, b) => b[0] - a[0]).map(t => t[2]),
        xticks: ticks(d, 'x').map(t => t[2]),
        modebar: box(d.querySelector('.modebar')),
        plot: box(d.querySelector('.nsewdrag')),
        annotations: [...d.querySelectorAll('.annotation-text')].map(t => t.textContent),
        bar_texts: [...d.querySelectorAll('.bartext')].map(t => t.textContent),
    }]));
    const tables = Object.fromEntries([...document.querySelectorAll('section')].map(s => [
        s.querySelector('h2').textContent,
        [...s.querySelectorAll('tr')].map(r => [...r.children].map(c => c.textContent)),
    ]));
    return {charts, tables, text: document.body.innerText};
}"""


def page_facts(page_path: Path) -> tuple[dict[str, Any], list[str]]:
    """Open the page in headless chromium: per chart, its leftmost x value, its y tick labels from the bottom up,
    its x tick labels, where its toolbar and its plot area are, its annotations and bar texts; each section's
    table rows (by heading); the page's text; and every console error, page error or network request."""
    with opened(page_path) as (page, problems):
        facts = page.evaluate(PAGE_FACTS)
    return facts, problems


def rows_of(table: list[list[str]]) -> dict[str, list[str]]:
    """A table's rows by their first cell."""
    return {row[0]: row[1:] for row in table}


def timeline_sums(report: dict[str, Any]) -> dict[str, int]:
    return {key: sum(point[key] for point in report["timeline"]["points"]) for key in COUNTS}


def domain_sums(report: dict[str, Any]) -> dict[str, int]:
    sums: dict[str, int] = {}
    for point in report["timeline"]["domains"]["points"]:
        for name, row in point["domains"].items():
            sums[name] = sums.get(name, 0) + row["attempted"]
    return sums


@pytest.mark.slow
def test_the_demo_page_draws_in_a_browser(tmp_path):
    """`make demo` (scripts/demo.py) writes demo-report.html beside the JSON; in chromium every chart has traces
    drawn from data, nothing is fetched from the network and nothing errs."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        env=child_env({"DEMO_OUT": str(tmp_path)}),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "demo-report.html" in done.stdout
    report = json.loads((tmp_path / "demo-report.json").read_text())
    assert timeline_sums(report) == report["totals"]
    charts, problems = browser_charts(tmp_path / "demo-report.html", tmp_path / "demo.png")
    assert problems == []
    assert set(CHARTS) <= set(charts), charts
    seconds = len(report["timeline"]["points"])
    assert seconds >= 10
    # throughput: a bar per outcome seen, one per second each; latency: p50/p90/p99 lines; connections: a line
    assert charts["throughput"]["traces"] >= 2, charts
    assert charts["throughput"]["points"] >= 2 * (seconds - 2), charts
    assert charts["latency"]["lines"] == 3, charts
    assert charts["connections"]["lines"] == 1, charts
    assert charts["domains"]["points"] >= len(report["domains"]), charts
    assert charts["replies"]["points"] >= min(len(report["replies"]), 12), charts
    assert (tmp_path / "demo.png").stat().st_size > 20_000


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> dict[str, Any]:
    """Two saved runs against one deferring and bouncing sink: one with --processes 2 and --html."""
    tmp = tmp_path_factory.mktemp("html")
    with running_sink("--seed", "5", policy=POLICY, tmp=tmp) as sink:
        common = ["--target", sink.target, "--keep-going", "--domain", "gmail.com:3", "--domain", "yahoo.com:1"]
        first, _ = run_report(
            *common, "--message-count", "600", "--concurrency", "6", "--throttle", "300/s",
            "--reconcile", f"http://{sink.http}",
        )  # fmt: skip
        (tmp / "first.json").write_text(json.dumps(first))
        html = tmp / "second.html"
        second, _ = run_report(
            *common, "--message-count", "800", "--concurrency", "8", "--processes", "2", "--throttle", "400/s",
            "--html", str(html),
        )  # fmt: skip
        (tmp / "second.json").write_text(json.dumps(second))
    return {"first": first, "second": second, "html": html, "dir": tmp}


class TestTimeline:
    def test_intervals_add_up_to_the_totals(self, two_runs):
        """Every message is in exactly one interval, per domain too; the run spans about 2 s of 1 s intervals."""
        for key in ("first", "second"):
            report = two_runs[key]
            assert timeline_sums(report) == report["totals"], key
            assert domain_sums(report) == {d: row["attempted"] for d, row in report["domains"].items()}, key
            assert report["timeline"]["interval_s"] == 1
            assert 2 <= len(report["timeline"]["points"]) <= 5, report["timeline"]["points"]

    def test_processes_are_merged(self, two_runs):
        """With --processes 2 the connections of both processes are summed: the held 8 show while sending (in some
        interval: the busiest by messages may hold one process's last, when its connections close)."""
        points = two_runs["second"]["timeline"]["points"]
        assert max(p["connections"] for p in points) == 8, points  # 4 a process: more than one process's own
        # at 400/s, a full second holds about 400 (the first and last are partial)
        assert max(p["attempted"] for p in points) <= 400 * 1.1, points

    def test_interval_latency_is_measured_from_the_intended_time(self, two_runs):
        """With a throttle, each interval with replies has percentiles of both kinds, p50 <= p90 <= p99."""
        for point in two_runs["first"]["timeline"]["points"]:
            if point["accepted"] + point["tempfailed"] + point["permfailed"]:
                for key in ("latency_ms", "latency_from_intended_ms"):
                    shown = point[key]
                    assert 0 < shown["p50"] <= shown["p90"] <= shown["p99"], point

    def test_report_merge_adds_the_timelines(self, two_runs, tmp_path):
        """`report merge` of the two runs: every count of the merged timeline is the sum of the two."""
        done = run_trafficgen(
            "report", "merge", str(two_runs["dir"] / "first.json"), str(two_runs["dir"] / "second.json"),
            "--json", str(tmp_path / "merged.json"),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        merged = json.loads((tmp_path / "merged.json").read_text())
        first, second = two_runs["first"], two_runs["second"]
        expected = {key: first["totals"][key] + second["totals"][key] for key in COUNTS}
        assert timeline_sums(merged) == expected == merged["totals"]
        both = domain_sums(first)
        for name, n in domain_sums(second).items():
            both[name] = both.get(name, 0) + n
        assert domain_sums(merged) == both

    def test_report_show_prints_the_timeline(self, two_runs):
        """`report show` has a timeline section with one row per interval of a short run."""
        done = run_trafficgen("report", "show", str(two_runs["dir"] / "second.json"))
        assert done.returncode == 0, done.stderr
        assert "\nover time" in done.stdout, done.stdout
        section = done.stdout.split("\nover time", 1)[1]
        for point in two_runs["second"]["timeline"]["points"]:
            assert f"{point['attempted']:,}" in section


def test_idle_connections_are_counted_in_every_interval(tmp_path):
    """4 connections over 2 processes held through a run that sends one message a second: every whole interval
    of the run shows all 4 (each process samples its open connections each second, not only when a message
    completes)."""
    with running_sink(policy="[default]\n", tmp=tmp_path) as sink:
        report, _ = run_report(
            "--target", sink.target, "--duration", "5", "--throttle", "1/s", "--concurrency", "4", "--processes", "2",
        )  # fmt: skip
    points = report["timeline"]["points"]
    assert report["connections"]["peak"] == 4
    inside = [p["connections"] for p in points[1:-1]]
    assert len(inside) >= 3, points
    assert inside == [4] * len(inside), [p["connections"] for p in points]


def test_merge_with_a_report_from_before_timelines(two_runs, tmp_path):
    """A report without a timeline (or replies without domains) merged with a new one: the merged report has an
    empty timeline and no reply domains, rather than ones that fall short of its totals."""
    old = {k: v for k, v in two_runs["first"].items() if k != "timeline"}
    old["replies"] = [{k: v for k, v in r.items() if k != "domains"} for r in old["replies"]]
    (tmp_path / "old.json").write_text(json.dumps(old))
    done = run_trafficgen(
        "report", "merge", str(tmp_path / "old.json"), str(two_runs["dir"] / "second.json"), "--json", "-"
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    merged = json.loads(done.stdout)
    assert merged["timeline"]["points"] == []
    assert all(reply["domains"] == {} for reply in merged["replies"])
    assert (
        merged["totals"]["attempted"]
        == two_runs["first"]["totals"]["attempted"] + two_runs["second"]["totals"]["attempted"]
    )


class TestReplies:
    def test_each_reply_names_its_domains(self, two_runs):
        """A reply's domains add up to its count, and only domains of the run appear."""
        for report in (two_runs["first"], two_runs["second"]):
            assert report["replies"]
            for reply in report["replies"]:
                assert sum(reply["domains"].values()) == reply["count"], reply
                assert set(reply["domains"]) <= set(report["domains"]), reply


class TestHtmlFiles:
    def test_the_run_wrote_its_page(self, two_runs):
        """--html PATH: one file, Plotly inside it, no script fetched from elsewhere."""
        text = two_runs["html"].read_text()
        assert text.startswith("<!DOCTYPE html>")
        assert "<script src=" not in text
        assert two_runs["second"]["run_id"] in text

    def test_report_html_from_a_saved_report(self, two_runs, tmp_path):
        """`report html REPORT.json -o PATH` writes the page and names it; it draws in the browser."""
        out = tmp_path / "saved.html"
        done = run_trafficgen("report", "html", str(two_runs["dir"] / "first.json"), "-o", str(out))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(out)
        charts, problems = browser_charts(out)
        assert problems == []
        assert charts["throughput"]["points"] > 0
        assert charts["latency"]["lines"] == 3

    def test_a_second_without_replies_leaves_a_gap(self, two_runs, tmp_path):
        """An interval without replies has no latency: each percentile line breaks there (two segments) instead of
        being drawn across it, and is still one line of the three."""
        report = json.loads(json.dumps(two_runs["first"]))
        timeline = report["timeline"]
        points, width = timeline["points"], timeline["interval_s"]
        assert len(points) >= 2

        def moved(point: dict[str, Any], by: int) -> dict[str, Any]:
            return dict(point, at=point["at"] + by * width, t_s=point["t_s"] + by * width)

        quiet = moved(dict(points[-1], attempted=0, accepted=0, tempfailed=0, permfailed=0, errors=0, connections=1), 1)
        for key in ("latency_ms", "latency_from_intended_ms"):
            quiet.pop(key, None)
        timeline["points"] = [*points, quiet, *(moved(p, len(points) + 1) for p in points)]
        for kind, encoded in timeline["histograms"].items():
            timeline["histograms"][kind] = [*encoded, None, *encoded]
        saved = tmp_path / "gap.json"
        saved.write_text(json.dumps(report))
        out = tmp_path / "gap.html"
        done = run_trafficgen("report", "html", str(saved), "-o", str(out))
        assert done.returncode == 0, done.stderr
        charts, problems = browser_charts(out)
        assert problems == []
        assert charts["latency"]["lines"] == 3, charts
        assert charts["latency"]["segments"] == 6, charts

    def test_report_html_default_name(self, two_runs, tmp_path):
        """Without -o the page goes beside the report, .json replaced by .html."""
        saved = tmp_path / "run.json"
        saved.write_text(json.dumps(two_runs["first"]))
        done = run_trafficgen("report", "html", str(saved))
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "run.html").stat().st_size > 1_000_000  # Plotly's basic bundle is in it

    def test_compare_overlays_the_two_runs(self, two_runs, tmp_path):
        """`report compare A B --html PATH`: the later run's charts with the earlier's drawn over them (its attempted
        rate, its p99 and its connections, dashed)."""
        out = tmp_path / "compare.html"
        done = run_trafficgen(
            "report", "compare", str(two_runs["dir"] / "first.json"), str(two_runs["dir"] / "second.json"),
            "--html", str(out),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        single, _ = browser_charts(two_runs["html"])
        both, problems = browser_charts(out)
        assert problems == []
        assert both["latency"]["lines"] == single["latency"]["lines"] + 1 == 4
        assert both["connections"]["lines"] == 2
        assert single["throughput"]["lines"] == 0
        assert both["throughput"]["lines"] == 1

    @pytest.mark.parametrize(
        ("content", "words"),
        [(None, "no such file"), ("{not json", "not JSON"), ('{"schema": 1}', "")],
        ids=["missing", "not-json", "not-a-report"],
    )
    def test_a_bad_report_is_one_line(self, tmp_path, content, words):
        path = tmp_path / "bad.json"
        if content is not None:
            path.write_text(content)
        done = run_trafficgen("report", "html", str(path))
        assert done.returncode == 2, done.stderr
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error: "), line
        assert words in line, line
        assert not (tmp_path / "bad.html").exists()

    def test_unwritable_html_path_is_refused_before_the_run(self, tmp_path):
        done = run_trafficgen("--html", str(tmp_path / "no" / "such" / "dir.html"), "--message-count", "1")
        assert done.returncode == 2, done.stderr
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error: --html"), line


class TestWhatThePageShows:
    """The page holds what the terminal summary shows, read in a browser (issue 29)."""

    @pytest.fixture(scope="class")
    @staticmethod
    def single(two_runs, tmp_path_factory) -> dict[str, Any]:
        """The first run's page (a run with --reconcile), with two counts a later reconciliation may add."""
        report = json.loads(json.dumps(two_runs["first"]))
        reconciliation = report["reconciliation"]
        reconciliation["recipients"]["resent"] = 3  # a count a later schema may add to a view
        reconciliation["messages_pending"] = 5  # and one beside the views
        reconciliation["samples"]["lost"] = [
            {"id": "run.17", "recipient": "user-17.run", "sink_saw": "nothing", "mta_said": None}
        ]
        tmp = tmp_path_factory.mktemp("page")
        (tmp / "run.json").write_text(json.dumps(report))
        done = run_trafficgen("report", "html", str(tmp / "run.json"), "-o", str(tmp / "run.html"))
        assert done.returncode == 0, done.stderr
        facts, problems = page_facts(tmp / "run.html")
        assert problems == []
        return {"report": report, "facts": facts, "path": tmp / "run.html"}

    def test_small_and_self_contained(self, single):
        """The page carries a partial Plotly bundle, not the whole library: under 1.5 MB, and nothing fetched."""
        size = single["path"].stat().st_size
        assert size < 1_500_000, size
        assert "<script src=" not in single["path"].read_text()

    def test_summary_has_the_success_rate(self, single):
        report, tables = single["report"], single["facts"]["tables"]
        assert rows_of(tables["Summary"])["success rate"] == [f"{report['success_rate'] * 100:.2f}%"]

    def test_configuration(self, single):
        """The options that shaped the run: target, concurrency, duration or count, body size, domain weights."""
        config = rows_of(single["facts"]["tables"]["Configuration"])
        report = single["report"]
        assert config["target"] == [report["target"]]
        assert config["concurrency (connections)"] == ["6"]
        assert config["message count"] == ["600"]
        assert config["throttle (per second)"] == ["300"]
        assert config["body size"] == ["1,024 B"]
        assert config["domain weights"] == ["gmail.com 3 (75.0%), yahoo.com 1 (25.0%)"]

    def test_domains_with_their_numbers(self, single):
        """A table of each domain's counts and acceptance, and each bar has its count written beside it."""
        report, facts = single["report"], single["facts"]
        table = rows_of(facts["tables"]["Domains"])
        for name, row in report["domains"].items():
            share = f"{row['accepted'] / row['attempted'] * 100:.1f}%"
            assert table[name] == [f"{row[k]:,}" for k in COUNTS] + [share], table
            assert f"{row['attempted']:,} ({share} accepted)" in facts["charts"]["domains"]["annotations"]
        for reply in report["replies"][:12]:
            assert f"{reply['count']:,}" in facts["charts"]["replies"]["bar_texts"]

    def test_reconciliation(self, single):
        """The recipients' and the messages' outcomes in one table (the columns with something in them, and
        delivered, duplicated, lost always), counts added later shown too, the attempts, transit times and the ids
        of each problem with what the sink saw of them."""
        reconciliation = single["report"]["reconciliation"]
        assert reconciliation["per"] == "recipient"
        text = single["facts"]["text"]
        rows = single["facts"]["tables"]["Reconciliation"]
        at = next(i for i, row in enumerate(rows) if row[:2] == ["", "accepted"])
        header, outcomes = rows[at], rows_of(rows[at + 1 : at + 3])  # the attempts' table has rows of those names
        section = rows_of(rows)
        for view in ("recipients", "messages"):
            counts = reconciliation[view]
            for column in ("accepted", "delivered", "duplicated", "lost"):
                assert outcomes[view][header.index(column) - 1] == f"{counts[column]:,}", (view, column, rows)
        assert outcomes["recipients"][header.index("resent") - 1] == "3"
        assert section["messages pending"] == ["5"]
        assert section["run.17"] == ["user-17.run", "nothing", "-"], rows
        for words in ("attempts", "transit ms", "lost"):
            assert words in text

    def test_no_point_before_the_start(self, single):
        """The first interval starts on a clock second before the run did: it is drawn at its end, never below 0."""
        charts = single["facts"]["charts"]
        for name in ("throughput", "latency", "connections"):
            assert charts[name]["x_min"] >= 0, (name, charts[name])
            assert not any(t.startswith(("-", "\N{MINUS SIGN}")) for t in charts[name]["xticks"]), charts[name][
                "xticks"
            ]

    def test_the_toolbar_is_off_the_plots(self, single):
        """Plotly's toolbar sits above each plot, not over it (the first chart's bars were under it)."""
        for name, chart in single["facts"]["charts"].items():
            bar, plot = chart["modebar"], chart["plot"]
            assert bar is not None, name
            assert plot is not None, name
            assert bar[3] <= plot[1], (name, bar, plot)

    def test_log_axis_labels_are_whole_values(self, two_runs, tmp_path):
        """A latency spread over three decades: the axis labels read upwards as rising values, none a bare
        mantissa such as "2" above "10"."""
        report = json.loads(json.dumps(two_runs["first"]))
        for point in report["timeline"]["points"]:
            for key in ("latency_ms", "latency_from_intended_ms"):
                if point.get(key):
                    point[key] = {"p50": 1.5, "p90": 40.0, "p99": 900.0}
        (tmp_path / "spread.json").write_text(json.dumps(report))
        done = run_trafficgen("report", "html", str(tmp_path / "spread.json"), "-o", str(tmp_path / "spread.html"))
        assert done.returncode == 0, done.stderr
        facts, problems = page_facts(tmp_path / "spread.html")
        assert problems == []
        labels = facts["charts"]["latency"]["yticks"]
        values = [float(label.replace(",", "")) for label in labels]
        assert len(values) >= 4, labels
        assert values == sorted(set(values)), labels
        assert values[0] <= 2, labels
        assert values[-1] >= 900, labels

    def test_compare_pairs_the_domains(self, two_runs, tmp_path):
        """`report compare --html`: each domain's before and after bars side by side, and a table with the change
        in acceptance in points."""
        out = tmp_path / "compare.html"
        done = run_trafficgen(
            "report", "compare", str(two_runs["dir"] / "first.json"), str(two_runs["dir"] / "second.json"),
            "--html", str(out),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        facts, problems = page_facts(out)
        assert problems == []
        labels = list(reversed(facts["charts"]["domains"]["yticks"]))  # top down
        names = sorted(two_runs["second"]["domains"], key=lambda n: -two_runs["second"]["domains"][n]["attempted"])
        assert labels == [f"{name} {when}" for name in names for when in ("before", "after")], labels
        table = facts["tables"]["Domains"]
        assert table[0][-1] == "change", table
        first, second = two_runs["first"]["domains"], two_runs["second"]["domains"]
        for name, row in rows_of(table[1:]).items():
            before = first[name]["accepted"] / first[name]["attempted"]
            after = second[name]["accepted"] / second[name]["attempted"]
            assert row[-1] == f"{(after - before) * 100:+.2f} pt", row
        summary = rows_of(facts["tables"]["Summary"])
        assert summary[""] == ["before", "after", "change"]
        assert summary["success rate"][2].endswith(" pt")
