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
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from smartsink import metrics
from smartsink.policy.model import DomainRules, Latency, Policy, Rate

log = logging.getLogger("smartsink.overrides")

MAX_OVERRIDES = 1000  # from the API at once; the policy's schedule is not counted
RECHECK_S = 0.25  # the keeper works out the policy in force at least this often


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

    def everything(self) -> list[Override]:
        """The schedule's windows then the API's, the ones long over left out."""
        now = self.clock()
        for override_id, override in list(self.added.items()):
            if override.end is not None and override.end <= now:
                del self.added[override_id]  # over: forgotten
        return [*self.scheduled, *self.added.values()]

    def active(self) -> list[Override]:
        now = self.clock()
        return [o for o in self.everything() if o.active(now)]

    def in_force(self, policy: Policy) -> Policy:
        return apply(policy, self.active())

    def next_change(self) -> float | None:
        """When a window next starts or ends (a Unix time), or None."""
        now = self.clock()
        times = [t for o in self.everything() for t in (o.start, o.end) if t is not None and t > now]
        return min(times, default=None)

    def public(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [o.public(now) for o in self.everything()]


class OverrideKeeper:
    """Pushes the policy in force (the file's, with the active windows) to the sink's answerers, whenever it
    changes: at each window's start and end, after a reload, after an API call."""

    def __init__(self, overrides: Overrides, base: Callable[[], Policy], push: Callable[[Policy], None]):
        self.overrides = overrides
        self.base = base  # the policy the file holds now
        self.push = push
        self.in_force = overrides.in_force(base())
        self._poke = asyncio.Event()
        self._active: tuple[str, ...] = ()

    def changed(self) -> None:
        """Something changed (the file, the API): work out the policy in force now, and again at the next change."""
        self._update(force=True)
        self._poke.set()

    def reloaded(self, policy: Policy) -> None:
        """PolicyStore's listener: a new file, with its own schedule."""
        self.overrides.schedule(policy)
        self.changed()

    def _update(self, force: bool = False) -> None:
        active = tuple(o.id for o in self.overrides.active())
        if not force and active == self._active:
            return
        self._active = active
        self.in_force = self.overrides.in_force(self.base())
        metrics.OVERRIDES_ACTIVE.set(len(active))
        log.info("policy overrides in force: %s", ", ".join(active) or "none")
        self.push(self.in_force)

    async def run(self) -> None:
        """Until cancelled: apply each window when it starts and ends."""
        self.overrides.schedule(self.base())
        self._update(force=True)
        while True:
            at = self.overrides.next_change()
            # Looked at again at least every RECHECK_S: a wake-up that comes early (uvloop's timers can fire a
            # millisecond early) or is missed must not leave a window applied, or not applied, for long.
            wait = RECHECK_S if at is None else min(RECHECK_S, max(0.0, at - self.overrides.clock()))
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), wait)
            self._update()
