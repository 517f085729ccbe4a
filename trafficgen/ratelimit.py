"""The throttle: one rate for the whole run, open-loop, with an injected clock.

Message k is due at start + k / rate (the first `max_burst` may go at once). Due times follow that schedule
even when the generator falls behind, so the latency measured from them (the "intended" time) includes the
time a message waited for a free connection: coordinated omission is corrected, as wrk2 does.

With --processes N the schedule lives in shared memory, so all processes draw from one schedule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mailload.units import RateSpec


class Throttle:
    """reserve() hands out due times, one per message, `interval` apart."""

    last_stage = 0  # one stage: the schedule of a --profile has several (trafficgen.profile)

    def __init__(
        self,
        spec: RateSpec,
        clock: Callable[[], float] = time.monotonic,
        shared: Any = None,
    ):
        self.interval = 1.0 / spec.per_second
        self.burst = spec.max_burst or 1
        self.clock = clock
        # `shared` is a multiprocessing Value('d') holding the next due time (0: not started yet).
        self.shared = shared
        self._next = 0.0

    @property
    def slack(self) -> float:
        """A due time this close to the end of the run is past it (sums of intervals drift by an ulp)."""
        return 1e-6 * self.interval

    def _start(self, now: float) -> float:
        return now - (self.burst - 1) * self.interval

    def begin(self, now: float | None = None) -> float:
        """Start the schedule now (the run's start), unless another process of the run started it already:
        message k is then due at start + k / rate however long the first connection takes to open.
        Returns the schedule's start, which every process of the run shares."""
        now = self.clock() if now is None else now
        if self.shared is None:
            if not self._next:
                self._next = self._start(now)
            return self._next + (self.burst - 1) * self.interval
        with self.shared.get_lock():
            if not self.shared.value:
                self.shared.value = self._start(now)
            return float(self.shared.value) + (self.burst - 1) * self.interval

    def reserve(self, only_if_due: bool = False) -> float | None:
        """The due time of the next message (possibly in the past: then it is due now).

        With only_if_due, take it only when it is due already, else None (and nothing is taken).
        """
        if self.shared is None:
            return self._take(self, "_next", only_if_due)
        with self.shared.get_lock():
            return self._take(self.shared, "value", only_if_due)

    def _take(self, holder: Any, attribute: str, only_if_due: bool) -> float | None:
        due = getattr(holder, attribute)
        now = self.clock()
        if not due:
            due = self._start(now)
        if only_if_due and due > now:
            return None
        setattr(holder, attribute, due + self.interval)
        return float(due)
