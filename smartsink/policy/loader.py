"""Reading a responses.toml into a Policy, with every problem named by file, line and key.

The layout is KumoMTA's (`[default]`, `[domain."NAME"]`, `[[bounce."NAME"]]`, `[[defer."NAME"]]`), so their
files load unchanged; the keys of docs/policy.md extend it. Unspecified keys of a domain come from `[default]`;
a domain's reply lists fall back to the `[[bounce."default"]]`-level lists, then to built-in replies.
"""

from __future__ import annotations

import datetime
import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mailload import contract, units
from smartsink.policy import fallback, pieces
from smartsink.policy.model import (
    SCOPES,
    DomainRules,
    Escalation,
    Exchange,
    Latency,
    ListenerRules,
    Policy,
    Rate,
    Reply,
    Window,
)

DEFAULT_NAME = "default"
OTHER_LABEL = "other"
LIST_KINDS = ("bounce", "defer", "throttle", "block", "unknown")
TOP_KEYS = {"default", "domain", "listener", "domain_suffix", "schedule", *LIST_KINDS}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy file."""

    source: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class PolicyError(Exception):
    """A policy file that cannot be used; str() gives one line per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# --- finding lines ------------------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*\]\]?\s*(?:#.*)?$")


def _split_dotted(text: str) -> tuple[str, ...]:
    parts, current, quote = [], "", ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                current += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return tuple(parts)


_KEY = re.compile(r"""^\s*["']?(.*?)["']?\s*=""")


@dataclass
class _Lines:
    """Where each table header and key of the file stands, to put line numbers on problems.

    Indexed once (headers by path, a table's keys the first time one of them is asked for), so naming the line of
    every key of a file is linear in its size, however many tables it has."""

    lines: list[str]
    headers: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    by_path: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    keys: dict[int, dict[str, int]] = field(default_factory=dict)  # a table's first line -> its keys' lines

    @classmethod
    def of(cls, text: str) -> _Lines:
        found = cls(text.splitlines())
        for number, line in enumerate(found.lines, start=1):
            m = _HEADER.match(line)
            if m and not line.lstrip().startswith("#"):
                path = _split_dotted(m.group(2))
                found.headers.append((number, path))
                found.by_path.setdefault(path, []).append(number)
        return found

    def table(self, path: tuple[str, ...], nth: int = 0) -> int | None:
        matches = self.by_path.get(path, ())
        return matches[nth] if nth < len(matches) else (matches[0] if matches else None)

    def place(self, path: tuple[str, ...]) -> int | None:
        """Where a table is defined: its header, else the line of its key (an inline table, a bad value)."""
        return self.table(path) or (self.key(path[:-1], path[-1]) if path else None)

    def first_under(self, name: str) -> int | None:
        """The first header of a table named `name` or nested in it (`[domian."gmail.com"]` for `domian`)."""
        return next((n for n, p in self.headers if p[:1] == (name,)), None)

    def key(self, path: tuple[str, ...], key: str, nth: int = 0) -> int | None:
        # Top-level keys stand before the first header; a table without a header of its own is an inline
        # table (`"gmail.com" = { bounce = 5 }`): its keys are on the line that defines it.
        start = self.table(path, nth) if path else 0
        if start is None:
            return self.key(path[:-1], path[-1])
        keys = self.keys.get(start)
        if keys is None:
            keys = self.keys[start] = self._keys_after(start)
        return keys.get(key, start or None)

    def _keys_after(self, start: int) -> dict[str, int]:
        """The first line of each key between the header on line `start` (0: the top) and the next header."""
        keys: dict[str, int] = {}
        for number in range(start + 1, len(self.lines) + 1):
            text = self.lines[number - 1]
            if _HEADER.match(text) and not text.lstrip().startswith("#"):
                break
            m = _KEY.match(text)
            if m:
                keys.setdefault(m.group(1), number)
        return keys


# --- values -------------------------------------------------------------------------------------------


class _Bad(ValueError):
    pass


