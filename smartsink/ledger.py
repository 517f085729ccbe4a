"""The reconciliation ledger: per trafficgen run, what the sink answered each recipient, and transit times.

One byte per recipient number, as mailload.contract encodes it (how often accepted, refused temporarily or
permanently, returned in a DSN, in how many transactions), and an HDR histogram of transit times per recipient
domain. A recipient trafficgen numbered (`user-<n>.<tag>@...`) is recorded under its run's tag and number from its
RCPT on, so a refusal at RCPT time counts before any header is seen; mail to other addresses (trafficgen's
`--recipient`) is recorded per message, under the number in its trace header. Ledgers keep bounded memory:
numbers up to LEDGER_MAX_IDS a run, LEDGER_BUDGET bytes for all runs, the runs heard from least recently forgotten
first.

The sink's workers report to it with LedgerEntry values (Answered, ReturnedInDsn), applied in order by whoever owns
the sink-wide state (smartsink.limits).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from hdrh.histogram import HdrHistogram

from mailload import contract
from smartsink.policy.model import Outcome

LEDGER_MAX_RUNS = 64
LEDGER_MAX_IDS = 16 * 1024 * 1024  # per run: one byte per recipient number, from 0; larger ones are "overflow"
LEDGER_BUDGET = 64 * 1024 * 1024  # bytes for all runs together; the oldest runs are forgotten beyond it
LEDGER_DUPLICATES_LISTED = 1000
TRANSIT_BYTES = 25_600  # what one transit histogram holds in memory (3,072 eight-byte counters)


def new_transit_histogram() -> HdrHistogram:
    return HdrHistogram(contract.TRANSIT_LOWEST_MS, contract.TRANSIT_HIGHEST_MS, contract.TRANSIT_DIGITS)


@dataclass
class RunLedger:
    """What the sink answered each recipient of one trafficgen run (one byte per recipient number, as
    mailload.contract encodes it), and the transit times of its recipients per recipient domain."""

    tag: str = ""
    marks: bytearray = field(default_factory=bytearray)
    overflow: int = 0
    duplicates: list[int] = field(default_factory=list)
    transit: dict[str, HdrHistogram] = field(default_factory=dict)
    clock_skew: int = 0  # answers whose trace time lay in the future (the two hosts' clocks disagree)

    def _grow(self, number: int) -> int:
        if number < len(self.marks):
            return 0
        grown = min(LEDGER_MAX_IDS, max(number + 1, len(self.marks) * 3 // 2, 1024)) - len(self.marks)
        self.marks.extend(bytes(grown))
        return grown

    def record(
        self, numbers: tuple[int, ...], outcome: Outcome, domain: str = "", transit_ms: int | None = None
    ) -> int:
        """Note one answer to these recipients in one transaction (with their transit time when it is final);
        returns the bytes the ledger grew by."""
        grown = self._record_transit(domain, transit_ms, len(numbers))
        answer = int(outcome)
        marks = self.marks
        for number in numbers:
            if number >= LEDGER_MAX_IDS:
                self.overflow += 1
                continue
            grown += self._grow(number)
            mark = marks[number]
            if (
                answer == contract.ANSWER_ACCEPTED
                and contract.accepted(mark) == 1
                and len(self.duplicates) < LEDGER_DUPLICATES_LISTED
            ):
                self.duplicates.append(number)
            marks[number] = contract.mark_answer(mark, answer)
        return grown

    def record_dsn(self, numbers: tuple[int, ...]) -> int:
        """Note that the MTA returned these recipients in a failure DSN."""
        grown = 0
        for number in numbers:
            if number >= LEDGER_MAX_IDS:
                self.overflow += 1
                continue
            grown += self._grow(number)
            self.marks[number] = contract.mark_dsn(self.marks[number])
        return grown

    def _record_transit(self, domain: str, transit_ms: int | None, count: int) -> int:
        if transit_ms is None or not count:
            return 0
        if transit_ms < 0:
            self.clock_skew += count
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
        histogram.record_value(min(max(transit_ms, contract.TRANSIT_LOWEST_MS), contract.TRANSIT_HIGHEST_MS), count)
        return grown

    @property
    def size(self) -> int:
        return len(self.marks) + TRANSIT_BYTES * len(self.transit)

    def summary(self) -> dict[str, object]:
        """What the sink saw of this run's recipients, counted by what it answered them (it cannot know what the
        MTA still holds: trafficgen's reconciliation says that)."""
        counts = Counter(self.marks)  # counted in C: 256 marks at most, however many recipients
        delivered = bounced = deferred = duplicated = seen = dsn = 0
        tries = [0] * contract.MARK_ATTEMPTS_MAX
        for mark, n in counts.items():
            if not mark:
                continue
            seen += n
            if mark & contract.MARK_DSN:
                dsn += n
            if contract.attempts(mark):
                tries[contract.attempts(mark) - 1] += n
            accepted = contract.accepted(mark)
            if accepted:
                delivered += n
                duplicated += n if accepted > 1 else 0
            elif mark & contract.MARK_PERMFAILED:
                bounced += n
            elif mark & contract.MARK_TEMPFAILED:
                deferred += n
        return {
            "keyed_by": "recipient",
            "seen": seen,
            "delivered": delivered,
            "bounced": bounced,
            "deferred": deferred,
            "duplicated": duplicated,
            "dsn_received": dsn,
            "attempts": dict(zip(contract.ATTEMPT_BUCKETS, tries, strict=True)),
            "duplicated_recipients": [contract.recipient_local(self.tag, n) for n in self.duplicates],
            "overflow": self.overflow,
            "capacity": LEDGER_MAX_IDS,
            "clock_skew": self.clock_skew,
        }

    def transit_histograms(self) -> dict[str, str]:
        """Each domain's transit histogram in HdrHistogram's compressed base64 form."""
        return {domain: h.encode().decode("ascii") for domain, h in self.transit.items()}


