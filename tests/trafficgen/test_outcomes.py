"""Outcomes against a real smartsink: per domain and per reply, equal to the sink's own /metrics; 421 closes and
reconnects; RCPT-time answers per recipient; dropped connections; greylisting; where the time goes
(issue 3 "Outcomes and errors", issue 4 "trafficgen's side")."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.policies import DISCONNECT_10, FIVE_PER_CONNECTION
from harness.sink import running_sink
from harness.trafficgen import check_invariants, run_report

PER_DOMAIN = """
[default]
bounce = 0
defer = 0

[domain."gmail.com"]
bounce = 10
defer = 15

[domain."yahoo.com"]
defer = 30

[domain."aol.com"]
bounce = 40

[domain."hotmail.com"]
bounce = 0
defer = 0

[[bounce."gmail.com"]]
code = 550
msg = "5.1.1 gmail: no such user"

[[defer."gmail.com"]]
code = 451
msg = "4.2.1 gmail: receiving mail too quickly"

[[defer."yahoo.com"]]
code = 421
msg = "4.7.0 yahoo: temporarily deferred"

[[bounce."aol.com"]]
code = 554
msg = "5.7.1 aol: rejected by policy"
"""
SINK_OUTCOMES = ("accepted", "tempfailed", "permfailed")


def sink_counts(metrics: dict[str, float], domain: str) -> dict[str, int]:
    """smartsink_messages_total for one policy domain, by outcome (absent = 0)."""
    return {
        o: int(metrics.get(f'smartsink_messages_total{{domain="{domain}",outcome="{o}"}}', 0)) for o in SINK_OUTCOMES
    }


@pytest.fixture(scope="module")
def per_domain_run(tmp_path_factory):
    """One run of 800 messages against a sink with different answers per domain: (report, sink metrics)."""
    tmp = tmp_path_factory.mktemp("per-domain")
    with running_sink("--seed", "5", policy=PER_DOMAIN, tmp=tmp) as sink:
        report, _ = run_report("--target", sink.target, "--message-count", "800", "--concurrency", "8", "--seed", "5")
        yield report, sink.metrics()


class TestPerDomainAndReply:
    """Each message gets one outcome, counted for its domain and its reply, as the sink counted it."""

    def test_counts_equal_the_sinks_metrics(self, per_domain_run):
        """For every domain and outcome the report's count is smartsink_messages_total's (one recipient each)."""
        report, metrics = per_domain_run
        check_invariants(report)
        assert report["totals"]["attempted"] == 800
        assert report["totals"]["errors"] == 0
        for name, row in report["domains"].items():
            assert {o: row[o] for o in SINK_OUTCOMES} == sink_counts(metrics, name), name
        assert sum(sink_counts(metrics, "other").values()) == 0  # every domain was matched, suffix stripped

    def test_each_domain_gets_its_own_answers(self, per_domain_run):
        """hotmail.com is all accepted, aol.com only bounces, yahoo.com only defers, gmail.com both."""
        domains = per_domain_run[0]["domains"]
        assert domains["hotmail.com"]["accepted"] == domains["hotmail.com"]["attempted"] > 0
        assert domains["aol.com"]["permfailed"] > 0
        assert domains["aol.com"]["tempfailed"] == 0
        assert domains["yahoo.com"]["tempfailed"] > 0
        assert domains["yahoo.com"]["permfailed"] == 0
        assert domains["gmail.com"]["tempfailed"] > 0
        assert domains["gmail.com"]["permfailed"] > 0

    def test_replies_are_counted_by_code_and_text(self, per_domain_run):
        """Each policy reply appears with its code and text, counted as often as its domain got it."""
        report = per_domain_run[0]
        replies = {(r["code"], r["text"]): r["count"] for r in report["replies"]}
        domains = report["domains"]
        assert replies[(550, "5.1.1 gmail: no such user")] == domains["gmail.com"]["permfailed"]
        assert replies[(451, "4.2.1 gmail: receiving mail too quickly")] == domains["gmail.com"]["tempfailed"]
        assert replies[(421, "4.7.0 yahoo: temporarily deferred")] == domains["yahoo.com"]["tempfailed"]
        assert replies[(554, "5.7.1 aol: rejected by policy")] == domains["aol.com"]["permfailed"]
        accepted = [count for (code, _), count in replies.items() if code == 250]
        assert accepted == [report["totals"]["accepted"]]  # queue ids masked: one row

    def test_421_at_data_reconnects(self, per_domain_run):
        """yahoo.com's 421 at DATA closes the connection and the worker reconnects; the run goes on."""
        # a worker whose 421 came when no message was left opens no new connection: at most one per worker.
        report, metrics = per_domain_run
        closes = report["domains"]["yahoo.com"]["tempfailed"]
        assert closes > 0
        assert closes <= report["connections"]["opened"] <= 8 + closes
        assert report["connections"]["opened"] == metrics["smartsink_connections_total"]


