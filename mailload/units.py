"""Sizes, durations and rates as people write them ("60kb", "300ms", "1,000/hr"), shared by both tools.

Each parser raises ValueError with a message that names what was wrong; callers add where it came from.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {
    "": 1.0,
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
}
_RATE_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_NUMBER_UNIT = re.compile(r"^\s*([0-9][0-9_,]*(?:\.[0-9]+)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def _split(text: str, what: str) -> tuple[float, str]:
    m = _NUMBER_UNIT.match(text)
    if not m:
        raise ValueError(f"{what} {text!r} is not a number with an optional unit")
    return float(m.group(1).replace(",", "").replace("_", "")), m.group(2).lower()


def parse_size(text: str | int) -> int:
    """Bytes from "1024", "60kb" (1000s) or "1MiB" (1024s)."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size {text} is negative")
        return text
    number, unit = _split(text, "size")
    if unit not in _SIZE_UNITS:
        raise ValueError(
            f"size {text!r} has an unknown unit {unit!r} (use b, kb, KiB or Ki, mb, MiB, gb, GiB, tb, TiB)"
        )
    return int(number * _SIZE_UNITS[unit])


def parse_size_range(text: str) -> tuple[int, int]:
    """A size or a range "10kb..200kb", as (low, high)."""
    if ".." in text:
        low_text, _, high_text = text.partition("..")
        low, high = parse_size(low_text), parse_size(high_text)
        if low > high:
            raise ValueError(f"size range {text!r} goes from a larger to a smaller size")
        return low, high
    size = parse_size(text)
    return size, size


def parse_duration(text: str | int | float) -> float:
    """Seconds from a number of seconds or "300ms", "1.5s", "5m", "2h"."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if not math.isfinite(text):
            raise ValueError(f"duration {text} is not a finite number")
        if text < 0:
            raise ValueError(f"duration {text} is negative")
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"duration {text!r} is not a string or a number")
    number, unit = _split(text, "duration")
    if unit not in _DURATION_UNITS:
        raise ValueError(f"duration {text!r} has an unknown unit {unit!r} (use ms, s, m, h)")
    return number * _DURATION_UNITS[unit]


@dataclass(frozen=True, slots=True)
class RateSpec:
    """count events per `per` seconds, with an optional burst allowance."""

    count: float
    per: float
    max_burst: int | None = None

    @property
    def per_second(self) -> float:
        return self.count / self.per


_PERIOD = re.compile(r"^([0-9]+(?:\.[0-9]+)?)?\s*([a-z]+)$")


def parse_rate(text: str, allow_burst: bool = False) -> RateSpec:
    """A rate "300/s", "6000/m", "1,000/hr", "100/5m", "10/2s", optionally "local:" in front (KumoMTA's mark of a
    throttle kept in one process) and ",max_burst=N" after."""
    if not isinstance(text, str):
        raise ValueError(f'rate {text!r} is not a string like "600/min"')
    body, burst = text.strip(), None
    if body.lower().startswith("local:"):
        body = body[len("local:") :].strip()
    m = re.search(r",\s*max_burst\s*=\s*(\S+)\s*$", body)
    if m:
        if not allow_burst:
            raise ValueError(f"rate {text!r}: max_burst is not allowed here")
        try:
            burst = int(m.group(1))
        except ValueError:
            raise ValueError(f"rate {text!r}: max_burst must be a whole number") from None
        if burst < 1:
            raise ValueError(f"rate {text!r}: max_burst must be at least 1")
        body = body[: m.start()]
    count_text, slash, unit = body.partition("/")
    if not slash:
        raise ValueError(f"rate {text!r} needs a unit, like 300/s, 6000/m or 1,000/hr")
    try:
        count = float(count_text.strip().replace(",", "").replace("_", ""))
    except ValueError:
        raise ValueError(f"rate {text!r}: {count_text.strip()!r} is not a number") from None
    if not math.isfinite(count):
        raise ValueError(f"rate {text!r}: {count_text.strip()!r} is not a finite number")
    period = _PERIOD.match(unit.strip().lower())
    if period is None or period.group(2) not in _RATE_UNITS:
        raise ValueError(f"rate {text!r} has an unknown unit {unit.strip()!r} (use s, m/min, h/hr or d, like 100/5m)")
    multiple = float(period.group(1)) if period.group(1) else 1.0
    if multiple <= 0:
        raise ValueError(f"rate {text!r}: the period must be more than zero")
    if count <= 0:
        raise ValueError(f"rate {text!r} must be more than zero")
    return RateSpec(count, multiple * _RATE_UNITS[period.group(2)], burst)


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    """("host", port) from "HOST:PORT" or "[v6]:PORT"; port 0 asks the system for a free one. The messages begin
    with `what` and the text ("--target 'x' must look like HOST:PORT"), or with the text alone when `what` is ""."""
    text = text.strip()
    shown = f"{what} {text!r}" if what else repr(text)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"{shown} must look like [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{shown} must look like HOST:PORT")
        if ":" in host:
            raise ValueError(f"{shown}: write an IPv6 address in brackets, [::1]:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{shown}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{shown}: port {port} is out of range 0-65535")
    return host, port
