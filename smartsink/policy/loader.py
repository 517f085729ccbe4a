"""Reading a responses.toml into a Policy, with every problem named by file, line and key.

The layout is KumoMTA's (`[default]`, `[domain."NAME"]`, `[[bounce."NAME"]]`, `[[defer."NAME"]]`), so their
files load unchanged; the keys of docs/policy.md extend it. Unspecified keys of a domain come from `[default]`;
a domain's reply lists fall back to the `[[bounce."default"]]`-level lists, then to built-in replies.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mailload import units
from smartsink.policy import fallback
from smartsink.policy.model import DomainRules, Latency, ListenerRules, Policy, Rate, Reply

DEFAULT_NAME = "default"
OTHER_LABEL = "other"
LIST_KINDS = ("bounce", "defer", "throttle")
TOP_KEYS = {"default", "domain", "listener", "domain_suffix", *LIST_KINDS}


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


@dataclass
class _Lines:
    """Where each table header and key of the file stands, to put line numbers on problems."""

    lines: list[str]
    headers: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)

    @classmethod
    def of(cls, text: str) -> _Lines:
        found = cls(text.splitlines())
        for number, line in enumerate(found.lines, start=1):
            m = _HEADER.match(line)
            if m and not line.lstrip().startswith("#"):
                found.headers.append((number, _split_dotted(m.group(2))))
        return found

    def table(self, path: tuple[str, ...], nth: int = 0) -> int | None:
        matches = [n for n, p in self.headers if p == path]
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
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for number in range(start + 1, len(self.lines) + 1):
            text = self.lines[number - 1]
            if _HEADER.match(text) and not text.lstrip().startswith("#"):
                break
            if pattern.match(text):
                return number
        return start or None


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


def _reject_at(value: Any) -> str:
    if value not in ("rcpt", "data"):
        raise _Bad(f'must be "rcpt" or "data", got {value!r}')
    return str(value)


_RULE_PARSERS = {
    "bounce": _percent,
    "defer": _percent,
    "disconnect": _percent,
    "reject_at": _reject_at,
    "latency": _latency,
    "max_concurrency": _count,
    "max_messages_per_connection": _count,
    "rate": _rate,
    "greylist": _duration,
}


def _null_sender(value: Any) -> str:
    if value not in ("accept", "policy"):
        raise _Bad(f'must be "accept" or "policy", got {value!r}')
    return str(value)


_LISTENER_PARSERS = {"max_connections": _count, "banner_delay": _latency, "null_sender": _null_sender}
RULE_KEYS = frozenset(_RULE_PARSERS)  # the keys of [default] and [domain."NAME"]
LISTENER_KEYS = frozenset(_LISTENER_PARSERS)
_ENHANCED = re.compile(r"^\s*(?:\d{3}[ ,-])?\s*([245])\.\d{1,3}\.\d{1,3}\b")


# --- the file -----------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, text: str, source: str):
        self.source = source
        self.where = _Lines.of(text)
        self.problems: list[Problem] = []
        self.warnings: list[str] = []

    def bad(self, line: int | None, key: str, message: str) -> None:
        self.problems.append(Problem(self.source, line, key, message))

    def warn(self, line: int | None, key: str, message: str) -> None:
        self.warnings.append(str(Problem(self.source, line, key, message)))

    def settings(self, table: Any, path: tuple[str, ...], parsers: dict[str, Any]) -> dict[str, Any]:
        label = _label(path)
        if not isinstance(table, dict):
            self.bad(self.where.place(path), label, "must be a table")
            return {}
        out = {}
        for key, value in table.items():
            line = self.where.key(path, key)
            if key not in parsers:
                self.bad(line, f"{label} {key}", f"unknown key (known: {', '.join(sorted(parsers))})")
                continue
            try:
                out[key] = parsers[key](value)
            except _Bad as e:
                self.bad(line, f"{label} {key}", str(e))
        return out

    def replies(self, kind: str, name: str, entries: Any) -> tuple[Reply, ...]:
        path = (kind, name)
        label = f"[[{kind}.{_quote(name)}]]"
        if not isinstance(entries, list):
            self.bad(self.where.place(path), label, f'must be a list of tables: write [[{kind}."{name}"]]')
            return ()
        out = []
        for nth, entry in enumerate(entries):
            line = self.where.table(path, nth)
            if not isinstance(entry, dict):
                self.bad(line, label, "each entry must be a table with code and msg")
                continue
            for key in sorted(set(entry) - {"code", "msg"}):
                line_of_key = self.where.key(path, key, nth)
                self.bad(line_of_key, f"{label} {key}", "unknown key (an entry has code and msg)")
            code, msg = entry.get("code"), entry.get("msg", "")
            if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
                self.bad(self.where.key(path, "code", nth), f"{label} code", f"must be 400 to 599, got {code!r}")
                continue
            if not isinstance(msg, str):
                self.bad(self.where.key(path, "msg", nth), f"{label} msg", f"must be a string, got {msg!r}")
                continue
            expected = 5 if kind == "bounce" else 4
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
            out.append(Reply(code, msg))
        return tuple(out)


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


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Build a Policy from the text of a responses.toml; raise PolicyError naming every problem."""
    data = _toml(text, source)
    reader = _Reader(text, source)
    _check_top_keys(reader, data)
    lists = _reply_lists(reader, data)
    default = replace(
        DomainRules(name=OTHER_LABEL),
        **reader.settings(data.get("default", {}), ("default",), _RULE_PARSERS),
        bounces=lists["bounce"].get(DEFAULT_NAME) or fallback.BOUNCES,
        defers=lists["defer"].get(DEFAULT_NAME) or fallback.DEFERS,
        throttles=lists["throttle"].get(DEFAULT_NAME) or fallback.THROTTLES,
    )
    _check_sum(reader, default, ("default",))
    domains = _domains(reader, data, default, lists)
    listener_settings = reader.settings(data.get("listener", {}), ("listener",), _LISTENER_PARSERS)
    suffixes = _suffixes(data["domain_suffix"], reader) if "domain_suffix" in data else ()
    if reader.problems:
        raise PolicyError(reader.problems)
    return Policy(
        source=source,
        default=default,
        domains=domains,
        suffixes=suffixes,
        listener=ListenerRules(**listener_settings),
        warnings=tuple(reader.warnings),
    )


