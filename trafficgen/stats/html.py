"""The HTML report: one self-contained file (Plotly's JavaScript inside it, nothing fetched at view time) with
charts of a JSON report, or of two overlaid (`report compare`).

Pure: report dictionaries in, a string of HTML out. The charts are Plotly figures described as data; the page
draws each with Plotly.newPlot. Charts whose data a report lacks (no timeline, no profile) are left out and the
page says why.
"""

from __future__ import annotations

import html
import json
from typing import Any

from plotly.offline import get_plotlyjs

OUTCOME_COLOURS = {
    "accepted": "#2e7d32",
    "tempfailed": "#f9a825",
    "permfailed": "#c62828",
    "errors": "#6a1b9a",
}
OUTCOMES = tuple(OUTCOME_COLOURS)
PERCENTILE_DASH = {"p50": "solid", "p90": "dash", "p99": "dot"}
TOP_REPLIES = 12
REPLY_LABEL = 70  # characters of a reply's text shown on its bar


def render(report: dict[str, Any], other: dict[str, Any] | None = None) -> str:
    """The page for `report`, with `other` overlaid when given (`report compare BEFORE AFTER`: `other` is
    BEFORE, `report` AFTER)."""
    charts = _charts(report, other)
    title = f"trafficgen run {report.get('run_id', '')}"
    if other is not None:
        title = f"trafficgen: {other.get('run_id', '')} (before) vs {report.get('run_id', '')} (after)"
    sections = [_summary(report, other)]
    for chart_id, heading, figure, note in charts:
        if figure is None:
            sections.append(
                f'<section><h2>{html.escape(heading)}</h2><p class="note">{html.escape(note)}</p></section>'
            )
        else:
            sections.append(
                f'<section><h2>{html.escape(heading)}</h2><div class="chart" id="{chart_id}"></div></section>'
            )
    thresholds = report.get("thresholds")
    if thresholds:
        sections.append(_thresholds(thresholds))
    figures = {chart_id: figure for chart_id, _, figure, _ in charts if figure is not None}
    return _PAGE.format(
        title=html.escape(title),
        plotly=get_plotlyjs(),
        body="\n".join(sections),
        figures=_script_json(figures),
    )


# --- the charts ------------------------------------------------------------------------------------------------

Chart = tuple[str, str, dict[str, Any] | None, str]  # (id, heading, figure or None, why there is none)


def _charts(report: dict[str, Any], other: dict[str, Any] | None) -> list[Chart]:
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


def _x(points: list[dict[str, Any]]) -> list[float]:
    return [p["t_s"] for p in points]


def _layout(y_title: str, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "margin": {"l": 70, "r": 20, "t": 20, "b": 50},
        "xaxis": {"title": {"text": "seconds from the start"}},
        "yaxis": {"title": {"text": y_title}, "rangemode": "tozero"},
        "legend": {"orientation": "h", "y": -0.2},
        "hovermode": "x unified",
        "height": 360,
    }
    layout.update(extra)
    return layout


def _throughput(report: dict[str, Any], other: dict[str, Any] | None) -> dict[str, Any]:
    timeline = report["timeline"]
    points, width = timeline["points"], timeline["interval_s"]
    x = _x(points)
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
                "x": _x(theirs["points"]),
                "y": [round(p["attempted"] / theirs["interval_s"], 3) for p in theirs["points"]],
                "line": {"color": "#455a64", "dash": "dash"},
            }
        )
    return {"data": data, "layout": _layout(f"messages per second ({width} s intervals)", barmode="stack", bargap=0)}


def _latency(report: dict[str, Any], other: dict[str, Any] | None) -> dict[str, Any]:
    points = report["timeline"]["points"]
    x = _x(points)
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
        theirs = other["timeline"]["points"]
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "before: p99",
                "x": _x(theirs),
                "y": [(p.get(key) or p.get("latency_ms") or {}).get("p99") for p in theirs],
                "line": {"dash": "dot", "color": "#455a64"},
            }
        )
    return {"data": data, "layout": _layout("milliseconds", yaxis={"title": {"text": "milliseconds"}, "type": "log"})}


