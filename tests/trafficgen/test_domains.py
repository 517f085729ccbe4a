"""DomainPicker: weighted choice of destination domains with an injected random.Random."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from harness.stats import CHI2_CRITICAL_0_001, chi_square
from trafficgen.config import DomainWeight
from trafficgen.domains import DomainPicker

SEEDS_WEIGHTS = {
    "gmail.com": 67.4,
    "yahoo.com": 5.9,
    "hotmail.com": 8.8,
    "aol.com": 1.5,
    "outlook.com": 1.2,
    "icloud.com": 1.2,
    "comcast.net": 0.5,
}


def picker(weights: dict[str, float], rng: random.Random) -> DomainPicker:
    return DomainPicker([DomainWeight(n, w) for n, w in weights.items()], rng)


class _Draws(random.Random):
    """A Random whose random() returns the given values in turn: draws chosen by the test."""

    def __init__(self, values: list[float]):
        super().__init__(0)
        self.values = iter(values)

    def random(self) -> float:
        return next(self.values)


class TestShares:
    """Each domain gets its weight's share."""

    @pytest.mark.parametrize(
        "weights",
        [{"a.test": 1.0, "b.test": 1.0}, {"a.test": 3.0, "b.test": 1.0}, SEEDS_WEIGHTS],
        ids=["equal", "three-to-one", "seeds-list"],
    )
    def test_shares_are_weight_over_total(self, weights):
        """shares() is weight / sum of weights, in the order given."""
        total = sum(weights.values())
        assert picker(weights, random.Random(1)).shares() == pytest.approx([w / total for w in weights.values()])

    def test_draws_follow_the_weights(self):
        """Seeded draws follow the weights: chi-square under its 0.001 critical value."""
        # 100,000 draws, seed 1, 6 degrees of freedom; uniform weights must be rejected by the same test.
        p = picker(SEEDS_WEIGHTS, random.Random(1))
        counts = Counter(p.pick() for _ in range(100_000))
        observed = [counts[i] for i in range(len(SEEDS_WEIGHTS))]
        assert chi_square(observed, list(SEEDS_WEIGHTS.values())) < CHI2_CRITICAL_0_001[6]
        assert chi_square(observed, [1.0] * len(SEEDS_WEIGHTS)) > CHI2_CRITICAL_0_001[6]

    def test_same_seed_same_sequence(self):
        """The injected Random decides everything: one seed, one sequence; another seed, another one."""
        a = picker(SEEDS_WEIGHTS, random.Random(7))
        b = picker(SEEDS_WEIGHTS, random.Random(7))
        c = picker(SEEDS_WEIGHTS, random.Random(8))
        seq_a, seq_b, seq_c = ([p.pick() for _ in range(200)] for p in (a, b, c))
        assert seq_a == seq_b != seq_c


class TestBoundaries:
    """Draws that land exactly on the edges of the cumulative weights."""

    @pytest.mark.parametrize(
        ("draw", "expected"),
        [(0.0, 0), (0.2499, 0), (0.25, 1), (0.5, 2), (0.75, 2), (1.0 - 2**-53, 2)],
        ids=["zero", "inside-first", "edge-first", "edge-second", "inside-last", "largest"],
    )
    def test_edges(self, draw, expected):
        """A draw on a boundary belongs to the next domain; the largest draw stays in the last one."""
        # weights 1, 1, 2: boundaries at 0.25 and 0.5 of the total; never an index past the list.
        p = DomainPicker([DomainWeight("a", 1), DomainWeight("b", 1), DomainWeight("c", 2)], _Draws([draw]))
        assert p.pick() == expected

    def test_single_domain_draws_nothing(self):
        """One domain: always index 0, and the Random is not consumed (other draws stay reproducible)."""
        p = DomainPicker([DomainWeight("only.test", 5.0)], _Draws([]))
        assert [p.pick() for _ in range(3)] == [0, 0, 0]

    def test_no_domains(self):
        """An empty list is a programming error, refused at once."""
        with pytest.raises(ValueError, match="at least one domain"):
            DomainPicker([], random.Random(1))
