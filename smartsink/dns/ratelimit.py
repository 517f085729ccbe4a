"""Queries a second per client address (--dns-rate): a token bucket each, holding one second's worth, with an
injected clock. A client that asks faster has the excess dropped (and counted by the server), the way
authoritative servers limit responses; memory stays bounded: the clients heard from least recently are forgotten
first (a spoofed flood from many addresses cannot grow it).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from smartsink.policy.model import Rate

MAX_CLIENTS = 10_000


class ClientRates:
    """One token bucket per client address."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic, max_clients: int = MAX_CLIENTS):
        self.rate = rate
        self.clock = clock
        self.max_clients = max_clients
        self.burst = max(1.0, rate.per_second)  # one second's worth (at least one query)
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, updated)

    def allow(self, client: str) -> bool:
        """Take one query from this client's bucket; False when it is empty."""
        now = self.clock()
        tokens, updated = self.buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate.per_second)
        allowed = tokens >= 1.0
        self.buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        if len(self.buckets) > self.max_clients:
            self.buckets.popitem(last=False)
        return allowed
