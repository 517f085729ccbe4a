"""State that must hold for the sink as a whole: connection and transaction counts, rate buckets, the
greylist, and the reconciliation ledger.

SharedState is plain, synchronous, single-owner data with an injected clock. With one worker it lives in
that worker (LocalLimits); with several it lives in the supervisor and workers reach it over a Unix socket
(smartsink.coordinator), so "40 connections" means 40 in all and a greylist retry may reach any worker.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from smartsink.policy.model import Outcome, Rate

GREYLIST_MAX_ENTRIES = 500_000
GREYLIST_KEEP = 36 * 3600.0  # an entry is forgotten this long after it was last seen
LEDGER_MAX_RUNS = 64
LEDGER_MAX_IDS = 16 * 1024 * 1024  # per run: one byte per message id, ids from 0; larger ids are "overflow"
LEDGER_BUDGET = 64 * 1024 * 1024  # bytes for all runs together; the oldest runs are forgotten beyond it
LEDGER_DUPLICATES_LISTED = 1000

# One byte per message id: bits 0-1 how often accepted (saturating at 3), bit 2 tempfailed, bit 3 permfailed.
_ACCEPTED_MASK = 0b0011
TEMPFAILED_BIT = 0b0100
PERMFAILED_BIT = 0b1000


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RunLedger:
    """What the sink answered for each message id of one trafficgen run."""

    marks: bytearray = field(default_factory=bytearray)
    overflow: int = 0
    duplicates: list[int] = field(default_factory=list)

    def record(self, seq: int, outcome: Outcome) -> int:
        """Note one answer; returns the bytes the ledger grew by."""
        if seq >= LEDGER_MAX_IDS:
            self.overflow += 1
            return 0
        grown = 0
        if seq >= len(self.marks):
            grown = min(LEDGER_MAX_IDS, max(seq + 1, len(self.marks) * 3 // 2, 1024)) - len(self.marks)
            self.marks.extend(bytes(grown))
        mark = self.marks[seq]
        if outcome is Outcome.ACCEPTED:
            accepted = mark & _ACCEPTED_MASK
            if accepted == 1 and len(self.duplicates) < LEDGER_DUPLICATES_LISTED:
                self.duplicates.append(seq)
            mark = (mark & ~_ACCEPTED_MASK) | min(accepted + 1, 3)
        elif outcome is Outcome.TEMPFAILED:
            mark |= TEMPFAILED_BIT
        else:
            mark |= PERMFAILED_BIT
        self.marks[seq] = mark
        return grown

    def summary(self) -> dict[str, object]:
        delivered = bounced = deferred = duplicated = seen = 0
        for mark in self.marks:
            if not mark:
                continue
            seen += 1
            accepted = mark & _ACCEPTED_MASK
            if accepted:
                delivered += 1
                duplicated += accepted > 1
            elif mark & PERMFAILED_BIT:
                bounced += 1
            else:
                deferred += 1
        return {
            "seen": seen,
            "delivered": delivered,
            "bounced": bounced,
            "deferred_pending": deferred,
            "duplicated": duplicated,
            "duplicated_ids": list(self.duplicates),
            "overflow": self.overflow,
            "capacity": LEDGER_MAX_IDS,
        }


class SharedState:
    """The sink-wide counters; every method is quick and never blocks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.connections = 0
        self.transactions: dict[str, int] = {}
        self.buckets: dict[str, _Bucket] = {}
        self.greylist: OrderedDict[str, float] = OrderedDict()
        self.runs: OrderedDict[str, RunLedger] = OrderedDict()
        self.ledger_bytes = 0

    # connections ([listener] max_connections)
    def open_connection(self, limit: int | None) -> bool:
        if limit is not None and self.connections >= limit:
            return False
        self.connections += 1
        return True

    def close_connection(self) -> None:
        self.connections = max(0, self.connections - 1)

    # transactions in flight per domain (max_concurrency)
    def begin_transaction(self, domain: str, limit: int) -> bool:
        current = self.transactions.get(domain, 0)
        if current >= limit:
            return False
        self.transactions[domain] = current + 1
        return True

    def end_transaction(self, domain: str) -> None:
        current = self.transactions.get(domain, 0)
        if current <= 1:
            self.transactions.pop(domain, None)
        else:
            self.transactions[domain] = current - 1

    # accepted messages per time per domain (rate): a token bucket holding one period's worth
    def take_rate(self, domain: str, rate: Rate) -> bool:
        now = self.clock()
        bucket = self.buckets.get(domain)
        if bucket is None:
            bucket = self.buckets[domain] = _Bucket(rate.count, now)
        else:
            bucket.tokens = min(rate.count, bucket.tokens + (now - bucket.updated) * rate.per_second)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    # greylisting: the first attempt of a triplet is refused; one after `delay` passes
    def greylist_passes(self, key: str, delay: float) -> bool:
        now = self.clock()
        first = self.greylist.get(key)
        if first is None:
            self.greylist[key] = now
            self._trim_greylist(now)
            return False
        self.greylist.move_to_end(key)
        return now - first >= delay

    def _trim_greylist(self, now: float) -> None:
        while self.greylist:
            key, first = next(iter(self.greylist.items()))
            if len(self.greylist) > GREYLIST_MAX_ENTRIES or now - first > GREYLIST_KEEP:
                self.greylist.popitem(last=False)
            else:
                break

    # reconciliation ledger
    def record(self, run_id: str, seq: int, outcome: Outcome) -> None:
        ledger = self.runs.get(run_id)
        if ledger is None:
            ledger = self.runs[run_id] = RunLedger()
        self.runs.move_to_end(run_id)
        self.ledger_bytes += ledger.record(seq, outcome)
        # Bounded memory: forget the runs heard from least recently, never the one being recorded.
        while len(self.runs) > 1 and (self.ledger_bytes > LEDGER_BUDGET or len(self.runs) > LEDGER_MAX_RUNS):
            _, forgotten = self.runs.popitem(last=False)
            self.ledger_bytes -= len(forgotten.marks)

    def run(self, run_id: str) -> RunLedger | None:
        return self.runs.get(run_id)


class LocalLimits:
    """The async face of a SharedState in this process (one worker): every call answers at once."""

    def __init__(self, state: SharedState):
        self.state = state

    async def open_connection(self, limit: int | None) -> bool:
        return self.state.open_connection(limit)

    def close_connection(self) -> None:
        self.state.close_connection()

    async def begin_transaction(self, domain: str, limit: int) -> bool:
        return self.state.begin_transaction(domain, limit)

    def end_transaction(self, domain: str) -> None:
        self.state.end_transaction(domain)

    async def take_rate(self, domain: str, rate: Rate) -> bool:
        return self.state.take_rate(domain, rate)

    async def greylist_passes(self, key: str, delay: float) -> bool:
        return self.state.greylist_passes(key, delay)

    def record(self, run_id: str, seq: int, outcome: Outcome) -> None:
        self.state.record(run_id, seq, outcome)

    async def barrier(self) -> None:
        """Everything recorded so far is visible in the state (trivially, here)."""
