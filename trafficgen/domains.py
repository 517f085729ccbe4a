"""Weighted choice of destination domains, with an injected random.Random (fixed seed -> same sequence)."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence

from trafficgen.config import DomainWeight


class DomainPicker:
    """pick() returns the index of a domain, chosen in proportion to its weight."""

    def __init__(self, domains: Sequence[DomainWeight], rng: random.Random):
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
