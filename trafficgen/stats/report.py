"""The report of a run: a JSON document (schema 2, docs/report.md) and the summary people read.

build() turns a Recorder into the document; summary() renders a document, so a merged or saved report
prints exactly like a live one. The document carries every histogram in HdrHistogram's standard compressed
base64 form, so reports of several processes or machines merge exactly (trafficgen report merge).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import math
import os
from collections.abc import Iterator
from typing import IO, Any

from hdrh.histogram import HdrHistogram
from rich import box
from rich.console import Console
from rich.table import Table

from mailload import contract
from trafficgen import profile as profiles
from trafficgen import thresholds as threshold_parser
from trafficgen.stats.histogram import new_histogram
from trafficgen.stats.histogram import summary as histogram_summary
from trafficgen.stats.recorder import DIMENSIONS, PHASES, Recorder
from trafficgen.stats.timeline import COUNT_KEYS, from_report
from trafficgen.version import __version__

SCHEMA = 2
# Schema 1 differs only in its reconciliation (one verdict per message, in flat keys): upgrade() rewrites it.
READABLE_SCHEMAS = (1, SCHEMA)
PERCENTILES = (("p50", 50.0), ("p75", 75.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p99_9", 99.9))
TOP_REPLIES = 10
NARROW = 110  # a summary narrower than this uses the narrow tables
DEFAULT_WIDTH = 120  # a summary written to a file or a pipe (COLUMNS overrides it)


def latency_ms(histogram: HdrHistogram | None) -> dict[str, float | int | None] | None:
    """min, mean, percentiles and max of a microsecond histogram, in milliseconds."""
    if histogram is None:
        return None
    count = histogram.get_total_count()
    out: dict[str, float | int | None] = {"count": count}
    if not count:
        out.update({"min": None, "mean": None, **{k: None for k, _ in PERCENTILES}, "max": None})
        return out
    mean, values = histogram_summary(histogram, [p for _, p in PERCENTILES])
    out["min"] = round(histogram.get_min_value() / 1000, 3)
    out["mean"] = round(mean / 1000, 3)
    for (key, _), value in zip(PERCENTILES, values, strict=True):
        out[key] = round(value / 1000, 3)
    out["max"] = round(histogram.get_max_value() / 1000, 3)
    return out


def upgrade(document: dict[str, Any]) -> dict[str, Any]:
    """A report of schema 1 as schema 2: its reconciliation, one verdict per message in flat keys, becomes the
    `recipients` and `messages` views of one per message (`per: "message"`). Other reports are returned as they are."""
    if document.get("schema") != 1:
        return document
    old = document.get("reconciliation")
    if isinstance(old, dict) and "error" not in old and "recipients" not in old:
        document["reconciliation"] = _reconciliation_of_schema_1(old)
    document["schema"] = SCHEMA
    return document


def _reconciliation_of_schema_1(old: dict[str, Any]) -> dict[str, Any]:
    duplicated = old.get("duplicated", 0)
    outcomes = {
        "delivered": old.get("delivered", 0) - duplicated,  # schema 1 counted the duplicated among the delivered
        "duplicated": duplicated,
        "bounced": old.get("bounced", 0),
        "expired": old.get("expired", 0),
        "deferred": 0,
        "pending": old.get("deferred_pending", 0),
        "lost": old.get("lost", 0),
        "unknown": old.get("unknown", 0),
    }
    accepted = sum(outcomes.values())
    attempts = old.get("attempts") or {}
    details = {key: old.get(key, 0) for key in contract.RECIPIENT_DETAILS}
    samples = {
        kind: [{"id": i, "recipient": None, "sink_saw": None} for i in old.get(f"{kind}_ids") or []]
        for kind in contract.SAMPLE_KINDS
    }
    return {
        **{key: old[key] for key in ("sink", "waited_s") if key in old},
        "mta_queue": None,
        "per": "message",
        "recipients": {"accepted": accepted, **outcomes, **details, "attempts": attempts},
        "messages": {
            "accepted": accepted,
            **{k: outcomes.get(k, 0) for k in contract.MESSAGE_OUTCOMES},
            "attempts": attempts,
        },
        "samples": samples,
        **{key: old[key] for key in ("transit_ms", "marks") if key in old},
    }


BEHIND = 0.98  # an achieved rate below this share of the asked one is reported as behind schedule


def schedule(config: dict[str, Any], attempted: int, window: float) -> dict[str, Any] | None:
    """With --throttle or --profile: the rate asked and achieved, and how many messages fell due but were never
    sent."""
    asked = config.get("throttle_per_s")
    if config.get("profile"):
        due = profiles.whole(profiles.parse(config["profile"]).count_by(window))
        asked = due / window if window > 0 else 0.0
    elif asked:
        due = max(0, math.ceil(window * asked - 1e-9)) + (config.get("max_burst") or 1) - 1
    else:
        return None
    if config.get("message_count"):
        due = min(due, config["message_count"])
    achieved = attempted / window if window > 0 else 0.0
    return {
        "asked_per_s": asked,
        "achieved_per_s": round(achieved, 3),
        "due": due,
        "never_sent": max(0, due - attempted),
        "behind": achieved < asked * BEHIND and due > attempted,
    }


def profile_report(config: dict[str, Any], recorder: Recorder, window: float) -> dict[str, Any] | None:
    """With --profile: each stage that started within the sending window, with what was due, sent and answered
    in it and its latency from the intended time (messages count in the stage they fell due in)."""
    text = config.get("profile")
    if not text:
        return None
    profile = profiles.parse(text)
    counts = recorder.stage_counts or []
    stages = []
    for index in range(profile.stage_count):
        start = profile.stage_start(index)
        if start >= window and index >= len(counts):
            break
        stage = profile.stage(index)
        row = counts[index] if index < len(counts) else [0, 0, 0, 0, 0]
        span = min(stage.duration, max(0.0, window - start))
        due = profile.stage_due(index, until=window)
        attempted = row[0]
        asked = due / span if span > 0 else 0.0
        achieved = attempted / span if span > 0 else 0.0
        histogram = recorder.stage_latency[index] if index < len(recorder.stage_latency) else None
        stages.append(
            {
                **profiles.stage_dict(profile, index),
                "due": due,
                **dict(zip(("attempted", "accepted", "tempfailed", "permfailed", "errors"), row, strict=True)),
                "asked_per_s": round(asked, 3),
                "achieved_per_s": round(achieved, 3),
                "never_sent": max(0, due - attempted),
                "behind": achieved < asked * BEHIND and due > attempted,
                "latency_from_intended_ms": latency_ms(histogram) if histogram is not None else None,
                "histogram": histogram.encode().decode("ascii") if histogram is not None else None,
            }
        )
    return {"stages": stages, "stairs": None}


def thresholds_report(config: dict[str, Any], document: dict[str, Any]) -> dict[str, Any] | None:
    """With --fail-if: each threshold measured on the report, and whether all passed."""
    texts = config.get("fail_if")
    if not texts:
        return None
    results = threshold_parser.evaluate([threshold_parser.parse(t) for t in texts], document)
    return {"passed": all(r["passed"] for r in results), "results": results, "aborted": None}


def build(
    recorder: Recorder,
    *,
    run_id: str,
    target: str,
    started: float,
    elapsed: float,
    window: float | None = None,
    config: dict[str, Any],
    stopped_by: str | None = None,
) -> dict[str, Any]:
    totals = recorder.totals()
    attempted = totals.attempted
    window = elapsed if window is None else window
    per_second = attempted / window if window > 0 else 0.0
    replies = sorted(recorder.replies.items(), key=lambda item: (-item[1], item[0]))
    from_domains = recorder.reply_domain_counts()
    document = {
        "schema": SCHEMA,
        "tool": f"trafficgen {__version__}",
        "run_id": run_id,
        "target": target,
        "started_at": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(timespec="milliseconds"),
        "elapsed_s": round(elapsed, 3),
        "sending_s": round(window, 3),
        "stopped_by": stopped_by,
        "config": config,
        "totals": totals.as_dict(),
        "success_rate": round(totals.accepted / attempted, 6) if attempted else None,
        "recipients": dict(zip(("accepted", "tempfailed", "permfailed", "errors"), recorder.recipients, strict=True)),
        "throughput": {
            "per_second": round(per_second, 3),
            "per_minute": round(per_second * 60, 1),
            "per_hour": round(per_second * 3600),
        },
        "schedule": schedule(config, attempted, window),
        "latency_ms": latency_ms(recorder.latency),
        "latency_from_intended_ms": latency_ms(recorder.corrected),
        "phases_ms": {name: latency_ms(recorder.phases[name]) for name in PHASES},
        "domains": recorder.domain_totals(),
        **{key: recorder.dimension_totals(key) for key in DIMENSIONS},
        "replies": [
            {"code": code, "text": text, "count": n, "domains": from_domains.get((code, text), {})}
            for (code, text), n in replies
        ],
        "errors": [{"text": text, "count": n} for text, n in recorder.errors.most_common()],
        "connections": {
            "opened": recorder.connections_opened,
            "peak": recorder.connections_peak,
            "failed": sum(recorder.connection_errors.values()),
            "errors": [{"text": text, "count": n} for text, n in recorder.connection_errors.most_common()],
        },
        "histogram": recorder.latency.encode().decode("ascii"),
        "histograms": {
            "latency_from_intended": recorder.corrected.encode().decode("ascii") if recorder.corrected else None,
            "phases": {name: recorder.phases[name].encode().decode("ascii") for name in PHASES},
        },
        "profile": profile_report(config, recorder, window),
        "timeline": recorder.timeline.report(started),
    }
    document["thresholds"] = thresholds_report(config, document)
    return document


def timeline_of(report: dict[str, Any]) -> dict[str, Any] | None:
    """A report's timeline as a Timeline's state (None for a report written before timelines)."""
    timeline = report.get("timeline")
    if not timeline:
        return None
    return from_report(timeline, list(report["domains"])).state()


def recorder_of(report: dict[str, Any]) -> Recorder:
    """A Recorder holding what a report holds, for merging reports."""
    domains = list(report["domains"])
    recorder = Recorder(domains)
    histograms = report.get("histograms") or {}
    connections = report.get("connections") or {}
    recorder.merge(
        {
            "dimensions": {
                key: {
                    "names": list(report[key]),
                    "counts": [[row[k] for k in COUNT_KEYS] for row in report[key].values()],
                }
                for key in DIMENSIONS
                if report.get(key)
            },
            "stages": _stages_state(report),
            "counts": [[report["domains"][d][k] for k in COUNT_KEYS] for d in domains],
            "recipients": [report["recipients"][k] for k in ("accepted", "tempfailed", "permfailed", "errors")],
            "replies": [[r["code"], r["text"], r["count"]] for r in report["replies"]],
            "reply_domains": [
                [r["code"], r["text"], name, n]
                for r in report["replies"]
                for name, n in (r.get("domains") or {}).items()
            ],
            "timeline": timeline_of(report),
            "errors": {e["text"]: e["count"] for e in report["errors"]},
            "latency": report["histogram"],
            "corrected": histograms.get("latency_from_intended"),
            "phases": histograms.get("phases") or {},
            "connections_opened": connections.get("opened", 0),
            "connections_open": 0,
            "connections_peak": connections.get("peak", 0),
            "connection_errors": {e["text"]: e["count"] for e in connections.get("errors", [])},
        }
    )
    return recorder


def _stages_state(report: dict[str, Any]) -> dict[str, Any] | None:
    """A report's profile stages as a Recorder's state holds them (None without stages or their histograms)."""
    stages = (report.get("profile") or {}).get("stages") or []
    if not stages or not all(stage.get("histogram") for stage in stages):
        return None
    return {
        "counts": [[stage[k] for k in COUNT_KEYS] for stage in stages],
        "latency": [stage["histogram"] for stage in stages],
    }


def _n(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def summary(report: dict[str, Any], out: IO[str], show_timeline: bool = False, width: int | None = None) -> None:
    """The human-readable report (with the run over time, for `report show`), as wide as the terminal."""
    with console_for(out, width) as console:
        _print_summary(console, report, show_timeline)


def _print_summary(console: Console, report: dict[str, Any], show_timeline: bool) -> None:
    narrow = console.width < NARROW
    _print_headline(console, report)
    console.print(_latency_table(report, console.width))
    note = _pipelining_note(report)
    if note:
        console.print(note)
    console.print(_domains_table(report, narrow))
    for key, title in (
        ("tenants", "tenants"),
        ("campaigns", "campaigns"),
        ("sender_domains", "sender domains"),
        ("source_addresses", "source addresses"),
    ):
        if report.get(key):
            console.print(_counts_table(title, title[:-1].replace("addresse", "address"), report[key], narrow))
    if report.get("profile"):
        _print_profile(console, report["profile"])
    over_time = _timeline_table(report.get("timeline") or {}, narrow)
    if over_time is not None and show_timeline:
        console.print(over_time)
    if report["replies"]:
        console.print(_replies_table(report, console.width))
    reconciliation = report.get("reconciliation")
    if reconciliation and "error" not in reconciliation:
        print_reconciliation(console, reconciliation)
    if report["errors"]:
        console.print(_errors_table(report, console.width))
    if report.get("thresholds"):
        print_thresholds(console, report["thresholds"])


def _fit(console: Console, parts: list[str], indent: str = "  ") -> None:
    """Parts of a line printed two spaces apart, a new line (indented further) where the next part would pass
    the console's width: a part is never broken (`success rate 41.07%` stays whole)."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1] + "  " + part) <= console.width:
            lines[-1] += "  " + part
        else:
            lines.append((indent if not lines else indent + "  ") + part)
    for line in lines:
        console.print(line, markup=False)


