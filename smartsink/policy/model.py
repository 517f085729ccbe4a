"""The policy as frozen values: what a loaded responses.toml means, with nothing left to parse.

The loader builds these; decide() and the session read them. Nothing here does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum


class Outcome(IntEnum):
    """What a reply means for a recipient; ordered so that max() is the worst."""

    ACCEPTED = 0
    TEMPFAILED = 1
    PERMFAILED = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def of_code(cls, code: int) -> Outcome:
        if code >= 500:
            return cls.PERMFAILED
        if code >= 400:
            return cls.TEMPFAILED
        return cls.ACCEPTED


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: a three-digit code and its text (which may hold several lines)."""

    code: int
    text: str

    @property
    def outcome(self) -> Outcome:
        return Outcome.of_code(self.code)


@dataclass(frozen=True, slots=True)
class Latency:
    """A delay before a reply: fixed (sigma == 0) or log-normal with the given median and p99."""

    median: float
    p99: float

    @property
    def mu(self) -> float:
        return math.log(self.median) if self.median > 0 else float("-inf")

    @property
    def sigma(self) -> float:
        # For a log-normal, p99 = median * exp(2.3263 * sigma).
        if self.p99 <= self.median or self.median <= 0:
            return 0.0
        return math.log(self.p99 / self.median) / 2.3263478740408408


@dataclass(frozen=True, slots=True)
class Rate:
    """A number of events per period (seconds)."""

    count: float
    per: float

    @property
    def per_second(self) -> float:
        return self.count / self.per


@dataclass(frozen=True, slots=True)
class DomainRules:
    """Everything the policy says about one recipient domain (or the default)."""

    name: str
    bounce: float = 0.0  # percent, exact
    defer: float = 0.0
    bounces: tuple[Reply, ...] = ()
    defers: tuple[Reply, ...] = ()
    throttles: tuple[Reply, ...] = ()
    reject_at: str = "data"  # "data" or "rcpt"
    latency: Latency | None = None
    max_concurrency: int | None = None
    rate: Rate | None = None
    greylist: float | None = None  # seconds
    max_messages_per_connection: int | None = None
    disconnect: float = 0.0  # percent of transactions cut without a reply


@dataclass(frozen=True, slots=True)
class ListenerRules:
    """The `[listener]` table: limits of the SMTP listener as a whole."""

    max_connections: int | None = None
    banner_delay: Latency | None = None
    # Mail from the null sender (<>: DSNs) is accepted whatever the domain's rules, so every bounce the MTA
    # under test returns reaches the ledger; "policy" answers it like any other mail.
    null_sender: str = "accept"


@dataclass(frozen=True)
class Policy:
    """A loaded policy file."""

    source: str
    default: DomainRules
    domains: dict[str, DomainRules] = field(default_factory=dict)
    suffixes: tuple[str, ...] = ()
    listener: ListenerRules = field(default_factory=ListenerRules)
    warnings: tuple[str, ...] = ()
