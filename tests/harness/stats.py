"""Counts drawn at random, checked with a stated tolerance: binomial bounds and Pearson's chi-square."""

from __future__ import annotations

import math
from collections.abc import Sequence


def binomial_bounds(n: int, p: float, sigmas: float) -> tuple[float, float]:
    """The range n*p +- sigmas standard deviations of a Binomial(n, p) count."""
    mean = n * p
    sd = math.sqrt(n * p * (1 - p))
    return mean - sigmas * sd, mean + sigmas * sd


def assert_binomial(count: int, n: int, p: float, sigmas: float, what: str) -> None:
    low, high = binomial_bounds(n, p, sigmas)
    assert low <= count <= high, f"{what}: {count} of {n}, expected {n * p:g} +- {sigmas} sd ({low:.1f}..{high:.1f})"


# chi-square critical values at significance 0.001 (scipy.stats.chi2.ppf(0.999, df)), by degrees of freedom.
CHI2_CRITICAL_0_001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322}


def chi_square(observed: Sequence[int], weights: Sequence[float]) -> float:
    """Pearson's statistic of observed counts against the shares the weights ask for."""
    total, weight = sum(observed), sum(weights)
    statistic = 0.0
    for seen, w in zip(observed, weights, strict=True):
        expected = total * w / weight
        assert expected >= 5, "too few messages for a chi-square test"
        statistic += (seen - expected) ** 2 / expected
    assert math.isfinite(statistic)
    return statistic