class TestReconnect:
    """A 421 is an outcome and a close, never a reason to stop."""

    def test_max_messages_per_connection(self, tmp_path: Path):
        """The sink's 421 after 5 messages on a connection closes it and trafficgen reconnects."""
        # one connection, 50 messages: 5 accepted + 1 refused per connection = 42, 8 and 9 connections.
        with running_sink(policy=FIVE_PER_CONNECTION, tmp=tmp_path) as sink:
            report, _ = run_report("--target", sink.target, "--message-count", "50", "--concurrency", "1")
            metrics = sink.metrics()
        assert (report["totals"]["accepted"], report["totals"]["tempfailed"]) == (42, 8)
        assert report["connections"]["opened"] == 9 == metrics["smartsink_connections_total"]
        assert [r["code"] for r in report["replies"]] == [250, 421]

    def test_greylisting_is_tempfailed(self, tmp_path: Path):
        """Greylisted recipients are tempfailed with the sink's 451 4.7.1, not errors."""
        with running_sink(policy='[default]\ngreylist = "5m"\n', tmp=tmp_path) as sink:
            report, _ = run_report("--target", sink.target, "--message-count", "20", "--concurrency", "2")
        assert report["totals"]["tempfailed"] == 20
        (reply,) = report["replies"]
        assert reply["code"] == 451
        assert reply["text"].startswith("4.7.1 Greylisted")


RCPT_TIME = """
[default]
reject_at = "rcpt"
bounce = 20
defer = 20

[domain."gmail.com"]
reject_at = "rcpt"

[[bounce."gmail.com"]]
code = 550
msg = "5.1.1 gmail: no such user"

[[defer."gmail.com"]]
code = 452
msg = "4.2.2 gmail: mailbox full"
"""


class TestRcptTime:
    """reject_at = "rcpt": each recipient gets its own answer, so a transaction can be partly accepted."""

    def test_per_recipient_outcomes_equal_the_sinks(self, tmp_path: Path):
        """RCPT-time answers give per-recipient outcomes equal to the sink's counts."""
        # four recipients per message: some transactions are accepted for only part of their recipients.
        with running_sink("--seed", "9", policy=RCPT_TIME, tmp=tmp_path) as sink:
            report, _ = run_report(
                "--target", sink.target, "--message-count", "200", "--recipients-per-message", "4",
                "--domain", "example.com", "--concurrency", "4",
            )  # fmt: skip
            metrics = sink.metrics()
        check_invariants(report)
        recipients = report["recipients"]
        assert sum(recipients.values()) == 800
        assert recipients["errors"] == 0
        assert {o: recipients[o] for o in SINK_OUTCOMES} == sink_counts(metrics, "other")
        assert recipients["tempfailed"] > 0
        assert recipients["permfailed"] > 0
        accepted_messages = report["totals"]["accepted"]
        assert 0 < accepted_messages < 200
        assert recipients["accepted"] < 4 * accepted_messages  # partly accepted transactions exist

    @pytest.mark.parametrize(
        ("user", "kind", "code", "text"),
        [
            ("tempfail", "tempfailed", 452, "4.2.2 gmail: mailbox full"),
            ("permfail", "permfailed", 550, "5.1.1 gmail: no such user"),
            ("250-always", "accepted", 250, None),
        ],
        ids=["tempfail", "permfail", "forced-accept"],
    )
    def test_special_recipients(self, tmp_path: Path, user, kind, code, text):
        """--recipient tempfail@/permfail@ gets the domain's own RCPT-time answer for every RCPT of every message."""
        with running_sink(policy=RCPT_TIME, tmp=tmp_path) as sink:
            report, _ = run_report(
                "--target", sink.target, "--message-count", "10", "--recipients-per-message", "2",
                "--recipient", f"{user}@gmail.com.sink.test", "--concurrency", "2",
            )  # fmt: skip
        assert report["totals"][kind] == 10
        assert report["recipients"][kind] == 20
        (reply,) = report["replies"]
        assert reply["code"] == code
        assert text is None or reply["text"] == text


