"""Load profiles (issue 12): stages parsed, the open-loop schedule they make (pure, with an injected clock and shared
across processes), each stage's achieved rate on the wire within 2%, and the stairs that report the last rate that
held."""

from __future__ import annotations

import json
import math
import multiprocessing

import pytest
from hdrh.histogram import HdrHistogram

from harness.capture import CaptureServer
from harness.lag import Lag, LagProbe
from harness.sink import running_sink
from harness.trafficgen import error_lines, run_report, run_trafficgen
from trafficgen.config import ConfigError, build
from trafficgen.profile import (
    WAIT,
    Profile,
    ProfileError,
    ProfileSchedule,
    judge_step,
    parse,
    step_document,
    whole,
)
from trafficgen.thresholds import parse as threshold

TOLERANCE = 0.02  # each stage's achieved rate within 2% of the asked one


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestParse:
    """Stages as people write them, normalised; anything else is one line naming the stage."""

    @pytest.mark.parametrize(
        ("text", "stages", "length"),
        [
            ("hold 100/s 10s", [("hold", 100, 100, 10)], 10),
            ("ramp 0..500/s 60s, hold 500/s 10m", [("ramp", 0, 500, 60), ("hold", 500, 500, 600)], 660),
            ("hold 6000/m 1m, ramp 50/s 30s", [("hold", 100, 100, 60), ("ramp", 100, 50, 30)], 90),
            ("spike 2,000/s 30s; pause 5s", [("spike", 2000, 2000, 30), ("pause", 0, 0, 5)], 35),
            ("ramp 10/s..20/s 1m", [("ramp", 10, 20, 60)], 60),
        ],
        ids=["hold", "ramp-hold", "units-and-ramp-from-previous", "thousands-and-pause", "both-units"],
    )
    def test_stages(self, text, stages, length):
        """Each stage's kind, rates (msg/s) and seconds; the profile lasts their sum."""
        profile = parse(text)
        assert [(s.kind, s.start_rate, s.end_rate, s.duration) for s in profile.stages] == stages
        assert profile.duration == length
        assert profile.stairs is None

    def test_stairs(self):
        """step RATE every DURATION [from] [to] until CONDITION or CONDITION."""
        profile = parse("hold 50/s 10s, step 100/s every 60s from 200/s to 1000/s until p99 > 2s or tempfail > 5%")
        stairs = profile.stairs
        assert stairs is not None
        assert (stairs.increment, stairs.every, stairs.start, stairs.top, stairs.steps) == (100, 60, 200, 1000, 9)
        assert [c.text for c in stairs.until] == ["p99 > 2s", "tempfail > 5%"]
        assert profile.duration == 10 + 9 * 60
        assert parse("step 100/s every 60s until p99 > 2s").duration is None  # no top: ends when it fails

    @pytest.mark.parametrize(
        ("text", "words"),
        [
            ("ramp 0..500/s", "write ramp [FROM..]TO DURATION"),
            ("hold 500 60s", "needs a unit"),
            ("jog 100/s 10s", "a stage starts with one of"),
            ("hold 0/s 10s", "must be more than zero"),
            ("hold 100/s 0s", "lasts more than 0 seconds"),
            ("hold 100/s soon", "not a number"),
            ("pause 10s", "no stage sends anything"),
            ("step 100/s every 60s", "need a top rate"),
            ("step 100/s every 60s until p99 > 2s, hold 1/s 1s", "must be the last stage"),
            ("step 100/s every 60s until p99 > 2000", "give the latency a unit"),
            ("step 100/s every 60s until gmail.com: errors > 1", "applies to the whole step"),
            ("step 100/s every 60s until p42 > 1s", "unknown metric 'p42'"),
            ("step 100/s every 60s from 500/s to 200/s", "below the first step"),
            ("", "at least one stage"),
        ],
    )
    def test_rejected(self, text, words):
        """ProfileError names the stage and what is wrong."""
        with pytest.raises(ProfileError, match=None) as caught:
            parse(text)
        assert words in str(caught.value)

    def test_bad_profile_is_one_line_and_exit_2(self):
        """Through the command: one line naming --profile and the stage, exit 2."""
        done = run_trafficgen("--profile", "ramp 0..500/s 60s, hold lots 10m")
        assert done.returncode == 2
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error: --profile: 'hold lots 10m'")
        assert "rate" in line

    def test_duration_follows_the_profile_and_caps_it(self):
        """Without --duration the run lasts the stages; --duration caps them; --throttle cannot go with them."""
        assert build(profile="ramp 0..10/s 5s, hold 10/s 7s").effective_duration == 12
        assert build(profile="ramp 0..10/s 5s, hold 10/s 7s", duration=3.0).effective_duration == 3
        assert build(profile="step 10/s every 5s until p99 > 1s").effective_duration is None
        with pytest.raises(ConfigError, match="--profile and --throttle both set the rate"):
            build(profile="hold 10/s 5s", throttle="10/s")

    def test_message_count_is_refused(self):
        """--message-count beside --profile was ignored while the live view counted down to it: one line, exit 2."""
        done = run_trafficgen("--profile", "hold 10/s 5s", "--message-count", "100000")
        assert done.returncode == 2, done.stderr
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error: --profile and --message-count both set how many"), line


