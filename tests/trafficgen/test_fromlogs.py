"""`trafficgen workload from-logs` (trafficgen.fromlogs): the workload a KumoMTA log (built from its documented
record format, bench.maillogs) describes, read back by --workload unchanged; its shares are the log's, its profile
makes the log's arrivals due (sped up, at a share), its sizes reproduce the log's within the stated tolerance, and
nothing personal is in it. And the quantile form of --body-size it writes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench import maillogs
from mailload.mtalog.aggregate import Aggregate
from mailload.mtalog.events import Received, Recipient
from mailload.mtalog.read import ReadReport, read_logs
from trafficgen import fromlogs
from trafficgen.config import ConfigError, QuantileSize, Weighted, build
from trafficgen.content import Sizes

SHAPE = fromlogs.Shape(top=4, speed=24.0, share=0.25, stages=12)


@pytest.fixture(scope="module")
def derived(tmp_path_factory: pytest.TempPathFactory) -> tuple[maillogs.Log, str, Path]:
    """A day of 3,000 messages in two segments (zstd, gzip), and the workload derived from it."""
    tmp = tmp_path_factory.mktemp("kumo")
    log = maillogs.Log(3000, seed=11)
    maillogs.write_kumomta(maillogs.kumomta_records(log), tmp / "logs", 4000, ("zstd", "gzip"))
    aggregate, report = read_logs([str(tmp / "logs")])
    text = fromlogs.workload(aggregate, report, SHAPE)
    path = tmp / "workload.toml"
    path.write_text(text)
    return log, text, path


def shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {name: 100 * n / total for name, n in counts.items()}


class TestWorkload:
    def test_read_back_by_workload_unchanged(self, derived):
        """--workload reads the file as it is written, and the shares are the log's (to the 6 decimals written)."""
        log, _, path = derived
        config = build(workload=str(path))
        truth = log.truth
        expected = shares(truth.recipients)
        named = {"gmail.com", "yahoo.com", "outlook.com", "icloud.com"}
        rest = sum(v for k, v in expected.items() if k not in named)
        wanted = [*((k, expected[k]) for k in sorted(named, key=lambda k: -expected[k])), ("other-domains.test", rest)]
        assert [(d.name, pytest.approx(d.weight, abs=1e-6)) for d in config.domains] == wanted
        tenants = {("no-tenant" if k == "" else k): v for k, v in shares(truth.tenants).items()}
        assert {t.name: t.weight for t in config.tenants} == pytest.approx(tenants, abs=1e-6)
        campaigns = {("no-campaign" if k == "" else k): v for k, v in shares(truth.campaigns).items()}
        assert {c.name: c.weight for c in config.campaigns} == pytest.approx(campaigns, abs=1e-6)
        assert {s.name: s.weight for s in config.sender_domains} == pytest.approx(shares(truth.senders), abs=1e-6)
        assert len(config.source_address) == len(maillogs.SOURCES)
        assert config.recipients_per_message == 1
        assert isinstance(config.body_size, QuantileSize)

    def test_profile_makes_the_log_due_faster_at_a_share(self, derived):
        """The stages make the log's arrivals due, each stage's share of its slice of the day (to one message of
        the rates' rounding), in a 24th of the time."""
        log, _, path = derived
        profile = build(workload=str(path)).profile
        assert profile is not None
        assert profile.duration == pytest.approx(log.period / SHAPE.speed, rel=0.01)
        assert profile.total() == pytest.approx(len(log.truth.arrivals) * SHAPE.share, abs=len(profile.stages))
        first = min(log.truth.arrivals)
        start = first - first % 1  # the arrivals' 1 s interval
        slice_s = (max(log.truth.arrivals) // 1 + 1 - start) / SHAPE.stages
        for index in range(len(profile.stages)):
            logged = sum(1 for t in log.truth.arrivals if index * slice_s <= t - start < (index + 1) * slice_s)
            assert profile.stage_due(index) == pytest.approx(logged * SHAPE.share, abs=2), index

    def test_sizes_reproduce_the_logs_within_the_tolerance(self, derived):
        """Sizes drawn from the written quantiles (plus the header allowance) have the log's quantiles: within
        SIZE_TOLERANCE of the log's at a percentile within RANK_SLACK, plus 1 point for drawing 40,000 (seed 3)."""
        log, _, path = derived
        spec = build(workload=str(path)).body_size
        assert isinstance(spec, QuantileSize)
        sizes = Sizes(spec, random.Random(3))
        drawn = sorted(sizes.draw() + fromlogs.HEADER_BYTES for _ in range(40_000))
        logged = sorted(log.truth.sizes)
        slack = fromlogs.RANK_SLACK + 1

        def at(values: list[int], p: float) -> int:
            return values[min(len(values) - 1, max(0, int(p / 100 * len(values))))]

        for p in (1, 5, 10, 25, 50, 75, 90, 95, 99):
            low, high = at(logged, p - slack), at(logged, p + slack)
            value = at(drawn, p)
            assert low * (1 - fromlogs.SIZE_TOLERANCE) <= value <= high * (1 + fromlogs.SIZE_TOLERANCE), p

    def test_nothing_personal(self, derived):
        """No local part, message id or subject of the log is in the file."""
        log, text, _ = derived
        assert log.truth.secrets
        assert not [s for s in log.truth.secrets if s in text]
        assert "@" not in text

    def test_the_tail_is_one_domain(self, tmp_path):
        """With --top 1 the rest of the domains are one, with their share; the weights make 100."""
        maillogs.write_kumomta(maillogs.kumomta_records(maillogs.Log(500, seed=11)), tmp_path, 10_000, ("",))
        aggregate, report = read_logs([str(tmp_path)])
        path = tmp_path.parent / "top1.toml"
        path.write_text(fromlogs.workload(aggregate, report, fromlogs.Shape(top=1)))
        domains = build(workload=str(path)).domains
        assert [d.name for d in domains] == ["gmail.com", fromlogs.OTHER_DOMAINS]
        assert sum(d.weight for d in domains) == pytest.approx(100, abs=1e-5)

    def test_names_as_toml_reads_them(self, tmp_path):
        """Tenants named with quotes, backslashes or spaces (any text a logged header holds) are written as keys
        TOML reads back, a space made a dash."""
        aggregate = Aggregate()
        for tenant in ('say"hi', "back\\slash", "spa ce"):
            aggregate.add(Received(1.0, "s.example", 1000, 1, tenant))
            aggregate.add(Recipient("d.example"))
        path = tmp_path / "w.toml"
        path.write_text(fromlogs.workload(aggregate, ReadReport(), fromlogs.Shape()))
        assert {t.name for t in build(workload=str(path)).tenants} == {'say"hi', "back\\slash", "spa-ce"}

    @pytest.mark.parametrize(
        ("shape", "message"),
        [
            (fromlogs.Shape(speed=1e12), "a stage lasts more than 0 seconds"),
            (fromlogs.Shape(share=1e-12), "no stage sends anything"),
        ],
        ids=["too-fast", "too-small-a-share"],
    )
    def test_a_rate_that_cannot_be_replayed(self, shape, message):
        """Stages that would not run (shorter than the microsecond written, or sending nothing) are refused in one
        line, not written for --workload to refuse later."""
        aggregate = Aggregate()
        for t in range(100):
            aggregate.add(Received(1_700_000_000.0 + t, "s.example", 1000, 1))
            aggregate.add(Recipient("d.example"))
        with pytest.raises(fromlogs.WorkloadError, match=message):
            fromlogs.workload(aggregate, ReadReport(), shape)

    def test_a_log_without_new_messages(self, tmp_path):
        """Only deliveries of mail taken in before the log: no traffic to derive, said in one line."""
        path = tmp_path / "maillog"
        path.write_text(
            "Mar  5 10:00:00 mta postfix/smtp[2]: 4BF3A1E02C: to=<a@b.example>, relay=x[127.0.0.1]:25, delay=1, "
            "delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 Ok)\n"
        )
        aggregate, report = read_logs([str(path)])
        with pytest.raises(fromlogs.WorkloadError, match="no message was taken in"):
            fromlogs.workload(aggregate, report, fromlogs.Shape())


class TestQuantileSizes:
    def test_the_form(self):
        """min, pN and max (median for p50), sizes as --body-size writes them; drawn log-linearly between."""
        spec = build(body_size="min=1kb, p50=20kb, p99.9=2MiB, max=10mb").body_size
        assert isinstance(spec, QuantileSize)
        assert [q for q, _ in spec.points] == pytest.approx([0.0, 0.5, 0.999, 1.0])
        assert [size for _, size in spec.points] == [1000, 20_000, 2 * 1024 * 1024, 10_000_000]
        assert spec.quantile(0.25) == pytest.approx((1001 * 20_001) ** 0.5 - 1, rel=1e-9)
        assert build(body_size="quantiles: min=1, median=5, max=9").body_size == QuantileSize(
            ((0.0, 1), (0.5, 5), (1.0, 9))
        )
        shown = build(body_size="min=1kb,p50=20kb,p99=2mb,max=10mb").public()
        assert (shown["body_size"], shown["body_size_median"], shown["body_size_p99"]) == (
            [1000, 10_000_000],
            20_000,
            2_000_000,
        )

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("min=1kb,p50=20kb", "both ends"),
            ("p10=1kb,max=20kb", "both ends"),
            ("min=5kb,p50=1kb,max=9kb", "cannot be a smaller size"),
            ("min=1kb,p101=2kb,max=3kb", "'p101' is not min, max, median or p0..p100"),
            ("min=1kb,q50=2kb,max=3kb", "'q50' is not"),
            ("min=1kb,p50=2kb,median=2kb,max=3kb", "p50 is given twice|median is given twice"),
            ("min=1kb,max=2gb", "larger than 512 MiB"),
            ("min=1kb,max=lots", "size"),
        ],
        ids=["no-max", "no-min", "decreasing", "beyond-100", "unknown-key", "twice", "too-large", "not-a-size"],
    )
    def test_bad_forms(self, text, message):
        """Each is one ConfigError naming --body-size and the problem."""
        with pytest.raises(ConfigError, match=message) as found:
            build(body_size=text)
        assert str(found.value).startswith("--body-size")

    def test_other_forms_unchanged(self):
        """A log-normal and a range are read as before."""
        assert build(body_size="median=20kb,p99=2mb").body_size.median == 20_000  # type: ignore[union-attr]
        assert build(body_size="10kb..20kb").body_size == (10_000, 20_000)
        assert build(domains=["a.example"]).domains == (Weighted("a.example", 1.0),)
