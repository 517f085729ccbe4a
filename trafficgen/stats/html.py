"""The HTML report: one self-contained file (Plotly's basic bundle inside it, nothing fetched at view time) with
the summary, the run's configuration, charts and tables of a JSON report, or of two side by side (`report compare`).

Pure: report dictionaries in, a string of HTML out. The charts are Plotly figures described as data; the page
draws each with Plotly.newPlot. Charts whose data a report lacks (no timeline, no profile) are left out and the
page says why. The bundle is npm's plotly.js-basic-dist-min (scatter and bar traces are all the page draws),
vendored by `make vendor-plotly`.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from trafficgen.stats.combine import percent_change, points_change
from trafficgen.stats.summary import distinct_cuts

OUTCOME_COLOURS = {
    "accepted": "#2e7d32",
    "tempfailed": "#f9a825",
    "permfailed": "#c62828",
    "errors": "#6a1b9a",
}
OUTCOMES = tuple(OUTCOME_COLOURS)
COUNTS = ("attempted", *OUTCOMES)
PERCENTILE_DASH = {"p50": "solid", "p90": "dash", "p99": "dot"}
TOP_REPLIES = 12
REPLY_LABEL = 70  # characters of a reply's text shown on its bar
BUNDLE = "vendor/plotly-basic.min.js"
BEFORE, AFTER = "before", "after"


@cache
def plotly_js() -> str:
    """The vendored Plotly bundle (package data, so a wheel carries it)."""
    return resources.files("trafficgen.stats").joinpath(BUNDLE).read_text(encoding="utf-8")


def render(report: Mapping[str, Any], other: Mapping[str, Any] | None = None) -> str:
    """The page for `report`, with `other` beside it when given (`report compare BEFORE AFTER`: `other` is
    BEFORE, `report` AFTER)."""
    charts = _charts(report, other)
    title = f"trafficgen run {report.get('run_id', '')}"
    if other is not None:
        title = f"trafficgen: {other.get('run_id', '')} (before) vs {report.get('run_id', '')} (after)"
    sections = [_summary(report, other), _configuration(report, other)]
    for chart_id, heading, figure, note in charts:
        if figure is None:
            sections.append(
                f'<section><h2>{html.escape(heading)}</h2><p class="note">{html.escape(note)}</p></section>'
            )
        else:
            sections.append(
                f'<section><h2>{html.escape(heading)}</h2><div class="chart" id="{chart_id}"></div></section>'
            )
        if chart_id == "domains":
            sections.append(_domains_table(report, other))
    for run, label in ((other, BEFORE), (report, AFTER if other is not None else "")):
        if run is not None and run.get("reconciliation"):
            sections.append(_reconciliation(run["reconciliation"], label))
    thresholds = report.get("thresholds")
    if thresholds:
        sections.append(_thresholds(thresholds))
    figures = {chart_id: figure for chart_id, _, figure, _ in charts if figure is not None}
    return _PAGE.format(
        title=html.escape(title),
        plotly=plotly_js(),
        body="\n".join(sections),
        figures=_script_json(figures),
    )


# --- the charts ------------------------------------------------------------------------------------------------

Chart = tuple[str, str, dict[str, Any] | None, str]  # (id, heading, figure or None, why there is none)


def _charts(report: Mapping[str, Any], other: Mapping[str, Any] | None) -> list[Chart]:
    timeline = report.get("timeline") or {}
    has_timeline = bool(timeline.get("points"))
    missing = "This report has no timeline (it was written by a trafficgen before 0.2)."
    charts: list[Chart] = [
        (
            "throughput",
            "Throughput over time, by outcome",
            _throughput(report, other) if has_timeline else None,
            missing,
        ),
        ("latency", "Latency percentiles over time", _latency(report, other) if has_timeline else None, missing),
        ("connections", "Open connections", _connections(report, other) if has_timeline else None, missing),
        ("domains", "Outcomes per domain", _domains(report, other), ""),
        ("replies", "Top replies", _replies(report), _replies_note(report)),
    ]
    profile = report.get("profile")
    if profile and profile.get("stages"):
        charts.append(("stages", "Profile stages: asked and achieved", _stages(profile), ""))
    return charts


def _x(timeline: dict[str, Any]) -> list[float]:
    """Each interval at its end, in seconds from the run's start. An interval is aligned on the clock, so the
    first one starts before the run did: its start would put a point before 0."""
    width = timeline["interval_s"]
    return [round(p["t_s"] + width, 3) for p in timeline["points"]]


def _layout(y_title: str, x_title: str = "", **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
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


def _time_axis(timeline: dict[str, Any]) -> str:
    return f"seconds from the start (each point: the {timeline['interval_s']:g} s up to it)"


def _throughput(report: Mapping[str, Any], other: Mapping[str, Any] | None) -> dict[str, Any]:
    timeline = report["timeline"]
    points, width = timeline["points"], timeline["interval_s"]
    x = _x(timeline)
    data: list[dict[str, Any]] = [
        {
            "type": "bar",
            "name": outcome,
            "x": x,
            "y": [round(p[outcome] / width, 3) for p in points],
            "marker": {"color": OUTCOME_COLOURS[outcome]},
        }
        for outcome in OUTCOMES
    ]
    if other is not None and (other.get("timeline") or {}).get("points"):
        theirs = other["timeline"]
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


def _latency(report: Mapping[str, Any], other: Mapping[str, Any] | None) -> dict[str, Any]:
    timeline = report["timeline"]
    points = timeline["points"]
    x = _x(timeline)
    data: list[dict[str, Any]] = []
    intended = any(p.get("latency_from_intended_ms") for p in points)
    key = "latency_from_intended_ms" if intended else "latency_ms"
    for name, dash in PERCENTILE_DASH.items():
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"{name}{' from intended send time' if intended else ''}",
                "x": x,
                "y": [(p.get(key) or {}).get(name) for p in points],
                "line": {"dash": dash, "color": "#1565c0"},
                "marker": {"size": 4},
                "connectgaps": False,
            }
        )
    if other is not None and (other.get("timeline") or {}).get("points"):
        theirs = other["timeline"]
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "before: p99",
                "x": _x(theirs),
                "y": [(p.get(key) or p.get("latency_ms") or {}).get("p99") for p in theirs["points"]],
                "line": {"dash": "dot", "color": "#455a64"},
            }
        )
    values, labels = log_ticks([y for trace in data for y in trace["y"] if y is not None])
    yaxis = {"title": {"text": "milliseconds (log scale)"}, "type": "log", "tickvals": values, "ticktext": labels}
    return {"data": data, "layout": _layout("", _time_axis(timeline), yaxis=yaxis)}


def _connections(report: Mapping[str, Any], other: Mapping[str, Any] | None) -> dict[str, Any]:
    timeline = report["timeline"]
    data: list[dict[str, Any]] = [
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
    if other is not None and (other.get("timeline") or {}).get("points"):
        theirs = other["timeline"]
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


def _domain_names(report: Mapping[str, Any], other: Mapping[str, Any] | None) -> list[str]:
    """The domains of both runs, the most attempted (after) first."""
    domains = report.get("domains") or {}
    theirs = (other or {}).get("domains") or {}
    names = list(domains) + [n for n in theirs if n not in domains]
    return sorted(names, key=lambda n: (-(domains.get(n) or theirs.get(n) or {}).get("attempted", 0), n))


def _domains(report: Mapping[str, Any], other: Mapping[str, Any] | None) -> dict[str, Any]:
    """Stacked bars of each domain's outcomes, its attempted count and acceptance written beside each bar; in a
    comparison each domain's before and after bars are paired."""
    names = _domain_names(report, other)
    runs = [("", report)] if other is None else [(BEFORE, other), (AFTER, report)]
    # Plotly draws the first category at the bottom: the most attempted domain goes on top, before over after.
    order = [f"{name} {label}".strip() for name in reversed(names) for label, _ in reversed(runs)]
    data: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for label, run in runs:
        counts = run.get("domains") or {}
        rows = [counts.get(name) or {} for name in names]
        data.extend(
            {
                "type": "bar",
                "orientation": "h",
                "name": f"{label} {outcome}".strip(),
                "legendgroup": outcome,
                "y": [f"{name} {label}".strip() for name in names],
                "x": [row.get(outcome, 0) for row in rows],
                "marker": {"color": OUTCOME_COLOURS[outcome], "opacity": 0.55 if label == BEFORE else 1.0},
            }
            for outcome in OUTCOMES
        )
        for name, row in zip(names, rows, strict=True):
            attempted = row.get("attempted", 0)
            share = f" ({row.get('accepted', 0) / attempted * 100:.1f}% accepted)" if attempted else ""
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
    longest = max((a["x"] for a in annotations), default=0)
    layout["xaxis"] = {"title": {"text": "messages"}, "range": [0, max(1, longest) * 1.3]}
    layout["yaxis"] = {"automargin": True, "categoryorder": "array", "categoryarray": order}
    return {"data": data, "layout": layout}


