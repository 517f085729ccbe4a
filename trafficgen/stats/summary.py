"""The summary people read of a report, as wide as the terminal (rich): the headline, latency, the counts per domain
and per dimension, the profile's stages, the run over time, replies, errors, the reconciliation and the thresholds.

It renders a Report (trafficgen.stats.document), so a merged or saved report prints exactly like a live one; it
never builds one (trafficgen.stats.report does).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping
from typing import IO

from hdrh.histogram import HdrHistogram
from rich import box
from rich.console import Console
from rich.table import Table

from trafficgen.stats.document import (
    Counts,
    MessageOutcomes,
    Point,
    ProfileReport,
    RecipientOutcomes,
    Reconciliation,
    Report,
    Sample,
    Thresholds,
    TimelineReport,
    Transit,
    count_list,
    latency_values,
)
from trafficgen.stats.histogram import new_histogram
from trafficgen.stats.histogram import summary as histogram_summary

TOP_REPLIES = 10
NARROW = 110  # a summary narrower than this uses the narrow tables
DEFAULT_WIDTH = 120  # a summary written to a file or a pipe (COLUMNS overrides it)


def _n(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def summary(report: Report, out: IO[str], show_timeline: bool = False, width: int | None = None) -> None:
    """The human-readable report (with the run over time, for `report show`), as wide as the terminal."""
    with console_for(out, width) as console:
        _print_summary(console, report, show_timeline)


def _print_summary(console: Console, report: Report, show_timeline: bool) -> None:
    narrow = console.width < NARROW
    _print_headline(console, report)
    console.print(_latency_table(report, console.width))
    note = _pipelining_note(report)
    if note:
        console.print(note)
    console.print(_domains_table(report, narrow))
    for title, rows in (
        ("tenants", report["tenants"]),
        ("campaigns", report["campaigns"]),
        ("sender domains", report["sender_domains"]),
        ("source addresses", report["source_addresses"]),
    ):
        if rows:
            console.print(_counts_table(title, title[:-1].replace("addresse", "address"), rows, narrow))
    if report["profile"]:
        _print_profile(console, report["profile"])
    over_time = _timeline_table(report["timeline"], narrow) if report["timeline"] else None
    if over_time is not None and show_timeline:
        console.print(over_time)
    if report["replies"]:
        console.print(_replies_table(report, console.width))
    reconciliation = report.get("reconciliation")
    if reconciliation and "error" not in reconciliation:
        print_reconciliation(console, reconciliation)
    if report["errors"]:
        console.print(_errors_table(report, console.width))
    if report["thresholds"]:
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


def _print_headline(console: Console, report: Report) -> None:
    totals = report["totals"]
    attempted = totals["attempted"]
    config = report["config"]
    rate = report["success_rate"]
    sending, elapsed = report["sending_s"], report["elapsed_s"]
    concurrency = config.get("concurrency", "?")
    per_message = config.get("recipients_per_message")
    console.print(f"[bold]trafficgen[/bold] run {report['run_id']} -> {report['target']}")
    _fit(
        console,
        [
            f"{attempted:,} message{'' if attempted == 1 else 's'} in {sending:,.1f} s over {concurrency} "
            f"connection{'' if concurrency == 1 else 's'}",
            *([f"(last reply at {elapsed:,.1f} s)"] if elapsed > sending + 0.5 else []),
            *([f"({report['stopped_by']})"] if report["stopped_by"] else []),
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
    recipients = report["recipients"]
    if isinstance(per_message, int) and per_message > 1:
        _fit(
            console,
            [
                f"recipients: accepted {recipients['accepted']:,}",
                f"tempfailed {recipients['tempfailed']:,}",
                f"permfailed {recipients['permfailed']:,}",
                f"errors {recipients['errors']:,}",
                f"({per_message} a message)",
            ],
        )
    t = report["throughput"]
    if attempted > totals["errors"]:  # a run where no message reached a server has no throughput to speak of
        _fit(
            console, [f"throughput {_n(t['per_second'], 1)}/s", f"{_n(t['per_minute'])}/min", f"{_n(t['per_hour'])}/h"]
        )
    plan = report["schedule"]
    if plan and plan["behind"]:
        console.print(
            f"  [bold]behind schedule[/bold]: asked {_n(plan['asked_per_s'], 1)}/s, achieved "
            f"{_n(plan['achieved_per_s'], 1)}/s; {plan['never_sent']:,} of {plan['due']:,} messages due were never "
            "sent (the target answers too slowly for --concurrency connections, or this host is saturated)"
        )
    connections = report["connections"]
    if connections["failed"]:
        worst = connections["errors"][0]["text"] if connections["errors"] else ""
        console.print(f"  connections that could not be opened: {connections['failed']:,} ({worst})")


# The latency table's layouts, the most detailed first: (columns, fewer decimals on large values)
LATENCY_LAYOUTS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("min", "mean", "p50", "p75", "p90", "p95", "p99", "p99_9", "max"), False),
    (("min", "mean", "p50", "p75", "p90", "p95", "p99", "p99_9", "max"), True),
    (("p50", "p90", "p99", "p99_9", "max"), True),
)


def _latency_table(report: Report, width: int = DEFAULT_WIDTH) -> Table:
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


def _latency_layout(report: Report, columns: tuple[str, ...], narrow: bool) -> Table:
    latency = Table(box=box.SIMPLE, title="latency (ms)", title_justify="left", pad_edge=False)
    latency.add_column("", no_wrap=True)
    for c in columns:
        latency.add_column(c.replace("_", "."), justify="right", no_wrap=True)
    rows = [("transaction", report["latency_ms"])]
    if report["latency_from_intended_ms"]:
        rows.append(("from intended send", report["latency_from_intended_ms"]))
    rows += [(f"  {name}", stats) for name, stats in report["phases_ms"].items() if stats["count"]]
    for label, stats in rows:
        values = latency_values(stats)
        latency.add_row(label, *(_ms(values[c], narrow) for c in columns))
    return latency


def _pipelining_note(report: Report) -> str | None:
    """Why `rcpt` reads near zero when commands were pipelined (the server answers MAIL, RCPT and DATA together)."""
    rcpt = report["phases_ms"].get("rcpt")
    if not report["config"].get("pipelining") or not rcpt or not rcpt["count"]:
        return None
    return "  pipelined: rcpt's reply comes with data's (data holds the server's time)"


def _ms(value: float | None, narrow: bool) -> str:
    """Milliseconds to the microsecond; narrow: to three significant digits or the whole millisecond."""
    if value is None or not narrow:
        return _n(value, 3)
    return _n(value, 3 if value < 10 else 1 if value < 1000 else 0)


def _domains_table(report: Report, narrow: bool = False) -> Table:
    return _counts_table("domains", "domain", report["domains"], narrow)


COUNT_HEADERS = ("attempted", "accepted", "tempfailed", "permfailed", "errors")
NARROW_HEADERS = ("sent", "accepted", "temp", "perm", "errors")


def _counts_table(title: str, column: str, rows: dict[str, Counts], narrow: bool = False) -> Table:
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
            *(f"{n:,}" for n in count_list(row)),
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


def _timeline_table(timeline: TimelineReport, narrow: bool = False) -> Table | None:
    """The run over time: each interval (or span of intervals, for a long run) with its counts, the connections
    open at its end and its latency p99 (from the intended time when measured)."""
    points = timeline["points"]
    if not points:
        return None
    group = -(-len(points) // TIMELINE_ROWS)
    width = timeline["interval_s"] * group
    histograms = timeline.get("histograms")
    none: list[str | None] = [None] * len(points)
    intended = histograms["intended"] if histograms else none
    latency = histograms["latency"] if histograms else none
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


def _timeline_row(rows: list[Point], p99: float | None) -> list[str]:
    """One row of `over time`: its start, the five counts, the connections at its end, its p99."""
    counts = [sum(column) for column in zip(*(count_list(p) for p in rows), strict=True)]
    connections = [p["connections"] for p in rows if p["connections"] is not None]
    return [
        _n(max(0.0, rows[0]["t_s"]), 0),
        *(f"{n:,}" for n in counts),
        f"{connections[-1]:,}" if connections else "-",
        _n(p99, 1),
    ]


def _print_profile(console: Console, profile: ProfileReport) -> None:
    table = Table(box=box.SIMPLE, title="profile stages", title_justify="left", pad_edge=False)
    columns = ("stage", "start s", "due", "sent", "asked/s", "achieved/s", "accepted %", "p99 ms")
    for c in columns:
        table.add_column(c, justify="left" if c == "stage" else "right")
    for stage in profile["stages"]:
        latency = latency_values(stage["latency_from_intended_ms"])
        accepted = stage["accepted"] / stage["attempted"] * 100 if stage["attempted"] else None
        table.add_row(
            stage["stage"] + (" (behind)" if stage["behind"] else ""),
            _n(stage["start_s"], 1),
            f"{stage['due']:,}",
            f"{stage['attempted']:,}",
            _n(stage["asked_per_s"], 1),
            _n(stage["achieved_per_s"], 1),
            _n(accepted, 1),
            _n(latency["p99"], 1),
        )
    console.print(table)
    stairs = profile["stairs"]
    if stairs:
        held = stairs["last_held_per_s"]
        console.print(
            f"  [bold]stairs: the last rate that held was {_n(held, 1)}/s[/bold]"
            if held is not None
            else "  [bold]stairs: no step held[/bold]",
            end="",
        )
        if stairs["failed_per_s"] is not None:
            console.print(f"; {_n(stairs['failed_per_s'], 1)}/s did not: {stairs['reason']}")
        else:
            console.print(f" ({stairs['reason'] or 'the top rate was reached'})")


def print_thresholds(console: Console, thresholds: Thresholds) -> None:
    """Each --fail-if threshold, its measured value and whether it passed."""
    aborted = thresholds["aborted"]
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


def _replies_table(report: Report, width: int = 120) -> Table:
    """The most frequent replies, and the domains each came from (the most frequent first, then how many more)."""
    replies = Table(box=box.SIMPLE, title="most frequent replies", title_justify="left", pad_edge=False)
    shown = report["replies"][:TOP_REPLIES]
    count_width = max(len("count"), *(len(f"{r['count']:,}") for r in shown))
    domains = [_reply_domains(r.get("domains", {})) for r in shown]
    domain_width = min(max((len(d) for d in domains), default=0), 28)
    replies.add_column("count", justify="right", no_wrap=True, width=count_width)
    replies.add_column("code", justify="right", no_wrap=True, width=4)
    if domain_width:
        replies.add_column("from", no_wrap=True, overflow="ellipsis", width=max(4, domain_width))
    # the rest of the line: a box.SIMPLE table spends 2 columns on its edges and 3 between two columns
    used = count_width + 4 + (max(4, domain_width) if domain_width else 0) + 2 + 3 * (3 if domain_width else 2)
    text_width = max(20, min(100, width - used))
    replies.add_column("text", overflow="ellipsis", no_wrap=True, width=text_width)
    texts = distinct_cuts([r["text"] for r in shown], text_width)
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


def _errors_table(report: Report, width: int = 120) -> Table:
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


def _print_attempts(console: Console, r: Reconciliation, per_recipient: bool) -> None:
    views = (
        (r["recipients"]["attempts"], "each delivered recipient"),
        (r["messages"]["attempts"], "each delivered message (its recipients' most)"),
    )
    for attempts, who in views if per_recipient else views[1:]:
        tries = {k: v for k, v in attempts.items() if v}
        if tries:
            console.print(f"  attempts {who}: " + "  ".join(f"{k}: {v:,}" for k, v in tries.items()))


def print_reconciliation(console: Console, r: Reconciliation) -> None:
    """What became of the recipients and messages the target accepted, as the sinks (and the MTA's queue) saw
    them: a table of the outcomes, the DSNs, the attempts, ids of each problem with what the sink saw, transit."""
    waited = f" after {r['waited_s']:g} s" if r.get("waited_s") else ""
    queue = f", asking the MTA's queue ({r['mta_queue']})" if r.get("mta_queue") else ""
    recipients, messages = r["recipients"], r["messages"]
    per_recipient = r["per"] == "recipient"
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
    for count, text in (
        (recipients["dsn_after_delivery"], "delivered, yet returned in a DSN (a bounce for delivered mail)"),
        (recipients["unexpected"], "refused by the target, yet delivered to the sink"),
    ):
        if count:
            console.print(f"  {who} {text}: {count:,}")
    _print_attempts(console, r, per_recipient)
    _print_samples(console, r["samples"])
    transit = r.get("transit_ms")
    if transit:
        _print_transit(console, transit)


def _reconciliation_table(recipients: RecipientOutcomes | None, messages: MessageOutcomes) -> Table:
    """A row of recipients (None: not told apart) and one of messages, a column per outcome with something in it."""
    views: list[tuple[str, Mapping[str, object]]] = [("recipients", recipients)] if recipients is not None else []
    views.append(("messages", messages))
    rows = [(name, {k: v for k, v in view.items() if isinstance(v, int)}) for name, view in views]
    keys = [k for k in RECONCILE_HEADERS if k in RECONCILE_ALWAYS or any(row.get(k) for _, row in rows)]
    table = Table(box=box.SIMPLE, pad_edge=False, show_edge=False)
    table.add_column("")
    for key in keys:
        table.add_column(RECONCILE_HEADERS[key], justify="right", no_wrap=True)
    for name, row in rows:
        table.add_row(name, *(_n(row[k]) if k in row else "-" for k in keys))
    return table


def _print_samples(console: Console, samples: dict[str, list[Sample]]) -> None:
    for kind in ("lost", "duplicated", "bounced_without_dsn", "dsn_after_delivery"):
        for entry in samples.get(kind, [])[:SAMPLES_SHOWN]:
            who = f" {entry['recipient']}" if entry["recipient"] else ""
            saw = f": the sink saw {entry['sink_saw']}" if entry["sink_saw"] else ""
            console.print(f"  {kind.replace('_', ' ')}: {entry['id']}{who}{saw}")


def _print_transit(console: Console, transit: Transit) -> None:
    everything = transit["all"]
    if not everything:
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
    for name, stats in (("all", everything), *transit["domains"].items()):
        values = [stats["count"], stats["min"], stats["p50"], stats["p90"], stats["p99"], stats["max"]]
        table.add_row(name, *(_n(v) for v in values))
    console.print(table)
    if transit["clock_skew"]:
        console.print(
            f"  {transit['clock_skew']:,} recipients arrived before they were sent: the clocks of trafficgen's "
            "and the sink's hosts disagree (run both on one host, or keep them in sync with NTP)"
        )
