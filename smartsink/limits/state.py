"""The state that must hold for the sink as a whole: connection and transaction counts, rate buckets, the
greylist, and the reconciliation ledgers.

SharedState is plain, synchronous, single-owner data with an injected clock. With one worker it lives in that
worker (smartsink.limits.local); with several it lives in the supervisor and workers reach it over a Unix socket
(smartsink.limits.remote), so "40 connections" means 40 in all and a greylist retry may reach any worker.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from smartsink.ledger import Ledgers
from smartsink.policy.model import Rate

GREYLIST_MAX_ENTRIES = 500_000
GREYLIST_KEEP = 36 * 3600.0  # an entry is forgotten this long after it was last seen


@dataclass
class _Bucket:
    tokens: float
    updated: float


class SharedState:
    """The sink-wide counters; every method is quick and never blocks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.connections = 0
        self.transactions: dict[str, int] = {}
        self.buckets: dict[str, _Bucket] = {}
        self.greylist: OrderedDict[str, float] = OrderedDict()
        self.ledgers = Ledgers()

    # connections ([listener] max_connections)
    def open_connection(self, limit: int | None) -> bool:
        if limit is not None and self.connections >= limit:
            return False
        self.connections += 1
        return True

    def close_connection(self) -> None:
        self.connections = max(0, self.connections - 1)

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