def _toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
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


def _domains(reader: _Reader, data: dict[str, Any], default: DomainRules, lists: ReplyLists) -> dict[str, DomainRules]:
    """Every domain a table or a list names: its own settings and lists over the default's."""
    domain_tables = data.get("domain", {})
    if not isinstance(domain_tables, dict):
        reader.bad(reader.where.key((), "domain"), "domain", 'must hold tables: write [domain."NAME"]')
        domain_tables = {}
    per_domain = {
        name.lower(): reader.settings(table, ("domain", name), _RULE_PARSERS) for name, table in domain_tables.items()
    }
    names = set(per_domain) | {n for kind in LIST_KINDS for n in lists[kind]}
    names.discard(DEFAULT_NAME)
    domains: dict[str, DomainRules] = {}
    for name in sorted(names):
        rules = replace(
            default,
            name=name,
            **per_domain.get(name, {}),
            bounces=lists["bounce"].get(name) or default.bounces,
            defers=lists["defer"].get(name) or default.defers,
            throttles=lists["throttle"].get(name) or default.throttles,
        )
        _check_sum(reader, rules, ("domain", name))
        domains[name] = rules
    return domains


def _check_sum(reader: _Reader, rules: DomainRules, path: tuple[str, ...]) -> None:
    if rules.bounce + rules.defer > 100:
        reader.bad(
            reader.where.place(path),
            _label(path),
            f"bounce + defer is {rules.bounce + rules.defer:g}%, more than 100%",
        )


def load_policy(path: str | Path) -> Policy:
    """Read and parse a policy file; unreadable files are a PolicyError too."""
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
    return parse_policy(text, source)
