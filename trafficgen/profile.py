"""Load profiles: stages of rate over time (`--profile "ramp 0..500/s 60s, hold 500/s 10m"`), the open-loop
schedule they make, and the stairs that look for a target's capacity.

An open model, as k6's ramping-arrival-rate and Gatling's injection profiles: the profile says when each message is
due, whatever the target answers. N(t), the messages due by t seconds after the start, is the integral of the rate;
message k is due when N reaches k, in the stage where N(start) <= k < N(end). A ramp's N is a quadratic, inverted
exactly, so due times never drift however long the run. Latency is measured from these due times, as with
--throttle (trafficgen.ratelimit): a profile is a schedule whose rate changes.

Stages: `ramp [FROM..]TO DURATION` (linear, from the previous stage's rate when FROM is left out), `hold RATE
DURATION`, `spike RATE DURATION` (a hold, named for what it is), `pause DURATION` (nothing due), and last the stairs
`step RATE every DURATION [from RATE] [to RATE] [until CONDITION [or CONDITION]...]`: RATE more every DURATION until
a condition holds for a step's own messages, or the top rate has been held. What decides that a step held is in
`judge_step()`; the run loop only stops when told.

With --processes the schedule's start and the next message's number live in shared memory, so all processes draw
from one schedule (ProfileSchedule), as they do from the throttle's.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from mailload import units
from trafficgen import thresholds
from trafficgen.stats.document import Figures, LatencyMs, StageShape
from trafficgen.thresholds import Threshold

EPSILON = 1e-9  # counts: N(t) within this of a whole number is that number (float sums drift by an ulp)
MAX_STEPS = 100_000  # stairs without a top rate stop here at the latest
BEHIND = 0.98  # a step whose messages were less than this share answered in time did not hold
KINDS = ("ramp", "hold", "spike", "pause", "step")
_SPLIT = re.compile(r"\s*[,;]\s*(?=(?:" + "|".join(KINDS) + r")\b)", re.I)


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the stage."""


@dataclass(frozen=True, slots=True)
class Stage:
    """A stretch of the run with a rate going linearly from `start_rate` to `end_rate` (msg/s)."""

    kind: str
    start_rate: float
    end_rate: float
    duration: float
    text: str

    @property
    def count(self) -> float:
        """Messages due during the whole stage."""
        return (self.start_rate + self.end_rate) / 2 * self.duration

    def count_at(self, tau: float) -> float:
        """Messages due in the first `tau` seconds of the stage."""
        slope = (self.end_rate - self.start_rate) / self.duration
        return self.start_rate * tau + slope * tau * tau / 2

    def time_of(self, x: float) -> float:
        """Seconds into the stage when `x` messages of it have fallen due (the inverse of count_at)."""
        if x <= 0:
            return 0.0
        a = self.start_rate
        slope = (self.end_rate - a) / self.duration
        if slope == 0:
            return x / a
        # a*t + slope*t^2/2 = x, written so that a = 0 and slope < 0 stay exact: t = 2x / (a + sqrt(a^2 + 2*slope*x))
        root = math.sqrt(max(0.0, a * a + 2 * slope * x))
        return min(self.duration, 2 * x / (a + root))


@dataclass(frozen=True, slots=True)
class Stairs:
    """`step INCREMENT every DURATION from START to TOP until ...`: the capacity search."""

    increment: float
    every: float
    start: float
    top: float | None
    until: tuple[Threshold, ...]
    text: str

    @property
    def steps(self) -> int:
        if self.top is None:
            return MAX_STEPS
        return min(MAX_STEPS, math.floor((self.top - self.start) / self.increment + EPSILON) + 1)

    def rate(self, step: int) -> float:
        return self.start + step * self.increment


