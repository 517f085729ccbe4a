"""The MX table: which MX hosts serve which mail domain. The shipped smartsink/data/mx.toml gives the providers'
real sets (domains sharing a set in reality share it there); a policy's `mx = [...]` adds domains or replaces their
sets. Read once, then plain frozen values.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from smartsink.policy.model import Exchange, Policy
from smartsink.policy.values import parse_exchanges, parse_host


class TableError(ValueError):
    """An MX table that cannot be used; the message names the file and the problem."""


def ordered(exchanges: tuple[Exchange, ...]) -> tuple[Exchange, ...]:
    """An MX set in the order a resolver would try it: by preference, then by name (stable answers)."""
    return tuple(sorted(exchanges))


@dataclass(frozen=True)
class MxTable:
    """The MX set of each known mail domain (lower case, without the test suffix)."""

    sets: Mapping[str, tuple[Exchange, ...]]
    providers: Mapping[str, str]  # domain -> the provider's name, as the table names it ("" from a policy)

    def exchanges(self, domain: str) -> tuple[Exchange, ...] | None:
        """The MX set of a known domain, None for one the table does not name."""
        return self.sets.get(domain)

    @functools.cached_property
    def hosts(self) -> frozenset[str]:
        """Every MX host the table names."""
        return frozenset(e.host for exchanges in self.sets.values() for e in exchanges)

    def with_policy(self, mx: Mapping[str, tuple[Exchange, ...]]) -> MxTable:
        """This table with a policy's `mx` keys over it: a domain it names gets the policy's set."""
        if not mx:
            return self
        sets = dict(self.sets)
        providers = dict(self.providers)
        for domain, exchanges in mx.items():
            sets[domain] = ordered(exchanges)
            providers[domain] = ""
        return MxTable(sets, providers)


def parse_table(text: str, source: str) -> MxTable:
    """Read an MX table (smartsink/data/mx.toml's layout); TableError names the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TableError(f"{source}: not valid TOML: {e}") from None
    providers = data.get("provider")
    if set(data) - {"provider"} or not isinstance(providers, list):
        raise TableError(f"{source}: must hold [[provider]] tables and nothing else")
    sets: dict[str, tuple[Exchange, ...]] = {}
    names: dict[str, str] = {}
    for number, entry in enumerate(providers, start=1):
        name, domains, exchanges = _provider(entry, f"{source}: provider {number}")
        for domain in domains:
            if domain in sets:
                raise TableError(f"{source}: {domain} is listed by {names[domain]!r} and by {name!r}")
            sets[domain], names[domain] = exchanges, name
    return MxTable(sets, names)


def _provider(entry: Any, where: str) -> tuple[str, list[str], tuple[Exchange, ...]]:
    if not isinstance(entry, dict) or set(entry) != {"name", "domains", "mx"}:
        raise TableError(f"{where}: must have name, domains and mx, and nothing else")
    name, domains = entry["name"], entry["domains"]
    if not isinstance(name, str) or not isinstance(domains, list) or not domains:
        raise TableError(f"{where}: name must be a string and domains a list of domains")
    try:
        hosts = [parse_host(d if isinstance(d, str) else repr(d)) for d in domains]
        return name, hosts, ordered(parse_exchanges(entry["mx"]))
    except ValueError as e:
        raise TableError(f"{where} ({name}): {e}") from None


@functools.cache
def shipped() -> MxTable:
    """The table inside the package (smartsink/data/mx.toml), read once per process."""
    path = resources.files("smartsink").joinpath("data/mx.toml")
    return parse_table(path.read_text(encoding="utf-8"), "smartsink/data/mx.toml")


def for_policy(policy: Policy) -> MxTable:
    """The table a sink serves with this policy: the shipped one, with the policy's `mx` keys over it."""
    return shipped().with_policy(policy.mx)
