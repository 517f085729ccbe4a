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
from collections import Counter

import pytest

from harness.postfix import needs_postfix, running_postfix
from harness.sink import running_sink
from harness.trafficgen import run_report, run_trafficgen
from mailload import contract

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
            postfix.hold_deferred(timeout=RETRY_S * 10)  # no retry while the queue is read
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
        """Delivered, bounced (each with its DSN), pending (deferred by the sink, the MTA's queue not asked):
        exactly; nothing lost or duplicated; one recipient a message, so messages read the same."""
        r, accepted = scene["reconciled"]["recipients"], scene["accepted"]
        assert r["delivered"] == accepted["ok.test"] + accepted["grey.test"]
        assert r["bounced"] == accepted["bounce.test"] > 0
        assert r["dsn_returned"] == accepted["bounce.test"]
        assert r["bounced_without_dsn"] == 0
        assert r["pending"] == accepted["defer.test"] > 0
        assert r["lost"] == r["duplicated"] == r["dsn_after_delivery"] == r["expired"] == r["unexpected"] == 0
        messages = scene["reconciled"]["messages"]
        assert {k: messages[k] for k in ("delivered", "bounced", "pending")} == {
            k: r[k] for k in ("delivered", "bounced", "pending")
        }

    def test_greylisted_mail_is_delivered_once_on_postfix_retry(self, scene):
        """Each greylisted message took two attempts or more, every other delivered one a single attempt.

        (Postfix keeps retry times in whole seconds, so a retry may come before the 1 s greylist delay is over
        and be greylisted again: two or three attempts, not exactly two.)"""
        attempts, accepted = scene["reconciled"]["recipients"]["attempts"], scene["accepted"]
        assert accepted["grey.test"] > 0
        assert attempts["1"] == accepted["ok.test"]
        assert sum(n for bucket, n in attempts.items() if bucket != "1") == accepted["grey.test"]
        assert sum(attempts.values()) == scene["reconciled"]["recipients"]["delivered"]

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
        assert f"bounced recipients: DSN returned {scene['accepted']['bounce.test']:,}, without DSN 0" in summary
        assert "attempts each delivered recipient: 1:" in summary


# --- several recipients a message, answered at RCPT and at the end of DATA -------------------------------------
RECIPIENTS_POLICY = """
[default]
bounce = 0
defer = 0

[domain."rcpt.test"]
reject_at = "rcpt"
bounce = 20
defer = 20

[domain."data.test"]
bounce = 10
defer = 10

[domain."grey.test"]
greylist = "1s"

[domain."later.test"]
reject_at = "rcpt"
defer = 100

[domain."wide.test"]
reject_at = "rcpt"
bounce = 100
"""
MIXED = ("ok.test", "rcpt.test", "data.test", "grey.test", "later.test")
PER = 4
MESSAGES = 100
# Postfix retries deferred mail at most maximal_backoff_time after a failure (2 s: tests/harness/postfix.py). A
# retry of a rcpt.test or data.test recipient is deferred again with a chance of at most 0.25 (data.test: when one of
# the transaction's 4 recipients draws a deferral and none a bounce, 0.9^4 - 0.8^4), so after RETRIES retries none
# of the ~200 is left (200 x 0.25^14 < 1e-6). Three times that long on a loaded machine.
RETRY_S = 2.0
RETRIES = 14
SETTLE_S = 3 * RETRIES * RETRY_S
STATUS = re.compile(r" to=<user-(\d+)\.([\w-]+)@[^>]+>, .*? status=(sent|deferred|bounced) ")
NOTIFICATION = re.compile(r": sender non-delivery notification: (\w+)")


def postfix_statuses(log: str, tag: str) -> dict[int, list[str]]:
    """Each recipient of the run tagged `tag`, as Postfix's log tells it line by line: the status of each of its
    delivery attempts (one a transaction), in order; the last is where it stands."""
    statuses: dict[int, list[str]] = {}
    for number, run, status in STATUS.findall(log):
        if run == tag:
            statuses.setdefault(int(number), []).append(status)
    return statuses


def bucket(attempts: int) -> str:
    return str(attempts) if attempts < 7 else "7+"


def dsns_delivered(log: str) -> bool:
    """Every DSN Postfix created (`sender non-delivery notification: ID`) was delivered (`ID: to=... status=sent`)."""
    return all(re.search(rf"{queue_id}: to=<[^>]+>, .*? status=sent ", log) for queue_id in NOTIFICATION.findall(log))