@dataclass(frozen=True)
class Profile:
    """The stages of a run; `stairs` (last) may go on until its condition stops the run."""

    stages: tuple[Stage, ...]
    stairs: Stairs | None
    text: str
    _starts: list[float] = field(default_factory=list, repr=False, compare=False)  # seconds, per fixed stage
    _counts: list[float] = field(default_factory=list, repr=False, compare=False)  # N at each fixed stage's start

    def __post_init__(self) -> None:
        t = n = 0.0
        for stage in self.stages:
            self._starts.append(t)
            self._counts.append(n)
            t += stage.duration
            n += stage.count

    # --- shape ----------------------------------------------------------------------------------------------

    @property
    def fixed_duration(self) -> float:
        return sum(s.duration for s in self.stages)

    @property
    def fixed_count(self) -> float:
        return sum(s.count for s in self.stages)

    @property
    def duration(self) -> float | None:
        """The whole profile's length in seconds; None for stairs without a top rate (they end when they fail)."""
        if self.stairs is None:
            return self.fixed_duration
        if self.stairs.top is None:
            return None
        return self.fixed_duration + self.stairs.steps * self.stairs.every

    @property
    def stage_count(self) -> int:
        return len(self.stages) + (self.stairs.steps if self.stairs else 0)

    def stage(self, index: int) -> Stage:
        """Stage `index`, the stairs' steps numbered after the fixed stages."""
        if index < len(self.stages):
            return self.stages[index]
        assert self.stairs is not None
        rate = self.stairs.rate(index - len(self.stages))
        return Stage("step", rate, rate, self.stairs.every, f"step {_rate_text(rate)}")

    def stage_start(self, index: int) -> float:
        if index < len(self.stages):
            return self._starts[index]
        assert self.stairs is not None
        return self.fixed_duration + (index - len(self.stages)) * self.stairs.every

    def is_step(self, index: int) -> bool:
        return index >= len(self.stages)

    def stage_at(self, t: float) -> int:
        """The stage running `t` seconds after the start (the last one past the end)."""
        if t < self.fixed_duration or self.stairs is None:
            return max(0, min(len(self.stages) - 1, bisect.bisect_right(self._starts, t) - 1))
        step = int((t - self.fixed_duration) / self.stairs.every)
        return len(self.stages) + min(step, self.stairs.steps - 1)

    # --- the schedule -----------------------------------------------------------------------------------------

    def count_by(self, t: float) -> float:
        """N(t): messages due in the first `t` seconds (capped at the profile's end)."""
        if t <= 0:
            return 0.0
        index = self.stage_at(t)
        stage = self.stage(index)
        start = self.stage_start(index)
        tau = min(t - start, stage.duration)
        if index < len(self.stages):
            return self._counts[index] + stage.count_at(tau)
        assert self.stairs is not None
        step = index - len(self.stages)
        stairs = self.stairs
        before = stairs.every * (step * stairs.start + stairs.increment * step * (step - 1) / 2)
        return self.fixed_count + before + stage.count_at(tau)

    def total(self) -> int | None:
        """Messages the whole profile makes due; None when it has no end."""
        length = self.duration
        return None if length is None else whole(self.count_by(length))

    def due(self, k: int) -> tuple[float, int]:
        """(seconds after the start when message k is due, its stage); infinity past the profile's end."""
        if k < self.fixed_count - EPSILON or self.stairs is None:
            index = bisect.bisect_right(self._counts, k + EPSILON) - 1
            if index < 0:
                index = 0
            stage = self.stages[index]
            if k >= self._counts[index] + stage.count - EPSILON:
                return math.inf, index  # past the end of the last stage
            return self._starts[index] + stage.time_of(k - self._counts[index]), index
        stairs = self.stairs
        x = k - self.fixed_count
        # Steps before step j hold every*(j*start + increment*j*(j-1)/2) messages: find the step holding x.
        step = _step_of(x, stairs)
        if step >= stairs.steps:
            return math.inf, len(self.stages) + stairs.steps - 1
        before = stairs.every * (step * stairs.start + stairs.increment * step * (step - 1) / 2)
        rate = stairs.rate(step)
        start = self.fixed_duration + step * stairs.every
        return start + (x - before) / rate, len(self.stages) + step

    def stage_due(self, index: int, until: float | None = None) -> int:
        """Messages due in stage `index` (only those due before `until` seconds, when given)."""
        start = self.stage_start(index)
        end = start + self.stage(index).duration
        if until is not None:
            end = min(end, until)
        if end <= start:
            return 0
        return whole(self.count_by(end)) - whole(self.count_by(start))

    def describe(self) -> list[StageShape]:
        """The fixed stages as the report lists them."""
        return [stage_dict(self, i) for i in range(len(self.stages))]


