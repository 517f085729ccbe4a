"""Weighted dimensions beside --domain (issue 12): tenants and campaigns in their headers, sender domains, source
addresses; each value's share of the messages, and each counted in the summary and the report."""

from __future__ import annotations

import collections
import email.policy
import json
from email.parser import BytesParser

import pytest

from harness.capture import CaptureServer
from harness.stats import CHI2_CRITICAL_0_001, chi_square
from harness.trafficgen import check_invariants, error_lines, run_report, run_trafficgen
from trafficgen.config import ConfigError, Weighted, build
from trafficgen.domains import spread

TENANTS = {"retail": 6.0, "newsletters": 3.0, "transactional": 1.0}
CAMPAIGNS = {"black-friday": 5.0, "digest": 2.5, "receipts": 0.5}
SENDERS = {"mail.shop.example": 7.0, "news.shop.example": 3.0}
SOURCES = {"127.0.0.2": 1.0, "127.0.0.3": 3.0}
COUNT = 3000
FIVE = ("attempted", "accepted", "tempfailed", "permfailed", "errors")


def headers(content: bytes) -> email.message.Message:
    return BytesParser(policy=email.policy.default).parsebytes(content, headersonly=True)


@pytest.fixture(scope="module")
def mixed_run() -> tuple[dict, CaptureServer]:
    """One run of every dimension at once, against an aiosmtpd capture server (fixed seed)."""
    args = [f"--tenant={n}:{w}" for n, w in TENANTS.items()]
    args += [f"--campaign={n}:{w}" for n, w in CAMPAIGNS.items()]
    args += [f"--sender-domain={n}:{w}" for n, w in SENDERS.items()]
    args += [f"--source-address={n}:{w:g}" for n, w in SOURCES.items()]
    with CaptureServer() as server:
        report, _ = run_report(
            "--target", server.target, "--message-count", str(COUNT), "--concurrency", "8", "--seed", "12",
            "--body-size", "200", *args,
        )  # fmt: skip
    assert len(server.messages) == COUNT
    return report, server


def observed(server: CaptureServer, header: str, names: dict[str, float]) -> list[int]:
    seen = collections.Counter(headers(m.content)[header] for m in server.messages)
    assert set(seen) == set(names), seen
    return [seen[n] for n in names]


class TestShares:
    """Each value's share of the messages follows its weight: chi-square under the 0.001 critical value."""

    @pytest.mark.parametrize(
        ("header", "weights"), [("X-Tenant", TENANTS), ("X-Campaign", CAMPAIGNS)], ids=["tenant", "campaign"]
    )
    def test_header_values_follow_their_weights(self, mixed_run, header, weights):
        """Every message carries one value in its header; the counts pass chi-square and fail it for equal weights."""
        _, server = mixed_run
        seen = observed(server, header, weights)
        critical = CHI2_CRITICAL_0_001[len(weights) - 1]
        assert chi_square(seen, list(weights.values())) < critical
        assert chi_square(seen, [1.0] * len(weights)) > critical  # the test can tell the weights apart

    def test_sender_domains_follow_their_weights(self, mixed_run):
        """The envelope sender and From are noreply@<sender domain>.<suffix>, by weight."""
        _, server = mixed_run
        senders = collections.Counter(m.mail_from for m in server.messages)
        expected = {f"noreply@{n}.sink.test" for n in SENDERS}
        assert set(senders) == expected
        for message in server.messages[:50]:
            assert headers(message.content)["From"] == message.mail_from
            assert headers(message.content)["Message-ID"].endswith(f"@{message.mail_from.partition('@')[2]}>")
        seen = [senders[f"noreply@{n}.sink.test"] for n in SENDERS]
        assert chi_square(seen, list(SENDERS.values())) < CHI2_CRITICAL_0_001[1]
        assert chi_square(seen, [1.0, 1.0]) > CHI2_CRITICAL_0_001[1]

    def test_connections_are_spread_over_source_addresses_by_weight(self, mixed_run):
        """8 connections over weights 1:3 are 2 from 127.0.0.2 and 6 from 127.0.0.3, as the server sees them."""
        report, server = mixed_run
        connections = collections.defaultdict(set)
        for message in server.messages:
            connections[message.peer].add(message.connection)
        assert {peer: len(c) for peer, c in connections.items()} == {"127.0.0.2": 2, "127.0.0.3": 6}
        by_peer = collections.Counter(m.peer for m in server.messages)
        assert {n: row["attempted"] for n, row in report["source_addresses"].items()} == dict(by_peer)


