"""The HTML report's charts: throughput, latency and connections over time, outcomes per domain, the top replies and
the profile's stages of a report (trafficgen.stats.document), with the earlier run's drawn over them in a comparison.

Pure: a Report in, Plotly figures out, described as data (json.dumps writes them into the page, which draws each with
Plotly.newPlot). A chart whose data the report lacks (no timeline, no reply) has no figure, and a line saying why.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Literal

from typing_extensions import TypeAliasType

from trafficgen.stats.document import (
    COUNT_KEYS,
    Counts,
    Percentiles,
    Point,
    ProfileReport,
    Reply,
    Report,
    TimelineReport,
    count_values,
)
from trafficgen.stats.summary import distinct_cuts

# What a figure holds, as json.dumps writes it: Sequence and Mapping (not list and dict), so that a list[float] of
# points or a dict[str, str] of a marker is one as it is.
PlotValue = TypeAliasType(
    "PlotValue", "bool | int | float | str | Sequence[PlotValue] | Mapping[str, PlotValue] | None"
)
Figure = dict[str, PlotValue]  # {"data": [traces], "layout": {...}}; a trace and a layout are ones too
Chart = tuple[str, str, Figure | None, str]  # (id, heading, figure or None, why there is none)

OUTCOME_COLOURS = {
    "accepted": "#2e7d32",
    "tempfailed": "#f9a825",
    "permfailed": "#c62828",
    "errors": "#6a1b9a",
}
OUTCOMES = tuple(OUTCOME_COLOURS)
Percentile = Literal["p50", "p90", "p99"]
PERCENTILE_DASH: dict[Percentile, str] = {"p50": "solid", "p90": "dash", "p99": "dot"}
TOP_REPLIES = 12
REPLY_LABEL = 70  # characters of a reply's text shown on its bar
BEFORE, AFTER = "before", "after"
NO_TIMELINE = "This report has no timeline (it was written by a trafficgen before 0.2)."


def charts(report: Report, other: Report | None) -> list[Chart]:
    """The charts of `report`, in the page's order, with `other` (the run before) drawn over them when given."""
    timeline, theirs = _drawn(report), _drawn(other)
    found: list[Chart] = [
        (
            "throughput",
            "Throughput over time, by outcome",
            _throughput(timeline, theirs) if timeline else None,
            NO_TIMELINE,
        ),
        ("latency", "Latency percentiles over time", _latency(timeline, theirs) if timeline else None, NO_TIMELINE),
        ("connections", "Open connections", _connections(timeline, theirs) if timeline else None, NO_TIMELINE),
        ("domains", "Outcomes per domain", _domains(report, other), ""),
        ("replies", "Top replies", _replies(report["replies"]), _replies_note(report)),
    ]
    profile = report["profile"]
    if profile and profile["stages"]:
        found.append(("stages", "Profile stages: asked and achieved", _stages(profile), ""))
    return found


def _drawn(run: Report | None) -> TimelineReport | None:
    """A run's timeline when it has a point to draw."""
    timeline = run["timeline"] if run is not None else None
    return timeline if timeline and timeline["points"] else None


def _x(timeline: TimelineReport) -> list[float]:
    """Each interval at its end, in seconds from the run's start. An interval is aligned on the clock, so the
    first one starts before the run did: its start would put a point before 0."""
    width = timeline["interval_s"]
    return [round(p["t_s"] + width, 3) for p in timeline["points"]]


def _layout(y_title: str, x_title: str = "", **extra: PlotValue) -> Figure:
    layout: Figure = {
        # the top margin holds the toolbar (Plotly's modebar), so it never covers the plot
        "margin": {"l": 70, "r": 20, "t": 36, "b": 50},
        "xaxis": {"title": {"text": x_title}},
        "yaxis": {"title": {"text": y_title}, "rangemode": "tozero"},
        "legend": {"orientation": "h", "y": -0.2},
        "hovermode": "x unified",
        "height": 360,
    }
    layout.update(extra)
    return layout


def _time_axis(timeline: TimelineReport) -> str:
    return f"seconds from the start (each point: the {timeline['interval_s']:g} s up to it)"


