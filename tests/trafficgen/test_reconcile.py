"""Reconciliation on trafficgen's side: the sinks' ledgers combined and one verdict for every message the target
accepted (trafficgen.reconcile), and the command's errors when reconciliation cannot be done. Reconciliation
through an MTA is in tests/e2e/."""

from __future__ import annotations

import json
from pathlib import Path

from harness.policies import ACCEPT_ALL
from harness.sink import running_sink
from harness.trafficgen import run_report, run_trafficgen
from trafficgen.reconcile import Ledger, combine, reconcile


class TestReconcile:
    def test_combine_adds_acceptances_and_keeps_refusals(self):
        """Two sinks' ledgers: acceptances add up (saturating at 3), refusals are kept, the least capacity wins."""
        one = Ledger(bytes([1, 4, 0, 8, 3]), 100)
        two = Ledger(bytes([1, 0, 5]), 50)
        assert combine([one, two]) == Ledger(bytes([2, 4, 5, 8, 3]), 50)

    def test_every_accepted_message_gets_one_verdict(self):
        """delivered / duplicated / bounced / deferred / lost / unknown (beyond the capacity) / unexpected."""
        ours = bytes([1, 1, 1, 1, 1, 2, 1])  # seq 5 was refused by the target, the others accepted
        theirs = Ledger(bytes([1, 2, 8, 4, 0, 1]), 6)
        result = reconcile(ours, theirs, "r")
        assert {k: result[k] for k in ("delivered", "duplicated", "bounced", "deferred_pending", "lost")} == {
            "delivered": 2,
            "duplicated": 1,
            "bounced": 1,
            "deferred_pending": 1,
            "lost": 1,
        }
        assert result["unexpected"] == 1
        assert result["unknown"] == 1
        assert result["lost_ids"] == ["r.4"]
        assert result["duplicated_ids"] == ["r.1"]

    def test_shards_map_to_global_ids(self):
        """With --shard 1/3, our index i is the run's message id 3 i + 1."""
        ours = bytes([1, 1])  # ids 1 and 4
        theirs = Ledger(bytes([0, 1, 0, 0, 0]), None)
        result = reconcile(ours, theirs, "r", shards=3, shard=1)
        assert result["delivered"] == 1
        assert result["lost_ids"] == ["r.4"]


def test_unreachable_sink_is_one_clear_line(tmp_path):
    """A --reconcile URL where nothing answers: the run's report is written, then one error line and exit 1."""
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        result = run_trafficgen(
            "--target", sink.target, "--message-count", "5", "--quiet", "--reconcile", "http://127.0.0.1:1", timeout=60
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("trafficgen: error: reconciliation: cannot read")


def test_report_reconcile_needs_a_reconciled_run(tmp_path: Path, accept_all_sink):
    """A report from a run without --reconcile cannot be reconciled later: one line, exit 2."""
    report, _ = run_report("--target", accept_all_sink.target, "--message-count", "5", "--concurrency", "1")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    done = run_trafficgen("report", "reconcile", str(path))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
