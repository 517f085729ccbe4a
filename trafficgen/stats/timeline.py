"""A run over time: counts, open connections and latency per interval, bounded in size, merged exactly.

Intervals are aligned on the wall clock (interval `i` covers unix seconds [i * width, (i + 1) * width)), and widths
are powers of two seconds. So the intervals of processes and machines line up whatever second each started in,
and a wider interval is always a whole number of narrower ones: merging two timelines, or widening one that grew
past MAX_POINTS, adds counts and histograms and never estimates.

Each interval holds the five counts of the messages whose outcome came in it, per domain too, the open connections
at its last sample (summed over processes), and HDR histograms of transaction latency (and of latency from the
intended time, with a throttle) at 2 significant digits, from which its percentiles are read.
"""

from __future__ import annotations

import time

from hdrh.histogram import HdrHistogram
from typing_extensions import TypedDict

from trafficgen.outcome import ERROR, Kind
from trafficgen.stats.document import COUNT_KEYS as COUNT_KEYS
from trafficgen.stats.document import (
    DomainPoint,
    DomainTimeline,
    Percentiles,
    Point,
    TimelineReport,
    count_list,
    counts_of,
)
from trafficgen.stats.histogram import Histogram, new_histogram, summary
from trafficgen.stats.tally import Tally

MAX_POINTS = 600  # a 10-minute run keeps 1 s intervals; a day-long one 2.4 min
DOMAIN_POINTS = 60  # per-domain counts are shown at a coarser interval: at most this many
DIGITS = 2  # an interval's percentiles to 1%: enough for a chart, a tenth of the memory of 3 digits
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))

# An interval as state: its index, the five counts, the five per domain, the connections, the two histograms.
PointState = tuple[int, list[int], list[list[int]], int | None, str | None, str | None]


class State(TypedDict):
    """A timeline as plain data (histograms in HdrHistogram's compressed form), as processes hand it over."""

    width: int
    domains: list[str]
    points: list[PointState]


def _histogram() -> Histogram:
    return new_histogram(DIGITS, word_size=4)  # counts of one interval: 4 bytes a bucket, half the memory


class Interval:
    """One interval."""

    __slots__ = ("_intended", "_latency", "connections", "counts", "domains")

    def __init__(self, domains: int) -> None:
        self.counts = [0, 0, 0, 0, 0]
        self.domains = [[0, 0, 0, 0, 0] for _ in range(domains)]
        self.connections: int | None = None
        # Recorded through Tallies (trafficgen.stats.tally), read whole through the properties below.
        self._latency: Tally | None = None
        self._intended: Tally | None = None

    @property
    def latency(self) -> Histogram | None:
        """The interval's transaction latency (None: no transaction ended in it)."""
        return None if self._latency is None else self._latency.read()

    @latency.setter
    def latency(self, histogram: Histogram | None) -> None:
        self._latency = None if histogram is None else Tally(histogram)

    @property
    def intended(self) -> Histogram | None:
        """The interval's latency from the intended send time (None: no throttle, or nothing ended in it)."""
        return None if self._intended is None else self._intended.read()

    @intended.setter
    def intended(self, histogram: Histogram | None) -> None:
        self._intended = None if histogram is None else Tally(histogram)

    def add(self, other: Interval) -> None:
        """Another interval's figures in this one (the same interval of another process, or the next narrower
        interval when widening). Connections: the later sample wins when widening, samples add across processes;
        the caller says which by the order it calls in (see Timeline.merge and Timeline._widen)."""
        for i, value in enumerate(other.counts):
            self.counts[i] += value
        for mine, theirs in zip(self.domains, other.domains, strict=True):
            for i, value in enumerate(theirs):
                mine[i] += value
        self.latency = _add(self.latency, other.latency)
        self.intended = _add(self.intended, other.intended)


def _add(mine: Histogram | None, theirs: Histogram | None) -> Histogram | None:
    if theirs is None:
        return mine
    if mine is None:
        mine = _histogram()
    mine.add(theirs)
    return mine


