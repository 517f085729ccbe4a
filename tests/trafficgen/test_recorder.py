"""Recording without a socket: the fast histogram, outcome counters, reply grouping, and merging recorders
(what --processes and report merges rely on)."""

from __future__ import annotations

import random

import pytest
from hdrh.histogram import HdrHistogram

from trafficgen.messages import Message
from trafficgen.outcome import ACCEPTED, ERROR, PERMFAILED, TEMPFAILED, Outcome
from trafficgen.stats import report
from trafficgen.stats.histogram import new_histogram, summary
from trafficgen.stats.recorder import HIGHEST_US, LOWEST_US, SIGNIFICANT_DIGITS, Histogram, Recorder, reply_key
from trafficgen.stats.tally import Tally


def reference() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


class TestHistogram:
    """Recording through a Tally (trafficgen.stats.tally) is HdrHistogram.record_value, only faster."""

    EDGES = (1, 2, 1023, 1024, 2047, 2048, 2049, 4095, 4096, 65_535, 65_536, 10**6, 10**9, HIGHEST_US - 1, HIGHEST_US)

    def test_same_buckets_as_record_value(self):
        """record() fills the same buckets, count, min and max as record_value()."""
        # edge values and 20,000 log-spread values with seed 1.
        rng = random.Random(1)
        values = [*self.EDGES, *(int(10 ** rng.uniform(0, 9.5)) or 1 for _ in range(20_000))]
        tally, slow = Tally(Histogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)), reference()
        for value in values:
            tally.record(value)
            assert slow.record_value(value)
        fast = tally.read()
        assert list(fast.counts) == list(slow.counts)
        assert fast.get_total_count() == slow.get_total_count() == len(values)
        assert (fast.get_min_value(), fast.get_max_value()) == (slow.get_min_value(), slow.get_max_value())
        for p in (50, 90, 99, 99.9):
            assert fast.get_value_at_percentile(p) == slow.get_value_at_percentile(p)

    def test_too_large_is_clamped(self):
        """A value beyond one hour is recorded as one hour (record_value would drop it)."""
        tally, slow = Tally(Histogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)), reference()
        tally.record(HIGHEST_US * 10)
        slow.record_value(HIGHEST_US)
        fast = tally.read()
        assert list(fast.counts) == list(slow.counts)
        assert fast.get_total_count() == 1

    def test_encodes_in_the_standard_form(self):
        """encode() gives HdrHistogram's compressed base64, which decode() reads back."""
        tally = Tally(Histogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS))
        for value in (5, 500, 50_000):
            tally.record(value)
        fast = tally.read()
        decoded = HdrHistogram.decode(fast.encode())
        assert decoded.get_total_count() == 3
        assert decoded.get_max_value() == fast.get_max_value()


class TestTally:
    """A Tally records into an HdrHistogram as record_value does: after read(), the histogram is the same in
    everything a reader sees (counts, total, min, max, percentiles, the encoded form)."""

    def values(self, seed: int, n: int) -> list[int]:
        rng = random.Random(seed)
        return [*TestHistogram.EDGES, *(int(10 ** rng.uniform(0, 9.5)) or 1 for _ in range(n))]

    @pytest.mark.parametrize(("digits", "word_size"), [(SIGNIFICANT_DIGITS, 8), (2, 4)], ids=["report", "timeline"])
    def test_same_histogram_as_record_value(self, digits, word_size):
        """Report histograms (3 digits, 8-byte counts) and the timeline's (2 digits, 4-byte): 20,000 values with
        seed 2, read part way and at the end."""
        values = self.values(2, 20_000)
        tally = Tally(HdrHistogram(LOWEST_US, HIGHEST_US, digits, word_size=word_size))
        slow = HdrHistogram(LOWEST_US, HIGHEST_US, digits, word_size=word_size)
        for i, value in enumerate(values):
            tally.record(value)
            assert slow.record_value(value)
            if i == 7_000:
                middle = tally.read()
                assert (middle.get_total_count(), middle.get_max_value()) == (i + 1, slow.get_max_value())
        fast = tally.read()
        assert list(fast.counts) == list(slow.counts)
        assert fast.get_total_count() == slow.get_total_count() == len(values)
        assert (fast.get_min_value(), fast.get_max_value()) == (slow.get_min_value(), slow.get_max_value())
        for p in (0, 50, 90, 99, 99.9, 100):
            assert fast.get_value_at_percentile(p) == slow.get_value_at_percentile(p)
        assert fast.get_mean_value() == slow.get_mean_value()
        assert fast.encode() == slow.encode()

    def test_reading_hands_over_once(self):
        """read() adds what was recorded since the last read once: reading twice, or a histogram added in
        between (a merge), leaves the totals right."""
        tally = Tally(new_histogram())
        for value in (300, 20, 7_000):
            tally.record(value)
        assert tally.read().get_total_count() == 3
        assert tally.read().get_total_count() == 3
        other = reference()
        other.record_value(5)
        tally.read().add(other)
        tally.record(9_000_000)
        whole = tally.read()
        assert whole.get_total_count() == 5
        assert (whole.get_min_value(), whole.get_max_value()) == (5, whole.get_highest_equivalent_value(9_000_000))

    def test_the_recorder_records_through_tallies(self):
        """What the Recorder shows (latency, phases) equals record_value's histograms of the same values."""
        recorder = Recorder(["a.test"])
        slow = reference()
        rng = random.Random(3)
        for _ in range(500):
            seconds = rng.uniform(0.0005, 2.0)
            recorder.record(message(0), outcome(ACCEPTED, 250, "2.0.0 Ok", seconds))
            slow.record_value(max(1, int(((10.0 + seconds) - 10.0) * 1e6)))  # as the recorder takes it
        assert recorder.latency.encode() == slow.encode()
        assert recorder.phases["mail"].get_total_count() == 500