def _replies(report: Mapping[str, Any]) -> dict[str, Any] | None:
    replies = list(report.get("replies") or [])[:TOP_REPLIES]
    if not replies:
        return None
    replies.reverse()  # the most frequent on top
    colours = [
        OUTCOME_COLOURS["accepted" if r["code"] < 400 else "tempfailed" if r["code"] < 500 else "permfailed"]
        for r in replies
    ]
    hover = []
    for reply in replies:
        by_domain = reply.get("domains") or {}
        lines = [f"{name}: {count:,}" for name, count in sorted(by_domain.items(), key=lambda kv: -kv[1])]
        hover.append("<br>".join([html.escape(str(reply["text"]))[:200], *lines]))
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "name": "replies",
            "y": [
                f"{r['code']} {text}"
                for r, text in zip(replies, distinct_cuts([str(r["text"]) for r in replies], REPLY_LABEL), strict=True)
            ],
            "x": [r["count"] for r in replies],
            "text": [f"{r['count']:,}" for r in replies],
            "textposition": "outside",
            "cliponaxis": False,
            "marker": {"color": colours},
            "hovertext": hover,
            "hoverinfo": "x+text",
        }
    ]
    layout = _layout("", height=max(260, 60 + 30 * len(replies)), hovermode="closest", showlegend=False)
    layout["xaxis"] = {"title": {"text": "messages"}}
    layout["yaxis"] = {"automargin": True}
    return {"data": data, "layout": layout}


