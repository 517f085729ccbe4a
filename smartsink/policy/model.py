"""The policy as frozen values: what a loaded responses.toml means, with nothing left to parse.

The loader builds these; decide() and the session read them. Nothing here does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple


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
    """One SMTP reply: a three-digit code and its text (which may hold several lines). In a list, `weight` says how
    often it is picked against the others (real providers answer with a few texts far more often than the rest).
    The text may hold `{client_ip}` and `{recipient}`, filled in when it is sent."""

    code: int
    text: str
    weight: float = 1.0

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


# What a limit counts: the whole sink, each client address, each client /24, or each MX host the connection was
# meant for (the original destination of a redirected connection, or the sink's own address when it listens there).
SCOPES = ("sink", "ip", "net24", "mx")


@dataclass(frozen=True, slots=True)
class Escalation:
    """Reputation that reacts: a client that keeps sending after `after` deferrals within `within` seconds gets
    `to` ("block": the domain's block list; "defer": its defer list) for every recipient for `lasts` seconds."""

    after: int
    within: float
    to: str
    lasts: float


@dataclass(frozen=True, slots=True)
class DomainRules:
    """Everything the policy says about one recipient domain (or the default)."""

    name: str
    bounce: float = 0.0  # percent, exact
    defer: float = 0.0
    unknown: float = 0.0  # percent of recipients refused at RCPT time as unknown users
    bounces: tuple[Reply, ...] = ()
    defers: tuple[Reply, ...] = ()
    throttles: tuple[Reply, ...] = ()
    reject_at: str = "data"  # "data" or "rcpt"
    latency: Latency | None = None
    max_concurrency: int | None = None
    rate: Rate | None = None
    rate_start: str = "full"  # a rate's bucket at its first use (sink start, or after a reset): "full" or "empty"
    greylist: float | None = None  # seconds
    max_messages_per_connection: int | None = None
    disconnect: float = 0.0  # percent of transactions cut without a reply
    per: str = "sink"  # what max_concurrency and rate count: "sink", "ip", "net24" or "mx" (SCOPES)
    escalate: Escalation | None = None
    blocks: tuple[Reply, ...] = ()  # the answers of an escalation to "block"
    unknowns: tuple[Reply, ...] = ()  # the answers to unknown users
    require_tls: bool = False  # RCPT without STARTTLS first gets 530 5.7.0
    max_message_size: int | None = None  # bytes; a larger message gets 552 5.3.4 at the end of DATA
    require_headers: tuple[str, ...] = ()  # header names a message must carry, else 550 5.7.1 at the end of DATA
    tempfail_closes: bool = False  # a forced tempfail@ may get a 421 (which closes); else the connection stays open


@dataclass(frozen=True, slots=True)
class ListenerRules:
    """The `[listener]` table: limits of the SMTP listener as a whole."""

    max_connections: int | None = None
    per: str = "sink"  # what max_connections counts: "sink", "ip", "net24" or "mx"
    banner_delay: Latency | None = None
    # Mail from the null sender (<>: DSNs) is accepted whatever the domain's rules, so every bounce the MTA
    # under test returns reaches the ledger; "policy" answers it like any other mail.
    null_sender: str = "accept"


class Exchange(NamedTuple):
    """One MX record of a domain: its preference (lower is tried first) and the host name, without the suffix the
    sink's DNS serves it under (`gmail-smtp-in.l.google.com`)."""

    preference: int
    host: str

    def __str__(self) -> str:
        return f"{self.preference} {self.host}"


@dataclass(frozen=True)
class Window:
    """A domain's rules changed for a while: `settings` (parsed rule keys) over its own, from `start` for `length`
    seconds. `start` counts from the sink's start when `relative`, else it is a Unix time."""

    domain: str
    settings: tuple[tuple[str, object], ...]
    start: float
    length: float | None  # None: until removed
    relative: bool = True


@dataclass(frozen=True)
class Policy:
    """A loaded policy file."""

    source: str
    default: DomainRules
    domains: dict[str, DomainRules] = field(default_factory=dict)
    suffixes: tuple[str, ...] = ()
    listener: ListenerRules = field(default_factory=ListenerRules)
    schedule: tuple[Window, ...] = ()
    warnings: tuple[str, ...] = ()
    # `mx = [...]` of [domain."NAME"]: the MX sets the sink's DNS serves for these domains, over its shipped table
    mx: dict[str, tuple[Exchange, ...]] = field(default_factory=dict)