class TestSchedule:
    """N(t) is the integral of the rate; message k is due when N reaches k."""

    def test_hold_is_evenly_spaced(self):
        """hold 10/s: message k is due at k / 10."""
        profile = parse("hold 10/s 5s")
        assert [profile.due(k)[0] for k in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.3])
        assert profile.total() == 50
        assert math.isinf(profile.due(50)[0])

    def test_ramp_is_the_inverse_of_a_quadratic(self):
        """ramp 0..100/s 10s: N(t) = 5 t^2, so message k is due at sqrt(k / 5); 500 in all."""
        profile = parse("ramp 0..100/s 10s")
        for k in (0, 1, 5, 80, 320, 499):
            assert profile.due(k)[0] == pytest.approx(math.sqrt(k / 5), abs=1e-9)
        assert profile.total() == 500

    def test_due_times_invert_counts_everywhere(self):
        """For every message of a mixed profile, N(due(k)) = k and due times never go back; stages in order."""
        profile = parse("ramp 0..200/s 3s, hold 200/s 2s, pause 1s, spike 600/s 1s, ramp 600..100/s 2s")
        last, stages = -1.0, []
        for k in range(profile.total() or 0):
            t, stage = profile.due(k)
            assert profile.count_by(t) == pytest.approx(k, abs=1e-6)
            assert t >= last
            last = t
            stages.append(stage)
        assert stages == sorted(stages)
        assert 2 not in stages
        assert sum(profile.stage_due(i) for i in range(len(profile.stages))) == profile.total()

    def test_stairs_steps_up(self):
        """The stairs' step j runs at start + j * increment; message numbers carry on across steps."""
        profile = parse("hold 10/s 1s, step 10/s every 2s until p99 > 1s")
        assert profile.stage(1).start_rate == 10
        assert profile.stage(3).start_rate == 30
        assert profile.stage_due(1) == 20
        assert profile.stage_due(2) == 40
        assert profile.stage_due(3) == 60
        t, stage = profile.due(10 + 20 + 40 + 5)
        assert stage == 3
        assert t == pytest.approx(1 + 4 + 5 / 30)
        assert profile.stage_at(5.5) == 3

    def test_shared_schedule_interleaves(self):
        """Two ProfileSchedules on one shared Array draw one schedule: one start, consecutive messages."""
        shared = multiprocessing.get_context("spawn").Array("d", 3)
        clock = Clock(100.0)
        profile = parse("hold 10/s 10s")
        a, b = ProfileSchedule(profile, clock, shared), ProfileSchedule(profile, clock, shared)
        assert a.begin() == 100.0
        clock.now = 101.0
        assert b.begin() == 100.0  # the first process's start is everyone's
        due = [s.reserve() for s in (a, b, b, a)]
        assert due == pytest.approx([100.0, 100.1, 100.2, 100.3])

    def test_only_if_due(self):
        """reserve(only_if_due=True) takes nothing before the next due time."""
        clock = Clock(0.0)
        schedule = ProfileSchedule(parse("ramp 0..10/s 10s"), clock)
        assert schedule.reserve(only_if_due=True) == 0.0
        assert schedule.reserve(only_if_due=True) is None  # message 1 is due at sqrt(2) s
        clock.now = 1.5
        assert schedule.reserve(only_if_due=True) == pytest.approx(math.sqrt(2))
        assert schedule.last_stage == 0


def latency_histogram(values_ms: list[float]) -> HdrHistogram:
    histogram = HdrHistogram(1, 3_600_000_000, 3)
    for value in values_ms:
        histogram.record_value(int(value * 1000))
    return histogram


