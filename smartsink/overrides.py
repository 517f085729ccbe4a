"""Behaviour over time: windows in which a domain's rules change, from the policy's schedule or the admin API.

The policy file's `[[schedule."NAME"]]` windows start relative to the sink's start (or at a wall-clock time);
`POST /policy/overrides` adds one now (or after a delay), for a while or until removed. The owner of the sink
(the process with one worker, the supervisor with several) keeps them here, works out the policy in force (the
file's, with every active window applied to its domain) and pushes it to whoever answers mail each time a window
starts or ends, the file is reloaded, or the API changes something: within a second, and on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from smartsink import metrics
from smartsink.policy.model import DomainRules, Latency, Policy, Rate

log = logging.getLogger("smartsink.overrides")

MAX_OVERRIDES = 1000  # from the API at once; the policy's schedule is not counted


@dataclass(frozen=True)
class Override:
    """One window of changed rules for one domain, in Unix times."""

    id: str
    domain: str
    settings: tuple[tuple[str, Any], ...]
    start: float
    end: float | None  # None: until removed
    source: str  # "schedule" (the policy file) or "api"

    def active(self, now: float) -> bool:
        return self.start <= now and (self.end is None or now < self.end)

    def public(self, now: float) -> dict[str, Any]:
        """As /policy/overrides and /health show it."""
        return {
            "id": self.id,
            "domain": self.domain,
            "settings": {key: _shown(value) for key, value in self.settings},
            "starts_at": round(self.start, 3),
            "ends_at": None if self.end is None else round(self.end, 3),
            "active": self.active(now),
            "source": self.source,
        }


def _shown(value: Any) -> Any:
    if isinstance(value, Rate):
        return f"{value.count:g}/{value.per:g}s"
    if isinstance(value, Latency):
        return {"median_s": value.median, "p99_s": value.p99}
    if isinstance(value, tuple):
        return list(value)
    return value


def apply(policy: Policy, overrides: list[Override]) -> Policy:
    """The policy with each override's settings over its domain's rules (a domain the file does not name starts
    from [default]); later overrides win where they set the same key. Pure."""
    if not overrides:
        return policy
    domains = dict(policy.domains)
    for override in overrides:
        rules: DomainRules = domains.get(override.domain) or replace(policy.default, name=override.domain)
        domains[override.domain] = replace(rules, **dict(override.settings))
    return replace(policy, domains=domains)


class Overrides:
    """The windows of one sink, and the policy in force they make."""

    def __init__(self, started: float | None = None, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.started = clock() if started is None else started
        self.scheduled: list[Override] = []
        self.added: dict[str, Override] = {}
        self._ids = itertools.count(1)

    def schedule(self, policy: Policy) -> None:
        """Take the policy file's windows (again, after a reload): relative ones count from the sink's start."""
        self.scheduled = [
            Override(
                f"schedule-{n}",
                w.domain,
                w.settings,
                start := (self.started + w.start if w.relative else w.start),
                None if w.length is None else start + w.length,
                "schedule",
            )
            for n, w in enumerate(policy.schedule, start=1)
        ]

    def add(self, domain: str, settings: dict[str, Any], delay: float = 0.0, length: float | None = None) -> Override:
        """A window from the admin API, starting `delay` seconds from now."""
        if len(self.added) >= MAX_OVERRIDES:
            raise ValueError(f"{MAX_OVERRIDES} overrides are in place already: delete some first")
        start = self.clock() + delay
        override = Override(
            f"o{next(self._ids)}",
            domain.lower(),
            tuple(settings.items()),
            start,
            None if length is None else start + length,
            "api",
        )
        self.added[override.id] = override
        return override

    def remove(self, override_id: str) -> bool:
        return self.added.pop(override_id, None) is not None

    def clear(self) -> int:
        count = len(self.added)
        self.added.clear()
        return count

    def everything(self, now: float) -> list[Override]:
        """The schedule's windows then the API's, the ones over by `now` left out."""
        for override_id, override in list(self.added.items()):
            if override.end is not None and override.end <= now:
                del self.added[override_id]  # over: forgotten
        return [*self.scheduled, *self.added.values()]

    def active(self, now: float | None = None) -> list[Override]:
        now = self.clock() if now is None else now
        return [o for o in self.everything(now) if o.active(now)]

    def in_force(self, policy: Policy, now: float | None = None) -> Policy:
        return apply(policy, self.active(now))

    def next_change(self, now: float) -> float | None:
        """When a window next starts or ends after `now` (a Unix time), or None. Ask with the `now` the policy in
        force was worked out for: a start or end between two readings of the clock would be in neither."""
        times = [t for o in self.everything(now) for t in (o.start, o.end) if t is not None and t > now]
        return min(times, default=None)

    def public(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [o.public(now) for o in self.everything(now)]


class OverrideKeeper:
    """Pushes the policy in force (the file's, with the active windows) to the sink's answerers, whenever it
    changes: at each window's start and end, after a reload, after an API call."""

    def __init__(
        self,
        overrides: Overrides,
        base: Callable[[], Policy],
        push: Callable[[Policy], None],
        settle: Callable[[], Awaitable[None]] | None = None,
    ):
        self.overrides = overrides
        self.base = base  # the policy the file holds now
        self.push = push
        self.settle = settle  # waits until every answerer serves what was pushed (the workers), if any
        self.in_force = overrides.in_force(base())
        self._poke = asyncio.Event()
        self._active: tuple[str, ...] = ()

    def changed(self) -> None:
        """Something changed (the file, the API): work out the policy in force now, and again at the next change."""
        self._update(self.overrides.clock(), force=True)
        self._poke.set()

    async def settled(self) -> None:
        """Returns once every answerer serves the policy in force (the API answers after this: a client that sends
        mail right after its 201 meets the override on every worker)."""
        if self.settle is not None:
            await self.settle()

    def reloaded(self, policy: Policy) -> None:
        """PolicyStore's listener: a new file, with its own schedule."""
        self.overrides.schedule(policy)
        self.changed()

    def _update(self, now: float, force: bool = False) -> None:
        """The policy in force at `now`, pushed if its windows are not the ones pushed last (or with `force`)."""
        active = self.overrides.active(now)
        ids = tuple(o.id for o in active)
        if not force and ids == self._active:
            return
        self._active = ids
        self.in_force = apply(self.base(), active)
        metrics.OVERRIDES_ACTIVE.set(len(ids))
        log.info("policy overrides in force: %s", ", ".join(ids) or "none")
        self.push(self.in_force)

    async def run(self) -> None:
        """Until cancelled: apply each window when it starts and ends.

        Each turn reads the clock once: the policy in force is the one for that moment and the wake-up is for the
        first start or end after it, so no start or end falls between the two. A wake-up may come early (uvloop's
        timers have millisecond resolution and fire up to a millisecond early; the loop's clock is not the wall
        clock): then nothing has changed yet, and the next turn waits for the same moment again. (The wait is the
        wall clock's time left, slept on the loop's: a wall clock stepped forward makes a change late by the step.)"""
        self.overrides.schedule(self.base())
        self._update(self.overrides.clock(), force=True)
        while True:
            self._poke.clear()
            now = self.overrides.clock()
            self._update(now)
            at = self.overrides.next_change(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), None if at is None else max(0.0, at - self.overrides.clock()))