@needs_postfix
@pytest.mark.slow
class TestSeveralRecipientsThroughPostfix:
    """100 messages of 4 recipients through Postfix: a domain the sink refuses or defers recipient by recipient at
    RCPT, one it bounces or defers at the end of DATA, one it greylists, one it always defers (still queued at the
    end) and one it accepts; then 2 messages of 60 recipients, all refused. Each count of the reconciliation is
    checked against Postfix's own log, recipient by recipient."""

    @pytest.fixture(scope="class")
    @classmethod
    def scene(cls, tmp_path_factory):  # type: ignore[no-untyped-def]
        tmp = tmp_path_factory.mktemp("postfix-recipients")
        with (
            running_sink("--seed", "5", policy=RECIPIENTS_POLICY, tmp=tmp) as sink,
            running_postfix(sink.port) as postfix,
        ):
            url = f"http://{sink.http}"
            report_path, wide_path = tmp / "report.json", tmp / "wide.json"
            run = run_trafficgen(
                *("--target", postfix.target, "--message-count", str(MESSAGES), "--concurrency", "8", "--seed", "11"),
                *("--recipients-per-message", str(PER), "--run-id", "pf4", "--json", str(report_path)),
                *(a for d in MIXED for a in ("--domain", d)),
                *("--reconcile", url, "--reconcile-wait", "3", "--mta-queue", postfix.queue_command),
            )
            assert run.returncode == 0, run.stderr
            wide = run_trafficgen(
                *("--quiet", "--target", postfix.target, "--message-count", "2", "--concurrency", "1"),
                *("--recipients-per-message", "60", "--run-id", "wide", "--domain", "wide.test"),
                *("--reconcile", url, "--json", str(wide_path)),
            )
            assert wide.returncode == 0, wide.stderr

            def settled() -> bool:
                queued = postfix.queued_recipients()
                return all(r.endswith("@later.test.sink.test") for r in queued) and dsns_delivered(postfix.log())

            postfix.wait_for(settled, timeout=SETTLE_S, what="every recipient final but later.test's, every DSN sent")
            postfix.hold_deferred(timeout=RETRY_S * 10)  # no retry while the queue is read
            again = run_trafficgen("report", "reconcile", str(report_path), "--json", "-")
            assert again.returncode == 0, again.stderr
            unasked = run_trafficgen("report", "reconcile", str(report_path), "--mta-queue", "", "--json", "-")
            assert unasked.returncode == 0, unasked.stderr
            wide_again = run_trafficgen("report", "reconcile", str(wide_path), "--json", "-")
            assert wide_again.returncode == 0, wide_again.stderr
            yield {
                "run": run,
                "reconciled": json.loads(again.stdout)["reconciliation"],
                "summary": again.stderr,
                "unasked": json.loads(unasked.stdout)["reconciliation"],
                "wide": json.loads(wide_again.stdout)["reconciliation"],
                "log": postfix.log(),
                "metrics": sink.metrics(),
            }

    def test_each_recipient_as_postfix_logged_it(self, scene):
        """Postfix's last status line of each recipient: sent, bounced, deferred (still queued) are the
        reconciliation's delivered, bounced and deferred, exactly; nothing lost, duplicated, pending or unexpected.
        Each delivered recipient took as many attempts as Postfix logged lines for it."""
        statuses = postfix_statuses(scene["log"], "pf4")
        r = scene["reconciled"]["recipients"]
        assert len(statuses) == r["accepted"] == MESSAGES * PER
        final = Counter(lines[-1] for lines in statuses.values())
        assert (r["delivered"], r["bounced"], r["deferred"]) == (final["sent"], final["bounced"], final["deferred"])
        assert min(final.values()) > 0
        assert r["lost"] == r["duplicated"] == r["pending"] == r["expired"] == r["unexpected"] == 0
        assert r["dsn_after_delivery"] == 0
        tries = Counter(bucket(len(lines)) for lines in statuses.values() if lines[-1] == "sent")
        assert {k: n for k, n in r["attempts"].items() if n} == dict(tries)
        assert tries.keys() - {"1"}, "greylisted and deferred recipients were delivered on a retry"

    def test_each_message_from_its_recipients(self, scene):
        """Postfix's recipients grouped by message: all sent (delivered), some sent and the others bounced (partly
        delivered, their DSN sent), none sent (bounced), one still deferred (deferred): as many as the
        reconciliation says; a message's attempts are the most lines of any of its recipients."""
        statuses = postfix_statuses(scene["log"], "pf4")
        expected: Counter[str] = Counter()
        tries: Counter[str] = Counter()
        for seq in range(MESSAGES):
            lines = [statuses[seq * PER + j] for j in range(PER)]
            final = {recipient[-1] for recipient in lines}
            if "deferred" in final:
                kind = "deferred"
            elif final == {"sent"}:
                kind = "delivered"
            elif "sent" not in final:
                kind = "bounced"
            else:
                kind = "partly_delivered"
            expected[kind] += 1
            if "sent" in final:
                tries[bucket(max(len(recipient) for recipient in lines))] += 1
        messages = scene["reconciled"]["messages"]
        assert {k: messages[k] for k in contract.MESSAGE_OUTCOMES if messages[k]} == dict(expected)
        assert expected["partly_delivered"] > 0
        assert {k: n for k, n in messages["attempts"].items() if n} == dict(tries)

    def test_bounced_recipients_each_in_a_dsn(self, scene):
        """Refused at RCPT or at the end of DATA, several in one DSN: every bounced recipient came back in a DSN
        the sink matched; the sink counted each DSN Postfix created, for both runs."""
        log = scene["log"]
        bounced = [line for line in log.splitlines() if " status=bounced " in line and ".pf4@" in line]
        assert any("in reply to RCPT TO command" in line for line in bounced)
        assert any("in reply to end of DATA command" in line for line in bounced)
        r = scene["reconciled"]["recipients"]
        assert r["dsn_returned"] == r["bounced"] == len(bounced)
        assert r["bounced_without_dsn"] == 0
        assert scene["metrics"]["smartsink_dsns_total"] == len(NOTIFICATION.findall(log))

    def test_deferred_recipients_carry_postfixs_reason(self, scene):
        """The deferred recipients' samples say what the sink saw and what postqueue -j says of each."""
        samples = scene["reconciled"]["samples"]["deferred"]
        assert samples
        for sample in samples:
            assert sample["sink_saw"].startswith("refused temporarily")
            assert "(in reply to RCPT TO command)" in sample["mta_said"]

    def test_without_the_queue_deferred_reads_pending(self, scene):
        """Without the MTA's queue (`--mta-queue ''`), the recipients the sink only deferred are pending, not lost."""
        asked, unasked = scene["reconciled"]["recipients"], scene["unasked"]["recipients"]
        assert unasked["pending"] == asked["deferred"] > 0
        assert unasked["deferred"] == unasked["lost"] == 0
        assert unasked["delivered"] == asked["delivered"]
        assert scene["unasked"]["messages"]["pending"] == scene["reconciled"]["messages"]["deferred"]

    def test_sixty_recipients_in_one_dsn(self, scene):
        """Two messages of 60 recipients refused at RCPT: Postfix bounces 120 and returns each message in one DSN
        longer than 16 KiB; all 120 are bounced with their DSN."""
        statuses = postfix_statuses(scene["log"], "wide")
        assert Counter(lines[-1] for lines in statuses.values()) == {"bounced": 120}
        sizes = [int(size) for size in re.findall(r": from=<>, size=(\d+), ", scene["log"])]
        assert sum(size > 16 * 1024 for size in sizes) == 2
        r = scene["wide"]["recipients"]
        assert (r["accepted"], r["bounced"], r["dsn_returned"]) == (120, 120, 120)
        assert scene["wide"]["messages"]["bounced"] == 2

    def test_live_progress_while_waiting(self, scene):
        """While --reconcile-wait runs, a line each second: the time left, recipients and messages delivered so
        far, and those deferred."""
        lines = re.findall(r"reconciling +\d+ s left  delivered [\d,]+ of 400 recipients \([\d,]+ of 100 messages\)"
                           r".*", scene["run"].stderr)  # fmt: skip
        assert lines, scene["run"].stderr
        assert all("deferred" in line for line in lines)

    def test_summary_shows_recipients_and_messages(self, scene):
        """`report reconcile` prints a row for the recipients and one for the messages, partly delivered among
        the columns."""
        summary = scene["summary"]
        assert "of 400 recipients in 100 messages the target accepted" in summary
        assert re.search(r"^recipients +[\d,]+", summary, re.M)
        assert re.search(r"^messages +[\d,]+", summary, re.M)
        assert "partly delivered" in summary


