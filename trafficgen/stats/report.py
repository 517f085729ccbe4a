"""The report of a run: a JSON document (schema 1, docs/report.md) and the summary people read.

build() turns a Recorder into the document; summary() renders a document, so a merged or saved report
prints exactly like a live one. The document carries every histogram in HdrHistogram's standard compressed
base64 form, so reports of several processes or machines merge exactly (trafficgen report merge).
"""

from __future__ import annotations

import datetime
import math
from typing import IO, Any

from hdrh.histogram import HdrHistogram
from rich import box
from rich.console import Console
from rich.table import Table

from trafficgen import __version__
from trafficgen.stats.recorder import PHASES, Recorder

SCHEMA = 1
PERCENTILES = (("p50", 50.0), ("p75", 75.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p99_9", 99.9))
TOP_REPLIES = 10


def latency_ms(histogram: HdrHistogram | None) -> dict[str, float | int | None] | None:
    """min, mean, percentiles and max of a microsecond histogram, in milliseconds."""
    if histogram is None:
        return None
    count = histogram.get_total_count()
    out: dict[str, float | int | None] = {"count": count}
    if not count:
        out.update({"min": None, "mean": None, **{k: None for k, _ in PERCENTILES}, "max": None})
        return out
    out["min"] = round(histogram.get_min_value() / 1000, 3)
    out["mean"] = round(histogram.get_mean_value() / 1000, 3)
    for key, p in PERCENTILES:
        out[key] = round(histogram.get_value_at_percentile(p) / 1000, 3)
    out["max"] = round(histogram.get_max_value() / 1000, 3)
    return out


BEHIND = 0.98  # an achieved rate below this share of the asked one is reported as behind schedule


def schedule(config: dict[str, Any], attempted: int, window: float) -> dict[str, Any] | None:
    """With --throttle: the rate asked and achieved, and how many messages fell due but were never sent."""
    asked = config.get("throttle_per_s")
    if not asked:
        return None
    due = max(0, math.ceil(window * asked - 1e-9)) + (config.get("max_burst") or 1) - 1
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
    return {
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
        "replies": [{"code": code, "text": text, "count": n} for (code, text), n in replies],
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
    }


def recorder_of(report: dict[str, Any]) -> Recorder:
    """A Recorder holding what a report holds, for merging reports."""
    domains = list(report["domains"])
    recorder = Recorder(domains)
    histograms = report.get("histograms") or {}
    recorder.merge(
        {
            "counts": [
                [report["domains"][d][k] for k in ("attempted", "accepted", "tempfailed", "permfailed", "errors")]
                for d in domains
            ],
            "recipients": [report["recipients"][k] for k in ("accepted", "tempfailed", "permfailed", "errors")],
            "replies": [[r["code"], r["text"], r["count"]] for r in report["replies"]],
            "errors": {e["text"]: e["count"] for e in report["errors"]},
            "latency": report["histogram"],
            "corrected": histograms.get("latency_from_intended"),
            "phases": histograms.get("phases") or {},
            "connections_opened": report.get("connections", {}).get("opened", 0),
            "connections_open": 0,
            "connections_peak": report.get("connections", {}).get("peak", 0),
            "connection_errors": {e["text"]: e["count"] for e in report.get("connections", {}).get("errors", [])},
        }
    )
    return recorder


def _n(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def summary(report: dict[str, Any], out: IO[str]) -> None:
    """The human-readable report."""
    console = Console(file=out, width=120, highlight=False, soft_wrap=False)
    _print_headline(console, report)
    console.print(_latency_table(report))
    console.print(_domains_table(report))
    if report["replies"]:
        console.print(_replies_table(report))
    reconciliation = report.get("reconciliation")
    if reconciliation and "error" not in reconciliation:
        print_reconciliation(console, reconciliation, report["totals"]["accepted"])
    if report["errors"]:
        console.print(_errors_table(report))


def _print_headline(console: Console, report: dict[str, Any]) -> None:
    totals = report["totals"]
    attempted = totals["attempted"]
    config = report["config"]
    rate = report["success_rate"]
    sending, elapsed = report.get("sending_s", report["elapsed_s"]), report["elapsed_s"]
    console.print(
        f"[bold]trafficgen[/bold] run {report['run_id']} -> {report['target']}: {attempted:,} "
        f"message{'' if attempted == 1 else 's'} in "
        f"{sending:,.1f} s over {config.get('concurrency', '?')} connections"
        + (f" (last reply at {elapsed:,.1f} s)" if elapsed > sending + 0.5 else "")
        + (f" ({report['stopped_by']})" if report.get("stopped_by") else "")
    )
    console.print(
        f"  accepted {totals['accepted']:,}  tempfailed {totals['tempfailed']:,}  permfailed {totals['permfailed']:,}"
        f"  errors {totals['errors']:,}  success rate {_n(rate * 100 if rate is not None else None, 2)}%"
    )
    t = report["throughput"]
    console.print(f"  throughput {_n(t['per_second'], 1)}/s  {_n(t['per_minute'])}/min  {_n(t['per_hour'])}/h")
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


def _latency_table(report: dict[str, Any]) -> Table:
    latency = Table(box=box.SIMPLE, title="latency (ms)", title_justify="left", pad_edge=False)
    columns = ("min", "mean", "p50", "p75", "p90", "p95", "p99", "p99_9", "max")
    latency.add_column("")
    for c in columns:
        latency.add_column(c.replace("_", "."), justify="right")
    rows = [("transaction", report["latency_ms"])]
    if report.get("latency_from_intended_ms"):
        rows.append(("from intended send", report["latency_from_intended_ms"]))
    rows += [(f"  {name}", stats) for name, stats in report["phases_ms"].items() if stats and stats["count"]]
    for label, stats in rows:
        latency.add_row(label, *(_n(stats.get(c) if stats else None, 3) for c in columns))
    return latency


def _domains_table(report: dict[str, Any]) -> Table:
    domains = Table(box=box.SIMPLE, title="domains", title_justify="left", pad_edge=False)
    for c in ("domain", "attempted", "accepted", "tempfailed", "permfailed", "errors", "accepted %"):
        domains.add_column(c, justify="left" if c == "domain" else "right")
    for name, row in sorted(report["domains"].items(), key=lambda item: -item[1]["attempted"]):
        share = row["accepted"] / row["attempted"] * 100 if row["attempted"] else None
        domains.add_row(
            name,
            *(f"{row[k]:,}" for k in ("attempted", "accepted", "tempfailed", "permfailed", "errors")),
            _n(share, 1),
        )
    return domains


def _replies_table(report: dict[str, Any]) -> Table:
    replies = Table(box=box.SIMPLE, title="most frequent replies", title_justify="left", pad_edge=False)
    replies.add_column("count", justify="right")
    replies.add_column("code", justify="right")
    replies.add_column("text", overflow="ellipsis", no_wrap=True, max_width=96)
    for r in report["replies"][:TOP_REPLIES]:
        replies.add_row(f"{r['count']:,}", str(r["code"]), r["text"])
    return replies


def _errors_table(report: dict[str, Any]) -> Table:
    errors = Table(box=box.SIMPLE, title="errors", title_justify="left", pad_edge=False)
    errors.add_column("count", justify="right")
    errors.add_column("error", overflow="ellipsis", no_wrap=True, max_width=100)
    for e in report["errors"][:TOP_REPLIES]:
        errors.add_row(f"{e['count']:,}", e["text"])
    return errors


def print_reconciliation(console: Console, r: dict[str, Any], accepted: int) -> None:
    """What became of the messages the target accepted, as the sinks saw them."""
    waited = f" after {r['waited_s']:g} s" if r.get("waited_s") else ""
    console.print(f"reconciliation with {r['sink']}{waited}: of {accepted:,} accepted by the target")
    bounced = f"bounced {r['bounced']:,}"
    if r["bounced"]:
        bounced += f" (DSN returned {r.get('dsn_returned', 0):,}, without DSN {r.get('bounced_without_dsn', 0):,})"
    line = (
        f"  delivered {r['delivered']:,}  {bounced}  deferred {r['deferred_pending']:,}"
        + (f"  expired {r['expired']:,}" if r.get("expired") else "")
        + f"  [bold]lost {r['lost']:,}  duplicated {r['duplicated']:,}[/bold]"
    )
    for key in ("dsn_after_delivery", "unexpected", "unknown"):
        if r.get(key):
            line += f"  {key.replace('_', ' ')} {r[key]:,}"
    console.print(line)
    tries = {k: v for k, v in (r.get("attempts") or {}).items() if v}
    if tries:
        console.print("  attempts each delivered message took: " + "  ".join(f"{k}: {v:,}" for k, v in tries.items()))
    for kind in ("lost", "duplicated", "bounced_without_dsn", "dsn_after_delivery"):
        if r.get(f"{kind}_ids"):
            console.print(f"  {kind.replace('_', ' ')}: {' '.join(r[f'{kind}_ids'][:10])}")
    transit = r.get("transit_ms") or {}
    if transit.get("all"):
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
                f"  {transit['clock_skew']:,} messages arrived before they were sent: the clocks of trafficgen's "
                "and the sink's hosts disagree (run both on one host, or keep them in sync with NTP)"
            )
