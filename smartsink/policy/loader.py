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

from mailload import contract
from smartsink.policy import fallback, pieces
from smartsink.policy.model import DomainRules, Exchange, ListenerRules, Policy, Reply, Window
from smartsink.policy.problems import Lines, PolicyError, Problem, quote, table_label
from smartsink.policy.values import (
    LISTENER_PARSERS,
    MX_KEYS,
    RULE_PARSERS,
    WINDOW_PARSERS,
    WINDOW_TIMING,
    Bad,
    domain_problem,
    parse_exchanges,
    window_timing,
)

DEFAULT_NAME = "default"
OTHER_LABEL = "other"
LIST_KINDS = ("bounce", "defer", "throttle", "block", "unknown")
TOP_KEYS = {"default", "domain", "listener", "domain_suffix", "schedule", *LIST_KINDS}


_ENHANCED = re.compile(r"^\s*(?:\d{3}[ ,-])?\s*([245])\.\d{1,3}\.\d{1,3}\b")


# --- the file -----------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, text: str, source: str, memory: Memory | None = None):
        self.source = source
        self.text = text
        self._where: Lines | None = None
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.memory = memory or Memory()
        self.kept = Memory()  # what this load leaves for the next one
        self._replies_done: dict[tuple[str, str], tuple[Reply, ...]] = {}

    @property
    def where(self) -> Lines:
        """The file's lines, indexed the first time a problem needs one (a good file never needs them)."""
        if self._where is None:
            self._where = Lines.of(self.text)
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
            self.bad(self.where.place(path), table_label(path), "must be a table")
            return out
        for key, value in table.items():
            if key in apart:
                continue
            if key not in parsers:
                message = f"unknown key (known: {', '.join(sorted(parsers))})"
                self.bad(self.where.key(path, key), f"{table_label(path)} {key}", message)
                continue
            try:
                out[key] = parsers[key](value)
            except Bad as e:
                self.bad(self.where.key(path, key), f"{table_label(path)} {key}", str(e))
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
        label = f"[[{kind}.{quote(name)}]]"
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
        reader.bad(reader.where.place(("domain", name)), table_label(("domain", name)), problem)
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
    listener_settings = reader.settings(data.get("listener", {}), ("listener",), LISTENER_PARSERS)
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
    except Bad as e:
        reader.bad(reader.where.key(path, "mx"), f"{table_label(path)} mx", str(e))
        return None
    for exchange in exchanges:
        suffix = next((s for s in (contract.DEFAULT_SUFFIX, *suffixes) if exchange.host.endswith("." + s)), None)
        if suffix is not None:
            reader.warn(
                reader.where.key(path, "mx"),
                f"{table_label(path)} mx",
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
        label = f"[[schedule.{quote(name)}]]"
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
        if key in WINDOW_TIMING:
            continue
        if key not in WINDOW_PARSERS:
            known = f"{', '.join(sorted(WINDOW_PARSERS))}, start, at, length"
            reader.bad(reader.where.key(path, key, nth), f"{label} {key}", f"unknown key (known: {known})")
            continue
        try:
            settings[key] = WINDOW_PARSERS[key](value)
        except Bad as e:
            reader.bad(reader.where.key(path, key, nth), f"{label} {key}", str(e))
    if not settings:
        if set(entry) <= set(WINDOW_TIMING):
            reader.bad(reader.where.table(path, nth), label, "changes nothing: give a rule key, like defer = 100")
        return None
    start, length, relative = timing
    return Window(name.lower(), tuple(settings.items()), start, length, relative)


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
    settings = reader.settings(table, ("default",), RULE_PARSERS, apart=MX_KEYS)
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
            settings = reader.settings(tables[name], ("domain", name), RULE_PARSERS, apart=MX_KEYS)
        domains[name] = _rules(reader, name, default, settings, lists)
    return domains


def _domains(reader: _Reader, data: dict[str, Any], default: DomainRules, lists: ReplyLists) -> dict[str, DomainRules]:
    """Every domain a table or a list names: its own settings and lists over the default's."""
    domain_tables = data.get("domain", {})
    if not isinstance(domain_tables, dict):
        reader.bad(reader.where.key((), "domain"), "domain", 'must hold tables: write [domain."NAME"]')
        domain_tables = {}
    per_domain = {
        name.lower(): reader.settings(table, ("domain", name), RULE_PARSERS, apart=MX_KEYS)
        for name, table in domain_tables.items()
    }
    names = set(per_domain) | {n for kind in LIST_KINDS for n in lists[kind]}
    names.discard(DEFAULT_NAME)
    return {name: _rules(reader, name, default, per_domain.get(name, _NO_SETTINGS), lists) for name in sorted(names)}


def _check_sum(reader: _Reader, rules: DomainRules, path: tuple[str, ...]) -> None:
    if rules.bounce + rules.defer > 100:
        reader.bad(
            reader.where.place(path),
            table_label(path),
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
