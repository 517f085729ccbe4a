"""Small pure pieces: rate and duration parsing, the sink's bounded ledger, combining and reading ledgers."""

from __future__ import annotations

import pytest

from mailload import units
from smartsink import ledger
from smartsink.policy import PolicyError, parse_policy
from smartsink.policy.model import Outcome
from trafficgen.reconcile import Ledger, combine, reconcile


@pytest.mark.parametrize("text", ["nan/s", "inf/min", "-inf/h"], ids=["nan", "inf", "minus-inf"])
def test_rates_must_be_finite(text):
    """A rate that is not a finite number is refused (nan would silently disable a throttle)."""
    with pytest.raises(ValueError, match=r"finite|more than zero"):
        units.parse_rate(text)


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_durations_must_be_finite(value):
    """A duration (from TOML, where inf and nan are numbers) must be finite."""
    with pytest.raises(ValueError, match="finite"):
        units.parse_duration(value)


def test_policy_check_refuses_a_nan_rate():
    """--check refuses rate = "nan/s" with file, line and key."""
    with pytest.raises(PolicyError) as caught:
        parse_policy('[default]\nrate = "nan/s"\n', "x.toml")
    assert str(caught.value).startswith("x.toml:2: [default] rate:")


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
