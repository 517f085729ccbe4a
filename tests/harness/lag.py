"""How late this machine wakes a process that asked to sleep, measured while a test runs: what a timing test derives
its tolerance from, so that it holds on a busy machine and stays tight on a quiet one.

A separate process (not a thread of the test's, which would measure the GIL) sleeps 5 ms at a time until its stdin
closes and reports how late each wake-up came: the delay every process of the test suffers alike. Seen on the 2-core
development machine at a load average of 7: 5-30 ms at the 99th percentile, 18-104 ms at worst.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from types import TracebackType

_PROBE = """
import select, sys, time
late = []
while True:
    t = time.monotonic()
    if select.select([sys.stdin], [], [], 0.005)[0]:
        break
    late.append(time.monotonic() - t - 0.005)
late.sort()
print(late[int(len(late) * 0.99)] if late else 0.0, late[-1] if late else 0.0)
"""


@dataclass
class Lag:
    """The wake-up lateness seen while the probe ran, in seconds (0 until it has stopped)."""

    p99: float = 0.0
    worst: float = 0.0


class LagProbe:
    """`with LagProbe() as lag: ...`: afterwards `lag.p99` and `lag.worst` say how late the machine woke a sleeper."""

    def __init__(self) -> None:
        self.lag = Lag()
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Lag:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _PROBE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        return self.lag

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self._process is not None
        out, _ = self._process.communicate(timeout=30)  # closing stdin ends the probe
        p99, worst = (float(value) for value in out.split())
        self.lag.p99, self.lag.worst = max(0.0, p99), max(0.0, worst)