def _print_headline(console: Console, report: dict[str, Any]) -> None:
    totals = report["totals"]
    attempted = totals["attempted"]
    config = report["config"]
    rate = report["success_rate"]
    sending, elapsed = report.get("sending_s", report["elapsed_s"]), report["elapsed_s"]
    concurrency = config.get("concurrency", "?")
    console.print(f"[bold]trafficgen[/bold] run {report['run_id']} -> {report['target']}")
    _fit(
        console,
        [
            f"{attempted:,} message{'' if attempted == 1 else 's'} in {sending:,.1f} s over {concurrency} "
            f"connection{'' if concurrency == 1 else 's'}",
            *([f"(last reply at {elapsed:,.1f} s)"] if elapsed > sending + 0.5 else []),
            *([f"({report['stopped_by']})"] if report.get("stopped_by") else []),
        ],
    )
    _fit(
        console,
        [
            f"accepted {totals['accepted']:,}",
            f"tempfailed {totals['tempfailed']:,}",
            f"permfailed {totals['permfailed']:,}",
            f"errors {totals['errors']:,}",
            f"success rate {_n(rate * 100 if rate is not None else None, 2)}%",
        ],
    )
    recipients = report.get("recipients") or {}
    if (config.get("recipients_per_message") or 1) > 1 and recipients:
        _fit(
            console,
            [
                f"recipients: accepted {recipients['accepted']:,}",
                f"tempfailed {recipients['tempfailed']:,}",
                f"permfailed {recipients['permfailed']:,}",
                f"errors {recipients['errors']:,}",
                f"({config['recipients_per_message']} a message)",
            ],
        )
    t = report["throughput"]
    if attempted > totals["errors"]:  # a run where no message reached a server has no throughput to speak of
        _fit(
            console, [f"throughput {_n(t['per_second'], 1)}/s", f"{_n(t['per_minute'])}/min", f"{_n(t['per_hour'])}/h"]
        )
    plan = report.get("schedule")
    if plan and plan["behind"]:
        console.print(
            f"  [bold]behind schedule[/bold]: asked {_n(plan['asked_per_s'], 1)}/s, achieved "
            f"{_n(plan['achieved_per_s'], 1)}/s; {plan['never_sent']:,} of {plan['due']:,} messages due were never "
            "sent (the target answers too slowly for --concurrency connections, or this host is saturated)"
        )
    connections = report.get("connections") or {}
    if connections.get("failed"):
        worst = connections["errors"][0]["text"] if connections.get("errors") else ""
        console.print(f"  connections that could not be opened: {connections['failed']:,} ({worst})")


