"""A real MTA in the loop: trafficgen -> a private Postfix -> smartsink, and what each tool then reports.

Postfix (nobody here wrote it) accepts every message, relays it to the sink, retries what the sink defers,
bounces what the sink refuses and returns a DSN to the sender (which, in this closed network, is also routed to
the sink). The tests check the sink's answers show up in Postfix's own queue and log, and that trafficgen's
reconciliation says exactly what Postfix did: delivered, bounced with a DSN, deferred, delivered on a retry,
nothing lost, nothing duplicated.
"""

from __future__ import annotations

import json
import re

import pytest

from harness.postfix import needs_postfix, running_postfix
from harness.sink import running_sink
from harness.trafficgen import run_report, run_trafficgen

BOUNCE_TEXT = "5.1.1 The account you tried to reach does not exist (a smartsink bounce)"
DEFER_TEXT = "4.7.1 Mailbox busy, try again later (a smartsink deferral)"
POLICY = f"""
[default]
bounce = 0
defer = 0

[domain."defer.test"]
defer = 100

[domain."bounce.test"]
bounce = 100

[domain."grey.test"]
greylist = "1s"

[[bounce."bounce.test"]]
code = 550
msg = "{BOUNCE_TEXT}"

[[defer."defer.test"]]
code = 451
msg = "{DEFER_TEXT}"
"""
DOMAINS = ("ok.test", "defer.test", "bounce.test", "grey.test")


def _count(log: str, pattern: str) -> int:
    return len(re.findall(pattern, log))


@needs_postfix
@pytest.mark.slow
class TestThroughPostfix:
    """One run of 200 messages over four domains: accepted, deferred, bounced, greylisted."""

    @pytest.fixture(scope="class")
    @classmethod
    def scene(cls, tmp_path_factory):  # type: ignore[no-untyped-def]
        tmp = tmp_path_factory.mktemp("postfix")
        with (
            running_sink("--seed", "3", policy=POLICY, tmp=tmp) as sink,
            running_postfix(sink.port) as postfix,
        ):
            report_path = tmp / "report.json"
            report, _ = run_report(
                "--target",
                postfix.target,
                "--message-count",
                "200",
                "--concurrency",
                "8",
                "--seed",
                "11",
                *(a for d in DOMAINS for a in ("--domain", f"{d}:{2 if d == 'ok.test' else 1}")),
                "--reconcile",
                f"http://{sink.http}",
            )
            report_path.write_text(json.dumps(report))
            accepted = {d: report["domains"][d]["accepted"] for d in DOMAINS}
            assert report["totals"]["accepted"] == 200, "Postfix takes every message"
            expected_sent = accepted["ok.test"] + accepted["grey.test"] + accepted["bounce.test"]  # DSNs too

            def delivered_all() -> bool:
                log = postfix.log()
                return (
                    _count(log, r" status=sent ") >= expected_sent
                    and _count(log, r" status=bounced ") >= accepted["bounce.test"]
                )

            postfix.wait_for(delivered_all, timeout=90, what="every delivery, bounce and DSN")
            postfix.wait_for(lambda: postfix.queued() == accepted["defer.test"], what="only deferred mail queued")
            again = run_trafficgen("report", "reconcile", str(report_path), "--json", "-")
            assert again.returncode == 0, again.stderr
            yield {
                "report": report,
                "accepted": accepted,
                "reconciled": json.loads(again.stdout)["reconciliation"],
                "summary": again.stderr,
                "queue": postfix.queue_listing(),
                "log": postfix.log(),
                "metrics": sink.metrics(),
            }

    def test_deferred_mail_waits_in_postfix_queue_with_the_sinks_text(self, scene):
        """Every deferred message is in Postfix's queue, and postqueue shows the sink's own reply text."""
        queue = scene["queue"]
        assert _count(queue, re.escape(f"said: 451 {DEFER_TEXT}")) == scene["accepted"]["defer.test"]

    def test_bounced_mail_carries_the_sinks_text_in_postfix_log(self, scene):
        """Postfix bounced each bounce.test message with the sink's 550 text, and sent a DSN for each."""
        log = scene["log"]
        bounced = [line for line in log.splitlines() if " status=bounced " in line]
        assert len(bounced) == scene["accepted"]["bounce.test"]
        assert all(f"said: 550 {BOUNCE_TEXT}" in line and "bounce.test" in line for line in bounced)
        assert _count(log, r"sender non-delivery notification") == scene["accepted"]["bounce.test"]

    def test_reconciliation_matches_what_postfix_did(self, scene):
        """Delivered, bounced (each with its DSN), deferred: exactly; nothing lost or duplicated."""
        r, accepted = scene["reconciled"], scene["accepted"]
        assert r["delivered"] == accepted["ok.test"] + accepted["grey.test"]
        assert r["bounced"] == accepted["bounce.test"] > 0
        assert r["dsn_returned"] == accepted["bounce.test"]
        assert r["bounced_without_dsn"] == 0
        assert r["deferred_pending"] == accepted["defer.test"] > 0
        assert r["lost"] == r["duplicated"] == r["dsn_after_delivery"] == r["expired"] == r["unexpected"] == 0

    def test_greylisted_mail_is_delivered_once_on_postfix_retry(self, scene):
        """Each greylisted message took two attempts or more, every other delivered one a single attempt.

        (Postfix keeps retry times in whole seconds, so a retry may come before the 1 s greylist delay is over
        and be greylisted again: two or three attempts, not exactly two.)"""
        attempts, accepted = scene["reconciled"]["attempts"], scene["accepted"]
        assert accepted["grey.test"] > 0
        assert attempts["1"] == accepted["ok.test"]
        assert sum(n for bucket, n in attempts.items() if bucket != "1") == accepted["grey.test"]
        assert sum(attempts.values()) == scene["reconciled"]["delivered"]

    def test_transit_times_per_domain(self, scene):
        """Transit through Postfix is reported per domain; greylisted mail took at least the greylist delay."""
        transit = scene["reconciled"]["transit_ms"]
        domains = transit["domains"]
        assert set(domains) == {"ok.test", "grey.test", "bounce.test"}, "deferred mail has no final answer yet"
        assert domains["ok.test"]["count"] == scene["accepted"]["ok.test"]
        assert domains["grey.test"]["min"] >= 1000 > domains["ok.test"]["p50"]
        assert transit["all"]["count"] == sum(d["count"] for d in domains.values())
        assert transit["clock_skew"] == 0

    def test_the_sink_counted_each_dsn(self, scene):
        """The sink recognised every DSN Postfix returned (smartsink_dsns_total)."""
        assert scene["metrics"]["smartsink_dsns_total"] == scene["accepted"]["bounce.test"]

    def test_summary_says_it(self, scene):
        """The printed reconciliation names the DSNs and the attempts."""
        summary = scene["summary"]
        assert f"bounced {scene['accepted']['bounce.test']:,} (DSN returned" in summary
        assert "attempts each delivered message took: 1:" in summary
