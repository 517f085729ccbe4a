"""Live progress, once a second: a rich live view on a terminal, plain lines otherwise, nothing when quiet.

It only reads snapshots (attempted, outcomes, open connections) through a function it is given, so the
same display serves one process or the merged counts of several.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import IO, NamedTuple

from rich.console import Console
from rich.live import Live
from rich.table import Table

from trafficgen.stats.document import Counted

INTERVAL = 1.0


class Snapshot(NamedTuple):
    attempted: int = 0
    accepted: int = 0
    tempfailed: int = 0
    permfailed: int = 0
    errors: int = 0
    connections: int = 0


BEHIND = 0.98  # the whole run's rate below this share of --throttle's: said at once, not only in the summary
SETTLE_S = 2.0  # seconds before a run can be called behind (connections are still opening)


def behind(snapshot: Snapshot, asked: float | None, elapsed: float, due: float | None = None, lag: float = 0.0) -> bool:
    """True when a --throttle run (or a --profile run, `due` messages due `lag` seconds ago) has answered less
    than 98% of what fell due more than `lag` seconds ago (the recent transaction p99: messages due since may still
    be on the wire, and in a ramp they are a large share of all due so far), a message short at least."""
    if due is None:
        due = asked * max(0.0, elapsed - lag) if asked else None
    return due is not None and elapsed >= SETTLE_S and snapshot.attempted < due * BEHIND - 1


PLAIN_WIDTH = 100  # a plain progress line never passes this many columns


class Tick(NamedTuple):
    """What one progress update shows."""

    snapshot: Snapshot
    per_second: float  # achieved over the last second
    elapsed: float
    asked: float | None = None  # the rate asked now (--throttle, or the --profile's current stage)
    due: float | None = None  # messages due by the schedule up to `lag` seconds ago
    message_count: int | None = None  # --message-count
    p99_ms: float | None = None  # transaction latency p99 of the timeline's last whole interval

    @property
    def lag(self) -> float:
        """How long a message due now may take to be answered: the recent p99 (0 before there is one)."""
        return min(self.elapsed, (self.p99_ms or 0.0) / 1000)


def eta(tick: Tick) -> str | None:
    """With --message-count: how far the run is and how long it has to go at the current rate."""
    count = tick.message_count
    if not count:
        return None
    done = tick.snapshot.attempted
    share = min(100.0, done / count * 100)
    left = count - done
    if left <= 0:
        return f"{share:.0f}% of {count:,}"
    if tick.per_second <= 0:
        return f"{share:.0f}% of {count:,}, ETA -"
    return f"{share:.0f}% of {count:,}, ETA {clock(left / tick.per_second)}"


def clock(seconds: float) -> str:
    """A duration as 45 s, 12:05 or 3:02:10."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def behind_text(tick: Tick) -> str | None:
    snapshot, elapsed, lag = tick.snapshot, tick.elapsed, tick.lag
    if not behind(snapshot, tick.asked if tick.due is None else None, elapsed, tick.due, lag):
        return None
    span = max(elapsed - lag, 1e-9)
    rate = tick.due / span if tick.due is not None else tick.asked or 0.0
    return f"BEHIND: asked {rate:,.1f}/s, achieved {snapshot.attempted / span:,.1f}/s"


def lines(tick: Tick) -> list[str]:
    """Plain progress (logs, pipes): the time, the rate and the counts, then the rate asked, the p99, the progress
    and ETA, and BEHIND; packed into lines of at most PLAIN_WIDTH columns (the later ones indented)."""
    s = tick.snapshot
    parts = [
        f"{tick.elapsed:5.0f} s {tick.per_second:10,.1f} msg/s",
        f"sent {s.attempted:,}",
        f"accepted {s.accepted:,}",
        f"tempfailed {s.tempfailed:,}",
        f"permfailed {s.permfailed:,}",
        f"errors {s.errors:,}",
        f"conns {s.connections:,}",
        f"asked {tick.asked:,.1f}/s" if tick.asked is not None else None,
        f"p99 {tick.p99_ms:,.1f} ms" if tick.p99_ms is not None else None,
        eta(tick),
        behind_text(tick),
    ]
    return _packed(parts)


