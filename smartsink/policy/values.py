"""The values of a policy's keys, as people write them: each key's reader (percentages, counts, durations,
latencies, rates, sizes, header names, host names and MX sets, an escalation), the keys [default], a domain, the
listener and a schedule window take, a window's timing, and domain names. Pure: a bad value raises Bad (a
ValueError) naming the problem; the loader puts the file, line and key in front.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any

from mailload import units
from smartsink.policy.model import SCOPES, Escalation, Exchange, Latency, Rate


class Bad(ValueError):
    pass


def _percent(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise Bad(f"must be a number from 0 to 100, got {value!r}")
    if not 0 <= value <= 100:
        raise Bad(f"must be from 0 to 100, got {value!r}")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Bad(f"must be a whole number of at least 1, got {value!r}")
    return value


def _duration(value: Any) -> float:
    try:
        return units.parse_duration(value)
    except ValueError as e:
        raise Bad(str(e)) from None


def _latency(value: Any) -> Latency:
    if isinstance(value, dict):
        unknown = set(value) - {"median", "p99"}
        if unknown or "median" not in value:
            raise Bad('must be a duration ("300ms") or a table { median = "80ms", p99 = "900ms" }')
        median = _duration(value["median"])
        p99 = _duration(value.get("p99", value["median"]))
        if p99 < median:
            raise Bad(f"p99 ({value.get('p99')!r}) is below the median ({value['median']!r})")
        return Latency(median, p99)
    fixed = _duration(value)
    return Latency(fixed, fixed)


def _rate(value: Any) -> Rate:
    try:
        spec = units.parse_rate(value)
    except ValueError as e:
        raise Bad(str(e)) from None
    return Rate(spec.count, spec.per)


RATE_STARTS = ("full", "empty")


def _rate_start(value: Any) -> str:
    if value not in RATE_STARTS:
        raise Bad(f'must be "full" (one period\'s worth at once) or "empty" (the rate from the start), got {value!r}')
    return str(value)


def _reject_at(value: Any) -> str:
    if value not in ("rcpt", "data"):
        raise Bad(f'must be "rcpt" or "data", got {value!r}')
    return str(value)


def _positive_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0


def _per(value: Any) -> str:
    if value not in SCOPES:
        raise Bad(f"must be one of {', '.join(repr(s) for s in SCOPES)}, got {value!r}")
    return str(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"must be true or false, got {value!r}")
    return value


def _size(value: Any) -> int:
    try:
        size = units.parse_size(value) if isinstance(value, str) else value
    except ValueError as e:
        raise Bad(str(e)) from None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise Bad(f'must be a size like "10MB" or a number of bytes, got {value!r}')
    if size > 1024**3:
        raise Bad(f"{value!r} is larger than the sink's bound of 1 GiB")
    return size


def _header_names(value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise Bad(f'must be a header name or a list of them, like ["Message-ID", "Date"], got {value!r}')
    bad = [n for n in names if not re.fullmatch(r"[!-9;-~]+", n)]
    if bad:
        raise Bad(f"{bad[0]!r} is not a header name")
    return tuple(names)


# RFC 1035 2.3.1 (with RFC 1123's leading digits): letters, digits and inner hyphens, 63 to a label
_HOST_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MX_HOST_MAX = 200  # characters of an MX host name, so that any suffix of up to 52 still makes a name DNS can carry


def parse_host(text: str) -> str:
    """A host name as DNS carries it (lower case, no final dot); ValueError names the problem."""
    host = text.strip().rstrip(".").lower()
    if not host or len(host) > MX_HOST_MAX or not all(_HOST_LABEL.match(label) for label in host.split(".")):
        raise Bad(f"{text!r} is not a host name (letters, digits, hyphens and dots, at most {MX_HOST_MAX})")
    return host


def parse_exchanges(value: Any) -> tuple[Exchange, ...]:
    """`mx = ["mx1.example.com", "20 mx2.example.com"]`: MX records as zone files write them, a preference (0 to
    65535; 10 when left out) and a host name. ValueError names the problem."""
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
        example = '["5 mx1.example.com", "10 mx2.example.com"]'
        raise Bad(f"must be a host name or a list of them, like {example}, got {value!r}")
    out: dict[str, Exchange] = {}
    for entry in entries:
        first, _, rest = entry.strip().partition(" ")
        if first.isdigit():
            preference, host = int(first), rest
            if preference > 65535:
                raise Bad(f"{entry!r}: a preference is 0 to 65535")
        else:
            preference, host = 10, entry
        name = parse_host(host)
        if name in out:
            raise Bad(f"{name} is listed twice")
        out[name] = Exchange(preference, name)
    return tuple(out.values())


_ESCALATE_KEYS = {"after", "within", "to", "for"}


def _escalate(value: Any) -> Escalation:
    if not isinstance(value, dict) or not {"after", "within"} <= set(value) or set(value) - _ESCALATE_KEYS:
        raise Bad('must be a table { after = 50, within = "5m", to = "block", for = "30m" }')
    to = value.get("to", "block")
    if to not in ("block", "defer"):
        raise Bad(f'to must be "block" or "defer", got {to!r}')
    return Escalation(_count(value["after"]), _duration(value["within"]), to, _duration(value.get("for", "30m")))


RULE_PARSERS = {
    "bounce": _percent,
    "defer": _percent,
    "unknown": _percent,
    "disconnect": _percent,
    "reject_at": _reject_at,
    "latency": _latency,
    "max_concurrency": _count,
    "max_messages_per_connection": _count,
    "rate": _rate,
    "rate_start": _rate_start,
    "greylist": _duration,
    "per": _per,
    "escalate": _escalate,
    "require_tls": _flag,
    "max_message_size": _size,
    "require_headers": _header_names,
    "tempfail_closes": _flag,
}


def _null_sender(value: Any) -> str:
    if value not in ("accept", "policy"):
        raise Bad(f'must be "accept" or "policy", got {value!r}')
    return str(value)


LISTENER_PARSERS = {"max_connections": _count, "per": _per, "banner_delay": _latency, "null_sender": _null_sender}
# What a schedule window may change: a domain's rules for a while (not its scope, escalation or how a bucket starts).
WINDOW_PARSERS = {k: v for k, v in RULE_PARSERS.items() if k not in ("per", "escalate", "rate_start")}
WINDOW_TIMING = ("start", "at", "length")
RULE_KEYS = frozenset(RULE_PARSERS)  # the keys of [default] and [domain."NAME"] (and `mx`, the DNS's, apart)
MX_KEYS = frozenset({"mx"})  # read apart from a domain's rules (the loader's _mx): the MX set the sink's DNS serves
LISTENER_KEYS = frozenset(LISTENER_PARSERS)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", re.IGNORECASE)


def domain_problem(name: str) -> str | None:
    """Why `name` is not a domain name as DNS has them (RFC 1035 2.3.4: at most 253 characters, labels of 1 to 63
    letters, digits, hyphens inside, underscores), or None. The policy's names and the admin API's overrides alike."""
    bare = name[:-1] if name.endswith(".") else name
    if not bare:
        return "is empty"
    if len(bare) > 253:
        return f"is {len(bare)} characters long, more than a domain name's 253"
    for label in bare.split("."):
        if not _LABEL.fullmatch(label):
            shown = label if len(label) <= 70 else label[:60] + "..."
            why = "longer than 63 characters" if len(label) > 63 else "letters, digits and inner hyphens only"
            return f"label {shown!r} is not a domain name's ({why})"
    return None


def window_timing(entry: dict[str, Any]) -> tuple[float, float | None, bool]:
    """(start, length, relative) of a window: `start` a duration from the sink's start (or from now, for the admin
    API), or `at` an ISO 8601 time; `length` a duration (absent: until removed). ValueError names the problem."""
    if "start" in entry and "at" in entry:
        raise ValueError("give start (from the sink's start) or at (a time), not both")
    length = None
    if "length" in entry:
        length = units.parse_duration(entry["length"])
        if length <= 0:
            raise ValueError(f"length must be more than 0, got {entry['length']!r}")
    if "at" in entry:
        at = entry["at"]
        if isinstance(at, str):
            try:
                at = datetime.datetime.fromisoformat(at)
            except ValueError:
                raise ValueError(f"at {entry['at']!r} is not an ISO 8601 time like 2026-12-02T10:00:00Z") from None
        if not isinstance(at, datetime.datetime) or at.tzinfo is None:
            raise ValueError(f"at {entry['at']!r} must be a time with its zone, like 2026-12-02T10:00:00Z")
        return at.timestamp(), length, False
    return units.parse_duration(entry.get("start", 0)), length, True


def rule_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Rule keys as a window takes them (the admin API's overrides), parsed; ValueError names the bad key."""
    out = {}
    for key, value in values.items():
        parser = WINDOW_PARSERS.get(key)
        if parser is None:
            raise ValueError(f"{key}: unknown key (known: {', '.join(sorted(WINDOW_PARSERS))})")
        try:
            out[key] = parser(value)
        except Bad as e:
            raise ValueError(f"{key}: {e}") from None
    return out
