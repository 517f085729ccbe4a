"""The grammar of option values, one for every way a value is given: the command line, an environment variable,
a workload file (TOML) and a program (`build(...)`).

Each option declares its kind (mailload.options): Text, Flag, Count, Seconds, Percent, Choice, HostPort or Many.
A kind's `read` takes the value as it came: text as a person types it ("1m", "1,000", "20%"), or what TOML or
Python hold (a number, a boolean, a list, a table of NAME = VALUE); so `--duration 1m`, `TRAFFICGEN_DURATION=1m`,
`duration = "1m"` and `build(duration="1m")` are read by the same code and give the same value or the same words.
Quantities (sizes, durations, rates, HOST:PORT) are mailload.units'.

A value that cannot be used raises Problem (a ValueError) whose words follow the option's name: `--seed` and
`'abc' is not a whole number` make the line `--seed 'abc' is not a whole number`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from mailload import units

OFF = ("", "off", "none")  # what turns off an option that can be off (HostPort(off=True))


class Problem(ValueError):
    """What is wrong with a value, worded to follow the option's name."""


def named(name: str, error: ValueError) -> str:
    """The line for a value's problem, naming the option: a Problem follows the name after a space; another
    ValueError (mailload.units', a reader's) after a colon, unless it names the option already."""
    message = str(error)
    if message.startswith(name):
        return message
    return f"{name} {message}" if isinstance(error, Problem) else f"{name}: {message}"


def as_text(raw: object) -> str:
    """A value as text: text as it is, a number as written (60, not 60.0), a list's items joined by ", ", a
    table's KEY=VALUE pairs joined by ","."""
    if isinstance(raw, list | tuple):
        return ", ".join(_item(v) for v in raw)
    if isinstance(raw, dict):
        return ",".join(f"{k}={_item(v)}" for k, v in raw.items())
    return _item(raw)


def as_texts(raw: object) -> list[str]:
    """A repeatable option's values: one value, a list of them, or a table of NAME = WEIGHT (each "NAME:WEIGHT")."""
    if isinstance(raw, list | tuple):
        return [_item(v) for v in raw]
    if isinstance(raw, dict):
        return [f"{k}:{_item(v)}" for k, v in raw.items()]
    return [_item(raw)]


def _item(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        raise Problem(
            f"{value!r} is not a value this option takes (TOML puts every key written after a [section] line into "
            "that section: write the sections last)"
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    raise Problem(f"{value!r} is not a value this option takes")


class Kind:
    """How one option's value is read."""

    given_as: ClassVar[Any] = str  # what the command line hands over: str, bool, or list[str] when repeatable

    def read(self, raw: object) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Kind):
    """Text, read by `parse` (which names the option in its errors, or leaves it to the caller)."""

    parse: Callable[[str], Any] | None = None

    def read(self, raw: object) -> Any:
        text = as_text(raw)
        return self.parse(text) if self.parse is not None else text


@dataclass(frozen=True)
class Many(Kind):
    """A repeatable option: each value as text, the list read by `parse`."""

    given_as: ClassVar[Any] = list[str]
    parse: Callable[[list[str]], Any] | None = None

    def read(self, raw: object) -> Any:
        texts = as_texts(raw)
        return self.parse(texts) if self.parse is not None else tuple(texts)


@dataclass(frozen=True)
class Flag(Kind):
    """On or off: a flag on the command line, a boolean in a file or a program."""

    given_as: ClassVar[Any] = bool

    def read(self, raw: object) -> bool:
        if not isinstance(raw, bool):
            raise ValueError(f"write true or false, not {raw!r}")
        return raw


@dataclass(frozen=True)
class Count(Kind):
    """A whole number ("1000", "1_000", "1,000"), at least `at_least` when given."""

    at_least: int | None = None

    def read(self, raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise Problem(f"{raw!r} is not a whole number")
        try:
            value = raw if isinstance(raw, int) else int(raw.strip().replace("_", "").replace(",", ""))
        except ValueError:
            raise Problem(f"{raw!r} is not a whole number") from None
        if self.at_least is not None and value < self.at_least:
            raise Problem(f"must be at least {self.at_least}, got {value}")
        return value


@dataclass(frozen=True)
class Seconds(Kind):
    """A duration in seconds: a number ("90", "1.5", "1e3") or one with a unit ("300ms", "1.5s", "5m", "2h").
    More than 0, or with `zero` from 0; at most `at_most` when given."""

    at_most: float | None = None
    zero: bool = False

    def read(self, raw: object) -> float:
        value = seconds(raw)
        most = math.inf if self.at_most is None else self.at_most
        if self.zero:
            if not 0 <= value <= most:
                raise Problem(f"{value:g} must be between 0 and {most:,.0f} seconds")
            return value
        if math.isnan(value) or value <= 0:
            raise Problem(f"must be more than 0 seconds, got {value:g}")
        if value > most:
            raise Problem(f"{value:g} is more than {most:,.0f} seconds ({most / 86400:g} days)")
        if math.isinf(value):
            raise Problem(f"{value:g} is not a finite number of seconds")
        return value


def seconds(raw: object) -> float:
    """Seconds from a number or a duration's text, any sign (the kind says which are allowed)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise Problem(f"{raw!r} is not a duration: write seconds (90) or a number with a unit (300ms, 1.5s, 5m, 2h)")
    if not isinstance(raw, str):
        return float(raw)
    text = raw.strip().replace("_", "")
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    try:
        return sign * units.parse_duration(text.removeprefix("-"))
    except ValueError:
        raise Problem(
            f"{raw!r} is not a duration: write seconds (90) or a number with a unit (300ms, 1.5s, 5m, 2h)"
        ) from None


@dataclass(frozen=True)
class Percent(Kind):
    """A percentage from 0 to 100: "20", "20%", 20, 12.5."""

    def read(self, raw: object) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise Problem(f"{raw!r} is not a percentage like 20 or 20%")
        try:
            value = float(raw.strip().removesuffix("%")) if isinstance(raw, str) else float(raw)
        except ValueError:
            raise Problem(f"{raw!r} is not a percentage like 20 or 20%") from None
        if not 0 <= value <= 100:
            raise Problem(f"{raw!r}: a percentage is between 0 and 100")
        return value


@dataclass(frozen=True)
class Choice(Kind):
    """One of a few words, in any case."""

    choices: tuple[str, ...]

    def read(self, raw: object) -> str:
        word = as_text(raw).strip().lower()
        if word not in self.choices:
            raise Problem(f"must be one of {', '.join(self.choices)}, got {raw!r}")
        return word


@dataclass(frozen=True)
class HostPort(Kind):
    """HOST:PORT or [IPv6]:PORT, as (host, port); with `off`, "off" (or "none", "") is None."""

    off: bool = False

    def read(self, raw: object) -> tuple[str, int] | None:
        text = as_text(raw)
        if self.off and text.strip().lower() in OFF:
            return None
        try:
            return units.parse_hostport(text, "")
        except ValueError as e:
            raise Problem(str(e)) from None