def _packed(parts: list[str | None]) -> list[str]:
    """Parts joined by two spaces into lines of at most PLAIN_WIDTH columns, the later ones indented."""
    out = [""]
    for part in parts:
        if part is None:
            continue
        if not out[-1]:
            out[-1] = part
        elif len(out[-1]) + 2 + len(part) > PLAIN_WIDTH:
            out.append(" " * 8 + part)
        else:
            out[-1] += "  " + part
    return out


def table(tick: Tick, width: int) -> Table:
    """The live view: the rates and counts as columns, the widest layout that fits the terminal (`width`
    columns): first without the per-minute and per-hour rates, then with short labels, then without the rate
    asked (the caption still says when the run is behind)."""
    s = tick.snapshot
    title = f"trafficgen  {tick.elapsed:,.0f} s"
    progress = eta(tick)
    if progress:
        title += f"  {progress}"
    cells: list[tuple[str, str]] = []
    for layout in LAYOUTS:
        cells = _cells(tick, s, layout)
        if sum(max(len(label), len(value)) for label, value in cells) + 3 * (len(cells) - 1) <= width:
            break
    late = behind_text(tick)  # under the table, so that the title fits 80 columns
    view = Table(
        title=title, title_justify="left", caption=late, caption_justify="left", show_edge=False, pad_edge=False
    )
    for label, _ in cells:
        view.add_column(label, justify="right", no_wrap=True)
    view.add_row(*(value for _, value in cells))
    return view


# (per-minute and per-hour rates, short labels, the rate asked): widest first
LAYOUTS = ((True, False, True), (False, False, True), (False, True, True), (False, True, False))


def _cells(tick: Tick, s: Snapshot, layout: tuple[bool, bool, bool]) -> list[tuple[str, str]]:
    hourly, short, asked = layout
    cells: list[tuple[str, str]] = [("msg/s", f"{tick.per_second:,.1f}")]
    if asked and tick.asked is not None:
        cells.append(("asked/s", f"{tick.asked:,.1f}"))
    if hourly:
        cells += [("msg/min", f"{tick.per_second * 60:,.0f}"), ("msg/h", f"{tick.per_second * 3600:,.0f}")]
    labels = ("sent", "ok", "temp", "perm", "err") if short else COUNT_LABELS
    cells += [(label, f"{value:,}") for label, value in zip(labels, s[:5], strict=True)]
    cells.append(("conns", f"{s.connections:,}"))
    cells.append(("p99 ms", "-" if tick.p99_ms is None else f"{tick.p99_ms:,.1f}"))
    return cells


COUNT_LABELS = ("sent", "accepted", "tempfailed", "permfailed", "errors")


class Progress:
    def __init__(
        self,
        read: Callable[[], Snapshot],
        quiet: bool = False,
        out: IO[str] | None = None,
        asked: float | None = None,
        due: Callable[[float], float] | None = None,
        count: int | None = None,
        p99: Callable[[], float | None] | None = None,
    ):
        self.read = read
        self.quiet = quiet
        self.out = out or sys.stderr
        self.asked = asked  # --throttle's rate, to say when the run falls behind it
        self.due = due  # --profile's messages due by a time, for the same
        self.count = count  # --message-count, for the progress and the ETA
        self.p99 = p99 or (lambda: None)  # the last whole interval's latency p99, in ms

    def tick(self, current: Snapshot, per_second: float, elapsed: float) -> Tick:
        asked, due, p99 = self.asked, None, self.p99()
        if self.due is not None:
            now = self.due(elapsed)
            asked = now - self.due(max(0.0, elapsed - INTERVAL))  # the rate the profile asks now
            due = self.due(max(0.0, elapsed - min(elapsed, (p99 or 0.0) / 1000)))  # due and answerable by now
        return Tick(current, per_second, elapsed, asked, due, self.count, p99)

    async def run(self) -> None:
        """Show progress until cancelled."""
        if self.quiet:
            return
        started = last_time = time.monotonic()
        last = self.read()
        console = Console(file=self.out)
        live = None
        if console.is_terminal:
            live = Live(table(Tick(last, 0.0, 0.0), console.width), console=console, auto_refresh=False)
        try:
            if live is not None:
                live.start()
            while True:
                await asyncio.sleep(INTERVAL)
                now, current = time.monotonic(), self.read()
                per_second = (current.attempted - last.attempted) / (now - last_time)
                tick = self.tick(current, per_second, now - started)
                if live is not None:
                    live.update(table(tick, console.width), refresh=True)
                else:
                    for text in lines(tick):
                        print(text, file=self.out, flush=True)
                last, last_time = current, now
        finally:
            if live is not None:
                live.stop()