class TestJudgeStep:
    """Whether a stairs step held: pure, on the step's own counts and latency."""

    stage = parse("step 100/s every 4s until p99 > 2s").stage(0)
    until = (threshold("p99 > 2s"), threshold("tempfail > 5%"))

    def judge(self, answered: int, latencies: list[float], tempfailed: int = 0, since: float = 0.5) -> object:
        counts = [answered, answered - tempfailed, tempfailed, 0, 0]
        document = step_document(counts, latency_histogram(latencies), 400, 4.0)
        return judge_step(self.stage, document, 400, answered, since, self.until)

    def test_fast_and_complete_holds(self):
        """Every message answered fast, few deferrals: it held."""
        verdict = self.judge(400, [50.0] * 400, tempfailed=10)
        assert verdict.held
        assert verdict.decided

    def test_slow_p99_does_not_hold(self):
        """p99 over 2 s: it did not, and says so with the value."""
        verdict = self.judge(400, [50.0] * 390 + [3000.0] * 10)
        assert not verdict.held
        assert "p99 > 2s" in verdict.reason

    def test_deferrals_do_not_hold(self):
        """More than 5% deferred: it did not."""
        verdict = self.judge(400, [50.0] * 400, tempfailed=40)
        assert not verdict.held
        assert "tempfail > 5%" in verdict.reason

    def test_unanswered_waits_then_fails(self):
        """Messages not answered yet: wait for them; once the settle time passed, they make it fail."""
        assert self.judge(380, [50.0] * 380, since=0.5) is WAIT
        verdict = self.judge(380, [50.0] * 380, since=5.0)
        assert not verdict.held
        assert "answered in time" in verdict.reason

    def test_unanswered_count_as_slower_than_any_limit(self):
        """In a step's percentiles, due messages without an answer are slower than any limit (no omission)."""
        document = step_document([394, 394, 0, 0, 0], latency_histogram([10.0] * 394), 400, 4.0)
        latency = document["latency_from_intended_ms"]
        assert latency["p50"] == pytest.approx(10.0, rel=0.01)
        assert math.isinf(latency["p99"])


QUIET_S = 0.005  # no wake-up later than this while the run went: the machine was quiet
ON_TIME_S = 0.020  # and the generator's own worst stage p99 from the intended time under this: it sent on time


