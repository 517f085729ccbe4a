"""Units as people write them (mailload.units): rates and durations must be finite."""

from __future__ import annotations

import pytest

from mailload import units


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
