"""Sink-wide limits in this process: a SharedState answered at once (the sink has one worker)."""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from smartsink.ledger import LedgerEntry
from smartsink.limits.state import SharedState
from smartsink.policy.model import Escalation, Rate


# Compiled by mypyc (mailload/native.py); tests subclass it to see what it is asked, so subclasses are allowed.
@mypyc_attr(allow_interpreted_subclasses=True)
class LocalLimits:
    """The async face of a SharedState in this process: every call answers at once."""

    def __init__(self, state: SharedState):
        self.state = state

    async def open_connection(self, limit: int | None, scope: str = "", client: str = "", mx: str = "") -> bool:
        return self.state.open_connection(limit, scope, client, mx)

    def close_connection(self, scope: str = "", client: str = "", mx: str = "") -> None:
        self.state.close_connection(scope, client, mx)

    async def begin_transaction(self, key: str, limit: int) -> bool:
        return self.state.begin_transaction(key, limit)

    def end_transaction(self, key: str) -> None:
        self.state.end_transaction(key)

    async def take_rate(self, key: str, rate: Rate, full: bool = True) -> bool:
        return self.state.take_rate(key, rate, full)

    async def escalated(self, key: str) -> bool:
        return self.state.escalated(key)

    def deferred(self, key: str, escalation: Escalation) -> None:
        self.state.deferred(key, escalation)

    async def greylist_passes(self, key: str, delay: float) -> bool:
        return self.state.greylist_passes(key, delay)

    def report(self, entry: LedgerEntry) -> None:
        entry.apply(self.state.ledgers)

    async def barrier(self) -> None:
        """Everything reported so far is visible in the state (trivially, here)."""
