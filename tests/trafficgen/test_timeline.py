"""The report's timeline as pure code: every interval's counts add up to the totals, widening and merging add and
never estimate, and a report's timeline read back gives the same timeline (what `report merge` relies on)."""

from __future__ import annotations

import random

import pytest
from hdrh.histogram import HdrHistogram

from trafficgen.outcome import Kind
from trafficgen.stats.timeline import COUNT_KEYS, MAX_POINTS, Timeline, from_report

DOMAINS = ["gmail.com", "yahoo.com", "aol.com"]
KINDS = [Kind.ACCEPTED, Kind.TEMPFAILED, Kind.PERMFAILED, Kind.ERROR]


def events(seed: int, count: int, start: float, span: float) -> list[tuple[float, int, Kind, int, int | None]]:
    """(unix time, domain, kind, latency us, intended us) drawn with a fixed seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        at = start + rng.random() * span
        kind = rng.choices(KINDS, weights=[80, 10, 7, 3])[0]
        latency = int(rng.lognormvariate(9, 1))  # median ~8 ms
        out.append((at, rng.randrange(len(DOMAINS)), kind, latency, latency + rng.randrange(1000)))
    return out


def timeline_of(evts: list[tuple[float, int, Kind, int, int | None]], domains: list[str] | None = None) -> Timeline:
    timeline = Timeline(domains or DOMAINS)
    timeline.offset = 0.0  # the tests' times are unix times already
    for at, domain, kind, latency, intended in evts:
        timeline.record(at, domain, kind, latency, intended)
    return timeline


def totals(evts: list[tuple[float, int, Kind, int, int | None]]) -> dict[str, int]:
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for _, _, kind, _, _ in evts:
        counts["attempted"] += 1
        counts[COUNT_KEYS[kind + 1]] += 1
    return counts


def summed(report: dict, key: str) -> int:
    return sum(point[key] for point in report["points"])


START = 1_796_000_000.25


def test_intervals_add_up_to_the_totals():
    evts = events(1, 5000, START, 30.0)
    report = timeline_of(evts).report(START)
    assert report["interval_s"] == 1
    assert len(report["points"]) in (30, 31)
    for key in COUNT_KEYS:
        assert summed(report, key) == totals(evts)[key]
    # per domain too, at its coarser interval
    for n, name in enumerate(DOMAINS):
        expected = sum(1 for e in evts if e[1] == n)
        got = sum(p["domains"].get(name, {}).get("attempted", 0) for p in report["domains"]["points"])
        assert got == expected


def test_interval_percentiles_are_that_intervals():
    """Each interval's p50/p90/p99 are its own messages' (HDR at 2 significant digits: within 1%)."""
    evts = events(2, 3000, START, 10.0)
    report = timeline_of(evts).report(START)
    for point in report["points"]:
        mine = sorted(e[3] for e in evts if e[2] != Kind.ERROR and int(e[0]) == point["at"])
        if not mine:
            assert point["latency_ms"] is None
            continue
        exact = HdrHistogram(1, 3_600_000_000, 3)
        for value in mine:
            exact.record_value(value)
        for name, p in (("p50", 50), ("p90", 90), ("p99", 99)):
            assert point["latency_ms"][name] == pytest.approx(exact.get_value_at_percentile(p) / 1000, rel=0.01)


def test_empty_intervals_are_shown_as_zeros():
    evts = [(START, 0, Kind.ACCEPTED, 1000, None), (START + 5, 1, Kind.ACCEPTED, 1000, None)]
    report = timeline_of(evts).report(START)
    assert [p["attempted"] for p in report["points"]] == [1, 0, 0, 0, 0, 1]
    assert report["points"][2]["latency_ms"] is None


def test_a_long_run_widens_the_interval_and_stays_bounded():
    evts = events(3, 20000, START, 3000.0)
    timeline = timeline_of(evts)
    report = timeline.report(START)
    assert report["interval_s"] == 8  # 3000 s / 600 points: 5 s, the next power of two
    assert len(report["points"]) <= MAX_POINTS
    assert report["points"][0]["at"] % 8 == 0
    for key in COUNT_KEYS:
        assert summed(report, key) == totals(evts)[key]
    assert len(report["domains"]["points"]) <= 60


def test_merge_equals_one_timeline_of_all_messages():
    """Two processes' timelines merged are the timeline of all their messages: same counts per interval, same
    histograms, whatever second each started in; connection samples add up."""
    a, b = events(4, 4000, START, 20.0), events(5, 3000, START + 7.6, 20.0)
    first = timeline_of(a)
    # the second process lists its domains in another order: its indexes name other domains
    second = timeline_of([(t, [1, 0, 2][d], k, lat, i) for t, d, k, lat, i in b], ["yahoo.com", "gmail.com", "aol.com"])
    first.sample_connections(START + 10.5, 40)
    second.sample_connections(START + 10.7, 25)
    first.merge(second)
    merged = first.report(START)
    whole = timeline_of(a + b).report(START)
    assert [{k: p[k] for k in (*COUNT_KEYS, "latency_ms")} for p in merged["points"]] == [
        {k: p[k] for k in (*COUNT_KEYS, "latency_ms")} for p in whole["points"]
    ]
    assert merged["domains"]["points"] == whole["domains"]["points"]
    assert next(p["connections"] for p in merged["points"] if p["at"] == int(START + 10)) == 65


def test_merge_of_different_widths_takes_the_wider():
    short, long = events(6, 1000, START, 20.0), events(7, 20000, START, 2000.0)
    narrow, wide = timeline_of(short), timeline_of(long)
    assert (narrow.width, wide.width) == (1, 4)
    narrow.merge(wide)
    report = narrow.report(START)
    assert report["interval_s"] == 4
    for key in COUNT_KEYS:
        assert summed(report, key) == totals(short)[key] + totals(long)[key]


def test_a_reports_timeline_reads_back_the_same():
    evts = events(8, 5000, START, 40.0)
    timeline = timeline_of(evts)
    timeline.sample_connections(START + 3.2, 17)
    report = timeline.report(START)
    again = from_report(report, DOMAINS).report(START)
    assert again == report


def test_state_round_trip():
    evts = events(9, 2000, START, 15.0)
    timeline = timeline_of(evts)
    again = Timeline.from_state(timeline.state())
    assert again.report(START) == timeline.report(START)


def test_a_long_reports_timeline_reads_back_the_same_from_an_odd_second():
    """101 one-second intervals starting on an odd second: the per-domain counts (at 2 s) begin a second before the
    first interval; read back, no interval is added before the run."""
    start = 1_796_000_001.0
    evts = [(start + n + 0.5, n % 3, Kind.ACCEPTED, 1000, None) for n in range(101)]
    report = timeline_of(evts).report(start)
    assert report["domains"]["interval_s"] == 2
    again = from_report(report, DOMAINS).report(start)
    assert len(again["points"]) == len(report["points"]) == 101
    assert again["points"] == report["points"]


def test_merge_into_a_timeline_that_lacks_some_domains():
    """The other timeline has a domain this one lacks, over the same intervals: its rows are added, none lost."""
    first = Timeline(["gmail.com"])
    first.offset = 0.0
    second = Timeline(["gmail.com", "yahoo.com"])
    second.offset = 0.0
    for n in range(50):
        first.record(START + n * 0.1, 0, Kind.ACCEPTED, 1000, None)
        second.record(START + n * 0.1, n % 2, Kind.TEMPFAILED, 2000, None)
    first.merge(second)
    report = first.report(START)
    assert summed(report, "attempted") == 100
    got = {}
    for point in report["domains"]["points"]:
        for name, row in point["domains"].items():
            got[name] = got.get(name, 0) + row["attempted"]
    assert got == {"gmail.com": 75, "yahoo.com": 25}