class Ledgers:
    """The ledgers of every run the sink has heard from, by run tag, within a memory budget."""

    def __init__(self) -> None:
        self.runs: OrderedDict[str, RunLedger] = OrderedDict()
        self.size = 0

    def _ledger(self, tag: str) -> RunLedger:
        ledger = self.runs.get(tag)
        if ledger is None:
            ledger = self.runs[tag] = RunLedger(tag)
        self.runs.move_to_end(tag)
        return ledger

    def _trim(self) -> None:
        # Bounded memory: forget the runs heard from least recently, never the one being recorded.
        while len(self.runs) > 1 and (self.size > LEDGER_BUDGET or len(self.runs) > LEDGER_MAX_RUNS):
            _, forgotten = self.runs.popitem(last=False)
            self.size -= forgotten.size

    def record(
        self, tag: str, numbers: tuple[int, ...], outcome: Outcome, domain: str = "", transit_ms: int | None = None
    ) -> None:
        """The sink answered these recipients of the run tagged `tag`, in one transaction."""
        self.size += self._ledger(tag).record(numbers, outcome, domain, transit_ms)
        self._trim()

    def record_dsn(self, tag: str, numbers: tuple[int, ...]) -> None:
        """The MTA returned these recipients in a failure DSN."""
        self.size += self._ledger(tag).record_dsn(numbers)
        self._trim()

    def run(self, run_id: str) -> RunLedger | None:
        return self.runs.get(contract.run_tag(run_id))


# --- what workers send the owner of the ledgers (batched; applied in order) ------------------------------------


class Answered(NamedTuple):
    """The sink answered recipients of a trafficgen run in one transaction: at RCPT (a refusal) or at the end of
    DATA (`transit_ms` from the trace header's t= when the answer is final)."""

    tag: str
    numbers: tuple[int, ...]
    outcome: int
    domain: str
    transit_ms: int | None

    def apply(self, ledgers: Ledgers) -> None:
        ledgers.record(self.tag, self.numbers, Outcome(self.outcome), self.domain, self.transit_ms)


class ReturnedInDsn(NamedTuple):
    """A failure DSN returned recipients of a trafficgen run."""

    tag: str
    numbers: tuple[int, ...]

    def apply(self, ledgers: Ledgers) -> None:
        ledgers.record_dsn(self.tag, self.numbers)


LedgerEntry = Answered | ReturnedInDsn