def _replies_note(report: Mapping[str, Any]) -> str:
    return "" if report.get("replies") else "No message got a reply (every outcome was an error)."


def _stages(profile: dict[str, Any]) -> dict[str, Any]:
    stages = profile["stages"]
    labels = [f"{n + 1}. {s['stage']}" for n, s in enumerate(stages)]
    data = [
        {"type": "bar", "name": "asked /s", "x": labels, "y": [s["asked_per_s"] for s in stages]},
        {
            "type": "bar",
            "name": "achieved /s",
            "x": labels,
            "y": [s["achieved_per_s"] for s in stages],
            "marker": {"color": ["#c62828" if s.get("behind") else "#2e7d32" for s in stages]},
        },
    ]
    layout = _layout("messages per second", barmode="group", hovermode="closest")
    layout["xaxis"] = {"title": {"text": "stage"}, "automargin": True}
    return {"data": data, "layout": layout}


# --- tables ----------------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _table(heads: list[str], rows: list[tuple[str, list[Any]]], css: str = "") -> str:
    header = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    body = "".join(
        f"<tr><th>{html.escape(name)}</th>{''.join(f'<td>{_cell(v)}</td>' for v in values)}</tr>"
        for name, values in rows
    )
    return f'<table class="{css}"><tr>{header}</tr>{body}</table>'


def _percent(share: float | None, digits: int = 2) -> str:
    return "-" if share is None else f"{share * 100:.{digits}f}%"


