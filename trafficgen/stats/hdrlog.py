"""--hdr-log: the transaction latency of each second of the run as a standard HdrHistogram interval log
(the format HistogramLogReader, HdrHistogram's HistogramLogProcessor and plotting tools read).

Values are microseconds; each line's max is written in milliseconds.
"""

from __future__ import annotations

import datetime
import time
from typing import IO

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogWriter


class IntervalLog:
    def __init__(self, path: str, started: float | None = None):
        self.file: IO[str] = open(path, "w", encoding="ascii")  # noqa: SIM115 - closed in close()
        self.writer = HistogramLogWriter(self.file)
        self.started = time.time() if started is None else started
        self.last = self.started
        when = datetime.datetime.fromtimestamp(self.started, datetime.UTC).isoformat(sep=" ")
        self.writer.output_comment("[Logged with trafficgen]")
        self.writer.output_log_format_version()
        self.writer.output_comment(f"[StartTime: {self.started:.3f} (seconds since epoch), {when}]")
        self.writer.output_comment(f"[BaseTime: {self.started:.3f} (seconds since epoch)]")
        self.writer.output_legend()
        self.file.flush()

    def write(self, histogram: HdrHistogram, now: float | None = None) -> None:
        """One interval: from the previous write (or the start) to now."""
        now = time.time() if now is None else now
        start, end = self.last - self.started, now - self.started
        self.writer.output_interval_histogram(histogram, start or 1e-6, end, max_value_unit_ratio=1000.0)
        self.file.flush()
        self.last = now

    def close(self) -> None:
        self.file.close()