# The latency table's layouts, the most detailed first: (columns, fewer decimals on large values)
LATENCY_LAYOUTS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("min", "mean", "p50", "p75", "p90", "p95", "p99", "p99_9", "max"), False),
    (("min", "mean", "p50", "p75", "p90", "p95", "p99", "p99_9", "max"), True),
    (("p50", "p90", "p99", "p99_9", "max"), True),
)


def _latency_table(report: dict[str, Any], width: int = DEFAULT_WIDTH) -> Table:
    """Transaction latency, from the intended send time, and per phase: the most detailed layout whose numbers
    fit `width` whole (a number cut short reads as another), the narrowest when none does."""
    layouts = LATENCY_LAYOUTS if width >= NARROW else LATENCY_LAYOUTS[2:]
    for columns, narrow in layouts:
        table = _latency_layout(report, columns, narrow)
        if natural_width(table) <= width:
            return table
    return table


def natural_width(table: Table) -> int:
    """The columns a table takes when nothing limits its width."""
    return Console(width=10_000, file=io.StringIO()).measure(table).maximum


def _latency_layout(report: dict[str, Any], columns: tuple[str, ...], narrow: bool) -> Table:
    latency = Table(box=box.SIMPLE, title="latency (ms)", title_justify="left", pad_edge=False)
    latency.add_column("", no_wrap=True)
    for c in columns:
        latency.add_column(c.replace("_", "."), justify="right", no_wrap=True)
    rows = [("transaction", report["latency_ms"])]
    if report.get("latency_from_intended_ms"):
        rows.append(("from intended send", report["latency_from_intended_ms"]))
    rows += [(f"  {name}", stats) for name, stats in report["phases_ms"].items() if stats and stats["count"]]
    for label, stats in rows:
        latency.add_row(label, *(_ms(stats.get(c) if stats else None, narrow) for c in columns))
    return latency


