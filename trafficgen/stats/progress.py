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


def behind(snapshot: Snapshot, asked: float | None, elapsed: float, due: float | None = None) -> bool:
    """True when a --throttle run (or a --profile run, `due` messages due so far) has sent less than 98% of what
    has fallen due so far."""
    if due is None:
        due = asked * elapsed if asked else None
    return due is not None and elapsed >= SETTLE_S and snapshot.attempted < due * BEHIND


def line(
    snapshot: Snapshot, per_second: float, elapsed: float, asked: float | None = None, due: float | None = None
) -> str:
    text = (
        f"{elapsed:6.0f} s  {per_second:10,.1f} msg/s {per_second * 60:12,.0f} msg/min {per_second * 3600:14,.0f} msg/h"
        f"  sent {snapshot.attempted:,}  accepted {snapshot.accepted:,}  tempfailed {snapshot.tempfailed:,}"
        f"  permfailed {snapshot.permfailed:,}  errors {snapshot.errors:,}  connections {snapshot.connections:,}"
    )
    if behind(snapshot, asked, elapsed, due):
        rate = asked if asked else (due or 0.0) / elapsed
        text += f"  BEHIND: asked {rate:,.1f}/s, achieved {snapshot.attempted / elapsed:,.1f}/s"
    return text


def _table(
    snapshot: Snapshot, per_second: float, elapsed: float, asked: float | None = None, due: float | None = None
) -> Table:
    late = behind(snapshot, asked, elapsed, due)
    rate = asked if asked else (due or 0.0) / elapsed if elapsed else 0.0
    title = f"trafficgen  {elapsed:,.0f} s" + (f"  BEHIND SCHEDULE (asked {rate:,.1f}/s)" if late else "")
    table = Table(title=title, title_justify="left", show_edge=False)
    for column in ("msg/s", "msg/min", "msg/h", "sent", "accepted", "tempfailed", "permfailed", "errors", "conns"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{per_second:,.1f}",
        f"{per_second * 60:,.0f}",
        f"{per_second * 3600:,.0f}",
        *(f"{v:,}" for v in snapshot),
    )
    return table


class Progress:
    def __init__(
        self,
        read: Callable[[], Snapshot],
        quiet: bool = False,
        out: IO[str] | None = None,
        asked: float | None = None,
        due: Callable[[float], float] | None = None,
    ):
        self.read = read
        self.quiet = quiet
        self.out = out or sys.stderr
        self.asked = asked  # --throttle's rate, to say when the run falls behind it
        self.due = due  # --profile's messages due by a time, for the same

    async def run(self) -> None:
        """Show progress until cancelled."""
        if self.quiet:
            return
        started = last_time = time.monotonic()
        last = self.read()
        console = Console(file=self.out)
        live = Live(_table(last, 0.0, 0.0), console=console, auto_refresh=False) if console.is_terminal else None
        try:
            if live is not None:
                live.start()
            while True:
                await asyncio.sleep(INTERVAL)
                now, current = time.monotonic(), self.read()
                per_second = (current.attempted - last.attempted) / (now - last_time)
                due = self.due(now - started) if self.due is not None else None
                if live is not None:
                    live.update(_table(current, per_second, now - started, self.asked, due), refresh=True)
                else:
                    print(line(current, per_second, now - started, self.asked, due), file=self.out, flush=True)
                last, last_time = current, now
        finally:
            if live is not None:
                live.stop()