def _summary(report: Mapping[str, Any], other: Mapping[str, Any] | None) -> str:
    runs = [report] if other is None else [other, report]
    heads = ["", *([BEFORE, AFTER, "change"] if other is not None else ["this run"])]
    latency = [r.get("latency_ms") or {} for r in runs]
    rows: list[tuple[str, list[Any]]] = [
        ("run id", [r.get("run_id") for r in runs]),
        ("target", [r.get("target") for r in runs]),
        ("started", [r.get("started_at") for r in runs]),
        ("sending window (s)", [r.get("sending_s") for r in runs]),
        *[(key, [(r.get("totals") or {}).get(key) for r in runs]) for key in COUNTS],
        ("success rate", [_percent(r.get("success_rate")) for r in runs]),
        ("messages per second", [(r.get("throughput") or {}).get("per_second") for r in runs]),
        *[(f"latency {p} (ms)", [lat.get(p) for lat in latency]) for p in ("p50", "p90", "p99", "max")],
    ]
    if other is not None:
        rows = [(name, [*values, _change(name, values, other, report)]) for name, values in rows]
    return f"<section><h2>Summary</h2>{_table(heads, rows, 'summary')}</section>"


def _change(name: str, values: list[Any], before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """A summary row's change: in points for the success rate, none for names, else in percent."""
    if name == "success rate":
        return points_change(before.get("success_rate"), after.get("success_rate"))
    if name in ("run id", "target", "started"):
        return ""
    return percent_change(*values)


def _body_size(config: dict[str, Any]) -> str:
    if config.get("body_size_median"):
        return f"log-normal: median {config['body_size_median']:,} B, p99 {config['body_size_p99']:,} B"
    low, high = (config.get("body_size") or [None, None])[:2]
    if low is None:
        return "-"
    return f"{low:,} B" if low == high else f"{low:,} to {high:,} B"


def _weights(weights: dict[str, float] | None) -> str:
    if not weights:
        return "-"
    total = sum(weights.values()) or 1.0
    return ", ".join(f"{name} {w:g} ({w / total * 100:.1f}%)" for name, w in weights.items())


CONFIG_ROWS: tuple[tuple[str, Any], ...] = (
    ("target", lambda r, c: r.get("target")),
    ("concurrency (connections)", lambda r, c: c.get("concurrency")),
    ("processes", lambda r, c: c.get("processes")),
    ("duration (s)", lambda r, c: c.get("duration_s")),
    ("message count", lambda r, c: c.get("message_count")),
    ("throttle (per second)", lambda r, c: c.get("throttle_per_s")),
    ("profile", lambda r, c: c.get("profile")),
    ("body size", lambda r, c: _body_size(c)),
    ("content", lambda r, c: c.get("content")),
    ("recipients per message", lambda r, c: c.get("recipients_per_message")),
    ("domain weights", lambda r, c: _weights(c.get("domains"))),
    ("domain suffix", lambda r, c: c.get("domain_suffix")),
    ("pipelining", lambda r, c: c.get("pipelining")),
    ("STARTTLS", lambda r, c: c.get("starttls")),
    ("seed", lambda r, c: None if c.get("seed") is None else str(c["seed"])),  # a seed, not a count: no commas
    ("merged from", lambda r, c: ", ".join(str(p.get("run_id")) for p in c.get("merged_from") or []) or None),
)


def _configuration(report: Mapping[str, Any], other: Mapping[str, Any] | None) -> str:
    """The options that shaped the run (a merged report: its parts' run ids and their connections in all)."""
    runs = [report] if other is None else [other, report]
    heads = ["", *([BEFORE, AFTER] if other is not None else ["this run"])]
    rows = []
    for name, read in CONFIG_ROWS:
        values = [read(r, r.get("config") or {}) for r in runs]
        if any(v not in (None, "", "-") for v in values):
            rows.append((name, values))
    return f"<section><h2>Configuration</h2>{_table(heads, rows, 'configuration')}</section>"


def _accepted_share(row: dict[str, Any] | None) -> float | None:
    if not row or not row.get("attempted"):
        return None
    return float(row["accepted"]) / float(row["attempted"])


def _domains_table(report: Mapping[str, Any], other: Mapping[str, Any] | None) -> str:
    """Each domain's counts and acceptance; in a comparison, before and after side by side with the change."""
    names = _domain_names(report, other)
    mine = report.get("domains") or {}
    if other is None:
        heads = ["domain", *COUNTS, "accepted %"]
        rows = [
            (name, [*((mine[name]).get(k) for k in COUNTS), _percent(_accepted_share(mine[name]), 1)]) for name in names
        ]
    else:
        theirs = other.get("domains") or {}
        heads = ["domain", "attempted before", "attempted after", "accepted % before", "accepted % after", "change"]
        rows = []
        for name in names:
            before, after = theirs.get(name), mine.get(name)
            shares = _accepted_share(before), _accepted_share(after)
            rows.append(
                (
                    name,
                    [
                        (before or {}).get("attempted"),
                        (after or {}).get("attempted"),
                        _percent(shares[0], 1),
                        _percent(shares[1], 1),
                        points_change(*shares),
                    ],
                )
            )
    return f"<section><h2>Domains</h2>{_table(heads, rows, 'domains')}</section>"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _reconciliation(r: dict[str, Any], label: str) -> str:
    """What became of the accepted messages, as the sinks saw them: every count the reconciliation holds (so
    counts added later show without a change here), its tables of counts, and the ids of each problem."""
    heading = "Reconciliation" + (f" ({label})" if label else "")
    if "error" in r:
        return (
            f'<section><h2>{heading}</h2><p class="note">The sink\'s ledger could not be read '
            f"({html.escape(str(r.get('sink')))}): {html.escape(str(r['error']))}</p></section>"
        )
    waited = f" after waiting {r['waited_s']:g} s" if _is_number(r.get("waited_s")) and r.get("waited_s") else ""
    parts = [
        f"<p>As the sink{'s' if ',' in str(r.get('sink', '')) else ''} at {_cell(r.get('sink'))} saw it{waited}.</p>"
    ]
    counts = [(k.replace("_", " "), [v]) for k, v in r.items() if _is_number(v) and k != "waited_s"]
    if counts:
        parts.append(_table(["", "count"], counts, "reconciliation"))
    views = {k: r[k] for k in VIEWS if isinstance(r.get(k), dict)}
    if views:
        parts.append(_outcomes(views))
    for key, value in r.items():
        if key in ("marks", "sink", *views) or _is_number(value) or value is None:
            continue
        parts.append(_samples(value) if key == "samples" else _reconciliation_part(key, value))
    return f'<section id="reconciliation"><h2>{heading}</h2>{"".join(parts)}</section>'


VIEWS = ("recipients", "messages")  # schema 2: the outcome of each recipient, and of each message from its recipients
ALWAYS = ("delivered", "duplicated", "lost")  # columns shown even at 0, as the terminal shows them


def _outcomes(views: dict[str, dict[str, Any]]) -> str:
    """The recipients' and the messages' outcomes as one table, a row each (the columns with something in them and
    always delivered, duplicated, lost, as in the terminal), then their attempts, then any other part."""
    columns = [
        c
        for c in dict.fromkeys(k for view in views.values() for k, v in view.items() if _is_number(v))
        if c in ALWAYS or c == "accepted" or any(view.get(c) for view in views.values())
    ]
    out = _table(
        ["", *(c.replace("_", " ") for c in columns)],
        [(k, [v.get(c) for c in columns]) for k, v in views.items()],
        "reconciliation",
    )
    nested = {
        key: {name: view[key] for name, view in views.items() if isinstance(view.get(key), dict)}
        for key in dict.fromkeys(k for view in views.values() for k, v in view.items() if isinstance(v, dict))
    }
    for key, rows in nested.items():
        out += f"<h3>{html.escape(key.replace('_', ' '))}</h3>" + _rows_table(rows)
    return out


def _samples(samples: Any) -> str:
    """Up to 20 of each problem's recipients: the message id, the recipient, what the sink and the MTA said."""
    if not isinstance(samples, dict):
        return _reconciliation_part("samples", samples)
    out = ""
    for kind, entries in samples.items():
        if not entries:
            continue
        if not (isinstance(entries, list) and all(isinstance(e, dict) for e in entries)):
            out += _reconciliation_part(kind, entries)
            continue
        columns = list(dict.fromkeys(k for e in entries[:20] for k in e))
        more = f" (the first 20 of {len(entries):,})" if len(entries) > 20 else ""
        out += f"<h3>{html.escape(kind.replace('_', ' '))}{more}</h3>" + _table(
            columns,
            [(str(e.get(columns[0])), [e.get(c) for c in columns[1:]]) for e in entries[:20]],
            "reconciliation",
        )
    return out


def _counts_only(value: Any) -> bool:
    return isinstance(value, dict) and all(_is_number(v) or v is None for v in value.values())


def _reconciliation_part(key: str, value: Any) -> str:
    """One entry besides the counts: ids, a row of counts, a table of rows of counts, or its parts in turn."""
    name = html.escape(key.replace("_", " "))
    if isinstance(value, list):
        shown = " ".join(html.escape(str(v)) for v in value[:20])
        more = f" and {len(value) - 20:,} more" if len(value) > 20 else ""
        return f'<p><b>{name}</b>: <span class="ids">{shown or "none"}{more}</span></p>'
    if not isinstance(value, dict):
        return f"<p><b>{name}</b>: {_cell(value)}</p>"
    if _counts_only(value):
        return f"<h3>{name}</h3>" + _table(["", *map(str, value)], [("", list(value.values()))], "reconciliation")
    rows = {k: v for k, v in value.items() if _counts_only(v)}
    out = f"<h3>{name}</h3>" + (_rows_table(rows) if rows else "")
    return out + "".join(_reconciliation_part(f"{key} {k}", v) for k, v in value.items() if k not in rows)


def _rows_table(rows: dict[str, dict[str, Any]]) -> str:
    """Rows of counts (a domain's transit times...) as one table, the union of their keys as columns."""
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    return _table(
        ["", *columns], [(str(k), [row.get(c) for c in columns]) for k, row in rows.items()], "reconciliation"
    )


def _thresholds(thresholds: dict[str, Any]) -> str:
    rows = "".join(
        f'<tr class="{"pass" if r.get("passed") else "fail"}"><td>{html.escape(str(r.get("expression")))}</td>'
        f"<td>{html.escape(str(r.get('shown') or r.get('value')))}</td>"
        f"<td>{'passed' if r.get('passed') else 'FAILED'}</td></tr>"
        for r in thresholds.get("results") or []
    )
    verdict = "all passed" if thresholds.get("passed") else "not all passed"
    return (
        f"<section><h2>Thresholds: {verdict}</h2><table><tr><th>threshold</th><th>measured</th><th></th></tr>"
        f"{rows}</table></section>"
    )


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.4rem; }} h2 {{ font-size: 1.1rem; margin-top: 2rem; }} h3 {{ font-size: 1rem; }}
table {{ border-collapse: collapse; }} th, td {{ padding: 0.2rem 0.8rem; text-align: right; }}
th:first-child {{ text-align: left; }} tr:nth-child(even) {{ background: #f4f6f8; }}
tr.fail td {{ color: #c62828; font-weight: bold; }} .note {{ color: #666; }}
.ids {{ font-family: monospace; word-break: break-all; }}
.chart {{ width: 100%; }}
</style>
<script>{plotly}</script>
</head>
<body>
<h1>{title}</h1>
{body}
<script>
const figures = {figures};
for (const [id, figure] of Object.entries(figures)) {{
  Plotly.newPlot(id, figure.data, figure.layout, {{displaylogo: false, responsive: true}});
}}
</script>
</body>
</html>
"""