# --- while --reconcile-wait asks the sinks --------------------------------------------------------------------


def reconcile_lines(document: Counted, left_s: float) -> list[str]:
    """Plain progress while --reconcile-wait asks: reconcile_parts() in lines of at most PLAIN_WIDTH columns."""
    return _packed(list(reconcile_parts(document, left_s)))


def reconcile_parts(document: Counted, left_s: float) -> list[str]:
    """What one reading of the sinks shows while trafficgen waits: the time left, the recipients (and messages)
    delivered so far of those the target accepted, and those still awaited: deferred in the MTA's queue, pending
    (only deferred by the sink), not seen yet, bounced without their DSN yet."""
    r, m = document["recipients"], document["messages"]
    per_recipient = document["per"] == "recipient"
    delivered = f"delivered {r['delivered'] + r['duplicated']:,} of {r['accepted']:,}"
    if per_recipient:
        delivered += f" recipients ({m['delivered'] + m['duplicated']:,} of {m['accepted']:,} messages)"
    parts = [f"reconciling  {clock(left_s)} left", delivered]
    for label, count in (("deferred", r["deferred"]), ("pending", r["pending"]), ("not seen yet", r["lost"])):
        if count:
            parts.append(f"{label} {count:,}")
    if r["bounced_without_dsn"]:
        parts.append(f"bounced awaiting DSN {r['bounced_without_dsn']:,}")
    return parts


def reconcile_table(document: Counted, left_s: float) -> Table:
    """The live view of reconcile_parts(): one row, a column each."""
    r = document["recipients"]
    view = Table(title=f"reconciling  {clock(left_s)} left", title_justify="left", show_edge=False, pad_edge=False)
    cells = [("accepted", r["accepted"]), ("delivered", r["delivered"] + r["duplicated"])]
    cells += [(key, r[key]) for key in ("bounced", "expired", "deferred", "pending") if r[key]]
    cells.append(("not seen yet", r["lost"]))
    for label, _ in cells:
        view.add_column(label, justify="right", no_wrap=True)
    view.add_row(*(f"{value:,}" for _, value in cells))
    if document["per"] == "recipient":
        view.caption = f"recipients; messages delivered {document['messages']['delivered']:,} of "
        view.caption += f"{document['messages']['accepted']:,}"
        view.caption_justify = "left"
    return view


class ReconcileProgress:
    """Live progress while --reconcile-wait asks the sinks (each reading: `update`), on a terminal as a live view,
    else as plain lines; nothing when quiet."""

    def __init__(self, quiet: bool = False, out: IO[str] | None = None):
        self.quiet = quiet
        self.out = out or sys.stderr
        self.live: Live | None = None
        self.console: Console | None = None

    def update(self, document: Counted, left_s: float) -> None:
        if self.quiet:
            return
        if self.console is None:
            self.console = Console(file=self.out)
        if not self.console.is_terminal:
            for text in reconcile_lines(document, left_s):
                print(text, file=self.out, flush=True)
            return
        view = reconcile_table(document, left_s)
        if self.live is None:
            self.live = Live(view, console=self.console, auto_refresh=False)
            self.live.start()
        self.live.update(view, refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
