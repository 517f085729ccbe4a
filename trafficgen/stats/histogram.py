"""The latency histogram of the totals and the timeline: HdrHistogram over this project's range, and the readings
that take one pass over its counts. Values are recorded through trafficgen.stats.tally (compiled), not here.

Latencies are microseconds, from 1 us to one hour (longer values are recorded as one hour).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Literal

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_DIGITS = 3
# a counts array's element size -> its memoryview format
WORD_FORMATS: dict[int, Literal["H", "I", "Q"]] = {2: "H", 4: "I", 8: "Q"}


class Histogram(HdrHistogram):  # type: ignore[misc]  # hdrhistogram has no annotations
    """The HdrHistogram this project records into (through a Tally) and reads."""


def new_histogram(digits: int = SIGNIFICANT_DIGITS, word_size: int = 8) -> Histogram:
    return Histogram(LOWEST_US, HIGHEST_US, digits, word_size=word_size)


def recorded(histogram: HdrHistogram) -> list[tuple[int, int]]:
    """(index, count) of every bucket that holds a value, read from the counts in one pass (HdrHistogram's own
    iterators call several methods per bucket: a second of CPU for a report's histograms)."""
    raw = histogram.counts
    counts = memoryview(raw).cast("B").cast(WORD_FORMATS[ctypes.sizeof(raw._type_)]).tolist()
    return [(index, count) for index, count in enumerate(counts) if count]


def summary(histogram: HdrHistogram, percentiles: Sequence[float]) -> tuple[float, list[int]]:
    """The mean and the values at `percentiles`, exactly as HdrHistogram's get_mean_value and
    get_value_at_percentile give them, from one pass over the counts."""
    buckets = recorded(histogram)
    total = histogram.get_total_count()
    if not total:
        return 0.0, [0 for _ in percentiles]
    value_of = histogram.get_value_from_index
    median = histogram._hdr_median_equiv_value  # the value HdrHistogram's mean counts each bucket at
    mean = sum(count * median(value_of(index)) for index, count in buckets) / total
    values = []
    for percentile in percentiles:
        target = histogram.get_target_count_at_percentile(percentile)
        running = 0
        value = 0
        for index, count in buckets:
            running += count
            if running >= target:
                at = value_of(index)
                value = (
                    histogram.get_highest_equivalent_value(at)
                    if percentile
                    else histogram.get_lowest_equivalent_value(at)
                )
                break
        values.append(value)
    return mean, values