@needs_postfix
@pytest.mark.slow
class TestOpportunisticTLS:
    """Postfix with opportunistic TLS (`smtp_tls_security_level = may`, what most MTAs do) meets a sink started
    without any TLS option: it makes a TLS handshake per connection, as with KumoMTA's sink and real providers."""

    MESSAGES = 20

    def relay(self, tmp_path, *sink_args: str) -> tuple[str, dict[str, float]]:  # type: ignore[no-untyped-def]
        """Postfix's log and the sink's metrics once every one of MESSAGES messages was delivered."""
        with (
            running_sink(*sink_args, policy="[default]\nbounce = 0\ndefer = 0\n", tmp=tmp_path) as sink,
            running_postfix(sink.port, smtp_tls_security_level="may", smtp_tls_loglevel="1") as postfix,
        ):
            report, _ = run_report(
                "--target", postfix.target, "--message-count", str(self.MESSAGES), "--concurrency", "2"
            )  # fmt: skip
            assert report["totals"]["accepted"] == self.MESSAGES
            postfix.wait_for(
                lambda: _count(postfix.log(), r" status=sent ") >= self.MESSAGES, what="every delivery to the sink"
            )
            return postfix.log(), sink.metrics()

    def test_postfix_delivers_over_tls_by_default(self, tmp_path):
        """Each of Postfix's connections to the sink negotiated TLS, and the sink counted the handshakes."""
        log, metrics = self.relay(tmp_path)
        established = _count(log, r"TLS connection established to \S+127\.0\.0\.1")
        assert established >= 1, log[-3000:]
        assert metrics['smartsink_tls_handshakes_total{result="ok"}'] == established
        assert metrics['smartsink_tls_handshakes_total{result="failed"}'] == 0

    def test_no_tls_sink_gets_plain_smtp(self, tmp_path):
        """--no-tls: the same Postfix delivers without TLS (the sink offers none)."""
        log, metrics = self.relay(tmp_path, "--no-tls")
        assert _count(log, r"TLS connection established") == 0
        assert metrics['smartsink_tls_handshakes_total{result="ok"}'] == 0
