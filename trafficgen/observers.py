"""What watches a run as it goes: live progress, the --hdr-log interval log, the --metrics exporter, and the judge
of --fail-fast and the stairs (trafficgen.watch).

They read the counts through functions they are given, so the same observers serve one process or the merged
counts of several (trafficgen.supervisor).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hdrh.histogram import HdrHistogram

from trafficgen.config import ConfigError, RunConfig
from trafficgen.stats.hdrlog import IntervalLog
from trafficgen.stats.progress import INTERVAL, Progress, Snapshot
from trafficgen.stats.recorder import Recorder
from trafficgen.watch import Watch


def snapshot(recorder: Recorder) -> Snapshot:
    t = recorder.totals()
    return Snapshot(t.attempted, t.accepted, t.tempfailed, t.permfailed, t.errors, recorder.connections_open)


class Observers:
    """What watches a run as it goes: progress, the --hdr-log interval log, the --metrics exporter.

    `view` gives a Recorder with everything counted so far; `take_interval` the latency since its last call
    (given when --hdr-log or the live progress needs it).
    """

    def __init__(
        self,
        config: RunConfig,
        read: Callable[[], Snapshot],
        view: Callable[[], Recorder],
        take_interval: Callable[[], HdrHistogram] | None,
        start: Callable[[], float | None] | None = None,
        stop: Callable[[], None] | None = None,
    ):
        self.config = config
        self.read = read
        self.view = view
        self.take_interval = take_interval
        self.tasks: list[asyncio.Task[None]] = []
        self.log: IntervalLog | None = None
        self.exporter: Any = None
        self.recent_p99: float | None = None  # the last second's transaction latency p99, ms
        # `start`: when the run's schedule started (monotonic); `stop`: end the run (in-flight messages finish).
        self.watch = Watch(config, view, start or (lambda: None), stop or (lambda: None))

    async def start(self) -> None:
        config = self.config
        asked = config.throttle.per_second if config.throttle else None
        profile = config.profile
        due = profile.count_by if profile is not None else None
        progress = Progress(
            self.read, config.quiet, asked=asked, due=due, count=config.message_count, p99=lambda: self.recent_p99
        )
        self.tasks.append(asyncio.create_task(progress.run()))
        if self.watch.needed:
            self.tasks.append(asyncio.create_task(self.watch.run()))
        if config.hdr_log:
            try:
                self.log = IntervalLog(config.hdr_log)
            except OSError as e:
                raise ConfigError(f"--hdr-log {config.hdr_log}: cannot write: {e.strerror}") from None
        if self.take_interval is not None:
            self.tasks.append(asyncio.create_task(self._take_intervals()))
        if config.metrics:
            from trafficgen.stats import exporter  # aiohttp and prometheus_client: only with --metrics

            collector = exporter.RunCollector(self.view, config.run_id, config.target)
            try:
                self.exporter = await exporter.serve(*config.metrics, collector)
            except OSError as e:
                raise ConfigError(f"--metrics {config.metrics[0]}:{config.metrics[1]}: {e.strerror}") from None

    async def _take_intervals(self) -> None:
        """Each second's latency: its p99 for the live view, and the histogram for --hdr-log."""
        assert self.take_interval is not None
        while True:
            await asyncio.sleep(INTERVAL)
            taken = self.take_interval()
            self.recent_p99 = taken.get_value_at_percentile(99.0) / 1000 if taken.get_total_count() else None
            if self.log is not None:
                self.log.write(taken)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.watch.needed:
            self.watch.finish()
        if self.log is not None and self.take_interval is not None:
            self.log.write(self.take_interval())
            self.log.close()
        if self.exporter is not None:
            await self.exporter.cleanup()
