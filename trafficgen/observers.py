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
from trafficgen.stats.histogram import summary
from trafficgen.stats.progress import INTERVAL, Progress, Snapshot
from trafficgen.stats.recorder import Recorder
from trafficgen.watch import Watch


def snapshot(recorder: Recorder) -> Snapshot:
    t = recorder.totals()
    return Snapshot(t.attempted, t.accepted, t.tempfailed, t.permfailed, t.errors, recorder.connections_open)


class Observers:
    """What watches a run as it goes: progress, the --hdr-log interval log, the --metrics exporter.

    `view` gives a Recorder with everything counted so far; `take_interval` the latency since its last call
    (with --hdr-log); `recent` the latency of the timeline's last whole interval (for the live view's p99).
    """

    def __init__(
        self,
        config: RunConfig,
        read: Callable[[], Snapshot],
        view: Callable[[], Recorder],
        take_interval: Callable[[], HdrHistogram] | None,
        recent: Callable[[], HdrHistogram | None] | None = None,
        start: Callable[[], float | None] | None = None,
        stop: Callable[[], None] | None = None,
    ):
        self.config = config
        self.read = read
        self.view = view
        self.take_interval = take_interval
        self.recent = recent or (lambda: None)
        self.tasks: list[asyncio.Task[None]] = []
        self.log: IntervalLog | None = None
        self.exporter: Any = None
        # `start`: when the run's schedule started (monotonic); `stop`: end the run (in-flight messages finish).
        self.watch = Watch(config, view, start or (lambda: None), stop or (lambda: None))

    async def start(self) -> None:
        config = self.config
        asked = config.throttle.per_second if config.throttle else None
        profile = config.profile
        due = profile.count_by if profile is not None else None
        progress = Progress(
            self.read, config.quiet, asked=asked, due=due, count=config.message_count, p99=self._recent_p99
        )
        self.tasks.append(asyncio.create_task(progress.run()))
        if self.watch.needed:
            self.tasks.append(asyncio.create_task(self.watch.run()))
        if config.hdr_log:
            try:
                self.log = IntervalLog(config.hdr_log)
            except OSError as e:
                raise ConfigError(f"--hdr-log {config.hdr_log}: cannot write: {e.strerror}") from None
            self.tasks.append(asyncio.create_task(self._log_intervals()))
        if config.metrics:
            from trafficgen.stats import exporter  # aiohttp and prometheus_client: only with --metrics

            collector = exporter.RunCollector(self.view, config.run_id, config.target)
            try:
                self.exporter = await exporter.serve(*config.metrics, collector)
            except OSError as e:
                raise ConfigError(f"--metrics {config.metrics[0]}:{config.metrics[1]}: {e.strerror}") from None

    async def _log_intervals(self) -> None:
        assert self.log is not None
        assert self.take_interval is not None
        while True:
            await asyncio.sleep(INTERVAL)
            self.log.write(self.take_interval())

    def _recent_p99(self) -> float | None:
        """The latency p99 (ms) of the last whole interval of the timeline, for the live view."""
        recent = self.recent()
        if recent is None or not recent.get_total_count():
            return None
        return summary(recent, [99.0])[1][0] / 1000

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
