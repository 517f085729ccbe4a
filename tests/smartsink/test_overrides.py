"""The override keeper in process, on an event loop with a virtual clock: no real sleeping, the same run every time.

The keeper sleeps on the event loop's timers until the next start or end of a window, then works out the policy in
force from a clock of its own (the wall clock in a sink). Here both read one virtual clock, with the two things
about real time that matter: it moves on between two readings (by TICK at each reading of the windows' clock), and
the loop's timers fire a little before they are due (uvloop's, which have millisecond resolution, fire up to a
millisecond early). When the loop has nothing to do its clock jumps to the next timer. Over real sockets and
clocks: test_providers.py's TestWindows.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from harness.policies import ACCEPT_ALL
from smartsink.overrides import OverrideKeeper, Overrides
from smartsink.policy import parse_policy
from smartsink.policy.model import Policy, Window

TICK = 0.0001  # seconds the clock moves on at each reading of the windows' clock
DOMAIN = "win.test"
START, LENGTH = 0.005, 0.01  # the window: seconds after the sink's start
ON_TIME = 10 * TICK  # a start or end applied later than this after it is late
WAKE_UPS = 12  # timers firing from half a reading to 11.5 readings early: more readings than a turn of the keeper


class VirtualClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def read(self) -> float:
        """The windows' clock: time has passed since the last reading."""
        self.now += TICK
        return self.now


class IdleJumps(selectors.SelectSelector):
    """A selector that, rather than wait `timeout` seconds for something to happen, moves the clock on by that."""

    def __init__(self, clock: VirtualClock):
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        assert timeout is not None, "no timer left: nothing would ever wake the loop"
        ready = super().select(0)
        if not ready:
            self.clock.now += timeout
        return ready


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock, early: float):
        super().__init__(IdleJumps(clock))
        self.clock = clock
        self.early = early

    def time(self) -> float:
        return self.clock.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any, context: Any = None) -> Any:
        return super().call_at(when - self.early, callback, *args, context=context)


def pushes(early: float) -> list[tuple[float, bool]]:
    """A keeper over one window of DOMAIN (from START for LENGTH), its timers firing `early`, run until it has pushed
    the end of the window or for 10 s: each push as (seconds since the sink's start, window in force)."""
    clock = VirtualClock()
    overrides = Overrides(started=clock.now, clock=clock.read)
    policy = replace(parse_policy(ACCEPT_ALL), schedule=(Window(DOMAIN, (("defer", 100.0),), START, LENGTH),))
    pushed: list[tuple[float, bool]] = []

    async def run() -> None:
        over = asyncio.Event()

        def push(in_force: Policy) -> None:
            applied = DOMAIN in in_force.domains and in_force.domains[DOMAIN].defer == 100.0
            pushed.append((clock.now - overrides.started, applied))
            if not applied and any(on for _, on in pushed):
                over.set()

        keeper = asyncio.get_running_loop().create_task(OverrideKeeper(overrides, lambda: policy, push).run())
        with contextlib.suppress(TimeoutError):  # the end never pushed: the assertions say what was
            await asyncio.wait_for(over.wait(), 10.0)
        keeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await keeper

    with asyncio.Runner(loop_factory=lambda: VirtualLoop(clock, early)) as runner:
        runner.run(run())
    return pushed


@pytest.mark.parametrize("step", range(WAKE_UPS))
def test_window_starts_and_ends_on_time_after_early_wake_ups(step: int) -> None:
    """With the loop's timers firing (`step` + 0.5) readings of the clock early, the window is applied within ON_TIME
    of its start and lifted within ON_TIME of its end: the keeper wakes, finds nothing changed yet, and waits for the
    same moment again. One that took the policy in force and its next wake-up from two readings lost a start or end
    that fell between them, and waited for the next change, or for ever."""
    timeline = pushes(early=(step + 0.5) * TICK)
    assert [on for _, on in timeline] == [False, True, False], timeline
    (_, _), (applied, _), (lifted, _) = timeline
    assert START <= applied < START + ON_TIME, timeline
    assert START + LENGTH <= lifted < START + LENGTH + ON_TIME, timeline
