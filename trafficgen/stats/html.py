"""The HTML report: one self-contained file (Plotly's basic bundle inside it, nothing fetched at view time) with
the summary, the run's configuration, charts and tables of a report, or of two side by side (`report compare`).

Pure: Reports (trafficgen.stats.document) in, a string of HTML out. This module writes the page and its tables;
the charts are trafficgen.stats.charts' Plotly figures, which the page draws with Plotly.newPlot. Charts whose data
a report lacks (no timeline, no profile) are left out and the page says why. The bundle is npm's
plotly.js-basic-dist-min (scatter and bar traces are all the page draws), vendored by `make vendor-plotly`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from importlib import resources

from trafficgen.stats.charts import AFTER, BEFORE, Figure, charts, domain_names
from trafficgen.stats.combine import percent_change, points_change
from trafficgen.stats.document import (
    COUNT_KEYS,
    ConfigView,
    Json,
    MessageOutcomes,
    RecipientOutcomes,
    ReconcileFailure,
    Reconciliation,
    Report,
    Sample,
    Thresholds,
    Transit,
    TransitStats,
    accepted_share,
    count_list,
    count_values,
    latency_values,
)

BUNDLE = "vendor/plotly-basic.min.js"

Row = tuple[str, Sequence[Json]]  # a table's row: its name, then its cells


@cache
def plotly_js() -> str:
    """The vendored Plotly bundle (package data, so a wheel carries it)."""
    return resources.files("trafficgen.stats").joinpath(BUNDLE).read_text(encoding="utf-8")


def render(report: Report, other: Report | None = None) -> str:
    """The page for `report`, with `other` beside it when given (`report compare BEFORE AFTER`: `other` is
    BEFORE, `report` AFTER)."""
    drawn = charts(report, other)
    title = f"trafficgen run {report['run_id']}"
    if other is not None:
        title = f"trafficgen: {other['run_id']} (before) vs {report['run_id']} (after)"
    sections = [_summary(report, other), _configuration(report, other)]
    for chart_id, heading, figure, note in drawn:
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
        reconciliation = run.get("reconciliation") if run is not None else None
        if reconciliation:
            sections.append(_reconciliation(reconciliation, label))
    thresholds = report["thresholds"]
    if thresholds:
        sections.append(_thresholds(thresholds))
    figures = {chart_id: figure for chart_id, _, figure, _ in drawn if figure is not None}
    return _PAGE.format(
        title=html.escape(title),
        plotly=plotly_js(),
        body="\n".join(sections),
        figures=_script_json(figures),
    )


# --- tables ----------------------------------------------------------------------------------------------------


def _cell(value: Json) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _table(heads: Sequence[str], rows: Sequence[Row], css: str = "") -> str:
    header = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    body = "".join(
        f"<tr><th>{html.escape(name)}</th>{''.join(f'<td>{_cell(v)}</td>' for v in values)}</tr>"
        for name, values in rows
    )
    return f'<table class="{css}"><tr>{header}</tr>{body}</table>'


def _percent(share: float | None, digits: int = 2) -> str:
    return "-" if share is None else f"{share * 100:.{digits}f}%"


def _summary(report: Report, other: Report | None) -> str:
    """The headline numbers; in a comparison, before and after with the change (in points for the success rate)."""
    runs = [report] if other is None else [other, report]
    heads = ["", *([BEFORE, AFTER, "change"] if other is not None else ["this run"])]
    totals = [count_values(r["totals"]) for r in runs]
    latency = [latency_values(r["latency_ms"]) for r in runs]
    rates = [r["success_rate"] for r in runs]
    rows: list[tuple[str, Sequence[Json], str]] = [
        ("run id", [r["run_id"] for r in runs], ""),
        ("target", [r["target"] for r in runs], ""),
        ("started", [r["started_at"] for r in runs], ""),
        _measured("sending window (s)", [r["sending_s"] for r in runs]),
        *(_measured(key, [t[key] for t in totals]) for key in COUNT_KEYS),
        ("success rate", [_percent(rate) for rate in rates], points_change(rates[0], rates[-1])),
        _measured("messages per second", [r["throughput"]["per_second"] for r in runs]),
        *(_measured(f"latency {p} (ms)", [lat[p] for lat in latency]) for p in ("p50", "p90", "p99", "max")),
    ]
    shown = [(name, [*values, change] if other is not None else values) for name, values, change in rows]
    return f"<section><h2>Summary</h2>{_table(heads, shown, 'summary')}</section>"


def _measured(name: str, values: Sequence[float | None]) -> tuple[str, Sequence[Json], str]:
    """A summary row of numbers, and its change in percent from the first to the last."""
    return name, values, percent_change(values[0], values[-1])


def _number(value: Json) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _body_size(config: ConfigView) -> str:
    median, p99 = _number(config.get("body_size_median")), _number(config.get("body_size_p99"))
    if median:
        return f"log-normal: median {median:,} B, p99 {p99:,} B"
    size = config.get("body_size")
    low, high = (_number(size[0]), _number(size[1])) if isinstance(size, list) and len(size) >= 2 else (None, None)
    if low is None:
        return "-"
    return f"{low:,} B" if low == high else f"{low:,} to {high:,} B"


def _weights(domains: Json) -> str:
    given = domains if isinstance(domains, dict) else {}
    weights = {name: w for name, value in given.items() if (w := _number(value)) is not None}
    if not weights:
        return "-"
    total = sum(weights.values()) or 1.0
    return ", ".join(f"{name} {w:g} ({w / total * 100:.1f}%)" for name, w in weights.items())


def _merged_from(config: ConfigView) -> str | None:
    """The run ids of a merged report's parts."""
    parts = config.get("merged_from")
    ids = [str(p.get("run_id")) for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []
    return ", ".join(ids) or None


def _seed(config: ConfigView) -> str | None:
    seed = config.get("seed")
    return None if seed is None else str(seed)  # a seed, not a count: no commas


CONFIG_ROWS: tuple[tuple[str, Callable[[Report, ConfigView], Json]], ...] = (
    ("target", lambda r, c: r["target"]),
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
    ("seed", lambda r, c: _seed(c)),
    ("merged from", lambda r, c: _merged_from(c)),
)


def _configuration(report: Report, other: Report | None) -> str:
    """The options that shaped the run (a merged report: its parts' run ids and their connections in all)."""
    runs = [report] if other is None else [other, report]
    heads = ["", *([BEFORE, AFTER] if other is not None else ["this run"])]
    rows = []
    for name, read in CONFIG_ROWS:
        values = [read(r, r["config"]) for r in runs]
        if any(v not in (None, "", "-") for v in values):
            rows.append((name, values))
    return f"<section><h2>Configuration</h2>{_table(heads, rows, 'configuration')}</section>"


def _domains_table(report: Report, other: Report | None) -> str:
    """Each domain's counts and acceptance; in a comparison, before and after side by side with the change."""
    names = domain_names(report, other)
    mine = report["domains"]
    rows: list[Row] = []
    if other is None:
        heads = ["domain", *COUNT_KEYS, "accepted %"]
        rows = [(name, [*count_list(mine[name]), _percent(accepted_share(mine[name]), 1)]) for name in names]
    else:
        theirs = other["domains"]
        heads = ["domain", "attempted before", "attempted after", "accepted % before", "accepted % after", "change"]
        for name in names:
            before, after = theirs.get(name), mine.get(name)
            shares = accepted_share(before), accepted_share(after)
            attempted = [row["attempted"] if row else None for row in (before, after)]
            rows.append((name, [*attempted, _percent(shares[0], 1), _percent(shares[1], 1), points_change(*shares)]))
    return f"<section><h2>Domains</h2>{_table(heads, rows, 'domains')}</section>"


# --- the reconciliation ------------------------------------------------------------------------------------------

ALWAYS = ("delivered", "duplicated", "lost")  # columns shown even at 0, as the terminal shows them
SAMPLES = 20  # a problem's samples shown


def _counts_of(section: Mapping[str, object]) -> dict[str, int | float]:
    """The counts a section of the reconciliation holds: the ones its type names and any a later version adds (a
    report keeps every key it was written with), in the report's order."""
    return {k: v for k, v in section.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _line(name: str, value: Json) -> str:
    return f"<p><b>{html.escape(name)}</b>: {_cell(value)}</p>"


def _reconciliation(r: Reconciliation | ReconcileFailure, label: str) -> str:
    """What became of the accepted messages, as the sinks saw them: its counts, the recipients' and the messages'
    outcomes and attempts, the MTA's queue, the ids of each problem, and the transit times."""
    heading = "Reconciliation" + (f" ({label})" if label else "")
    if "error" in r:
        return (
            f'<section><h2>{heading}</h2><p class="note">The sink\'s ledger could not be read '
            f"({html.escape(r['sink'])}): {html.escape(r['error'])}</p></section>"
        )
    waited = f" after waiting {r['waited_s']:g} s" if r.get("waited_s") else ""
    sink = r["sink"]
    parts = [f"<p>As the sink{'s' if ',' in sink else ''} at {_cell(sink)} saw it{waited}.</p>"]
    counts = [(k.replace("_", " "), [v]) for k, v in _counts_of(r).items() if k != "waited_s"]
    if counts:
        parts.append(_table(["", "count"], counts, "reconciliation"))
    parts.append(_outcomes(r["recipients"], r["messages"]))
    if r["mta_queue"] is not None:
        parts.append(_line("mta queue", r["mta_queue"]))
    parts.append(_line("per", r["per"]))
    parts.append(_samples(r["samples"]))
    transit = r.get("transit_ms")
    if transit is not None:
        parts.append(_transit(transit))
    return f'<section id="reconciliation"><h2>{heading}</h2>{"".join(parts)}</section>'


def _outcomes(recipients: RecipientOutcomes, messages: MessageOutcomes) -> str:
    """The recipients' and the messages' outcomes as one table, a row each (the columns with something in them and
    always delivered, duplicated, lost, as in the terminal), then their attempts."""
    views = {"recipients": _counts_of(recipients), "messages": _counts_of(messages)}
    columns = [
        c
        for c in dict.fromkeys(k for view in views.values() for k in view)
        if c in ALWAYS or c == "accepted" or any(view.get(c) for view in views.values())
    ]
    out = _table(
        ["", *(c.replace("_", " ") for c in columns)],
        [(k, [v.get(c) for c in columns]) for k, v in views.items()],
        "reconciliation",
    )
    attempts = {"recipients": recipients["attempts"], "messages": messages["attempts"]}
    return out + "<h3>attempts</h3>" + _rows_table(attempts)


def _samples(samples: dict[str, list[Sample]]) -> str:
    """Up to 20 of each problem's recipients: the message id, the recipient, what the sink and the MTA said."""
    out = ""
    for kind, entries in samples.items():
        if not entries:
            continue
        shown = entries[:SAMPLES]
        said = any("mta_said" in e for e in shown)  # only with --mta-queue
        columns = ["id", "recipient", "sink_saw", *(["mta_said"] if said else [])]
        rows: list[Row] = [
            (e["id"], [e["recipient"], e["sink_saw"], *([e.get("mta_said")] if said else [])]) for e in shown
        ]
        more = f" (the first {SAMPLES} of {len(entries):,})" if len(entries) > SAMPLES else ""
        out += f"<h3>{html.escape(kind.replace('_', ' '))}{more}</h3>" + _table(columns, rows, "reconciliation")
    return out


def _transit_row(stats: TransitStats) -> dict[str, int]:
    return {k: stats[k] for k in ("count", "min", "p50", "p90", "p99", "max")}


def _transit(transit: Transit) -> str:
    """Transit times through the target to the sink: all domains' row, each domain's, and the recipients that
    arrived before they were sent (clocks that disagree)."""
    everything, domains = transit["all"], transit["domains"]
    rows = {"all": _transit_row(everything)} if everything else {}
    if not domains:
        rows["domains"] = {}  # nothing measured: the page has always shown the empty row of domains
    out = "<h3>transit ms</h3>" + (_rows_table(rows) if rows else "")
    if everything is None:
        out += _line("transit ms all", None)
    if domains:
        out += "<h3>transit ms domains</h3>" + _rows_table({n: _transit_row(s) for n, s in domains.items()})
    return out + _line("transit ms clock skew", transit["clock_skew"])


def _rows_table(rows: Mapping[str, Mapping[str, int]]) -> str:
    """Rows of counts (attempts, a domain's transit times...) as one table, the union of their keys as columns."""
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    return _table(["", *columns], [(k, [row.get(c) for c in columns]) for k, row in rows.items()], "reconciliation")


def _thresholds(thresholds: Thresholds) -> str:
    rows = "".join(
        f'<tr class="{"pass" if r["passed"] else "fail"}"><td>{html.escape(r["expression"])}</td>'
        f"<td>{html.escape(str(r['shown'] or r['value']))}</td>"
        f"<td>{'passed' if r['passed'] else 'FAILED'}</td></tr>"
        for r in thresholds["results"]
    )
    verdict = "all passed" if thresholds["passed"] else "not all passed"
    return (
        f"<section><h2>Thresholds: {verdict}</h2><table><tr><th>threshold</th><th>measured</th><th></th></tr>"
        f"{rows}</table></section>"
    )


def _script_json(value: Mapping[str, Figure]) -> str:
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