def arrivals_by_stage(server: CaptureServer, profile: Profile) -> tuple[list[int], float]:
    """How many messages reached the server within each stage's window, and the jitter of the arrivals (s): how far
    the 99th percentile strays from the typical lag of arrival after due time. The j-th arrival is about message j
    of the schedule, so the start is the median of (arrival j - due time of j): the target's own latency and a first
    connection's setup shift no window."""
    times = sorted(m.at for m in server.messages)
    lags = sorted(at - profile.due(j)[0] for j, at in enumerate(times))
    start = lags[len(lags) // 2]
    jitter = max(start - lags[len(lags) // 100], lags[-1 - len(lags) // 100] - start)
    counts = [0] * len(profile.stages)
    for at in times:
        counts[profile.stage_at(at - start)] += 1
    return counts, jitter


class TestOnTheWire:
    """The achieved rate follows each stage, as the server sees arrivals and as the report says.

    How closely depends on the CPU the generator gets: on a quiet machine the arrivals stray a few milliseconds from
    the schedule and each stage is within 2% of what it made due (`make bench` has no such table; these runs are the
    measure); on a busy one (two CPU hogs beside the suite, or more) the generator may send late and say so. What
    always holds, and is checked: every message the report counts reached the server, and the wire strays from the
    schedule no more than the report's own lateness (latency from the intended time) explains, plus how late the
    machine woke any process meanwhile (LagProbe) and 20 ms for the capture server's clock."""

    def check(self, report: dict, server: CaptureServer, profile: Profile, lag: Lag) -> None:
        assert report["totals"]["accepted"] == report["totals"]["attempted"] == len(server.messages)
        seen, jitter = arrivals_by_stage(server, profile)
        stages = report["profile"]["stages"]
        late = max(stage["latency_from_intended_ms"]["p99"] for stage in stages) / 1000
        print(
            f"the arrivals strayed {jitter * 1000:.1f} ms from the schedule (99th percentile); the report's latency "
            f"from the intended time {late * 1000:.1f} ms (worst stage's p99); the machine woke a sleeper "
            f"{lag.worst * 1000:.1f} ms late at worst"
        )
        assert jitter <= late + lag.worst + 0.020, "the wire strays further from the schedule than the report says"
        # Quiet: nothing woke late, and the generator itself says it sent on time. A sleeper probe alone is not enough:
        # beside CPU hogs it is woken promptly (the scheduler favours sleepers) while a busy generator waits its turn;
        # then the report says so (its latency from the intended time), and the wire may stray that much.
        quiet = lag.worst < QUIET_S and late < ON_TIME_S
        if quiet:
            assert jitter < 0.025, f"the arrivals strayed {jitter:.3f} s from the schedule on a quiet machine"
        assert len(stages) == len(profile.stages)
        for index, (stage, count) in enumerate(zip(stages, seen, strict=True)):
            due = profile.stage_due(index)
            assert stage["due"] == due, stage
            assert stage["attempted"] + stage["never_sent"] == due, stage
            # 2% of the stage, plus what the jitter moves across its two edges: arrivals that came that much early
            # or late count in the stage beside (the rate at an edge times the jitter; nothing on a quiet machine).
            edges = [profile.stages[index].start_rate, profile.stages[index].end_rate]
            if index > 0:
                edges[0] = max(edges[0], profile.stages[index - 1].end_rate)
            if index + 1 < len(profile.stages):
                edges[1] = max(edges[1], profile.stages[index + 1].start_rate)
            allowed = max(1, TOLERANCE * due) + sum(edges) * jitter
            assert abs(count - stage["attempted"]) <= allowed, (stage["stage"], count, due, f"jitter {jitter:.3f} s")
            assert not (quiet and stage["behind"]), stage
            if not stage["behind"]:
                assert abs(stage["achieved_per_s"] - stage["asked_per_s"]) <= TOLERANCE * stage["asked_per_s"] + 1e-9
        assert report["sending_s"] == pytest.approx(profile.duration, abs=0.01)

    @pytest.mark.slow
    def test_stages_within_two_percent(self):
        """ramp 0..200/s 3s, hold 200/s 3s, spike 600/s 2s, hold 100/s 2s: each stage's arrivals within 2% of
        what it made due, the run as long as the stages, latency from the intended time per stage."""
        text = "ramp 0..200/s 3s, hold 200/s 3s, spike 600/s 2s, hold 100/s 2s"
        with CaptureServer() as server, LagProbe() as lag:
            report, _ = run_report("--target", server.target, "--concurrency", "20", "--profile", text)
        self.check(report, server, parse(text), lag)
        assert report["schedule"]["due"] == 2300
        assert report["config"]["profile"] == text
        assert all(s["latency_from_intended_ms"]["count"] == s["attempted"] for s in report["profile"]["stages"])

    @pytest.mark.slow
    def test_processes_share_the_schedule(self):
        """With --processes 2 both processes draw from one schedule: the stages hold the same way."""
        text = "hold 100/s 2s, spike 400/s 2s, ramp 400..0/s 2s"
        with CaptureServer() as server, LagProbe() as lag:
            report, _ = run_report(
                "--target", server.target, "--concurrency", "20", "--processes", "2", "--profile", text
            )  # fmt: skip
        self.check(report, server, parse(text), lag)


class TestLiveView:
    @pytest.mark.slow
    def test_a_ramp_on_schedule_is_not_behind(self, tmp_path):
        """A ramp to 200/s against a sink answering in 300 ms: the messages still on the wire are a large share of
        those due so far, and the live lines did say BEHIND each second though the stage held (issue 29). Now
        only what fell due before the recent p99 is expected answered: no BEHIND, and the stage is achieved."""
        with running_sink(policy='[default]\nbounce = 0\ndefer = 0\nlatency = "300ms"\n', tmp=tmp_path) as sink:
            done = run_trafficgen(
                "--target", sink.target, "--concurrency", "100", "--profile", "ramp 0..200/s 5s",
                "--json", str(tmp_path / "r.json"),
            )  # fmt: skip
        assert done.returncode == 0, done.stderr
        (stage,) = json.loads((tmp_path / "r.json").read_text())["profile"]["stages"]
        assert not stage["behind"], stage
        assert "asked " in done.stderr  # the live lines ran, with the rate asked
        assert "BEHIND" not in done.stderr, done.stderr


class TestStairs:
    """step ... until ...: the stairs climb until a step does not hold, and report the last rate that held."""

    @pytest.mark.slow
    def test_last_rate_that_held(self, tmp_path):
        """A sink answering in 50 ms over 5 connections takes 100 msg/s: 30/s holds, 130/s does not (its latency from
        the intended time grows past 250 ms: 60 messages behind after its 2 s, 0.6 s of waiting); the run stops there
        and exits 0. The steps keep well away from the capacity on both sides, so that a busy machine (which slows
        the sink's answers by tens of milliseconds) cannot move the verdict."""
        with running_sink(policy='[default]\nbounce = 0\ndefer = 0\nlatency = "50ms"\n', tmp=tmp_path) as sink:
            report, done = run_report(
                "--target", sink.target, "--concurrency", "5", "--keep-going",
                "--profile", "step 100/s every 2s from 30/s to 430/s until p99 > 250ms",
            )  # fmt: skip
        stairs = report["profile"]["stairs"]
        assert stairs["last_held_per_s"] == 30, stairs
        assert stairs["failed_per_s"] == 130, stairs
        assert "p99 > 250ms" in stairs["reason"] or "answered in time" in stairs["reason"]
        assert report["sending_s"] < 7  # stopped at the second step, long before 430/s
        assert report["stopped_by"] is None
        assert [s["stage"] for s in report["profile"]["stages"][:2]] == ["step 30/s", "step 130/s"]
        assert "the last rate that held was 30.0/s" in done.stderr

    def test_whole(self):
        """whole(N) counts messages 0..N-1 and forgives float sums an ulp."""
        assert (whole(10.0), whole(10.0000000001), whole(9.2), whole(0.0)) == (10, 10, 10, 0)