def _throughput(timeline: TimelineReport, theirs: TimelineReport | None) -> Figure:
    width = timeline["interval_s"]
    x = _x(timeline)
    rows = [count_values(p) for p in timeline["points"]]
    data: list[Figure] = [
        {
            "type": "bar",
            "name": outcome,
            "x": x,
            "y": [round(row[outcome] / width, 3) for row in rows],
            "marker": {"color": OUTCOME_COLOURS[outcome]},
        }
        for outcome in OUTCOMES
    ]
    if theirs is not None:
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "before: attempted",
                "x": _x(theirs),
                "y": [round(p["attempted"] / theirs["interval_s"], 3) for p in theirs["points"]],
                "line": {"color": "#455a64", "dash": "dash"},
            }
        )
    layout = _layout(f"messages per second ({width:g} s intervals)", _time_axis(timeline), barmode="stack", bargap=0)
    return {"data": data, "layout": layout}


def log_ticks(values: list[float]) -> tuple[list[float], list[str]]:
    """Tick values and labels of a log axis over `values`: 1, 2, 5 in each decade (only the powers of ten over
    more than four decades), each labelled with its whole value, so no label reads as a number it is not."""
    shown = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not shown:
        return [], []
    low, high = math.floor(math.log10(min(shown))), math.ceil(math.log10(max(shown)))
    steps = (1,) if high - low > 4 else (1, 2, 5)
    ticks = [m * 10.0**e for e in range(low, high + 1) for m in steps]
    return ticks, [f"{t:,.{max(0, -math.floor(math.log10(t)))}f}" for t in ticks]


def _percentiles(point: Point, intended: bool) -> Percentiles | None:
    """An interval's latency percentiles: from the intended send time, or the transaction's."""
    return point.get("latency_from_intended_ms") if intended else point.get("latency_ms")


def _latency(timeline: TimelineReport, theirs: TimelineReport | None) -> Figure:
    points = timeline["points"]
    x = _x(timeline)
    data: list[Figure] = []
    intended = any(p.get("latency_from_intended_ms") for p in points)
    drawn: list[list[float | None]] = []
    for name, dash in PERCENTILE_DASH.items():
        y = [shown[name] if (shown := _percentiles(p, intended)) else None for p in points]
        drawn.append(y)
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"{name}{' from intended send time' if intended else ''}",
                "x": x,
                "y": y,
                "line": {"dash": dash, "color": "#1565c0"},
                "marker": {"size": 4},
                "connectgaps": False,
            }
        )
    if theirs is not None:
        # the earlier run's p99 of the same kind, or its transaction's when it did not measure that kind
        y = [
            shown["p99"] if (shown := _percentiles(p, intended) or p.get("latency_ms")) else None
            for p in theirs["points"]
        ]
        drawn.append(y)
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "before: p99",
                "x": _x(theirs),
                "y": y,
                "line": {"dash": "dot", "color": "#455a64"},
            }
        )
    values, labels = log_ticks([value for y in drawn for value in y if value is not None])
    yaxis: Figure = {
        "title": {"text": "milliseconds (log scale)"},
        "type": "log",
        "tickvals": values,
        "ticktext": labels,
    }
    return {"data": data, "layout": _layout("", _time_axis(timeline), yaxis=yaxis)}


def _connections(timeline: TimelineReport, theirs: TimelineReport | None) -> Figure:
    data: list[Figure] = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "open connections",
            "x": _x(timeline),
            "y": [p["connections"] for p in timeline["points"]],
            "line": {"shape": "hv", "color": "#00838f"},
            "connectgaps": True,
        }
    ]
    if theirs is not None:
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "before",
                "x": _x(theirs),
                "y": [p["connections"] for p in theirs["points"]],
                "line": {"shape": "hv", "dash": "dash", "color": "#455a64"},
                "connectgaps": True,
            }
        )
    return {"data": data, "layout": _layout("connections", _time_axis(timeline))}


def domain_names(report: Report, other: Report | None) -> list[str]:
    """The domains of both runs, the most attempted (after) first."""
    domains = report["domains"]
    theirs = other["domains"] if other is not None else {}
    names = list(domains) + [n for n in theirs if n not in domains]

    def attempted(name: str) -> int:
        row = domains.get(name) or theirs.get(name)
        return row["attempted"] if row else 0

    return sorted(names, key=lambda n: (-attempted(n), n))


def _counts(rows: dict[str, Counts], name: str) -> dict[str, int]:
    """A domain's counts by name; all 0 where the run sent it nothing."""
    row = rows.get(name)
    return count_values(row) if row else dict.fromkeys(COUNT_KEYS, 0)


