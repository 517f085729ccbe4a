"""The one state of a run in this process: what may still be claimed, what waits for its outcome, why it ended.

Every part of the run asks it (the workers, the run loop, the supervisor's relay); it is written only through its
methods: `begin` (the clock starts), `take` (a message is claimed), `settle` or `drop` (a claimed message got its
outcome, or never will), and `stop(reason)`, the one way a run ends, whoever ends it: the clock, the count, ^C,
an error, the judge of --fail-fast and the stairs (trafficgen.watch), the supervisor of --processes. Nothing here
does I/O; the clock is injected.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from enum import Enum

from trafficgen.profile import ProfileSchedule
from trafficgen.ratelimit import Throttle


class Stop(Enum):
    """Why a run (or this process's part of it) ended."""

    DURATION = "duration over"  # --duration passed
    COUNT = "count done"  # every message of --message-count has its outcome
    INTERRUPTED = "interrupted"  # ^C or SIGTERM
    JUDGE = "judge"  # a --fail-fast threshold failed, or a step of the stairs did not hold (trafficgen.watch)
    SUPERVISOR = "supervisor"  # --processes: the supervisor stopped this process (^C, its judge, a sibling's error)
    ERROR = "error"  # a target that cannot be reached (without --keep-going), a name that does not resolve, a bug

    @property
    def abrupt(self) -> bool:
        """The run stops before its end: messages claimed and not sent yet are dropped, nobody waits to reconnect."""
        return self is not Stop.DURATION and self is not Stop.COUNT

    @property
    def from_outside(self) -> bool:
        """Someone outside the run stopped it: the sending window ends there, in-flight messages get a grace
        period to finish, then are cut."""
        return self is Stop.INTERRUPTED or self is Stop.JUDGE or self is Stop.SUPERVISOR


class RunState:
    """Claims (a --message-count's remainder, the --duration deadline, the schedule's end), outstanding outcomes,
    and the run's end. `count`: the messages this process may claim (None: no count); `schedule`: the open-loop
    schedule (--throttle, --profile) that gives each claim its due time."""

    def __init__(
        self,
        count: int | None = None,
        schedule: Throttle | ProfileSchedule | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.schedule = schedule
        self._clock = clock
        self._remaining = count
        self._claimed = 0
        self._outstanding = 0  # claimed, their outcome not recorded yet
        self._deadline = math.inf
        self._exhausted = False  # the schedule reached the end of --duration: no more claims, the run goes on
        self._stops: dict[Stop, float] = {}  # each reason given, with when it was first given
        self._stopping = False  # an abrupt stop was given
        self._error: str | None = None
        self._over = asyncio.Event()
        self._outside = asyncio.Event()

    # --- what every part asks -------------------------------------------------------------------------------

    def claims_over(self, now: float | None = None) -> bool:
        """No message will be claimed any more in this process."""
        return (
            self._over.is_set()
            or self._exhausted
            or (self._remaining is not None and self._remaining <= 0)
            or (self._clock() if now is None else now) >= self._deadline
        )

    @property
    def over(self) -> bool:
        """The run is over: its end came (--duration, the count) or it was stopped. In-flight messages finish."""
        return self._over.is_set()

    @property
    def stopping(self) -> bool:
        """The run was stopped before its end (see Stop.abrupt)."""
        return self._stopping

    async def wait_over(self) -> None:
        await self._over.wait()

    async def wait_outside(self) -> None:
        """Until someone outside the run stops it (see Stop.from_outside)."""
        await self._outside.wait()

    @property
    def reason(self) -> Stop | None:
        """Why the run ended: the first abrupt stop, else its natural end; None while it goes."""
        first = next(iter(self._stops), None)
        return next((reason for reason in self._stops if reason.abrupt), first)

    @property
    def error(self) -> str | None:
        """The first error given (Stop.ERROR): what went wrong, in one line."""
        return self._error

    @property
    def interrupted(self) -> bool:
        """A person (^C) or the supervisor stopped it; the judge's stop is said apart (trafficgen.watch)."""
        return Stop.INTERRUPTED in self._stops or Stop.SUPERVISOR in self._stops

    @property
    def stopped_at(self) -> float | None:
        """When it was first stopped from outside (monotonic), where the sending window ends; None if never."""
        return min((at for reason, at in self._stops.items() if reason.from_outside), default=None)

    @property
    def counted(self) -> bool:
        """A --message-count run (in this process, its share)."""
        return self._remaining is not None

    @property
    def counted_out(self) -> bool:
        """Every message of the count was claimed."""
        return self._remaining is not None and self._remaining <= 0

    @property
    def deadline(self) -> float:
        return self._deadline

    # --- how it is written ------------------------------------------------------------------------------------

    def begin(self, started: float, duration: float | None) -> None:
        """The run starts at `started` (monotonic): --duration's clock runs from it; a count of 0 is done now."""
        if duration is not None:
            self._deadline = started + duration
            loop = asyncio.get_running_loop()
            loop.call_at(loop.time() + self._deadline - self._clock(), self.stop, Stop.DURATION)
        if self._remaining == 0:
            self.stop(Stop.COUNT)

    def take(self, only_if_due: bool) -> tuple[int, float, int] | None:
        """Claim the next message: (its number among this process's claims, when it is due, its stage of the
        profile), or None when none may be claimed (or, `only_if_due`, none is due yet)."""
        now = self._clock()
        if self.claims_over(now):
            return None
        intended = now
        stage = 0
        schedule = self.schedule
        if schedule is not None:
            due = schedule.reserve(only_if_due)
            if due is None:
                return None
            if due >= self._deadline - schedule.slack:
                self._exhausted = True  # messages already claimed still go; no more are claimed
                return None
            intended, stage = due, schedule.last_stage
        if self._remaining is not None:
            self._remaining -= 1
        self._outstanding += 1
        number = self._claimed
        self._claimed += 1
        return number, intended, stage

    def settle(self) -> None:
        """A claimed message got its outcome; the last of a --message-count run ends the run."""
        self._outstanding -= 1
        if self._remaining == 0 and self._outstanding == 0:
            self.stop(Stop.COUNT)

    def drop(self) -> None:
        """A claimed message that will never be sent (the run stopped)."""
        self._outstanding -= 1

    def stop(self, reason: Stop, error: str | None = None) -> None:
        """End the run for `reason` (idempotent; every reason given is kept with its time; `error`, with
        Stop.ERROR: what went wrong, the first one kept)."""
        if reason not in self._stops:
            self._stops[reason] = self._clock()
        if reason is Stop.ERROR and self._error is None:
            self._error = error or "error"
        if reason.abrupt:
            self._stopping = True
        if reason.from_outside:
            self._outside.set()
        self._over.set()