def _pipelining_note(report: dict[str, Any]) -> str | None:
    """Why `rcpt` reads near zero when commands were pipelined (the server answers MAIL, RCPT and DATA together)."""
    rcpt = (report.get("phases_ms") or {}).get("rcpt") or {}
    if not (report.get("config") or {}).get("pipelining") or not rcpt.get("count"):
        return None
    return "  pipelined: rcpt's reply comes with data's (data holds the server's time)"


def _ms(value: float | None, narrow: bool) -> str:
    """Milliseconds to the microsecond; narrow: to three significant digits or the whole millisecond."""
    if value is None or not narrow:
        return _n(value, 3)
    return _n(value, 3 if value < 10 else 1 if value < 1000 else 0)


def _domains_table(report: dict[str, Any], narrow: bool = False) -> Table:
    return _counts_table("domains", "domain", report["domains"], narrow)


COUNT_HEADERS = ("attempted", "accepted", "tempfailed", "permfailed", "errors")
NARROW_HEADERS = ("sent", "accepted", "temp", "perm", "errors")


def _counts_table(title: str, column: str, rows: dict[str, dict[str, int]], narrow: bool = False) -> Table:
    """The five counts and the acceptance of each value of a dimension, most attempted first."""
    table = Table(box=box.SIMPLE, title=title, title_justify="left", pad_edge=False)
    # not no_wrap: when the table does not fit, rich shrinks (and ellipsizes) the name, never the numbers
    table.add_column(column, overflow="ellipsis", max_width=40)
    for c in (*(NARROW_HEADERS if narrow else COUNT_HEADERS), "accepted %"):
        table.add_column(c, justify="right", no_wrap=True)
    for name, row in sorted(rows.items(), key=lambda item: -item[1]["attempted"]):
        share = row["accepted"] / row["attempted"] * 100 if row["attempted"] else None
        table.add_row(
            name,
            *(f"{row[k]:,}" for k in ("attempted", "accepted", "tempfailed", "permfailed", "errors")),
            _n(share, 1),
        )
    return table