def _domains(report: Report, other: Report | None) -> Figure:
    """Stacked bars of each domain's outcomes, its attempted count and acceptance written beside each bar; in a
    comparison each domain's before and after bars are paired."""
    names = domain_names(report, other)
    runs = [("", report)] if other is None else [(BEFORE, other), (AFTER, report)]
    # Plotly draws the first category at the bottom: the most attempted domain goes on top, before over after.
    order = [f"{name} {label}".strip() for name in reversed(names) for label, _ in reversed(runs)]
    data: list[Figure] = []
    annotations: list[Figure] = []
    longest = 0
    for label, run in runs:
        rows = [_counts(run["domains"], name) for name in names]
        data.extend(
            {
                "type": "bar",
                "orientation": "h",
                "name": f"{label} {outcome}".strip(),
                "legendgroup": outcome,
                "y": [f"{name} {label}".strip() for name in names],
                "x": [row[outcome] for row in rows],
                "marker": {"color": OUTCOME_COLOURS[outcome], "opacity": 0.55 if label == BEFORE else 1.0},
            }
            for outcome in OUTCOMES
        )
        for name, row in zip(names, rows, strict=True):
            attempted = row["attempted"]
            longest = max(longest, attempted)
            share = f" ({row['accepted'] / attempted * 100:.1f}% accepted)" if attempted else ""
            annotations.append(
                {
                    "x": attempted,
                    "y": f"{name} {label}".strip(),
                    "text": f"{attempted:,}{share}",
                    "xanchor": "left",
                    "showarrow": False,
                    "xshift": 4,
                    "font": {"size": 11},
                }
            )
    height = max(260, 60 + 26 * len(order))
    layout = _layout("", barmode="stack", height=height, hovermode="y unified", annotations=annotations)
    layout["legend"] = {"orientation": "h", "y": -60 / height * 2}
    # room on the right of the longest bar for its numbers
    layout["xaxis"] = {"title": {"text": "messages"}, "range": [0, max(1, longest) * 1.3]}
    layout["yaxis"] = {"automargin": True, "categoryorder": "array", "categoryarray": order}
    return {"data": data, "layout": layout}


def _reply_colour(reply: Reply) -> str:
    code = reply["code"]
    return OUTCOME_COLOURS["accepted" if code < 400 else "tempfailed" if code < 500 else "permfailed"]


def _replies(all_replies: list[Reply]) -> Figure | None:
    replies = all_replies[:TOP_REPLIES]
    if not replies:
        return None
    replies.reverse()  # the most frequent on top
    hover = []
    for reply in replies:
        by_domain = reply.get("domains") or {}
        lines = [f"{name}: {count:,}" for name, count in sorted(by_domain.items(), key=lambda kv: -kv[1])]
        hover.append("<br>".join([html.escape(reply["text"])[:200], *lines]))
    texts = distinct_cuts([r["text"] for r in replies], REPLY_LABEL)
    data: list[Figure] = [
        {
            "type": "bar",
            "orientation": "h",
            "name": "replies",
            "y": [f"{r['code']} {text}" for r, text in zip(replies, texts, strict=True)],
            "x": [r["count"] for r in replies],
            "text": [f"{r['count']:,}" for r in replies],
            "textposition": "outside",
            "cliponaxis": False,
            "marker": {"color": [_reply_colour(r) for r in replies]},
            "hovertext": hover,
            "hoverinfo": "x+text",
        }
    ]
    layout = _layout("", height=max(260, 60 + 30 * len(replies)), hovermode="closest", showlegend=False)
    layout["xaxis"] = {"title": {"text": "messages"}}
    layout["yaxis"] = {"automargin": True}
    return {"data": data, "layout": layout}


def _replies_note(report: Report) -> str:
    return "" if report["replies"] else "No message got a reply (every outcome was an error)."


def _stages(profile: ProfileReport) -> Figure:
    stages = profile["stages"]
    labels = [f"{n + 1}. {s['stage']}" for n, s in enumerate(stages)]
    data: list[Figure] = [
        {"type": "bar", "name": "asked /s", "x": labels, "y": [s["asked_per_s"] for s in stages]},
        {
            "type": "bar",
            "name": "achieved /s",
            "x": labels,
            "y": [s["achieved_per_s"] for s in stages],
            "marker": {"color": ["#c62828" if s["behind"] else "#2e7d32" for s in stages]},
        },
    ]
    layout = _layout("messages per second", barmode="group", hovermode="closest")
    layout["xaxis"] = {"title": {"text": "stage"}, "automargin": True}
    return {"data": data, "layout": layout}