def _percent(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise _Bad(f"must be a number from 0 to 100, got {value!r}")
    if not 0 <= value <= 100:
        raise _Bad(f"must be from 0 to 100, got {value!r}")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Bad(f"must be a whole number of at least 1, got {value!r}")
    return value


def _duration(value: Any) -> float:
    try:
        return units.parse_duration(value)
    except ValueError as e:
        raise _Bad(str(e)) from None


def _latency(value: Any) -> Latency:
    if isinstance(value, dict):
        unknown = set(value) - {"median", "p99"}
        if unknown or "median" not in value:
            raise _Bad('must be a duration ("300ms") or a table { median = "80ms", p99 = "900ms" }')
        median = _duration(value["median"])
        p99 = _duration(value.get("p99", value["median"]))
        if p99 < median:
            raise _Bad(f"p99 ({value.get('p99')!r}) is below the median ({value['median']!r})")
        return Latency(median, p99)
    fixed = _duration(value)
    return Latency(fixed, fixed)


def _rate(value: Any) -> Rate:
    try:
        spec = units.parse_rate(value)
    except ValueError as e:
        raise _Bad(str(e)) from None
    return Rate(spec.count, spec.per)


RATE_STARTS = ("full", "empty")


def _rate_start(value: Any) -> str:
    if value not in RATE_STARTS:
        raise _Bad(f'must be "full" (one period\'s worth at once) or "empty" (the rate from the start), got {value!r}')
    return str(value)


def _reject_at(value: Any) -> str:
    if value not in ("rcpt", "data"):
        raise _Bad(f'must be "rcpt" or "data", got {value!r}')
    return str(value)


def _positive_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0


def _per(value: Any) -> str:
    if value not in SCOPES:
        raise _Bad(f"must be one of {', '.join(repr(s) for s in SCOPES)}, got {value!r}")
    return str(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {value!r}")
    return value


def _size(value: Any) -> int:
    try:
        size = units.parse_size(value) if isinstance(value, str) else value
    except ValueError as e:
        raise _Bad(str(e)) from None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise _Bad(f'must be a size like "10MB" or a number of bytes, got {value!r}')
    if size > 1024**3:
        raise _Bad(f"{value!r} is larger than the sink's bound of 1 GiB")
    return size


def _header_names(value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _Bad(f'must be a header name or a list of them, like ["Message-ID", "Date"], got {value!r}')
    bad = [n for n in names if not re.fullmatch(r"[!-9;-~]+", n)]
    if bad:
        raise _Bad(f"{bad[0]!r} is not a header name")
    return tuple(names)


# RFC 1035 2.3.1 (with RFC 1123's leading digits): letters, digits and inner hyphens, 63 to a label
_HOST_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MX_HOST_MAX = 200  # characters of an MX host name, so that any suffix of up to 52 still makes a name DNS can carry


def parse_host(text: str) -> str:
    """A host name as DNS carries it (lower case, no final dot); ValueError names the problem."""
    host = text.strip().rstrip(".").lower()
    if not host or len(host) > MX_HOST_MAX or not all(_HOST_LABEL.match(label) for label in host.split(".")):
        raise _Bad(f"{text!r} is not a host name (letters, digits, hyphens and dots, at most {MX_HOST_MAX})")
    return host


def parse_exchanges(value: Any) -> tuple[Exchange, ...]:
    """`mx = ["mx1.example.com", "20 mx2.example.com"]`: MX records as zone files write them, a preference (0 to
    65535; 10 when left out) and a host name. ValueError names the problem."""
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
        example = '["5 mx1.example.com", "10 mx2.example.com"]'
        raise _Bad(f"must be a host name or a list of them, like {example}, got {value!r}")
    out: dict[str, Exchange] = {}
    for entry in entries:
        first, _, rest = entry.strip().partition(" ")
        if first.isdigit():
            preference, host = int(first), rest
            if preference > 65535:
                raise _Bad(f"{entry!r}: a preference is 0 to 65535")
        else:
            preference, host = 10, entry
        name = parse_host(host)
        if name in out:
            raise _Bad(f"{name} is listed twice")
        out[name] = Exchange(preference, name)
    return tuple(out.values())


_ESCALATE_KEYS = {"after", "within", "to", "for"}


def _escalate(value: Any) -> Escalation:
    if not isinstance(value, dict) or not {"after", "within"} <= set(value) or set(value) - _ESCALATE_KEYS:
        raise _Bad('must be a table { after = 50, within = "5m", to = "block", for = "30m" }')
    to = value.get("to", "block")
    if to not in ("block", "defer"):
        raise _Bad(f'to must be "block" or "defer", got {to!r}')
    return Escalation(_count(value["after"]), _duration(value["within"]), to, _duration(value.get("for", "30m")))


_RULE_PARSERS = {
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
        raise _Bad(f'must be "accept" or "policy", got {value!r}')
    return str(value)


_LISTENER_PARSERS = {"max_connections": _count, "per": _per, "banner_delay": _latency, "null_sender": _null_sender}
# What a schedule window may change: a domain's rules for a while (not its scope, escalation or how a bucket starts).
_WINDOW_PARSERS = {k: v for k, v in _RULE_PARSERS.items() if k not in ("per", "escalate", "rate_start")}
_WINDOW_TIMING = ("start", "at", "length")
RULE_KEYS = frozenset(_RULE_PARSERS)  # the keys of [default] and [domain."NAME"] (and `mx`, the DNS's, apart)
_MX = frozenset({"mx"})  # read apart from a domain's rules (_mx): the MX set the sink's DNS serves
LISTENER_KEYS = frozenset(_LISTENER_PARSERS)
_ENHANCED = re.compile(r"^\s*(?:\d{3}[ ,-])?\s*([245])\.\d{1,3}\.\d{1,3}\b")


# --- the file -----------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, text: str, source: str, memory: Memory | None = None):
        self.source = source
        self.text = text
        self._where: _Lines | None = None
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.memory = memory or Memory()
        self.kept = Memory()  # what this load leaves for the next one
        self._replies_done: dict[tuple[str, str], tuple[Reply, ...]] = {}

    @property
    def where(self) -> _Lines:
        """The file's lines, indexed the first time a problem needs one (a good file never needs them)."""
        if self._where is None:
            self._where = _Lines.of(self.text)
        return self._where

    def _quiet(self) -> tuple[int, int]:
        return len(self.problems), len(self.warnings)

    def bad(self, line: int | None, key: str, message: str) -> None:
        self.problems.append(Problem(self.source, line, key, message))

    def warn(self, line: int | None, key: str, message: str) -> None:
        self.warnings.append(str(Problem(self.source, line, key, message)))

    def settings(
        self, table: Any, path: tuple[str, ...], parsers: dict[str, Any], apart: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """The table's keys parsed; those `apart` are read elsewhere and left out."""
        known = self.memory.settings.get(path)
        if known is not None and known[0] is table:  # the same piece of the file as last time: checked then
            self.kept.settings[path] = known
            return known[1]
        quiet = self._quiet()
        out: dict[str, Any] = {}
        if not isinstance(table, dict):
            self.bad(self.where.place(path), _label(path), "must be a table")
            return out
        for key, value in table.items():
            if key in apart:
                continue
            if key not in parsers:
                message = f"unknown key (known: {', '.join(sorted(parsers))})"
                self.bad(self.where.key(path, key), f"{_label(path)} {key}", message)
                continue
            try:
                out[key] = parsers[key](value)
            except _Bad as e:
                self.bad(self.where.key(path, key), f"{_label(path)} {key}", str(e))
        if self._quiet() == quiet:
            self.kept.settings[path] = (table, out)
        return out

    def replies(self, kind: str, name: str, entries: Any) -> tuple[Reply, ...]:
        path = (kind, name)
        done = self._replies_done.get(path)
        if done is not None:  # asked twice in one load (the default's lists): its problems are named once
            return done
        known = self.memory.replies.get(path)
        if known is not None and _same(known[0], entries):
            self.kept.replies[path] = known
            return known[1]
        quiet = self._quiet()
        out = self._replies_done[path] = self._replies(kind, name, entries)
        if self._quiet() == quiet and isinstance(entries, list):
            self.kept.replies[path] = (tuple(entries), out)
        return out

    def _replies(self, kind: str, name: str, entries: Any) -> tuple[Reply, ...]:
        path = (kind, name)
        label = f"[[{kind}.{_quote(name)}]]"
        if not isinstance(entries, list):
            self.bad(self.where.place(path), label, f'must be a list of tables: write [[{kind}."{name}"]]')
            return ()
        out = []
        for nth, entry in enumerate(entries):
            if not isinstance(entry, dict):
                self.bad(self.where.table(path, nth), label, "each entry must be a table with code and msg")
                continue
            for key in sorted(set(entry) - {"code", "msg", "weight"}):
                line_of_key = self.where.key(path, key, nth)
                self.bad(line_of_key, f"{label} {key}", "unknown key (an entry has code, msg and weight)")
            code, msg, weight = entry.get("code"), entry.get("msg", ""), entry.get("weight", 1)
            if (
                isinstance(weight, bool)
                or not isinstance(weight, int | float)
                or not math.isfinite(weight)
                or weight <= 0
            ):
                self.bad(self.where.key(path, "weight", nth), f"{label} weight", f"must be more than 0, got {weight!r}")
                continue
            if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
                self.bad(self.where.key(path, "code", nth), f"{label} code", f"must be 400 to 599, got {code!r}")
                continue
            if not isinstance(msg, str):
                self.bad(self.where.key(path, "msg", nth), f"{label} msg", f"must be a string, got {msg!r}")
                continue
            expected = 5 if kind in ("bounce", "block", "unknown") else 4
            if code // 100 != expected:
                self.warn(
                    self.where.key(path, "code", nth),
                    f"{label} code",
                    f"{code} in a {kind} list: the client sees a {'permanent' if code >= 500 else 'temporary'} failure",
                )
            m = _ENHANCED.match(msg)
            if m and int(m.group(1)) != code // 100:
                self.warn(
                    self.where.key(path, "msg", nth),
                    f"{label} msg",
                    f"enhanced status {m.group(1)}.x.x does not match code {code} (sent as {code // 100}.x.x)",
                )
            out.append(Reply(code, msg, float(weight)))
        return tuple(out)


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


def _quote(name: str) -> str:
    return f'"{name}"' if "." in name or not name.isidentifier() else name


def _label(path: tuple[str, ...]) -> str:
    return "[" + ".".join(_quote(p) for p in path) + "]"


def _suffixes(value: Any, reader: _Reader) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        reader.bad(reader.where.key((), "domain_suffix"), "domain_suffix", "must be a string or a list of strings")
        return ()
    return tuple(v.strip().strip(".").lower() for v in values if v.strip().strip("."))


@dataclass
class Memory:
    """What loading a file leaves for loading it again (PolicyStore keeps one): each piece of the text parsed, by
    its text, and what was checked and built from each parsed value, by that value. A reload after an edit then
    parses and checks the pieces that changed, and builds again only the domains they touch; everything else is
    the same objects as before. Only what loaded without a problem or warning is kept (those name lines, which
    move)."""

    chunks: dict[str, pieces.Chunk] = field(default_factory=dict)
    settings: dict[tuple[str, ...], tuple[Any, dict[str, Any]]] = field(default_factory=dict)
    replies: dict[tuple[str, str], tuple[tuple[Any, ...], tuple[Reply, ...]]] = field(default_factory=dict)
    rules: dict[str, tuple[tuple[Any, ...], DomainRules]] = field(default_factory=dict)
    domains: dict[str, DomainRules] | None = None  # the last load's, built over `default`
    default: DomainRules | None = None
    mx: dict[str, tuple[Exchange, ...]] | None = None  # the last load's `mx` keys

    def take(self, other: Memory) -> None:
        self.__dict__.update(other.__dict__)


def _same(known: tuple[Any, ...], now: Any) -> bool:
    """The same objects, one for one (cheap: a piece of text that did not change parses to the same objects)."""
    if not isinstance(now, list | tuple) or len(known) != len(now):
        return False
    return all(a is b for a, b in zip(known, now, strict=True))


_LIST_FIELDS = {kind: f"{kind}s" for kind in LIST_KINDS}  # the list of a kind, and its field of DomainRules
# What [default] builds on: the built-in reply lists where the file has none.
_BUILT_IN = DomainRules(
    name=OTHER_LABEL,
    bounces=fallback.BOUNCES,
    defers=fallback.DEFERS,
    throttles=fallback.THROTTLES,
    blocks=fallback.BLOCKS,
    unknowns=fallback.UNKNOWNS,
)
_NO_SETTINGS: dict[str, Any] = {}


def _rules(reader: _Reader, name: str, base: DomainRules, settings: dict[str, Any], lists: ReplyLists) -> DomainRules:
    """One domain's rules (or the default's, name DEFAULT_NAME): its settings and lists over `base`'s."""
    own = tuple(lists[kind].get(name) for kind in LIST_KINDS)
    parts = (base, settings, *own)
    known = reader.memory.rules.get(name)
    if known is not None and _same(known[0], parts):
        reader.kept.rules[name] = known
        return known[1]
    quiet = reader._quiet()
    changed: dict[str, Any] = {field: mine for field, mine in zip(_LIST_FIELDS.values(), own, strict=True) if mine}
    label = OTHER_LABEL if name == DEFAULT_NAME else name
    rules = replace(base, name=label, **settings, **changed)
    _check_sum(reader, rules, ("default",) if name == DEFAULT_NAME else ("domain", name))
    problem = None if name == DEFAULT_NAME else domain_problem(name)
    if problem is not None:
        reader.bad(reader.where.place(("domain", name)), _label(("domain", name)), problem)
    if reader._quiet() == quiet:
        reader.kept.rules[name] = (parts, rules)
    return rules


def parse_policy(text: str, source: str = "<policy>", memory: Memory | None = None) -> Policy:
    """Build a Policy from the text of a responses.toml; raise PolicyError naming every problem. With `memory`
    (what the last load of this file left), only what changed is parsed and built again; the result is the same."""
    reader = _Reader(text, source, memory)
    data, touched = _toml(text, source, reader)
    _check_top_keys(reader, data)
    default = _default(reader, data)
    if touched is not None and DEFAULT_NAME not in touched and default == reader.memory.default:
        default = reader.memory.default  # the same rules: the domains built over it stand
        domains = _touched_domains(reader, data, default, touched)  # the rest are the last load's
    else:
        domains = _domains(reader, data, default, _reply_lists(reader, data))
    reader.kept.domains, reader.kept.default = domains, default
    listener_settings = reader.settings(data.get("listener", {}), ("listener",), _LISTENER_PARSERS)
    suffixes = _suffixes(data["domain_suffix"], reader) if "domain_suffix" in data else ()
    mx = _mx(reader, data, touched, suffixes)
    schedule = _schedule(reader, data.get("schedule", {}))
    if reader.problems:
        raise PolicyError(reader.problems)
    if memory is not None:
        memory.take(reader.kept)
    return Policy(
        source=source,
        default=default,
        domains=domains,
        suffixes=suffixes,
        listener=ListenerRules(**listener_settings),
        schedule=schedule,
        warnings=tuple(reader.warnings),
        mx=mx,
    )


def _mx(
    reader: _Reader, data: dict[str, Any], touched: set[str] | None, suffixes: tuple[str, ...]
) -> dict[str, tuple[Exchange, ...]]:
    """`mx = [...]` of each [domain."NAME"]: the MX set the sink's DNS serves for it (over the shipped table). With
    what the last load left, only the domains whose text changed are read again."""
    tables = data.get("domain", {})
    if not isinstance(tables, dict):
        return {}
    previous = reader.memory.mx
    if touched is None or previous is None:
        out: dict[str, tuple[Exchange, ...]] = {}
        names = list(tables)
    else:
        out = {name: mx for name, mx in previous.items() if name not in touched}
        names = [name for name in touched if name in tables]
    for name in names:
        table = tables[name]
        if isinstance(table, dict) and "mx" in table:
            exchanges = _exchanges(reader, name, table["mx"], suffixes)
            if exchanges is not None:
                out[name.lower()] = exchanges
    reader.kept.mx = out
    return out


def _exchanges(reader: _Reader, name: str, value: Any, suffixes: tuple[str, ...]) -> tuple[Exchange, ...] | None:
    path = ("domain", name)
    try:
        exchanges = parse_exchanges(value)
    except _Bad as e:
        reader.bad(reader.where.key(path, "mx"), f"{_label(path)} mx", str(e))
        return None
    for exchange in exchanges:
        suffix = next((s for s in (contract.DEFAULT_SUFFIX, *suffixes) if exchange.host.endswith("." + s)), None)
        if suffix is not None:
            reader.warn(
                reader.where.key(path, "mx"),
                f"{_label(path)} mx",
                f"{exchange.host}: the sink's DNS adds the suffix itself (served as {exchange.host}.{suffix})",
            )
    return exchanges


def _schedule(reader: _Reader, by_name: Any) -> tuple[Window, ...]:
    """[[schedule."NAME"]]: windows of changed rules, relative to the sink's start (start) or at a time (at)."""
    if not isinstance(by_name, dict):
        reader.bad(reader.where.key((), "schedule"), "schedule", 'must hold lists: write [[schedule."NAME"]]')
        return ()
    windows = []
    for name, entries in by_name.items():
        path = ("schedule", name)
        label = f"[[schedule.{_quote(name)}]]"
        if not isinstance(entries, list):
            reader.bad(reader.where.place(path), label, f'must be a list of tables: write [[schedule."{name}"]]')
            continue
        for nth, entry in enumerate(entries):
            window = _window(reader, name, entry, path, nth, label)
            if window is not None:
                windows.append(window)
    return tuple(windows)


def _window(reader: _Reader, name: str, entry: Any, path: tuple[str, ...], nth: int, label: str) -> Window | None:
    if not isinstance(entry, dict):
        reader.bad(reader.where.table(path, nth), label, "each entry must be a table")
        return None
    try:
        timing = window_timing(entry)
    except ValueError as e:
        reader.bad(reader.where.table(path, nth), label, str(e))
        return None
    settings = {}
    for key, value in entry.items():
        if key in _WINDOW_TIMING:
            continue
        if key not in _WINDOW_PARSERS:
            known = f"{', '.join(sorted(_WINDOW_PARSERS))}, start, at, length"
            reader.bad(reader.where.key(path, key, nth), f"{label} {key}", f"unknown key (known: {known})")
            continue
        try:
            settings[key] = _WINDOW_PARSERS[key](value)
        except _Bad as e:
            reader.bad(reader.where.key(path, key, nth), f"{label} {key}", str(e))
    if not settings:
        if set(entry) <= set(_WINDOW_TIMING):
            reader.bad(reader.where.table(path, nth), label, "changes nothing: give a rule key, like defer = 100")
        return None
    start, length, relative = timing
    return Window(name.lower(), tuple(settings.items()), start, length, relative)


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
        parser = _WINDOW_PARSERS.get(key)
        if parser is None:
            raise ValueError(f"{key}: unknown key (known: {', '.join(sorted(_WINDOW_PARSERS))})")
        try:
            out[key] = parser(value)
        except _Bad as e:
            raise ValueError(f"{key}: {e}") from None
    return out


def _toml(text: str, source: str, reader: _Reader | None = None) -> tuple[dict[str, Any], set[str] | None]:
    """The file's TOML, and the domain names that changed since the last load of `reader.memory` (None: any)."""
    if reader is not None:
        try:
            parsed = pieces.parse(text, reader.memory.chunks)
        except pieces.Whole:
            pass
        else:
            reader.kept.chunks = parsed.chunks
            return parsed.data, parsed.touched if reader.memory.domains is not None else None
    try:
        return tomllib.loads(text), None
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise PolicyError([Problem(source, int(m.group(1)) if m else None, "", f"not valid TOML: {message}")]) from None


def _check_top_keys(reader: _Reader, data: dict[str, Any]) -> None:
    for key in data:
        if key not in TOP_KEYS:
            reader.bad(
                reader.where.first_under(key) or reader.where.key((), key),
                key,
                f"unknown top-level key (known: {', '.join(sorted(TOP_KEYS))})",
            )


ReplyLists = dict[str, dict[str, tuple[Reply, ...]]]


def _reply_lists(reader: _Reader, data: dict[str, Any]) -> ReplyLists:
    """[[bounce."NAME"]], [[defer."NAME"]], [[throttle."NAME"]]: each kind's replies by lower-cased name."""
    lists: ReplyLists = {kind: {} for kind in LIST_KINDS}
    for kind in LIST_KINDS:
        by_name = data.get(kind, {})
        if not isinstance(by_name, dict):
            reader.bad(reader.where.key((), kind), kind, f'must hold lists: write [[{kind}."NAME"]]')
            continue
        for name, entries in by_name.items():
            replies = reader.replies(kind, name, entries)
            lists[kind][name.lower()] = lists[kind].get(name.lower(), ()) + replies
    return lists


def _default(reader: _Reader, data: dict[str, Any]) -> DomainRules:
    lists: ReplyLists = {kind: {} for kind in LIST_KINDS}
    for kind in LIST_KINDS:
        by_name = data.get(kind, {})
        if isinstance(by_name, dict) and DEFAULT_NAME in by_name:
            lists[kind][DEFAULT_NAME] = reader.replies(kind, DEFAULT_NAME, by_name[DEFAULT_NAME])
    table = data.get("default", {})
    if isinstance(table, dict) and "mx" in table:  # a domain without an MX set has one named after itself
        message = 'belongs in [domain."NAME"] tables: a domain without one gets one MX named after itself'
        reader.bad(reader.where.key(("default",), "mx"), "[default] mx", message)
    settings = reader.settings(table, ("default",), _RULE_PARSERS, apart=_MX)
    return _rules(reader, DEFAULT_NAME, _BUILT_IN, settings, lists)


def _touched_domains(
    reader: _Reader, data: dict[str, Any], default: DomainRules, touched: set[str]
) -> dict[str, DomainRules]:
    """The last load's domains with those whose tables or lists changed built again (or gone), when [default] and
    the default lists are as they were (pieces.parse found every name in lower case)."""
    memory, kept = reader.memory, reader.kept
    assert memory.domains is not None
    kept.settings, kept.replies, kept.rules = dict(memory.settings), dict(memory.replies), dict(memory.rules)
    domains = dict(memory.domains)
    tables = data.get("domain", {})
    for name in touched:
        kept.settings.pop(("domain", name), None)
        kept.rules.pop(name, None)
        lists: ReplyLists = {kind: {} for kind in LIST_KINDS}
        for kind in LIST_KINDS:
            kept.replies.pop((kind, name), None)
            if name in data.get(kind, ()):
                lists[kind][name] = reader.replies(kind, name, data[kind][name])
        if name not in tables and not any(lists.values()):
            domains.pop(name, None)
            continue
        settings = _NO_SETTINGS
        if name in tables:
            settings = reader.settings(tables[name], ("domain", name), _RULE_PARSERS, apart=_MX)
        domains[name] = _rules(reader, name, default, settings, lists)
    return domains


def _domains(reader: _Reader, data: dict[str, Any], default: DomainRules, lists: ReplyLists) -> dict[str, DomainRules]:
    """Every domain a table or a list names: its own settings and lists over the default's."""
    domain_tables = data.get("domain", {})
    if not isinstance(domain_tables, dict):
        reader.bad(reader.where.key((), "domain"), "domain", 'must hold tables: write [domain."NAME"]')
        domain_tables = {}
    per_domain = {
        name.lower(): reader.settings(table, ("domain", name), _RULE_PARSERS, apart=_MX)
        for name, table in domain_tables.items()
    }
    names = set(per_domain) | {n for kind in LIST_KINDS for n in lists[kind]}
    names.discard(DEFAULT_NAME)
    return {name: _rules(reader, name, default, per_domain.get(name, _NO_SETTINGS), lists) for name in sorted(names)}


def _check_sum(reader: _Reader, rules: DomainRules, path: tuple[str, ...]) -> None:
    if rules.bounce + rules.defer > 100:
        reader.bad(
            reader.where.place(path),
            _label(path),
            f"bounce + defer is {rules.bounce + rules.defer:g}%, more than 100%",
        )


ACCEPT_ALL = "--accept-all"


def accept_all() -> Policy:
    """The policy of a plain black hole (--accept-all): no domain, no limit, nothing refused or delayed."""
    return Policy(source=ACCEPT_ALL, default=DomainRules(name=OTHER_LABEL))


def load_policy(path: str | Path, memory: Memory | None = None) -> Policy:
    """Read and parse a policy file (with what its last load left in `memory`, when given); unreadable files are a
    PolicyError too."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([Problem(source, None, "", "no such file")]) from None
    except IsADirectoryError:
        raise PolicyError([Problem(source, None, "", "is a directory, not a policy file")]) from None
    except UnicodeDecodeError as e:
        raise PolicyError([Problem(source, None, "", f"not UTF-8 text ({e.reason} at byte {e.start})")]) from None
    except OSError as e:
        raise PolicyError([Problem(source, None, "", f"cannot be read: {e.strerror}")]) from None
    return parse_policy(text, source, memory)
