"""Sink-wide limits, as the responder asks for them: one protocol, a local and a remote implementation.

- state: SharedState, the counters, buckets, greylist and ledgers themselves (synchronous, one owner);
- local: LocalLimits, a SharedState in this process (one worker);
- remote: RemoteLimits in each worker and the Coordinator in the supervisor, with typed messages between them.
"""

from __future__ import annotations

from typing import Protocol

from smartsink.ledger import LedgerEntry
from smartsink.policy.model import Escalation, Rate


class Limits(Protocol):
    """What a responder asks of the sink as a whole."""

    async def open_connection(self, limit: int | None, scope: str = "", client: str = "", mx: str = "") -> bool:
        """Count one more connection of `scope` (a client address, a /24, an MX, or "" for the whole sink) from
        `client`, meant for the MX host `mx` (when known); False when `limit` ([listener] max_connections) is
        reached."""
        ...

    def close_connection(self, scope: str = "", client: str = "", mx: str = "") -> None: ...

    async def begin_transaction(self, key: str, limit: int) -> bool:
        """Count one more transaction in flight under `key` (state.limit_key: a domain, and a client scope when
        the limit is per client); False when its max_concurrency is reached."""
        ...

    def end_transaction(self, key: str) -> None: ...

    async def take_rate(self, key: str, rate: Rate, full: bool = True) -> bool:
        """Take one accepted message from the rate counted under `key`; False when none is left. A bucket starts
        `full` (one period's worth) or empty at its first use (the policy's rate_start)."""
        ...

    async def escalated(self, key: str) -> bool:
        """True while the domain refuses this client outright (its escalation is in force)."""
        ...

    def deferred(self, key: str, escalation: Escalation) -> None:
        """Note that the domain deferred this client: enough of them in a while escalate (escalate)."""
        ...

    async def greylist_passes(self, key: str, delay: float) -> bool:
        """False for the first attempt of a triplet and for retries sooner than `delay`."""
        ...

    def report(self, entry: LedgerEntry) -> None:
        """Note a ledger entry (a trafficgen message answered, returned in a DSN, or refused at RCPT)."""
        ...

    async def barrier(self) -> None:
        """Everything reported so far is in the sink-wide state."""
        ...
