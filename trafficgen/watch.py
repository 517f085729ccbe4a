"""What judges a run while it goes: `--fail-fast` thresholds and the stairs of a `--profile`; it stops the run when
one says so.

Once a second it reads everything counted so far (the merged counts with --processes) and asks the pure judges:
thresholds.first_failed() on the live counters (report.figures(): the numbers the report would show now, with no
histogram encoded), once FAIL_FAST_MIN messages have their outcome, and profile.judge_step() on each step of the
stairs once it has ended. It never prints; launch builds the report with its verdicts.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from trafficgen import profile as profiles
from trafficgen import thresholds
from trafficgen.config import RunConfig
from trafficgen.stats import report
from trafficgen.stats.document import Aborted, StairsVerdict
from trafficgen.stats.recorder import Recorder, new_histogram

INTERVAL = 1.0
FAIL_FAST_MIN = 100  # messages with an outcome before --fail-fast judges: a first refusal is not 100% of a run


class Watch:
    """Judges the run once a second; `stop()` ends it (in-flight messages finish)."""

    def __init__(
        self,
        config: RunConfig,
        view: Callable[[], Recorder],
        start: Callable[[], float | None],
        stop: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.view = view
        self.start = start
        self.stop = stop
        self.clock = clock
        self.plan = report.Plan.of(config)
        self.thresholds = list(config.fail_if) if config.fail_fast else []
        self.profile = config.profile if config.profile is not None and config.profile.stairs else None
        self.step = 0  # the next step of the stairs to judge
        self.aborted: Aborted | None = None  # the threshold that stopped the run, its value, when
        self.stairs: StairsVerdict | None = None  # the stairs' verdict: last rate that held, the one that did not
        self.over = False

    @property
    def needed(self) -> bool:
        return bool(self.thresholds or self.profile)

    async def run(self) -> None:
        while not self.over:
            await asyncio.sleep(INTERVAL)
            self.check()

    def check(self, now: float | None = None) -> None:
        """Judge what can be judged now; stop the run when a threshold failed or a step did not hold."""
        start = self.start()
        if self.over or not start:
            return
        elapsed = (self.clock() if now is None else now) - start
        recorder = self.view()
        if self.profile is not None and self._judge_steps(recorder, elapsed):
            self._end()
            return
        if self.thresholds and recorder.totals().attempted >= FAIL_FAST_MIN:
            failed = thresholds.first_failed(self.thresholds, report.figures(recorder, self.plan, elapsed))
            if failed is not None:
                threshold, value = failed
                self.aborted = {
                    "expression": threshold.text,
                    "value": None if value is None or math.isinf(value) else round(value, 6),
                    "shown": thresholds.shown(threshold, value),
                    "at_s": round(elapsed, 3),
                }
                self._end()

    def finish(self) -> None:
        """At the end of the run: judge the steps that ended and were not judged yet, with what is known."""
        if self.profile is not None and not self.over:
            start = self.start()
            if start:
                self._judge_steps(self.view(), self.clock() - start, final=True)
        if self.profile is not None and self.stairs is None:
            self.stairs = {"last_held_per_s": self._last_held(), "failed_per_s": None, "reason": None}

    def _end(self) -> None:
        self.over = True
        self.stop()

    def _last_held(self) -> float | None:
        assert self.profile is not None
        assert self.profile.stairs is not None
        return self.profile.stairs.rate(self.step - 1) if self.step else None

    def _judge_steps(self, recorder: Recorder, elapsed: float, final: bool = False) -> bool:
        """Judge the steps that can be; True when one did not hold (the run is to stop)."""
        profile = self.profile
        assert profile is not None
        assert profile.stairs is not None
        stairs = profile.stairs
        first = len(profile.stages)
        while self.step < stairs.steps:
            index = first + self.step
            stage = profile.stage(index)
            end = profile.stage_start(index) + stage.duration
            if elapsed < end:
                return False
            counts = recorder.stage_counts or []
            row = counts[index] if index < len(counts) else [0, 0, 0, 0, 0]
            latency = recorder.stage_latency[index] if index < len(recorder.stage_latency) else new_histogram()
            due = profile.stage_due(index)
            document = profiles.step_document(row, latency, due, stage.duration)
            since = math.inf if final else elapsed - end
            verdict = profiles.judge_step(stage, document, due, row[0], since, stairs.until)
            if not verdict.decided:
                return False
            if not verdict.held:
                self.stairs = {
                    "last_held_per_s": self._last_held(),
                    "failed_per_s": stage.start_rate,
                    "reason": verdict.reason,
                }
                return True
            self.step += 1
        if self.stairs is None:
            self.stairs = {"last_held_per_s": self._last_held(), "failed_per_s": None, "reason": "the top rate held"}
        return False