def width_of(out: IO[str]) -> int:
    """The terminal's width when `out` is one; else COLUMNS when set; else DEFAULT_WIDTH."""
    try:
        if out.isatty():
            return max(40, os.get_terminal_size(out.fileno()).columns)
    except (AttributeError, OSError, ValueError):
        pass
    columns = os.environ.get("COLUMNS", "")
    return max(40, int(columns)) if columns.isdigit() else DEFAULT_WIDTH


@contextlib.contextmanager
def console_for(out: IO[str], width: int | None = None) -> Iterator[Console]:
    """A console as wide as `out`'s terminal. Written to a file or a pipe: plain text without trailing spaces
    (rich pads table cells to the column width)."""
    width = width or width_of(out)
    terminal = bool(getattr(out, "isatty", lambda: False)())
    if terminal:
        yield Console(file=out, width=width, highlight=False, soft_wrap=False)
        return
    buffer = io.StringIO()
    yield Console(file=buffer, width=width, highlight=False, soft_wrap=False, color_system=None)
    out.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))
    out.flush()


TIMELINE_ROWS = 20  # `over time` shows at most this many rows: wider spans for long runs


def _timeline_table(timeline: dict[str, Any], narrow: bool = False) -> Table | None:
    """The run over time: each interval (or span of intervals, for a long run) with its counts, the connections
    open at its end and its latency p99 (from the intended time when measured)."""
    points = timeline.get("points") or []
    if not points:
        return None
    group = -(-len(points) // TIMELINE_ROWS)
    width = timeline["interval_s"] * group
    histograms = timeline.get("histograms") or {}
    intended = histograms.get("intended") or [None] * len(points)
    latency = histograms.get("latency") or [None] * len(points)
    measure = intended if any(intended) else latency
    table = Table(
        box=box.SIMPLE,
        title=f"over time ({width:g} s a row)",
        title_justify="left",
        pad_edge=False,
    )
    headers = ["t s", *(NARROW_HEADERS if narrow else COUNT_HEADERS), "conns", "p99 ms"]
    if group > 1:
        headers.insert(2, "/s")  # a row of several intervals: its rate (a row of one second: its count)
    for c in headers:
        table.add_column(c, justify="right", no_wrap=True)
    for start in range(0, len(points), group):
        rows = points[start : start + group]
        cells = _timeline_row(rows, _p99_of(measure[start : start + group]))
        if group > 1:
            cells.insert(2, _n(sum(p["attempted"] for p in rows) / (timeline["interval_s"] * len(rows)), 0))
        table.add_row(*cells)
    return table


def _p99_of(encoded: list[str | None]) -> float | None:
    """The p99 (ms) of some intervals' histograms together; None when they hold nothing."""
    merged: HdrHistogram | None = None
    for one in encoded:
        if one:
            merged = merged or new_histogram(2)
            merged.add(HdrHistogram.decode(one))
    if merged is None or not merged.total_count:
        return None
    return histogram_summary(merged, [99.0])[1][0] / 1000


def _timeline_row(rows: list[dict[str, Any]], p99: float | None) -> list[str]:
    """One row of `over time`: its start, the five counts, the connections at its end, its p99."""
    counts = {k: sum(p[k] for p in rows) for k in COUNT_KEYS}
    connections = [p["connections"] for p in rows if p["connections"] is not None]
    return [
        _n(max(0.0, rows[0]["t_s"]), 0),
        *(f"{counts[k]:,}" for k in COUNT_KEYS),
        f"{connections[-1]:,}" if connections else "-",
        _n(p99, 1),
    ]


def _print_profile(console: Console, profile: dict[str, Any]) -> None:
    table = Table(box=box.SIMPLE, title="profile stages", title_justify="left", pad_edge=False)
    columns = ("stage", "start s", "due", "sent", "asked/s", "achieved/s", "accepted %", "p99 ms")
    for c in columns:
        table.add_column(c, justify="left" if c == "stage" else "right")
    for stage in profile["stages"]:
        latency = stage.get("latency_from_intended_ms") or {}
        accepted = stage["accepted"] / stage["attempted"] * 100 if stage["attempted"] else None
        table.add_row(
            stage["stage"] + (" (behind)" if stage["behind"] else ""),
            _n(stage["start_s"], 1),
            f"{stage['due']:,}",
            f"{stage['attempted']:,}",
            _n(stage["asked_per_s"], 1),
            _n(stage["achieved_per_s"], 1),
            _n(accepted, 1),
            _n(latency.get("p99"), 1),
        )
    console.print(table)
    stairs = profile.get("stairs")
    if stairs:
        held = stairs.get("last_held_per_s")
        console.print(
            f"  [bold]stairs: the last rate that held was {_n(held, 1)}/s[/bold]"
            if held is not None
            else "  [bold]stairs: no step held[/bold]",
            end="",
        )
        if stairs.get("failed_per_s") is not None:
            console.print(f"; {_n(stairs['failed_per_s'], 1)}/s did not: {stairs['reason']}")
        else:
            console.print(f" ({stairs.get('reason') or 'the top rate was reached'})")


def print_thresholds(console: Console, thresholds: dict[str, Any]) -> None:
    """Each --fail-if threshold, its measured value and whether it passed."""
    aborted = thresholds.get("aborted")
    if aborted:
        console.print(
            f"thresholds: [bold]stopped at {aborted['at_s']:,.1f} s[/bold]: {aborted['expression']} failed "
            f"({aborted['shown']})"
        )
    else:
        console.print("thresholds:")
    for result in thresholds["results"]:
        verdict = "pass" if result["passed"] else "[bold]FAIL[/bold]"
        console.print(f"  {verdict}  {result['expression']}  ({result['shown']})")


def _replies_table(report: dict[str, Any], width: int = 120) -> Table:
    """The most frequent replies, and the domains each came from (the most frequent first, then how many more)."""
    replies = Table(box=box.SIMPLE, title="most frequent replies", title_justify="left", pad_edge=False)
    shown = report["replies"][:TOP_REPLIES]
    count_width = max(len("count"), *(len(f"{r['count']:,}") for r in shown))
    domains = [_reply_domains(r.get("domains") or {}) for r in shown]
    domain_width = min(max((len(d) for d in domains), default=0), 28)
    replies.add_column("count", justify="right", no_wrap=True, width=count_width)
    replies.add_column("code", justify="right", no_wrap=True, width=4)
    if domain_width:
        replies.add_column("from", no_wrap=True, overflow="ellipsis", width=max(4, domain_width))
    # the rest of the line: a box.SIMPLE table spends 2 columns on its edges and 3 between two columns
    used = count_width + 4 + (max(4, domain_width) if domain_width else 0) + 2 + 3 * (3 if domain_width else 2)
    text_width = max(20, min(100, width - used))
    replies.add_column("text", overflow="ellipsis", no_wrap=True, width=text_width)
    texts = distinct_cuts([str(r["text"]) for r in shown], text_width)
    for r, came_from, text in zip(shown, domains, texts, strict=True):
        replies.add_row(f"{r['count']:,}", str(r["code"]), *([came_from] if domain_width else []), text)
    return replies


def _common_start(a: str, b: str) -> int:
    """How many characters two texts share from their start."""
    return next((n for n, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def distinct_cuts(texts: list[str], width: int) -> list[str]:
    """Each text within `width` characters, an ellipsis where it was cut; two texts whose cuts would read alike
    keep their start and show, after an ellipsis, where they differ ("4.7.0 Try… closing connection (#2)")."""

    def cut(text: str) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    cuts = [cut(t) for t in texts]
    out = list(cuts)
    for index, text in enumerate(texts):
        alike = [other for n, other in enumerate(texts) if n != index and cuts[n] == cuts[index] and other != text]
        if not alike or width < 12:
            continue
        differs = max(_common_start(text, other) for other in alike)
        head = width // 3
        room = width - head - 1
        start = max(head, differs - room // 3)
        window = text[start : start + room]
        if start + room < len(text):
            window = window[:-1] + "…"
        out[index] = text[:head] + "…" + window
    return out


def _reply_domains(counts: dict[str, int]) -> str:
    """`hotmail.com`, or `hotmail.com +2` when the reply came from two more domains too."""
    if not counts:
        return ""
    top = max(counts, key=lambda name: counts[name])
    return top if len(counts) == 1 else f"{top} +{len(counts) - 1}"


def _errors_table(report: dict[str, Any], width: int = 120) -> Table:
    errors = Table(box=box.SIMPLE, title="errors", title_justify="left", pad_edge=False)
    count_width = max(len("count"), *(len(f"{e['count']:,}") for e in report["errors"][:TOP_REPLIES]))
    errors.add_column("count", justify="right", no_wrap=True, width=count_width)
    errors.add_column("error", overflow="ellipsis", no_wrap=True, width=max(20, min(100, width - count_width - 5)))
    for e in report["errors"][:TOP_REPLIES]:
        errors.add_row(f"{e['count']:,}", e["text"])
    return errors


RECONCILE_HEADERS = {
    "delivered": "delivered",
    "partly_delivered": "partly delivered",
    "duplicated": "duplicated",
    "bounced": "bounced",
    "expired": "expired",
    "deferred": "deferred",
    "pending": "pending",
    "lost": "lost",
    "unknown": "unknown",
}
RECONCILE_ALWAYS = ("delivered", "duplicated", "lost")  # the questions reconciliation answers: shown even at 0
SAMPLES_SHOWN = 5


def _print_attempts(console: Console, r: dict[str, Any], per_recipient: bool) -> None:
    views = (("recipients", "each delivered recipient"), ("messages", "each delivered message (its recipients' most)"))
    for view, who in views if per_recipient else views[1:]:
        tries = {k: v for k, v in (r[view].get("attempts") or {}).items() if v}
        if tries:
            console.print(f"  attempts {who}: " + "  ".join(f"{k}: {v:,}" for k, v in tries.items()))


def print_reconciliation(console: Console, r: dict[str, Any]) -> None:
    """What became of the recipients and messages the target accepted, as the sinks (and the MTA's queue) saw
    them: a table of the outcomes, the DSNs, the attempts, ids of each problem with what the sink saw, transit."""
    waited = f" after {r['waited_s']:g} s" if r.get("waited_s") else ""
    queue = f", asking the MTA's queue ({r['mta_queue']})" if r.get("mta_queue") else ""
    recipients, messages = r["recipients"], r["messages"]
    per_recipient = r.get("per") == "recipient"
    of = f"{messages['accepted']:,} messages"
    if per_recipient:
        of = f"{recipients['accepted']:,} recipients in {of}"
    console.print(f"reconciliation with {r['sink']}{waited}{queue}: of {of} the target accepted")
    console.print(_reconciliation_table(recipients if per_recipient else None, messages))
    who = "recipients" if per_recipient else "messages"
    if recipients["bounced"]:
        console.print(
            f"  bounced {who}: DSN returned {recipients['dsn_returned']:,}, "
            f"without DSN {recipients['bounced_without_dsn']:,}"
        )
    for key, text in (
        ("dsn_after_delivery", "delivered, yet returned in a DSN (a bounce for delivered mail)"),
        ("unexpected", "refused by the target, yet delivered to the sink"),
    ):
        if recipients.get(key):
            console.print(f"  {who} {text}: {recipients[key]:,}")
    _print_attempts(console, r, per_recipient)
    _print_samples(console, r.get("samples") or {})
    _print_transit(console, r.get("transit_ms") or {})


def _reconciliation_table(recipients: dict[str, Any] | None, messages: dict[str, Any]) -> Table:
    """A row of recipients (None: not told apart) and one of messages, a column per outcome with something in it."""
    rows = [("recipients", recipients)] if recipients is not None else []
    rows.append(("messages", messages))
    keys = [k for k in RECONCILE_HEADERS if k in RECONCILE_ALWAYS or any(row.get(k) for _, row in rows)]
    table = Table(box=box.SIMPLE, pad_edge=False, show_edge=False)
    table.add_column("")
    for key in keys:
        table.add_column(RECONCILE_HEADERS[key], justify="right", no_wrap=True)
    for name, row in rows:
        table.add_row(name, *(_n(row[k]) if k in row else "-" for k in keys))
    return table


def _print_samples(console: Console, samples: dict[str, list[dict[str, Any]]]) -> None:
    for kind in ("lost", "duplicated", "bounced_without_dsn", "dsn_after_delivery"):
        for entry in samples.get(kind, [])[:SAMPLES_SHOWN]:
            who = f" {entry['recipient']}" if entry.get("recipient") else ""
            saw = f": the sink saw {entry['sink_saw']}" if entry.get("sink_saw") else ""
            console.print(f"  {kind.replace('_', ' ')}: {entry['id']}{who}{saw}")


def _print_transit(console: Console, transit: dict[str, Any]) -> None:
    if not transit.get("all"):
        return
    table = Table(
        box=box.SIMPLE,
        title="transit through the target to the sink's final answer (ms)",
        title_justify="left",
        pad_edge=False,
    )
    columns = ("count", "min", "p50", "p90", "p99", "max")
    table.add_column("domain")
    for c in columns:
        table.add_column(c, justify="right")
    for name, stats in (("all", transit["all"]), *transit["domains"].items()):
        table.add_row(name, *(_n(stats[c]) for c in columns))
    console.print(table)
    if transit.get("clock_skew"):
        console.print(
            f"  {transit['clock_skew']:,} recipients arrived before they were sent: the clocks of trafficgen's "
            "and the sink's hosts disagree (run both on one host, or keep them in sync with NTP)"
        )
