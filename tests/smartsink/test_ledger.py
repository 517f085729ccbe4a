"""The sink's reconciliation ledger (smartsink.ledger): bounded memory across runs, numbers beyond its capacity,
one mark per recipient; then a real sink's ledger fed over SMTP by smtplib: refusals at RCPT time tied to their
recipients without any header, and DSNs of any length, each failed recipient matched."""

from __future__ import annotations

import json
import smtplib

import pytest

from harness.mail import dsn, generated
from harness.policies import ACCEPT_ALL
from harness.sink import running_sink
from mailload import contract
from smartsink import ledger
from smartsink.policy.model import Outcome


class TestLedger:
    def test_memory_is_bounded_across_runs(self, monkeypatch):
        """Runs beyond the byte budget are forgotten, least recently heard from first; the one recording stays."""
        monkeypatch.setattr(ledger, "LEDGER_BUDGET", 200_000)
        ledgers = ledger.Ledgers()
        for run in range(10):
            ledgers.record(f"run{run}", (99_999,), Outcome.ACCEPTED)  # 100,000 bytes each
            assert ledgers.size <= 200_000
            assert f"run{run}" in ledgers.runs
        assert list(ledgers.runs) == ["run9"] or list(ledgers.runs) == ["run8", "run9"]
        assert ledgers.size == sum(r.size for r in ledgers.runs.values())

    def test_ids_beyond_the_capacity_are_overflow(self):
        """An absurd number costs nothing: it is counted as overflow, and the summary says the capacity."""
        ledgers = ledger.Ledgers()
        ledgers.record("r", (ledger.LEDGER_MAX_IDS + 5,), Outcome.ACCEPTED)
        run = ledgers.run("r")
        assert run is not None
        assert len(run.marks) == 0
        assert ledgers.size == 0
        summary = run.summary()
        assert summary["overflow"] == 1
        assert summary["capacity"] == ledger.LEDGER_MAX_IDS

    def test_each_recipient_of_a_transaction_once(self):
        """Three recipients answered in one transaction: one attempt each, three transit times; a retry of one of
        them is its second attempt, not a duplicate of the others."""
        ledgers = ledger.Ledgers()
        ledgers.record("r", (4, 5, 6), Outcome.ACCEPTED, "gmail.com", 120)
        ledgers.record("r", (7,), Outcome.TEMPFAILED)
        ledgers.record("r", (7,), Outcome.ACCEPTED, "gmail.com", 2500)
        run = ledgers.run("r")
        assert run is not None
        summary = run.summary()
        assert (summary["seen"], summary["delivered"], summary["duplicated"]) == (4, 4, 0)
        assert summary["attempts"]["1"] == 3
        assert summary["attempts"]["2"] == 1
        assert run.transit["gmail.com"].get_total_count() == 4

    def test_keyed_by_the_run_tag(self):
        """A run id longer than a local part allows is found by its tag, whatever the case it is asked in."""
        long_id = "L" * contract.RUN_ID_MAX
        ledgers = ledger.Ledgers()
        ledgers.record(contract.run_tag(long_id), (1,), Outcome.ACCEPTED)
        ledgers.record(contract.run_tag("Short"), (1,), Outcome.ACCEPTED)
        assert ledgers.run(long_id) is not None
        assert ledgers.run("short") is ledgers.run("Short")


REFUSE_AT_RCPT = ACCEPT_ALL + '\n[domain."no.test"]\nreject_at = "rcpt"\nbounce = 100\n'


class TestOverTheWire:
    """A real sink's `GET /runs/<run>` after smtplib (nobody here wrote it) sent it mail."""

    def test_refusals_at_rcpt_tied_to_their_recipients(self, tmp_path):
        """One transaction to a recipient the sink refuses at RCPT and one it takes, with no trace header at all:
        both are in the run's ledger by their numbers alone."""
        with running_sink(policy=REFUSE_AT_RCPT, tmp=tmp_path) as sink:
            with smtplib.SMTP(sink.host, sink.port, timeout=30) as client:
                refused = client.sendmail(
                    "noreply@ok.test", ["user-8.norun@no.test", "user-9.norun@ok.test"], b"Subject: x\r\n\r\nhi\r\n"
                )
            assert set(refused) == {"user-8.norun@no.test"}
            status, body = sink.get("/runs/norun")
        assert status == 200, body
        summary = json.loads(body)
        assert (summary["seen"], summary["delivered"], summary["bounced"]) == (2, 1, 1)
        assert summary["attempts"]["1"] == 2

    @pytest.mark.parametrize("engine", ["fast", "aiosmtpd"])
    @pytest.mark.parametrize("recipients", [60, 250], ids=["60-recipients", "250-recipients"])
    def test_dsn_of_any_length_returns_each_recipient(self, tmp_path, engine, recipients):
        """A DSN for 60 recipients (the returned headers past 35 KB) or 250 (past 130 KB, beyond what the fast
        engine holds of a body), returning a 200 KB message: each recipient is marked, one DSN is counted."""
        data = dsn(generated("longdsn", 2, recipients=recipients, body_size="200kb"))
        assert data.find(b"X-Trafficgen-Id") > 32 * 1024
        with running_sink("--engine", engine, policy=ACCEPT_ALL, tmp=tmp_path) as sink:
            with smtplib.SMTP(sink.host, sink.port, timeout=30) as client:
                client.sendmail("", ["noreply@gmail.com.sink.test"], data)
            status, body = sink.get("/runs/longdsn")
            metrics = sink.metrics()
        assert status == 200, body
        assert json.loads(body)["dsn_received"] == recipients
        assert metrics["smartsink_dsns_total"] == 1