def stage_dict(profile: Profile, index: int) -> StageShape:
    stage = profile.stage(index)
    return {
        "stage": stage.text,
        "kind": stage.kind,
        "start_s": round(profile.stage_start(index), 3),
        "duration_s": stage.duration,
        "from_per_s": stage.start_rate,
        "to_per_s": stage.end_rate,
    }


def whole(count: float) -> int:
    """The number of messages k (0, 1, 2...) with k < count: N(t) = 10 makes messages 0..9 due."""
    return max(0, math.ceil(count - EPSILON))


def _step_of(x: float, stairs: Stairs) -> int:
    # every*(j*s + inc*j*(j-1)/2) <= x: the largest such j, from the quadratic, then nudged for rounding.
    s, inc, every = stairs.start, stairs.increment, stairs.every
    a, b, c = inc / 2, s - inc / 2, -x / every
    j = int((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)) if a > 0 else int(-c / b)

    def before(n: int) -> float:
        return every * (n * s + inc * n * (n - 1) / 2)

    while j > 0 and before(j) > x + EPSILON:
        j -= 1
    while before(j + 1) <= x + EPSILON:
        j += 1
    return j


def _rate_text(rate: float) -> str:
    return f"{rate:g}/s"


# --- parsing ------------------------------------------------------------------------------------------------------


def parse(text: str) -> Profile:
    """A profile as written; ProfileError names the stage that does not parse."""
    if not text.strip():
        raise ProfileError('give at least one stage, like "hold 100/s 60s"')
    parts = [p for p in _SPLIT.split(text.strip()) if p.strip()]
    stages: list[Stage] = []
    stairs: Stairs | None = None
    for part in parts:
        if stairs is not None:
            raise ProfileError(f"{part!r}: the step stairs must be the last stage")
        words = part.split()
        kind = words[0].lower()
        if kind not in KINDS:
            raise ProfileError(f"{part!r}: a stage starts with one of {', '.join(KINDS)}")
        previous = stages[-1].end_rate if stages else 0.0
        if kind == "step":
            stairs = _stairs(part, words[1:])
        else:
            stages.append(_stage(part, kind, words[1:], previous))
    if stairs is None and not any(s.count > 0 for s in stages):
        raise ProfileError(f"{text.strip()!r}: no stage sends anything")
    normal = ", ".join([s.text for s in stages] + ([stairs.text] if stairs else []))
    return Profile(tuple(stages), stairs, normal)


def _stage(part: str, kind: str, words: list[str], previous: float) -> Stage:
    want = {"ramp": "ramp [FROM..]TO DURATION", "hold": "hold RATE DURATION", "spike": "spike RATE DURATION"}
    if kind == "pause":
        if len(words) != 1:
            raise ProfileError(f'{part!r}: write pause DURATION, like "pause 30s"')
        duration = _duration(part, words[0])
        return Stage("pause", 0.0, 0.0, duration, f"pause {words[0]}")
    if len(words) != 2:
        example = f"{kind} {'0..500/s' if kind == 'ramp' else '500/s'} 60s"
        raise ProfileError(f"{part!r}: write {want[kind]}, like {example!r}")
    rate_text, duration_text = words
    duration = _duration(part, duration_text)
    if kind == "ramp":
        low_text, dots, high_text = rate_text.partition("..")
        if dots:
            high = _rate(part, high_text, zero=True)
            unit = high_text.partition("/")[2]
            low = _rate(part, low_text if "/" in low_text or not unit else f"{low_text}/{unit}", zero=True)
        else:
            low, high = previous, _rate(part, rate_text, zero=True)
        return Stage("ramp", low, high, duration, f"ramp {_rate_number(low)}..{_rate_text(high)} {duration_text}")
    rate = _rate(part, rate_text, zero=False)
    return Stage(kind, rate, rate, duration, f"{kind} {_rate_text(rate)} {duration_text}")


