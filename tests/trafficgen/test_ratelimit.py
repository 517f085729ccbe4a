"""The throttle: one open-loop schedule of due times for the whole run, with an injected clock."""

from __future__ import annotations

import multiprocessing

import pytest

from mailload.units import RateSpec
from trafficgen.ratelimit import Throttle


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestSchedule:
    """Message k is due at start + k / rate."""

    @pytest.mark.parametrize(
        ("spec", "interval"),
        [(RateSpec(10, 1), 0.1), (RateSpec(6000, 60), 0.01), (RateSpec(1000, 3600), 3.6)],
        ids=["10/s", "6000/m", "1,000/hr"],
    )
    def test_due_times_are_evenly_spaced(self, spec, interval):
        """Reserving without moving the clock hands out start, start + 1/rate, start + 2/rate, ..."""
        clock = Clock(1000.0)
        throttle = Throttle(spec, clock)
        assert [throttle.reserve() for _ in range(5)] == pytest.approx([1000.0 + k * interval for k in range(5)])

    def test_schedule_starts_at_the_first_reserve(self):
        """The schedule starts when the first message is reserved, not when the throttle is made."""
        clock = Clock(5.0)
        throttle = Throttle(RateSpec(4, 1), clock)
        clock.now = 42.0
        assert throttle.reserve() == 42.0

    def test_falling_behind_keeps_the_schedule(self):
        """Falling behind keeps the original schedule (coordinated omission corrected)."""
        # open loop: due times stay in the past, so latency measured from them counts the wait.
        clock = Clock(0.0)
        throttle = Throttle(RateSpec(10, 1), clock)
        throttle.reserve()
        clock.now = 1.0
        assert throttle.reserve() == pytest.approx(0.1)
        assert throttle.reserve() == pytest.approx(0.2)

    def test_count_over_a_window(self):
        """Over 10 s of clock at 200/s exactly 2,000 due times fall inside the window."""
        clock = Clock(0.0)
        throttle = Throttle(RateSpec(200, 1), clock)
        due = []
        while (t := throttle.reserve()) is not None and t < 10.0:
            due.append(t)
            clock.now = t
        assert len(due) == 2000


class TestBurst:
    """,max_burst=N lets the first N go at once."""

    @pytest.mark.parametrize("burst", [1, 5, 20])
    def test_first_burst_is_due_now(self, burst):
        """With max_burst N, N messages are due at once, the next one interval later."""
        clock = Clock(100.0)
        throttle = Throttle(RateSpec(10, 1, burst), clock)
        due = [throttle.reserve() for _ in range(burst + 1)]
        assert all(t is not None and t <= 100.0 for t in due[:burst])
        assert due[burst] == pytest.approx(100.1)

    def test_burst_is_not_extra_rate(self):
        """A burst moves messages earlier; the long-run rate is unchanged (start + k / rate, shifted)."""
        clock = Clock(0.0)
        throttle = Throttle(RateSpec(10, 1, 5), clock)
        due = [throttle.reserve() for _ in range(25)]
        assert due[-1] - due[0] == pytest.approx(24 * 0.1)


class TestOnlyIfDue:
    """reserve(only_if_due=True): take a message only when it is due already."""

    def test_not_due_takes_nothing(self):
        """Before the next due time: None, and nothing is taken from the schedule."""
        clock = Clock(0.0)
        throttle = Throttle(RateSpec(10, 1), clock)
        assert throttle.reserve(only_if_due=True) == 0.0  # the first is due at once
        assert throttle.reserve(only_if_due=True) is None
        assert throttle.reserve(only_if_due=True) is None
        clock.now = 0.1
        assert throttle.reserve(only_if_due=True) == pytest.approx(0.1)
        clock.now = 0.15
        assert throttle.reserve(only_if_due=True) is None
        assert throttle.reserve() == pytest.approx(0.2)


class TestShared:
    """With --processes the schedule lives in shared memory: all processes draw from one schedule."""

    def test_two_throttles_share_one_schedule(self):
        """Two Throttles on one multiprocessing Value interleave: together they follow one schedule."""
        shared = multiprocessing.get_context("spawn").Value("d", 0.0)
        clock = Clock(50.0)
        a, b = Throttle(RateSpec(10, 1), clock, shared), Throttle(RateSpec(10, 1), clock, shared)
        due = [t.reserve() for t in (a, b, b, a, b)]
        assert due == pytest.approx([50.0, 50.1, 50.2, 50.3, 50.4])
        assert shared.value == pytest.approx(50.5)
