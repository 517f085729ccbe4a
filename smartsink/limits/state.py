"""The state that must hold for the sink as a whole: connection and transaction counts, rate buckets, the
greylist, and the reconciliation ledgers.

SharedState is plain, synchronous, single-owner data with an injected clock. With one worker it lives in that
worker (smartsink.limits.local); with several it lives in the supervisor and workers reach it over a Unix socket
(smartsink.limits.remote), so "40 connections" means 40 in all and a greylist retry may reach any worker.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from smartsink.ledger import Ledgers
from smartsink.policy.model import Escalation, Rate

GREYLIST_MAX_ENTRIES = 500_000
GREYLIST_KEEP = 36 * 3600.0  # an entry is forgotten this long after it was last seen
ESCALATIONS_MAX = 100_000  # (domain, client) pairs whose deferrals are remembered


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class _Reputation:
    """A client's recent deferrals by one domain, and until when that domain refuses it outright."""

    deferrals: deque[float] = field(default_factory=deque)
    until: float = 0.0


def limit_key(domain: str, scope: str) -> str:
    """The key a limit counts under: the domain, and the client's scope when the limit is per address or /24."""
    return f"{domain}\x00{scope}" if scope else domain


class SharedState:
    """The sink-wide counters; every method is quick and never blocks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.connections: dict[str, int] = {}  # by scope ("" for the whole sink)
        self.transactions: dict[str, int] = {}
        self.buckets: dict[str, _Bucket] = {}
        self.greylist: OrderedDict[str, float] = OrderedDict()
        self.reputations: OrderedDict[str, _Reputation] = OrderedDict()
        self.ledgers = Ledgers()

    # connections ([listener] max_connections), for the whole sink or per client address or /24 (scope)
    def open_connection(self, limit: int | None, scope: str = "") -> bool:
        current = self.connections.get(scope, 0)
        if limit is not None and current >= limit:
            return False
        self.connections[scope] = current + 1
        return True

    def close_connection(self, scope: str = "") -> None:
        current = self.connections.get(scope, 0)
        if current <= 1:
            self.connections.pop(scope, None)
        else:
            self.connections[scope] = current - 1

    @property
    def connections_open(self) -> int:
        return sum(self.connections.values())

    # transactions in flight per domain (max_concurrency)
    def begin_transaction(self, domain: str, limit: int) -> bool:
        current = self.transactions.get(domain, 0)
        if current >= limit:
            return False
        self.transactions[domain] = current + 1
        return True

    def end_transaction(self, domain: str) -> None:
        current = self.transactions.get(domain, 0)
        if current <= 1:
            self.transactions.pop(domain, None)
        else:
            self.transactions[domain] = current - 1

    # accepted messages per time per domain (rate): a token bucket holding one period's worth
    def take_rate(self, domain: str, rate: Rate) -> bool:
        now = self.clock()
        bucket = self.buckets.get(domain)
        if bucket is None:
            bucket = self.buckets[domain] = _Bucket(rate.count, now)
        else:
            bucket.tokens = min(rate.count, bucket.tokens + (now - bucket.updated) * rate.per_second)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    # greylisting: the first attempt of a triplet is refused; one after `delay` passes
    def greylist_passes(self, key: str, delay: float) -> bool:
        now = self.clock()
        first = self.greylist.get(key)
        if first is None:
            self.greylist[key] = now
            self._trim_greylist(now)
            return False
        self.greylist.move_to_end(key)
        return now - first >= delay

    def _trim_greylist(self, now: float) -> None:
        while self.greylist:
            first = next(iter(self.greylist.values()))
            if len(self.greylist) > GREYLIST_MAX_ENTRIES or now - first > GREYLIST_KEEP:
                self.greylist.popitem(last=False)
            else:
                break

    # reputation: a client that keeps sending after deferrals gets refused outright for a while (escalate)
    def escalated(self, key: str) -> bool:
        reputation = self.reputations.get(key)
        return reputation is not None and reputation.until > self.clock()

    def deferred(self, key: str, escalation: Escalation) -> bool:
        """Note a deferral of this client by this domain; True when it now escalates."""
        now = self.clock()
        reputation = self.reputations.get(key)
        if reputation is None:
            reputation = self.reputations[key] = _Reputation()
            while len(self.reputations) > ESCALATIONS_MAX:
                self.reputations.popitem(last=False)
        self.reputations.move_to_end(key)
        if reputation.until > now:
            return False
        deferrals = reputation.deferrals
        deferrals.append(now)
        while deferrals and now - deferrals[0] > escalation.within:
            deferrals.popleft()
        if len(deferrals) < escalation.after:
            return False
        deferrals.clear()
        reputation.until = now + escalation.lasts
        return True