def _stairs(part: str, words: list[str]) -> Stairs:
    usage = 'write "step RATE every DURATION [from RATE] [to RATE] until CONDITION [or CONDITION]"'
    text = " ".join(words)
    m = re.fullmatch(
        r"(?P<inc>\S+)\s+every\s+(?P<every>\S+)(?:\s+from\s+(?P<start>\S+))?(?:\s+(?:to|up to)\s+(?P<top>\S+))?"
        r"(?:\s+until\s+(?P<until>.+))?",
        text,
        re.I,
    )
    if not m:
        raise ProfileError(f"{part!r}: {usage}")
    increment = _rate(part, m.group("inc"), zero=False)
    every = _duration(part, m.group("every"))
    start = _rate(part, m.group("start"), zero=False) if m.group("start") else increment
    top = _rate(part, m.group("top"), zero=False) if m.group("top") else None
    if top is not None and top < start:
        raise ProfileError(f"{part!r}: the top rate {m.group('top')} is below the first step's {_rate_text(start)}")
    until: list[Threshold] = []
    for condition in re.split(r"\s+or\s+", m.group("until") or "", flags=re.I):
        if not condition.strip():
            continue
        try:
            parsed = thresholds.parse(condition)
        except ValueError as e:
            raise ProfileError(f"{part!r}: {e}") from None
        if parsed.scope is not None:
            raise ProfileError(f"{part!r}: a step's condition applies to the whole step, not to {parsed.scope}")
        until.append(parsed)
    if top is None and not until:
        raise ProfileError(f"{part!r}: the stairs need a top rate (to RATE) or a condition (until ...) to end")
    normal = f"step {_rate_text(increment)} every {m.group('every')}"
    normal += f" from {_rate_text(start)}" if m.group("start") else ""
    normal += f" to {_rate_text(top)}" if top is not None else ""
    normal += (" until " + " or ".join(c.text for c in until)) if until else ""
    return Stairs(increment, every, start, top, tuple(until), normal)


def _rate(part: str, text: str, zero: bool) -> float:
    if zero and re.fullmatch(r"0+(?:\.0*)?(?:/\w+)?", text.strip()):
        return 0.0
    try:
        return units.parse_rate(text).per_second
    except ValueError as e:
        raise ProfileError(f"{part!r}: {e}") from None


def _rate_number(rate: float) -> str:
    return f"{rate:g}"


def _duration(part: str, text: str) -> float:
    try:
        seconds = units.parse_duration(text)
    except ValueError as e:
        raise ProfileError(f"{part!r}: {e}") from None
    if not seconds > 0 or not math.isfinite(seconds):
        raise ProfileError(f"{part!r}: a stage lasts more than 0 seconds")
    return seconds


# --- the schedule of a run ----------------------------------------------------------------------------------------


