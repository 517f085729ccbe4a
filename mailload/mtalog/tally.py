"""Counts and distributions in bounded memory, whatever the length of the log (pure).

- TopCounter: counts per name that keeps the largest; when it holds too many names it drops the smaller half and
  adds what they held to `pruned`, so the total stays exact and the largest names' counts are exact until their
  own count is among the smallest (lossy counting).
- LogHistogram: values in buckets 1% wide (relative), so any quantile is within 1% of the data's, in a few
  kilobytes however many values.
- Timeline: counts per interval of time; the interval doubles whenever the span would need more than MAX_BUCKETS.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

GROWTH = 1.01  # a LogHistogram bucket's upper bound over its lower: quantiles within 1%
_LOG_GROWTH = math.log(GROWTH)
MAX_BUCKETS = 4096


class TopCounter(Generic[K]):
    """Counts per key, at most `capacity` keys held (then the smaller half is dropped into `pruned`)."""

    def __init__(self, capacity: int = 10_000):
        self.capacity = capacity
        self.counts: dict[K, int] = {}
        self.total = 0
        self.pruned = 0  # counted under keys since dropped
        self.dropped_keys = 0

    def add(self, key: K, n: int = 1) -> None:
        counts = self.counts
        counts[key] = counts.get(key, 0) + n
        self.total += n
        if len(counts) > self.capacity:
            self._prune()

    def _prune(self) -> None:
        ordered = sorted(self.counts.values())
        threshold = ordered[len(ordered) // 2]
        for key in [k for k, v in self.counts.items() if v <= threshold]:
            self.pruned += self.counts.pop(key)
            self.dropped_keys += 1

    def top(self, n: int) -> list[tuple[K, int]]:
        """The `n` largest keys with their counts, largest first (ties by key, so the order is stable)."""
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]

    @property
    def distinct(self) -> int:
        """Keys seen (those dropped included)."""
        return len(self.counts) + self.dropped_keys

    def merge(self, other: TopCounter[K]) -> None:
        for key, n in other.counts.items():
            self.add(key, n)
        self.total += other.pruned
        self.pruned += other.pruned
        self.dropped_keys += other.dropped_keys


class LogHistogram:
    """Non-negative values in buckets GROWTH wide; count, min, max and sum exact."""

    def __init__(self, unit: float = 1.0):
        self.unit = unit  # values below one unit share bucket 0
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf

    def add(self, value: float, n: int = 1) -> None:
        scaled = value / self.unit
        index = 0 if scaled < 1 else 1 + int(math.log(scaled) / _LOG_GROWTH)
        self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += n
        self.total += value * n
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def quantile(self, q: float) -> float:
        """The value below which a share `q` (0..1) of the values fall, within a bucket's width; the exact min and
        max at 0 and 1."""
        if self.count == 0:
            raise ValueError("no values")
        if q <= 0:
            return self.low
        if q >= 1:
            return self.high
        rank = q * self.count
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(self.high, max(self.low, self._middle(index)))
        return self.high

    def _middle(self, index: int) -> float:
        if index == 0:
            return self.unit / 2
        return self.unit * GROWTH ** (index - 1) * math.sqrt(GROWTH)

    def merge(self, other: LogHistogram) -> None:
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


@dataclass
class Timeline:
    """Counts per interval of `width` seconds (interval i covers [i * width, (i + 1) * width))."""

    width: float = 1.0
    counts: dict[int, int] = field(default_factory=dict)
    first: float = math.inf
    last: float = -math.inf

    def add(self, t: float) -> None:
        if t < self.first:
            self.first = t
        if t > self.last:
            self.last = t
        index = int(t // self.width)
        self.counts[index] = self.counts.get(index, 0) + 1
        while (self.last - self.first) / self.width > MAX_BUCKETS:
            self._coarsen()

    def _coarsen(self) -> None:
        merged: dict[int, int] = {}
        for index, n in self.counts.items():
            merged[index // 2] = merged.get(index // 2, 0) + n
        self.counts = merged
        self.width *= 2

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def between(self, start: float, end: float) -> float:
        """Events in [start, end), an interval's count shared in proportion where the range cuts it."""
        total = 0.0
        for index, n in self.counts.items():
            low, high = index * self.width, (index + 1) * self.width
            overlap = min(high, end) - max(low, start)
            if overlap > 0:
                total += n * overlap / self.width
        return total


def shares(pairs: Iterable[tuple[str, int]], total: int) -> list[tuple[str, float]]:
    """Each count as a percentage of `total`."""
    return [(name, 100.0 * n / total if total else 0.0) for name, n in pairs]
