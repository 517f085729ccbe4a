"""The sink's reconciliation ledger (smartsink.ledger): bounded memory across runs, ids beyond its capacity."""

from __future__ import annotations

from smartsink import ledger
from smartsink.policy.model import Outcome


class TestLedger:
    def test_memory_is_bounded_across_runs(self, monkeypatch):
        """Runs beyond the byte budget are forgotten, least recently heard from first; the one recording stays."""
        monkeypatch.setattr(ledger, "LEDGER_BUDGET", 200_000)
        ledgers = ledger.Ledgers()
        for run in range(10):
            ledgers.record(f"run{run}", 99_999, Outcome.ACCEPTED)  # 100,000 bytes each
            assert ledgers.size <= 200_000
            assert f"run{run}" in ledgers.runs
        assert list(ledgers.runs) == ["run9"] or list(ledgers.runs) == ["run8", "run9"]
        assert ledgers.size == sum(r.size for r in ledgers.runs.values())

    def test_ids_beyond_the_capacity_are_overflow(self):
        """An absurd id costs nothing: it is counted as overflow, and the summary says the capacity."""
        ledgers = ledger.Ledgers()
        ledgers.record("r", ledger.LEDGER_MAX_IDS + 5, Outcome.ACCEPTED)
        run = ledgers.run("r")
        assert run is not None
        assert len(run.marks) == 0
        assert ledgers.size == 0
        summary = run.summary()
        assert summary["overflow"] == 1
        assert summary["capacity"] == ledger.LEDGER_MAX_IDS