def message(domain: int, recipients: int = 1, intended: float = 0.0) -> Message:
    return Message(0, domain, "s@x.test", ("r@x.test",) * recipients, (b"",), 0, intended)


def outcome(kind: int, code: int, text: str, latency_s: float, recipients: int = 1) -> Outcome:
    if kind == ERROR:
        return Outcome.error(text, recipients, 10.0, 10.0 + latency_s)
    return Outcome(kind, code, text, (kind,) * recipients, False, 10.0, 10.001, 10.002, 10.0 + latency_s)


OUTCOMES = [
    (ACCEPTED, 250, "2.0.0 Ok: queued as 4F1A2B"),
    (ACCEPTED, 250, "2.0.0 Ok: queued as 99ZZ01"),
    (TEMPFAILED, 451, "4.7.1 Greylisted"),
    (PERMFAILED, 550, "5.1.1 No such user"),
    (ERROR, 0, "lost: the server closed the connection"),
]


def fill(recorder: Recorder, rng: random.Random, n: int) -> None:
    for _ in range(n):
        kind, code, text = rng.choice(OUTCOMES)
        recorder.record(message(rng.randrange(len(recorder.domains))), outcome(kind, code, text, rng.uniform(0.001, 2)))
    recorder.connection_opened(0.001, 0.002, 0.003)