def _connections(report: dict[str, Any], other: dict[str, Any] | None) -> dict[str, Any]:
    points = report["timeline"]["points"]
    data: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "open connections",
            "x": _x(points),
            "y": [p["connections"] for p in points],
            "line": {"shape": "hv", "color": "#00838f"},
            "connectgaps": True,
        }
    ]
    if other is not None and (other.get("timeline") or {}).get("points"):
        theirs = other["timeline"]["points"]
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "before",
                "x": _x(theirs),
                "y": [p["connections"] for p in theirs],
                "line": {"shape": "hv", "dash": "dash", "color": "#455a64"},
                "connectgaps": True,
            }
        )
    return {"data": data, "layout": _layout("connections")}


def _domains(report: dict[str, Any], other: dict[str, Any] | None) -> dict[str, Any]:
    domains = report.get("domains") or {}
    names = sorted(domains, key=lambda n: domains[n]["attempted"])
    runs = [("", report)] if other is None else [("before", other), ("after", report)]
    data: list[dict[str, Any]] = []
    for label, run in runs:
        counts = run.get("domains") or {}
        data.extend(
            {
                "type": "bar",
                "orientation": "h",
                "name": f"{label} {outcome}".strip(),
                "legendgroup": outcome,
                "y": [f"{name} {label}".strip() for name in names],
                "x": [(counts.get(name) or {}).get(outcome, 0) for name in names],
                "marker": {"color": OUTCOME_COLOURS[outcome], "opacity": 0.55 if label == "before" else 1.0},
            }
            for outcome in OUTCOMES
        )
    height = max(260, 40 + 28 * len(names) * len(runs))
    layout = _layout("", barmode="stack", height=height, hovermode="y unified")
    layout["legend"] = {"orientation": "h", "y": -0.25 if other is None else -0.4}
    layout["xaxis"] = {"title": {"text": "messages"}}
    layout["yaxis"] = {"automargin": True}
    return {"data": data, "layout": layout}


def _reply_label(reply: dict[str, Any]) -> str:
    text = str(reply["text"])
    if len(text) > REPLY_LABEL:
        text = text[: REPLY_LABEL - 1] + "…"
    return f"{reply['code']} {text}"


def _replies(report: dict[str, Any]) -> dict[str, Any] | None:
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
            "y": [_reply_label(r) for r in replies],
            "x": [r["count"] for r in replies],
            "marker": {"color": colours},
            "hovertext": hover,
            "hoverinfo": "x+text",
        }
    ]
    layout = _layout("", height=max(260, 40 + 30 * len(replies)), hovermode="closest", showlegend=False)
    layout["xaxis"] = {"title": {"text": "messages"}}
    layout["yaxis"] = {"automargin": True}
    return {"data": data, "layout": layout}


def _replies_note(report: dict[str, Any]) -> str:
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
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _summary(report: dict[str, Any], other: dict[str, Any] | None) -> str:
    runs = [report] if other is None else [other, report]
    heads = ["", *(["before", "after"] if other is not None else ["this run"])]
    latency = [r.get("latency_ms") or {} for r in runs]
    rows = [
        ("run id", [r.get("run_id") for r in runs]),
        ("target", [r.get("target") for r in runs]),
        ("started", [r.get("started_at") for r in runs]),
        ("sending window (s)", [r.get("sending_s") for r in runs]),
        *[(key, [(r.get("totals") or {}).get(key) for r in runs]) for key in ("attempted", *OUTCOMES)],
        ("messages per second", [(r.get("throughput") or {}).get("per_second") for r in runs]),
        *[(f"latency {p} (ms)", [lat.get(p) for lat in latency]) for p in ("p50", "p90", "p99", "max")],
    ]
    header = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    body = "".join(
        f"<tr><th>{html.escape(name)}</th>{''.join(f'<td>{_cell(v)}</td>' for v in values)}</tr>"
        for name, values in rows
    )
    return f'<section><h2>Summary</h2><table class="summary"><tr>{header}</tr>{body}</table></section>'


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
h1 {{ font-size: 1.4rem; }} h2 {{ font-size: 1.1rem; margin-top: 2rem; }}
table {{ border-collapse: collapse; }} th, td {{ padding: 0.2rem 0.8rem; text-align: right; }}
th:first-child {{ text-align: left; }} tr:nth-child(even) {{ background: #f4f6f8; }}
tr.fail td {{ color: #c62828; font-weight: bold; }} .note {{ color: #666; }}
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
