"""The typed events every log format is read into: a message taken in, a recipient of it, a delivery attempt.

The parsers (kumomta, postfix, exim) give these and nothing else; the aggregate reads only these. Addresses never
travel in an event: a recipient or sender is its domain, lower-cased.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Stage(Enum):
    """When the receiving server answered: at RCPT, at the end of DATA, at another step, or the log does not say."""

    RCPT = "rcpt"
    DATA = "data"
    OTHER = "other"  # the greeting, MAIL FROM
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Received:
    """A message the MTA took in, counted once (KumoMTA's Reception, Postfix's first qmgr `from=`, Exim's `<=`)."""

    time: float | None  # Unix seconds
    sender_domain: str | None  # None: the null sender (a bounce notice the MTA wrote itself)
    size: int | None  # bytes, as the MTA logged them
    recipients: int  # 0: the log does not say
    tenant: str | None = None
    campaign: str | None = None


@dataclass(frozen=True, slots=True)
class Recipient:
    """A recipient of a message taken in, named once (at its reception or its first delivery attempt)."""

    domain: str
    bounce_notice: bool = False  # the message is the MTA's own bounce notice (null sender)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt to one recipient and what the receiving server answered.

    `code` is None when no server answered (a connection that failed, a DNS error, the MTA's own decision); `text`
    is the reply after its code (its enhanced status code first, when it has one), not yet masked."""

    time: float | None
    domain: str
    code: int | None
    text: str = ""
    stage: Stage = Stage.UNKNOWN
    seconds: float | None = None  # how long the transmission took, where the log says
    source: str | None = None  # the egress source (KumoMTA) or local address it left from


Event = Received | Recipient | Attempt


def domain_of(address: str) -> str:
    """The domain of an address as logs write it (`<user@Example.COM>`, `user@example.com.`): lower-cased, without
    brackets or a trailing dot; "" when it has none (a local user, the null sender)."""
    _, at, domain = address.strip().strip("<>").rpartition("@")
    return domain.lower().rstrip(".>") if at else ""