class TestReported:
    """Counts and acceptance per value, in the report and the summary."""

    def test_report_counts_each_value_as_the_server_saw_it(self, mixed_run):
        """tenants, campaigns and sender_domains hold the five counts per value, equal to what arrived."""
        report, server = mixed_run
        check_invariants(report)
        for key, header in (("tenants", "X-Tenant"), ("campaigns", "X-Campaign")):
            seen = collections.Counter(headers(m.content)[header] for m in server.messages)
            assert {n: row["attempted"] for n, row in report[key].items()} == dict(seen)
        senders = collections.Counter(m.mail_from.partition("@")[2].removesuffix(".sink.test") for m in server.messages)
        assert {n: row["attempted"] for n, row in report["sender_domains"].items()} == dict(senders)
        for key in ("tenants", "campaigns", "sender_domains", "source_addresses"):
            for row in report[key].values():
                assert row["attempted"] == sum(row[k] for k in FIVE[1:])
                assert row["accepted"] == row["attempted"]
        assert report["config"]["tenants"] == TENANTS
        assert report["config"]["source_addresses"] == SOURCES

    def test_summary_has_a_table_per_dimension(self, tmp_path):
        """The printed summary lists tenants, campaigns, sender domains and source addresses with acceptance."""
        with CaptureServer() as server:
            done = run_trafficgen(
                "--target", server.target, "--message-count", "20", "--concurrency", "2", "--quiet",
                "--tenant", "acme", "--campaign", "spring", "--sender-domain", "news.example",
                "--source-address", "127.0.0.2", "--json", str(tmp_path / "r.json"),
            )  # fmt: skip
        assert done.returncode == 0, done.stderr
        for title in ("tenants", "campaigns", "sender domains", "source addresses"):
            assert f"\n{title}" in done.stdout, title
        assert "acme" in done.stdout
        assert "127.0.0.2" in done.stdout
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["tenants"]["acme"]["accepted"] == 20

    def test_processes_and_merged_reports_add_up(self, tmp_path):
        """With --processes 2 each value's counts are the sum of both processes'; `report merge` adds them too."""
        with CaptureServer() as server:
            report, _ = run_report(
                "--target", server.target, "--message-count", "300", "--concurrency", "4", "--processes", "2",
                "--tenant", "a:1", "--tenant", "b:2", "--source-address", "127.0.0.2", "--source-address", "127.0.0.3",
            )  # fmt: skip
        seen = collections.Counter(headers(m.content)["X-Tenant"] for m in server.messages)
        assert {n: row["attempted"] for n, row in report["tenants"].items()} == dict(seen)
        assert sum(row["attempted"] for row in report["source_addresses"].values()) == 300
        path = tmp_path / "r.json"
        path.write_text(json.dumps(report))
        done = run_trafficgen("report", "merge", str(path), str(path), "--force", "--json", "-")
        assert done.returncode == 0, done.stderr
        merged = json.loads(done.stdout)
        assert {n: row["attempted"] for n, row in merged["tenants"].items()} == {n: 2 * c for n, c in seen.items()}

    def test_header_names_are_configurable(self):
        """--tenant-header and --campaign-header name the headers."""
        with CaptureServer() as server:
            run_report(
                "--target", server.target, "--message-count", "3", "--tenant", "acme", "--campaign", "c1",
                "--tenant-header", "X-Customer", "--campaign-header", "X-Mailing",
            )  # fmt: skip
        parsed = headers(server.messages[0].content)
        assert (parsed["X-Customer"], parsed["X-Mailing"]) == ("acme", "c1")
        assert parsed["X-Tenant"] is None

    def test_without_dimensions_the_report_has_empty_ones(self):
        """A run without them reports {} for each, and no tenant or campaign header is sent."""
        with CaptureServer() as server:
            report, done = run_report("--target", server.target, "--message-count", "3")
        assert report["tenants"] == report["campaigns"] == report["source_addresses"] == {}
        assert headers(server.messages[0].content)["X-Tenant"] is None
        assert "tenants" not in done.stderr