class Timeline:
    """Everything per interval for one process (or, merged, for a run)."""

    def __init__(self, domains: list[str], width: int = 1) -> None:
        self.domain_names = list(domains)
        self.width = width  # seconds, a power of two
        self.points: dict[int, Interval] = {}
        # monotonic -> unix: outcomes carry time.monotonic() stamps
        self.offset = time.time() - time.monotonic()
        self._index = -1
        self._point: Interval | None = None

    # --- recording ----------------------------------------------------------------------------------------

    def _at(self, monotonic: float) -> Interval:
        index = int((monotonic + self.offset) // self.width)
        if index == self._index and self._point is not None:
            return self._point
        point = self.points.get(index)
        if point is None:
            point = self.points[index] = Interval(len(self.domain_names))
            if len(self.points) > MAX_POINTS:
                self._widen()
                self._index, self._point = -1, None
                return self._at(monotonic)
        self._index, self._point = index, point
        return point

    def record(
        self, at: float, domain: int, kind: Kind, latency_us: int, intended_us: int | None, connections: int = -1
    ) -> None:
        """One message's outcome, which came at monotonic time `at` (with `connections` open, when given)."""
        point = self._at(at)
        if connections >= 0:
            point.connections = connections
        point.counts[0] += 1
        point.counts[kind + 1] += 1
        row = point.domains[domain]
        row[0] += 1
        row[kind + 1] += 1
        if kind == ERROR:
            return
        latency = point._latency
        if latency is None:
            latency = point._latency = Tally(_histogram())
        latency.record(latency_us)
        if intended_us is not None:
            intended = point._intended
            if intended is None:
                intended = point._intended = Tally(_histogram())
            intended.record(intended_us)

    def recent(self) -> Histogram | None:
        """The latency of the last whole interval (the one before the interval now)."""
        index = int((time.monotonic() + self.offset) // self.width) - 1
        point = self.points.get(index)
        return None if point is None else point.latency

    def sample_connections(self, at: float, open_now: int) -> None:
        """The connections open at monotonic time `at`: an interval shows its last sample."""
        self._at(at).connections = open_now

    def _widen(self) -> None:
        """Double the interval until at most MAX_POINTS remain."""
        while len(self.points) > MAX_POINTS:
            self._widen_to(self.width * 2)

    def _widen_to(self, width: int) -> None:
        """Intervals of `width` seconds (a multiple of the current): the narrower ones each covers are added up,
        the last connection sample among them kept."""
        factor = width // self.width
        wider: dict[int, Interval] = {}
        for index in sorted(self.points):
            point = self.points[index]
            target = wider.get(index // factor)
            if target is None:
                wider[index // factor] = point
                continue
            target.add(point)
            if point.connections is not None:
                target.connections = point.connections
        self.points, self.width = wider, width
        self._index, self._point = -1, None

    # --- combining ----------------------------------------------------------------------------------------

    def state(self) -> State:
        """Plain data: each interval's figures, histograms in HdrHistogram's compressed form."""
        return {
            "width": self.width,
            "domains": self.domain_names,
            "points": [
                (
                    index,
                    point.counts,
                    point.domains,
                    point.connections,
                    _encode(point.latency),
                    _encode(point.intended),
                )
                for index, point in sorted(self.points.items())
            ],
        }

    @classmethod
    def from_state(cls, state: State) -> Timeline:
        timeline = cls(state["domains"], state["width"])
        for index, counts, domains, connections, latency, intended in state["points"]:
            point = Interval(len(timeline.domain_names))
            point.counts = list(counts)
            point.domains = [list(row) for row in domains]
            point.connections = connections
            point.latency = _decode(latency)
            point.intended = _decode(intended)
            timeline.points[index] = point
        return timeline

    def merge(self, other: Timeline) -> None:
        """Another process's or machine's timeline into this one: the wider interval of the two, each interval's
        counts and histograms added, connection samples summed (each process's own open connections)."""
        other = other._copy_remapped(self.domain_names)
        for point in self.points.values():  # rows for the domains only the other had
            point.domains += [[0, 0, 0, 0, 0] for _ in range(len(self.domain_names) - len(point.domains))]
        if other.width > self.width:
            self._widen_to(other.width)
        elif other.width < self.width:
            other._widen_to(self.width)
        for index, theirs in other.points.items():
            mine = self.points.get(index)
            if mine is None:
                self.points[index] = theirs
                continue
            mine.add(theirs)
            if theirs.connections is not None:
                mine.connections = (mine.connections or 0) + theirs.connections
        self._index, self._point = -1, None
        self._widen()

    def _copy_remapped(self, names: list[str]) -> Timeline:
        """This timeline with its domain rows in the order of `names` (domains `names` lacks are appended to it)."""
        for name in self.domain_names:
            if name not in names:
                names.append(name)
        copy = Timeline(names, self.width)
        for index, point in self.points.items():
            moved = Interval(len(names))
            moved.counts = list(point.counts)
            for name, row in zip(self.domain_names, point.domains, strict=True):
                moved.domains[names.index(name)] = list(row)
            moved.connections, moved.latency, moved.intended = point.connections, point.latency, point.intended
            copy.points[index] = moved
        return copy

    # --- reading ------------------------------------------------------------------------------------------

    def report(self, started_unix: float) -> TimelineReport:
        """The report's `timeline`: every interval from the first to the last (empty ones included)."""
        if not self.points:
            return {"interval_s": self.width, "points": [], "domains": {"interval_s": self.width, "points": []}}
        for point in self.points.values():
            while len(point.domains) < len(self.domain_names):
                point.domains.append([0, 0, 0, 0, 0])
        first, last = min(self.points), max(self.points)
        span = range(first, last + 1)
        empty = Interval(len(self.domain_names))
        points: list[Point] = []
        for index in span:
            point = self.points.get(index, empty)
            at = index * self.width
            attempted, accepted, tempfailed, permfailed, errors = point.counts
            points.append(
                {
                    "at": at,
                    "t_s": round(at - started_unix, 3),
                    "attempted": attempted,
                    "accepted": accepted,
                    "tempfailed": tempfailed,
                    "permfailed": permfailed,
                    "errors": errors,
                    "connections": point.connections,
                    "latency_ms": _percentiles(point.latency),
                    "latency_from_intended_ms": _percentiles(point.intended),
                }
            )
        return {
            "interval_s": self.width,
            "points": points,
            "domains": self._domain_report(first, last, started_unix),
            "histograms": {
                "latency": [_encode(self.points[n].latency) if n in self.points else None for n in span],
                "intended": [_encode(self.points[n].intended) if n in self.points else None for n in span],
            },
        }

    def _domain_report(self, first: int, last: int, started_unix: float) -> DomainTimeline:
        """Per-domain counts at a coarser interval (a power-of-two multiple), at most DOMAIN_POINTS of them."""
        factor = 1
        while (last // factor - first // factor + 1) > DOMAIN_POINTS:
            factor *= 2
        rows: dict[int, list[list[int]]] = {}
        for index, point in self.points.items():
            target = rows.setdefault(index // factor, [[0, 0, 0, 0, 0] for _ in self.domain_names])
            for mine, theirs in zip(target, point.domains, strict=True):
                for i, value in enumerate(theirs):
                    mine[i] += value
        points: list[DomainPoint] = []
        for index in range(first // factor, last // factor + 1):
            at = index * self.width * factor
            row = rows.get(index)
            points.append(
                {
                    "at": at,
                    "t_s": round(at - started_unix, 3),
                    "domains": {
                        name: counts_of(row[n])
                        for n, name in enumerate(self.domain_names)
                        if row is not None and row[n][0]
                    },
                }
            )
        return {"interval_s": self.width * factor, "points": points}


def from_report(timeline: TimelineReport, domains: list[str]) -> Timeline:
    """A report's timeline back as a Timeline (for `report merge`): counts, connections and histograms."""
    width = timeline["interval_s"]
    rebuilt = Timeline(domains, width)
    points = timeline["points"]
    histograms = timeline.get("histograms")
    latencies = histograms["latency"] if histograms else [None] * len(points)
    intendeds = histograms["intended"] if histograms else [None] * len(points)
    for point, latency, intended in zip(points, latencies, intendeds, strict=True):
        if not point["attempted"] and point["connections"] is None:
            continue
        built = Interval(len(domains))
        built.counts = count_list(point)
        built.connections = point["connections"]
        built.latency, built.intended = _decode(latency), _decode(intended)
        rebuilt.points[point["at"] // width] = built
    # per-domain counts come at the coarser interval: put each at the first narrow interval it covers
    first = min(rebuilt.points, default=None)
    for entry in timeline["domains"]["points"]:
        index = entry["at"] // width
        if first is not None and index < first:  # a coarse interval that began before the run's first interval
            index = first
        for name, row in entry["domains"].items():
            if name not in rebuilt.domain_names:
                rebuilt.domain_names.append(name)
                for p in rebuilt.points.values():
                    p.domains.append([0, 0, 0, 0, 0])
            target = rebuilt.points.get(index)
            if target is None:
                target = rebuilt.points[index] = Interval(len(rebuilt.domain_names))
            while len(target.domains) < len(rebuilt.domain_names):
                target.domains.append([0, 0, 0, 0, 0])
            target.domains[rebuilt.domain_names.index(name)] = count_list(row)
    return rebuilt


def _percentiles(histogram: HdrHistogram | None) -> Percentiles | None:
    if histogram is None or not histogram.get_total_count():
        return None
    _, (p50, p90, p99) = summary(histogram, [p for _, p in PERCENTILES])
    return {"p50": round(p50 / 1000.0, 3), "p90": round(p90 / 1000.0, 3), "p99": round(p99 / 1000.0, 3)}


def _encode(histogram: HdrHistogram | None) -> str | None:
    return None if histogram is None else histogram.encode().decode("ascii")


def _decode(encoded: str | None) -> Histogram | None:
    if not encoded:
        return None
    decoded = HdrHistogram.decode(encoded)
    histogram = _histogram()
    histogram.add(decoded)
    return histogram