class TestDroppedConnections:
    """disconnect = PERCENT: transactions cut without a reply are errors; --keep-going reconnects and goes on."""

    def test_about_ten_percent_errors_and_no_hang(self, tmp_path: Path):
        """disconnect = 10 with --keep-going: about 10% errors, each message once, no hang."""
        # tolerance 6%..14%: over 4 standard deviations of binomial(1000, 0.1); errors equal the sink's disconnects.
        with running_sink("--seed", "3", policy=DISCONNECT_10, tmp=tmp_path) as sink:
            report, _ = run_report(
                "--target", sink.target, "--message-count", "1000", "--concurrency", "10", "--keep-going", timeout=60
            )
            metrics = sink.metrics()
        check_invariants(report)
        totals = report["totals"]
        assert totals["attempted"] == 1000
        assert totals["errors"] == metrics['smartsink_disconnects_total{domain="other"}']
        assert 60 <= totals["errors"] <= 140
        assert (
            totals["accepted"]
            == 1000 - totals["errors"]
            == metrics['smartsink_messages_total{domain="other",outcome="accepted"}']
        )
        assert report["errors"] == [{"text": "lost: the server closed the connection", "count": totals["errors"]}]

    def test_without_keep_going_a_drop_ends_only_that_connection(self, tmp_path: Path):
        """Without --keep-going a dropped connection ends that connection, not the run, as KumoMTA's traffic-gen
        does: the worker reconnects, every message is sent, each drop is an error, exit 0."""
        # disconnect = 10: binomial(500, 0.1), mean 50, sd 6.7; 20..80 is over 4.5 sd either side.
        with running_sink("--seed", "3", policy=DISCONNECT_10, tmp=tmp_path) as sink:
            report, done = run_report("--target", sink.target, "--message-count", "500", "--concurrency", "5")
            drops = sink.metrics()['smartsink_disconnects_total{domain="other"}']
        check_invariants(report)
        assert report["stopped_by"] is None, done.stderr
        assert report["totals"]["attempted"] == 500
        assert report["totals"]["errors"] == drops
        assert 20 <= drops <= 80
        assert report["connections"]["opened"] >= drops  # a new connection after (nearly) every drop
        assert report["errors"] == [{"text": "lost: the server closed the connection", "count": drops}]


class TestPhases:
    """Latency per step as well as per transaction, so a user sees where the time goes."""

    def test_delays_show_in_their_phase(self, tmp_path: Path):
        """A banner delay and a DATA latency each show in their own phase, not in MAIL."""
        # [listener] banner_delay 80 ms, latency 60 ms; each phase counted once per connection or per answer.
        policy = '[listener]\nbanner_delay = "80ms"\n\n[default]\nbounce = 0\ndefer = 0\nlatency = "60ms"\n'
        with running_sink(policy=policy, tmp=tmp_path) as sink:
            report, _ = run_report("--target", sink.target, "--message-count", "12", "--concurrency", "3")
        phases = report["phases_ms"]
        slack = 2  # ms: the sink's delays are libuv timers, millisecond-grained on a cached loop clock
        assert set(phases) == {"connect", "banner", "ehlo", "mail", "rcpt", "data"}
        # The sink holds the banner 80 ms from its accept, after the client's connect began: connect + banner of
        # each connection holds it whole. The client's clock parts the two where its loop saw the connection made
        # (late by its scheduling lag on a busy machine), so the delay is in the banner phase, not in connect.
        assert phases["banner"]["min"] + phases["connect"]["max"] >= 80 - slack
        assert phases["banner"]["p50"] > phases["connect"]["max"]
        assert phases["banner"]["count"] == 3 == phases["connect"]["count"]
        assert phases["data"]["min"] >= 60 - slack
        assert report["latency_ms"]["min"] >= 60 - slack
        assert phases["mail"]["max"] < 60 - slack
        for name in ("mail", "rcpt", "data"):
            assert phases[name]["count"] == 12, name
        assert {k: phases["data"][k] for k in ("p50", "max")} == pytest.approx(
            {k: report["latency_ms"][k] for k in ("p50", "max")}, abs=5
        )