class TestRecorder:
    """Counters per domain and kind, replies grouped, latency only for answered messages."""

    def test_counts(self):
        """Each outcome counts once for its domain and kind; errors go to errors, not to replies or latency."""
        recorder = Recorder(["a.test", "b.test"])
        recorder.record(message(0), outcome(ACCEPTED, 250, "2.0.0 Ok: queued as 1A", 0.01))
        recorder.record(message(1), outcome(TEMPFAILED, 451, "4.3.0 later", 0.02))
        recorder.record(message(1), outcome(PERMFAILED, 550, "5.1.1 no", 0.03, recipients=2))
        recorder.record(message(0), outcome(ERROR, 0, "timeout: no reply in 5 s", 5))
        assert recorder.domain_totals() == {
            "a.test": {"attempted": 2, "accepted": 1, "tempfailed": 0, "permfailed": 0, "errors": 1},
            "b.test": {"attempted": 2, "accepted": 0, "tempfailed": 1, "permfailed": 1, "errors": 0},
        }
        assert recorder.recipients == [1, 1, 2, 1]
        assert recorder.latency.get_total_count() == 3
        assert dict(recorder.errors) == {"timeout: no reply in 5 s": 1}
        assert sum(recorder.replies.values()) == 3

    def test_corrected_latency_from_intended_time(self):
        """With a throttle, latency is also measured from when the message was due (coordinated omission)."""
        recorder = Recorder(["a.test"], corrected=True)
        recorder.record(message(0, intended=9.0), outcome(ACCEPTED, 250, "ok", 0.5))
        assert recorder.latency.get_max_value() == pytest.approx(500_000, rel=0.001)
        assert recorder.corrected is not None
        assert recorder.corrected.get_max_value() == pytest.approx(1_500_000, rel=0.001)

    @pytest.mark.parametrize(
        ("code", "text", "key"),
        [
            (250, "2.0.0 Ok: queued as 4F1A2", (250, "2.0.0 Ok: queued as *")),
            (250, "OK id=1tXyZa-000abc-7Q", (250, "OK *")),
            (250, "2.0.0 Ok: queued as ABCDEF", (250, "2.0.0 Ok: queued as *")),
            (550, "5.1.1 user-123 does not exist", (550, "5.1.1 user-123 does not exist")),
            (421, "4.7.0 first line\n4.7.0 second line", (421, "4.7.0 first line second line")),
        ],
        ids=["queue-id", "exim-id", "hex-id", "failure-kept", "multi-line"],
    )
    def test_reply_grouping(self, code, text, key):
        """Acceptances group with their queue ids masked; failures keep their text; multi-line on one line."""
        assert reply_key(code, text) == key

    def test_acceptances_make_one_row(self):
        """A thousand acceptances with different queue ids are one reply row."""
        recorder = Recorder(["a.test"])
        for i in range(1000):
            recorder.record(message(0), outcome(ACCEPTED, 250, f"2.0.0 Ok: queued as {i:X}Q{i}", 0.01))
        assert list(recorder.replies.items()) == [((250, "2.0.0 Ok: queued as *"), 1000)]


class TestMerge:
    """state() and merge(): recorders of several processes combine exactly."""

    def test_merge_equals_one_recorder(self):
        """Two recorders merged equal one recorder of all outcomes, histograms bucket for bucket."""
        # so percentiles of a merge are exact, never averaged.
        whole, first, second = Recorder(["a", "b", "c"]), Recorder(["a", "b", "c"]), Recorder(["a", "b", "c"])
        fill(whole, random.Random(3), 500)
        fill(whole, random.Random(4), 700)
        fill(first, random.Random(3), 500)
        fill(second, random.Random(4), 700)
        merged = Recorder(["a", "b", "c"])
        merged.merge(first.state())
        merged.merge(second.state())
        assert merged.counts == whole.counts
        assert merged.recipients == whole.recipients
        assert merged.replies == whole.replies
        assert merged.errors == whole.errors
        assert list(merged.latency.counts) == list(whole.latency.counts)
        for name, histogram in whole.phases.items():
            assert list(merged.phases[name].counts) == list(histogram.counts), name
        assert merged.connections_opened == 2

    def test_report_round_trip(self):
        """A report's numbers turn back into a Recorder that reports the same (trafficgen's report merge)."""
        recorder = Recorder(["a", "b"], corrected=True)
        fill(recorder, random.Random(5), 300)
        document = report.build(recorder, run_id="r", target="t", started=0.0, elapsed=1.0, config={})
        again = report.build(report.recorder_of(document), run_id="r", target="t", started=0.0, elapsed=1.0, config={})
        keys = ("totals", "domains", "replies", "errors", "latency_ms", "latency_from_intended_ms", "phases_ms")
        for key in (*keys, "histogram"):
            assert again[key] == document[key], key


class TestSummaryOfAHistogram:
    """trafficgen.stats.histogram.summary: the mean and percentiles read in one pass over the counts are exactly
    HdrHistogram's own (the report and the timeline use it; HdrHistogram's iterators took a second of CPU)."""

    @pytest.mark.parametrize("word_size", [4, 8])
    @pytest.mark.parametrize("digits", [2, 3])
    @pytest.mark.parametrize("count", [0, 1, 7, 1000, 50_000])
    def test_matches_hdrhistogram(self, digits, count, word_size):
        rng = random.Random(digits * 100_000 + count)
        tally = Tally(new_histogram(digits, word_size=word_size))
        for _ in range(count):
            tally.record(max(1, int(rng.lognormvariate(9, 2))))
        histogram = tally.read()
        percentiles = [0.0, 25.0, 50.0, 90.0, 99.0, 99.9, 100.0]
        mean, values = summary(histogram, percentiles)
        assert mean == histogram.get_mean_value()
        assert values == [histogram.get_value_at_percentile(p) for p in percentiles]
