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
from typing import NamedTuple

from hdrh.histogram import HdrHistogram

from mailload import contract
from smartsink.policy.model import Outcome, Rate

GREYLIST_MAX_ENTRIES = 500_000
GREYLIST_KEEP = 36 * 3600.0  # an entry is forgotten this long after it was last seen
LEDGER_MAX_RUNS = 64
LEDGER_MAX_IDS = 16 * 1024 * 1024  # per run: one byte per message id, ids from 0; larger ids are "overflow"
LEDGER_BUDGET = 64 * 1024 * 1024  # bytes for all runs together; the oldest runs are forgotten beyond it
LEDGER_DUPLICATES_LISTED = 1000
RCPT_REFUSALS_MAX = 500_000  # recipients refused at RCPT whose message has not reached DATA yet
TRANSIT_BYTES = 25_600  # what one transit histogram holds in memory (3,072 eight-byte counters)


@dataclass
class _Bucket:
    tokens: float
    updated: float


def new_transit_histogram() -> HdrHistogram:
    return HdrHistogram(contract.TRANSIT_LOWEST_MS, contract.TRANSIT_HIGHEST_MS, contract.TRANSIT_DIGITS)


@dataclass
class RunLedger:
    """What the sink answered for each message id of one trafficgen run (one byte per id, as
    mailload.contract encodes it), and the transit times of its messages per recipient domain."""

    marks: bytearray = field(default_factory=bytearray)
    overflow: int = 0
    duplicates: list[int] = field(default_factory=list)
    transit: dict[str, HdrHistogram] = field(default_factory=dict)
    clock_skew: int = 0  # answers whose trace time lay in the future (the two hosts' clocks disagree)

    def _grow(self, seq: int) -> int:
        if seq < len(self.marks):
            return 0
        grown = min(LEDGER_MAX_IDS, max(seq + 1, len(self.marks) * 3 // 2, 1024)) - len(self.marks)
        self.marks.extend(bytes(grown))
        return grown

    def record(
        self, seq: int, outcome: Outcome, domain: str = "", transit_ms: int | None = None, earlier: int = 0
    ) -> int:
        """Note one answer (with the message's transit time when it is final, and `earlier` refusals of it at
        RCPT time, as a mark); returns the bytes the ledger grew by."""
        grown = self._record_transit(domain, transit_ms)
        if seq >= LEDGER_MAX_IDS:
            self.overflow += 1
            return grown
        grown += self._grow(seq)
        mark = self.marks[seq]
        if earlier:
            mark = contract.combine_marks(mark, earlier)
        if (
            outcome is Outcome.ACCEPTED
            and contract.accepted(mark) == 1
            and len(self.duplicates) < LEDGER_DUPLICATES_LISTED
        ):
            self.duplicates.append(seq)
        self.marks[seq] = contract.mark_answer(mark, int(outcome))
        return grown

    def record_dsn(self, seq: int, earlier: int = 0) -> int:
        """Note that the MTA returned message `seq` in a failure DSN (after `earlier` refusals at RCPT time)."""
        if seq >= LEDGER_MAX_IDS:
            self.overflow += 1
            return 0
        grown = self._grow(seq)
        self.marks[seq] = contract.mark_dsn(contract.combine_marks(self.marks[seq], earlier))
        return grown

    def _record_transit(self, domain: str, transit_ms: int | None) -> int:
        if transit_ms is None:
            return 0
        if transit_ms < 0:
            self.clock_skew += 1
            transit_ms = 0
        histogram = self.transit.get(domain)
        grown = 0
        if histogram is None:
            if len(self.transit) >= contract.TRANSIT_MAX_DOMAINS:
                domain = contract.TRANSIT_OTHER
                histogram = self.transit.get(domain)
            if histogram is None:
                histogram = self.transit[domain] = new_transit_histogram()
                grown = TRANSIT_BYTES
        histogram.record_value(min(max(transit_ms, contract.TRANSIT_LOWEST_MS), contract.TRANSIT_HIGHEST_MS))
        return grown

    @property
    def size(self) -> int:
        return len(self.marks) + TRANSIT_BYTES * len(self.transit)

    def summary(self) -> dict[str, object]:
        delivered = bounced = deferred = duplicated = seen = dsn = 0
        tries = [0] * contract.MARK_ATTEMPTS_MAX
        for mark in self.marks:
            if not mark:
                continue
            seen += 1
            if mark & contract.MARK_DSN:
                dsn += 1
            if contract.attempts(mark):
                tries[contract.attempts(mark) - 1] += 1
            accepted = contract.accepted(mark)
            if accepted:
                delivered += 1
                duplicated += accepted > 1
            elif mark & contract.MARK_PERMFAILED:
                bounced += 1
            elif mark & contract.MARK_TEMPFAILED:
                deferred += 1
        return {
            "seen": seen,
            "delivered": delivered,
            "bounced": bounced,
            "deferred_pending": deferred,
            "duplicated": duplicated,
            "dsn_received": dsn,
            "attempts": dict(zip(contract.ATTEMPT_BUCKETS, tries, strict=True)),
            "duplicated_ids": list(self.duplicates),
            "overflow": self.overflow,
            "capacity": LEDGER_MAX_IDS,
            "clock_skew": self.clock_skew,
        }

    def transit_histograms(self) -> dict[str, str]:
        """Each domain's transit histogram in HdrHistogram's compressed base64 form."""
        return {domain: h.encode().decode("ascii") for domain, h in self.transit.items()}


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
        self.rcpt_refusals: OrderedDict[str, int] = OrderedDict()  # recipient -> a ledger mark of its refusals

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
    def _ledger(self, run_id: str) -> RunLedger:
        ledger = self.runs.get(run_id)
        if ledger is None:
            ledger = self.runs[run_id] = RunLedger()
        self.runs.move_to_end(run_id)
        return ledger

    def _trim_runs(self) -> None:
        # Bounded memory: forget the runs heard from least recently, never the one being recorded.
        while len(self.runs) > 1 and (self.ledger_bytes > LEDGER_BUDGET or len(self.runs) > LEDGER_MAX_RUNS):
            _, forgotten = self.runs.popitem(last=False)
            self.ledger_bytes -= forgotten.size

    def record(
        self, run_id: str, seq: int, outcome: Outcome, domain: str = "", transit_ms: int | None = None, rcpt: str = ""
    ) -> None:
        earlier = self.rcpt_refusals.pop(rcpt, 0) if rcpt and self.rcpt_refusals else 0
        self.ledger_bytes += self._ledger(run_id).record(seq, outcome, domain, transit_ms, earlier)
        self._trim_runs()

    def record_dsn(self, run_id: str, seq: int, rcpt: str = "") -> None:
        earlier = self.rcpt_refusals.pop(rcpt, 0) if rcpt and self.rcpt_refusals else 0
        self.ledger_bytes += self._ledger(run_id).record_dsn(seq, earlier)
        self._trim_runs()

    def refused_at_rcpt(self, rcpt: str, outcome: Outcome) -> None:
        """A recipient refused at RCPT time: its message is not known yet, so the attempt is kept by recipient."""
        refusals = self.rcpt_refusals
        refusals[rcpt] = contract.mark_answer(refusals.pop(rcpt, 0), int(outcome))
        if len(refusals) > RCPT_REFUSALS_MAX:
            refusals.popitem(last=False)

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

    def record(
        self, run_id: str, seq: int, outcome: Outcome, domain: str = "", transit_ms: int | None = None, rcpt: str = ""
    ) -> None:
        self.state.record(run_id, seq, outcome, domain, transit_ms, rcpt)

    def record_dsn(self, run_id: str, seq: int, rcpt: str = "") -> None:
        self.state.record_dsn(run_id, seq, rcpt)

    def refused_at_rcpt(self, rcpt: str, outcome: Outcome) -> None:
        self.state.refused_at_rcpt(rcpt, outcome)

    async def barrier(self) -> None:
        """Everything recorded so far is visible in the state (trivially, here)."""


# --- what workers send the supervisor for the ledger (batched; applied in order) ------------------------------


class Answered(NamedTuple):
    """The sink answered the end of DATA of a trafficgen message."""

    run_id: str
    seq: int
    outcome: int
    domain: str
    transit_ms: int | None
    rcpt: str

    def apply(self, state: SharedState) -> None:
        state.record(self.run_id, self.seq, Outcome(self.outcome), self.domain, self.transit_ms, self.rcpt)


class ReturnedInDsn(NamedTuple):
    """A failure DSN returned a trafficgen message."""

    run_id: str
    seq: int
    rcpt: str

    def apply(self, state: SharedState) -> None:
        state.record_dsn(self.run_id, self.seq, self.rcpt)


class RefusedAtRcpt(NamedTuple):
    """A recipient was refused at RCPT time."""

    rcpt: str
    outcome: int

    def apply(self, state: SharedState) -> None:
        state.refused_at_rcpt(self.rcpt, Outcome(self.outcome))


LedgerEntry = Answered | ReturnedInDsn | RefusedAtRcpt