class ProfileSchedule:
    """reserve() hands out due times, one per message, following the profile (open loop), as Throttle does.

    `shared` is a multiprocessing Array('d', 3): whether the schedule started (1.0), its start and the next
    message's number, so that every process of the run draws from one schedule.
    """

    slack = 1e-7  # seconds: a due time this close to the end of the run is past it

    def __init__(self, profile: Profile, clock: Callable[[], float] = time.monotonic, shared: Any = None):
        self.profile = profile
        self.clock = clock
        self.shared = shared
        self._state = [0.0, 0.0, 0.0] if shared is None else None
        self.last_stage = 0  # the stage of the message reserve() handed out last

    def _cells(self) -> Any:
        return self.shared if self.shared is not None else self._state

    def begin(self, now: float | None = None) -> float:
        """Start the schedule now unless another process of the run did: returns the run's start."""
        now = self.clock() if now is None else now
        if self.shared is None:
            return self._begin(self._cells(), now)
        with self.shared.get_lock():
            return self._begin(self.shared, now)

    @staticmethod
    def _begin(cells: Any, now: float) -> float:
        if not cells[0]:
            cells[0], cells[1] = 1.0, now
        return float(cells[1])

    @property
    def start(self) -> float | None:
        """The schedule's start, once it started."""
        cells = self._cells()
        return float(cells[1]) if cells[0] else None

    def reserve(self, only_if_due: bool = False) -> float | None:
        """The due time of the next message (infinity once the profile is over); with only_if_due, None
        (and nothing taken) when it is not due yet."""
        if self.shared is None:
            return self._take(self._cells(), only_if_due)
        with self.shared.get_lock():
            return self._take(self.shared, only_if_due)

    def _take(self, cells: Any, only_if_due: bool) -> float | None:
        now = self.clock()
        if not cells[0]:
            cells[0], cells[1] = 1.0, now
        k = int(cells[2])
        offset, stage = self.profile.due(k)
        due = cells[1] + offset
        if only_if_due and due > now:
            return None
        cells[2] = k + 1
        self.last_stage = stage
        return float(due)


# --- the stairs' verdicts -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepVerdict:
    """A step judged: it held, or it did not (and why), or it cannot be judged yet (`reason` None, held False)."""

    held: bool
    reason: str | None = None

    @property
    def decided(self) -> bool:
        return self.held or self.reason is not None


WAIT = StepVerdict(False)


def settle_s(stage: Stage) -> float:
    """How long after a step ends its late replies are waited for before it is judged."""
    return min(10.0, max(1.0, stage.duration / 4))


def judge_step(
    stage: Stage,
    document: Figures,
    due: int,
    answered: int,
    elapsed_since_end: float,
    until: Sequence[Threshold],
) -> StepVerdict:
    """Did a step hold? `document` is its own counts and latency (step_document()); `due` its messages by the
    schedule, `answered` those with an outcome. Judged once all are answered, or `settle_s` after the step ended,
    with what is known then (unanswered messages count as slower than any limit)."""
    if answered < due and elapsed_since_end < settle_s(stage):
        return WAIT
    if due and answered < due * BEHIND:
        return StepVerdict(False, f"only {answered:,} of {due:,} messages due were answered in time")
    for condition in until:
        value = thresholds.measure(condition, document)
        if condition.holds(value):
            return StepVerdict(False, f"{condition.text} ({thresholds.shown(condition, value)})")
    return StepVerdict(True)


def step_document(counts: Sequence[int], latency: HdrHistogram | None, due: int, duration: float) -> Figures:
    """A step's counts and latency as the figures thresholds measure. `latency` is the step's HDR histogram of
    latency from the intended time (microseconds); messages due but not answered count as slower than any limit
    (infinity), so a target that stops answering cannot look fast."""
    attempted, accepted, tempfailed, permfailed, errors = counts
    answered = latency.get_total_count() if latency is not None else 0
    population = max(due, answered)

    def at(q: float) -> float | None:
        rank = q / 100 * population
        if not population:
            return None
        if rank > answered:
            return math.inf
        assert latency is not None
        return float(latency.get_value_at_percentile(min(100.0, rank / answered * 100)) / 1000)

    stats: LatencyMs = {
        "count": answered,
        "min": latency.get_min_value() / 1000 if latency is not None and answered else None,
        "mean": latency.get_mean_value() / 1000 if latency is not None and answered else None,
        "p50": at(50.0),
        "p75": at(75.0),
        "p90": at(90.0),
        "p95": at(95.0),
        "p99": at(99.0),
        "p99_9": at(99.9),
        "max": math.inf
        if answered < population
        else (latency.get_max_value() / 1000 if latency is not None and answered else None),
    }
    return {
        "totals": {
            "attempted": attempted,
            "accepted": accepted,
            "tempfailed": tempfailed,
            "permfailed": permfailed,
            "errors": errors,
        },
        "latency_from_intended_ms": stats,
        "sending_s": duration,
        "schedule": {"due": due, "never_sent": max(0, due - attempted)},
    }