class TestSpread:
    """spread(): connections over weighted source addresses, interleaved, in proportion at every prefix."""

    @pytest.mark.parametrize(
        ("weights", "count", "expected"),
        [
            ([1, 1, 1], 6, [0, 1, 2, 0, 1, 2]),
            ([1, 3], 8, [1, 0, 1, 1, 1, 0, 1, 1]),
            ([5], 3, [0, 0, 0]),
            ([], 2, [0, 0]),
        ],
        ids=["round-robin", "weighted", "one", "none"],
    )
    def test_spread(self, weights, count, expected):
        """Equal weights are round-robin; otherwise each value's count stays within one of its share."""
        got = spread(weights, count)
        assert got == expected
        for i, w in enumerate(weights):
            for n in range(1, count + 1):
                assert abs(got[:n].count(i) - n * w / sum(weights)) < 1.0 + 1e-9


class TestBadInput:
    """Bad weights, names and addresses: one line naming the problem, exit 2."""

    @pytest.mark.parametrize(
        ("args", "words"),
        [
            (["--tenant", "acme:0"], "--tenant 'acme:0': weight must be more than 0"),
            (["--tenant", "acme:-1"], "weight must be more than 0"),
            (["--campaign", "spring:lots"], "--campaign 'spring:lots': weight 'lots' is not a number"),
            (["--tenant", "has space"], "without spaces"),
            (["--tenant", "a", "--tenant", "a:2"], "given twice"),
            (["--sender-domain", "not a domain"], "--sender-domain"),
            (["--sender-domain", "x.example:nan"], "weight 'nan' is not a number"),
            (["--source-address", "::2"], "--source-address ::2 is not an address of this host"),
            (["--source-address", "127.0.0.2:0"], "weight must be more than 0"),
            (["--source-address", "[::1:2"], "--source-address"),
            (["--tenant-header", "X Tenant"], "--tenant-header 'X Tenant' is not a header name"),
            (["--sender", "a@b.test", "--sender-domain", "x.test"], "--sender fixes the sender"),
            (["--source-address", "::1", "--target", "127.0.0.1:25"], "not of one IP version"),
        ],
        ids=[
            "zero",
            "negative",
            "not-a-number",
            "space",
            "twice",
            "sender-domain",
            "nan",
            "not-local",
            "source-zero",
            "bracket",
            "header-name",
            "sender-and-sender-domain",
            "ip-version",
        ],
    )
    def test_one_line_and_exit_2(self, args, words):
        """The one line starts with 'trafficgen: error:' and names the option and the problem."""
        done = run_trafficgen(*args)
        assert done.returncode == 2, done.stderr
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error: "), line
        assert words in line, line

    def test_parsed(self):
        """Names and float weights, weight 1 by default, IPv6 in brackets with a weight."""
        config = build(tenants=["acme:2.5", "beta"], source_address=["127.0.0.2", "127.0.0.3:3"])
        assert config.tenants == (Weighted("acme", 2.5), Weighted("beta", 1.0))
        assert config.source_address == (Weighted("127.0.0.2", 1.0), Weighted("127.0.0.3", 3.0))
        assert build(source_address=["[::1]:2"], target="[::1]:25").source_address == (Weighted("::1", 2.0),)
        with pytest.raises(ConfigError, match="not of one IP version"):
            build(source_address=["127.0.0.2"], target="[::1]:25")
