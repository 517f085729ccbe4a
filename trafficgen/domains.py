"""Weighted choices, with an injected random.Random (fixed seed -> same sequence): the destination domain of each
message, and its tenant, campaign and sender domain when given; and the spreading of connections over weighted
source addresses."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence

from trafficgen.readers import Weighted


class DomainPicker:
    """pick() returns the index of a value (a domain, a tenant...), chosen in proportion to its weight."""

    def __init__(self, domains: Sequence[Weighted], rng: random.Random):
        if not domains:
            raise ValueError("at least one domain is needed")
        self._cumulative = list(itertools.accumulate(d.weight for d in domains))
        self._total = self._cumulative[-1]
        self._random = rng.random
        self._single = len(domains) == 1

    def pick(self) -> int:
        if self._single:
            return 0
        # bisect_right: a draw equal to a boundary belongs to the next domain, so each gets exactly its share.
        return bisect.bisect_right(self._cumulative, self._random() * self._total)

    def shares(self) -> list[float]:
        """Each domain's expected share of messages, for tests and the report."""
        previous = [0.0, *self._cumulative[:-1]]
        return [(c - p) / self._total for c, p in zip(self._cumulative, previous, strict=True)]


WeightedPicker = DomainPicker


def spread(weights: Sequence[float], count: int) -> list[int]:
    """Which of the weighted values each of `count` slots gets: as close to the weights' shares as whole numbers
    allow at every prefix, interleaved (smooth weighted round-robin, as nginx balances upstreams). Equal weights
    give plain round-robin: 0, 1, 2, 0, 1, 2..."""
    if not weights:
        return [0] * count
    total = sum(weights)
    current = [0.0] * len(weights)
    out = []
    for _ in range(count):
        for i, weight in enumerate(weights):
            current[i] += weight
        chosen = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[chosen] -= total
        out.append(chosen)
    return out
