"""The reconciliation ledger: per trafficgen run, what the sink answered each message id, and transit times.

One byte per message id, as mailload.contract encodes it (how often accepted, refused temporarily or
permanently, returned in a DSN, attempts), and an HDR histogram of transit times per recipient domain. Ledgers
keep bounded memory: ids up to LEDGER_MAX_IDS a run, LEDGER_BUDGET bytes for all runs, the runs heard from least
recently forgotten first. Refusals at RCPT time (before the message's trace header is known) are kept by
recipient until the message reaches DATA or comes back in a DSN.

The sink's workers report to it with LedgerEntry values (Answered, ReturnedInDsn, RefusedAtRcpt), applied in
order by whoever owns the sink-wide state (smartsink.limits).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from hdrh.histogram import HdrHistogram

from mailload import contract
from smartsink.policy.model import Outcome

LEDGER_MAX_RUNS = 64
LEDGER_MAX_IDS = 16 * 1024 * 1024  # per run: one byte per message id, ids from 0; larger ids are "overflow"
LEDGER_BUDGET = 64 * 1024 * 1024  # bytes for all runs together; the oldest runs are forgotten beyond it
LEDGER_DUPLICATES_LISTED = 1000
RCPT_REFUSALS_MAX = 500_000  # recipients refused at RCPT whose message has not reached DATA yet
TRANSIT_BYTES = 25_600  # what one transit histogram holds in memory (3,072 eight-byte counters)


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


class Ledgers:
    """The ledgers of every run the sink has heard from, within a memory budget."""

    def __init__(self) -> None:
        self.runs: OrderedDict[str, RunLedger] = OrderedDict()
        self.size = 0
        self.rcpt_refusals: OrderedDict[str, int] = OrderedDict()  # recipient -> a ledger mark of its refusals

    def _ledger(self, run_id: str) -> RunLedger:
        ledger = self.runs.get(run_id)
        if ledger is None:
            ledger = self.runs[run_id] = RunLedger()
        self.runs.move_to_end(run_id)
        return ledger

    def _trim(self) -> None:
        # Bounded memory: forget the runs heard from least recently, never the one being recorded.
        while len(self.runs) > 1 and (self.size > LEDGER_BUDGET or len(self.runs) > LEDGER_MAX_RUNS):
            _, forgotten = self.runs.popitem(last=False)
            self.size -= forgotten.size

    def _earlier(self, rcpt: str) -> int:
        return self.rcpt_refusals.pop(rcpt, 0) if rcpt and self.rcpt_refusals else 0

    def record(
        self, run_id: str, seq: int, outcome: Outcome, domain: str = "", transit_ms: int | None = None, rcpt: str = ""
    ) -> None:
        """The sink answered the end of DATA of message `seq` of run `run_id`."""
        self.size += self._ledger(run_id).record(seq, outcome, domain, transit_ms, self._earlier(rcpt))
        self._trim()

    def record_dsn(self, run_id: str, seq: int, rcpt: str = "") -> None:
        """The MTA returned message `seq` in a failure DSN (to `rcpt`, when the DSN says)."""
        self.size += self._ledger(run_id).record_dsn(seq, self._earlier(rcpt))
        self._trim()

    def refused_at_rcpt(self, rcpt: str, outcome: Outcome) -> None:
        """A recipient refused at RCPT time: its message is not known yet, so the attempt is kept by recipient."""
        refusals = self.rcpt_refusals
        refusals[rcpt] = contract.mark_answer(refusals.pop(rcpt, 0), int(outcome))
        if len(refusals) > RCPT_REFUSALS_MAX:
            refusals.popitem(last=False)

    def run(self, run_id: str) -> RunLedger | None:
        return self.runs.get(run_id)


# --- what workers send the owner of the ledgers (batched; applied in order) ------------------------------------


class Answered(NamedTuple):
    """The sink answered the end of DATA of a trafficgen message."""

    run_id: str
    seq: int
    outcome: int
    domain: str
    transit_ms: int | None
    rcpt: str

    def apply(self, ledgers: Ledgers) -> None:
        ledgers.record(self.run_id, self.seq, Outcome(self.outcome), self.domain, self.transit_ms, self.rcpt)


class ReturnedInDsn(NamedTuple):
    """A failure DSN returned a trafficgen message."""

    run_id: str
    seq: int
    rcpt: str

    def apply(self, ledgers: Ledgers) -> None:
        ledgers.record_dsn(self.run_id, self.seq, self.rcpt)


class RefusedAtRcpt(NamedTuple):
    """A recipient was refused at RCPT time."""

    rcpt: str
    outcome: int

    def apply(self, ledgers: Ledgers) -> None:
        ledgers.refused_at_rcpt(self.rcpt, Outcome(self.outcome))


LedgerEntry = Answered | ReturnedInDsn | RefusedAtRcpt
