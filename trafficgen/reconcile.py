"""End-to-end reconciliation (`--reconcile`, `trafficgen report reconcile`): what became of each recipient, and each
message, the target accepted?

Every recipient trafficgen numbers names its run and number (`user-<n>.<tag>@...`, mailload.contract). Per run,
the sink keeps one byte per recipient (how often it accepted it, whether it refused it temporarily or permanently,
at RCPT or at the end of DATA, whether the MTA returned it in a DSN, in how many transactions) and a histogram of
transit times per domain. trafficgen fetches them (`GET /runs/<run_id>?marks=1`) and, for every recipient the
target accepted, says what became of it: exactly one of contract.RECIPIENT_OUTCOMES. With `--mta-queue`, the MTA's
own listing of its queue tells a recipient it still holds (deferred) from one it dropped (lost); without it, a
recipient the sink only deferred is pending. Each message gets one of contract.MESSAGE_OUTCOMES from its
recipients. With `--recipient` (one fixed address for every message) the sink can only go by the trace header,
so reconciliation is per message. With several sinks behind the target, their ledgers are combined first
(`combine`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from hdrh.histogram import HdrHistogram

from mailload import contract
from mailload.contract import MARK_DSN, MARK_PERMFAILED, MARK_TEMPFAILED, accepted, attempts
from trafficgen.stats.recorder import MARK_ACCEPTED as TARGET_ACCEPTED

SAMPLE_IDS = 100  # of each kind of contract.SAMPLE_KINDS
POLL_INTERVAL = 1.0
QUEUE_REASONS_MAX = 10_000  # the MTA's reasons for holding recipients, kept for the samples
QUEUE_LINE_MAX = 64 * 1024 * 1024  # a line of --mta-queue's listing (postqueue -j: one per message)


class ReconcileError(Exception):
    """The sink's ledger could not be read."""


@dataclass
class Ledger:
    marks: bytes  # one byte per message id (mailload.contract)
    capacity: int | None  # ids at or beyond this are not kept by the sink (None: no limit said)
    transit: dict[str, HdrHistogram] = field(default_factory=dict)  # per domain, milliseconds
    clock_skew: int = 0


async def fetch_marks(url: str, run_id: str, wait_s: float) -> Ledger:
    """The sink's ledger for this run (empty when it saw none of its messages)."""
    address = f"{url}{contract.runs_path(run_id)}?marks=1"
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.get(address, timeout=aiohttp.ClientTimeout(total=wait_s)) as response,
        ):
            if response.status == 404:
                return Ledger(b"", None)
            if response.status != 200:
                raise ReconcileError(f"{address} answered HTTP {response.status}")
            body = json.loads(await response.text())
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise ReconcileError(f"cannot read the sink's ledger at {address}: {e or type(e).__name__}") from None
    try:
        transit = {domain: HdrHistogram.decode(encoded) for domain, encoded in (body.get("transit") or {}).items()}
        marks = zlib.decompress(base64.b64decode(body["marks"]))
        return Ledger(marks, body.get("capacity"), transit, int(body.get("clock_skew") or 0))
    except (KeyError, ValueError, TypeError, zlib.error) as e:
        raise ReconcileError(f"{address} did not answer with a ledger: {e}") from None


def combine(ledgers: list[Ledger]) -> Ledger:
    """The ledgers of several sinks behind one address as one: acceptances and attempts add up, flags are kept."""
    capacities = [ledger.capacity for ledger in ledgers if ledger.capacity is not None]
    capacity = min(capacities) if capacities else None
    transit: dict[str, HdrHistogram] = {}
    for ledger in ledgers:
        for domain, histogram in ledger.transit.items():
            if domain in transit:
                transit[domain].add(histogram)
            else:
                transit[domain] = histogram
    skew = sum(ledger.clock_skew for ledger in ledgers)
    if len(ledgers) == 1:
        return Ledger(ledgers[0].marks, capacity, transit, skew)
    combined = bytearray(max((len(ledger.marks) for ledger in ledgers), default=0))
    for ledger in ledgers:
        for seq, mark in enumerate(ledger.marks):
            if mark:
                combined[seq] = contract.combine_marks(combined[seq], mark)
    return Ledger(bytes(combined), capacity, transit, skew)


@dataclass
class Queue:
    """What the MTA's queue held when asked: the numbers of this run's recipients it named (a byte each, 1 when
    named), and for some of them the reason it gave for holding them (Postfix's `delay_reason`)."""

    held: bytearray = field(default_factory=bytearray)
    reasons: dict[int, str] = field(default_factory=dict)
    recipients: int = 0

    def holds(self, number: int) -> bool:
        return number < len(self.held) and self.held[number] == 1

    def add(self, number: int, reason: str | None = None) -> None:
        held = self.held
        if number >= len(held):
            held.extend(bytes(max(number + 1 - len(held), len(held), 1024)))
        self.recipients += held[number] == 0
        held[number] = 1
        if reason and len(self.reasons) < QUEUE_REASONS_MAX:
            self.reasons[number] = reason


def read_queue(lines: Iterable[str], tag: str, queue: Queue | None = None) -> Queue:
    """The recipients of the run tagged `tag` that a queue listing names, one line at a time (pure): any listing
    that prints each queued recipient's address (postqueue -p, exim -bp...), and from `postqueue -j`'s JSON lines
    the reason Postfix gives for each."""
    queue = queue if queue is not None else Queue()
    pattern = re.compile(rf"user-([0-9]{{1,15}})\.{re.escape(tag)}@", re.IGNORECASE)
    for line in lines:
        if "delay_reason" in line and line.lstrip().startswith("{"):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                for recipient in json.loads(line).get("recipients") or ():
                    m = pattern.match(str(recipient.get("address") or ""))
                    if m is not None:
                        queue.add(int(m.group(1)), recipient.get("delay_reason"))
        for number in pattern.findall(line):
            queue.add(int(number))
    return queue


async def ask_queue(command: str, tag: str, timeout_s: float) -> Queue:
    """Run --mta-queue's command and read its listing; ReconcileError names the problem in one line."""
    try:
        process = await asyncio.create_subprocess_shell(
            command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=QUEUE_LINE_MAX
        )
    except OSError as e:
        raise ReconcileError(f"--mta-queue {command!r}: cannot run it: {e.strerror}") from None
    stdout, stderr = process.stdout, process.stderr
    assert stdout is not None
    assert stderr is not None
    queue = Queue()

    async def listing() -> None:
        while line := await stdout.readline():
            read_queue((line.decode("utf-8", "replace"),), tag, queue)

    async def read() -> bytes:
        # Both pipes at once: a command that fills one while we wait on the other would never finish.
        _, errors = await asyncio.gather(listing(), stderr.read())
        return errors

    try:
        errors = await asyncio.wait_for(read(), timeout_s)
        code = await asyncio.wait_for(process.wait(), timeout_s)
    except (TimeoutError, ValueError) as e:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        why = f"did not finish in {timeout_s:g} s" if isinstance(e, TimeoutError) else f"printed a line over {e}"
        raise ReconcileError(f"--mta-queue {command!r} {why}") from None
    if code != 0:
        said = errors.decode("utf-8", "replace").strip().splitlines()
        raise ReconcileError(f"--mta-queue {command!r} exited with status {code}" + (f": {said[0]}" if said else ""))
    return queue


# The recipients' outcomes as bits, in contract.RECIPIENT_OUTCOMES' order, so a message's are one int.
(DELIVERED, DUPLICATED, BOUNCED, EXPIRED, DEFERRED, PENDING, LOST, UNKNOWN) = (
    1 << i for i in range(len(contract.RECIPIENT_OUTCOMES))
)
_BIT = dict(
    zip(
        contract.RECIPIENT_OUTCOMES,
        (DELIVERED, DUPLICATED, BOUNCED, EXPIRED, DEFERRED, PENDING, LOST, UNKNOWN),
        strict=True,
    )
)
_FIRST = (
    (LOST, "lost"),
    (DUPLICATED, "duplicated"),
    (DEFERRED, "deferred"),
    (PENDING, "pending"),
    (UNKNOWN, "unknown"),
)


def recipient_outcome(sink: int, queued: bool | None) -> int:
    """What became of one recipient the target accepted, from the sink's mark and, when the MTA's queue was
    asked, whether it still holds it (None: not asked). One bit of the outcomes above."""
    taken = accepted(sink)
    if taken:
        return DELIVERED if taken == 1 else DUPLICATED
    if sink & MARK_PERMFAILED:
        return BOUNCED
    if sink & MARK_DSN:
        return EXPIRED
    if queued:
        return DEFERRED
    if sink & MARK_TEMPFAILED and queued is None:
        return PENDING
    return LOST


def message_outcome(outcomes: int) -> str:
    """What became of a message, from the bits of its recipients' outcomes (contract.MESSAGE_OUTCOMES)."""
    for bit, name in _FIRST:
        if outcomes & bit:
            return name
    if outcomes == DELIVERED:
        return "delivered"
    if not outcomes & DELIVERED:
        return "bounced" if outcomes & BOUNCED else "expired"
    return "partly_delivered"


class _Tally:
    """The counts and samples of one reconciliation, as reconcile() fills them."""

    def __init__(self, run_id: str, tag: str | None, queue: Queue | None):
        self.run_id, self.tag, self.queue = run_id, tag, queue
        self.recipients = dict.fromkeys((*contract.RECIPIENT_OUTCOMES, *contract.RECIPIENT_DETAILS), 0)
        self.messages = dict.fromkeys(contract.MESSAGE_OUTCOMES, 0)
        self.recipient_tries = [0] * contract.MARK_ATTEMPTS_MAX
        self.message_tries = [0] * contract.MARK_ATTEMPTS_MAX
        self.accepted = [0, 0]  # recipients, messages
        self.samples: dict[str, list[dict[str, Any]]] = {kind: [] for kind in contract.SAMPLE_KINDS}

    def sample(self, kind: str, seq: int, number: int, sink: int) -> None:
        found = self.samples[kind]
        if len(found) >= SAMPLE_IDS:
            return
        entry: dict[str, Any] = {
            "id": f"{self.run_id}.{seq}",
            "recipient": contract.recipient_local(self.tag, number) if self.tag is not None else None,
            "sink_saw": contract.describe_mark(sink),
        }
        if self.queue is not None and number in self.queue.reasons:
            entry["mta_said"] = self.queue.reasons[number]
        found.append(entry)

    def recipient(self, seq: int, number: int, sink: int, outcome: int) -> None:
        counts = self.recipients
        for name, bit in _BIT.items():
            if outcome == bit:
                counts[name] += 1
                break
        if outcome & (DELIVERED | DUPLICATED):
            self.recipient_tries[max(1, attempts(sink)) - 1] += 1
            if sink & MARK_DSN:
                counts["dsn_after_delivery"] += 1
                self.sample("dsn_after_delivery", seq, number, sink)
            if outcome == DUPLICATED:
                self.sample("duplicated", seq, number, sink)
        elif outcome == BOUNCED:
            if sink & MARK_DSN:
                counts["dsn_returned"] += 1
            else:
                counts["bounced_without_dsn"] += 1
                self.sample("bounced_without_dsn", seq, number, sink)
        elif outcome in (LOST, DEFERRED, PENDING):
            self.sample(
                "lost" if outcome == LOST else "deferred" if outcome == DEFERRED else "pending", seq, number, sink
            )

    def document(self) -> dict[str, Any]:
        buckets = contract.ATTEMPT_BUCKETS
        return {
            "per": "recipient" if self.tag is not None else "message",
            "recipients": {
                "accepted": self.accepted[0],
                **self.recipients,
                # How many transactions the MTA made for each delivered recipient before the sink took it.
                "attempts": dict(zip(buckets, self.recipient_tries, strict=True)),
            },
            "messages": {
                "accepted": self.accepted[1],
                **self.messages,
                # For each message delivered (wholly or partly): the most transactions any of its recipients took.
                "attempts": dict(zip(buckets, self.message_tries, strict=True)),
            },
            "samples": self.samples,
        }


def reconcile(
    ours: bytes,
    theirs: Ledger,
    run_id: str,
    *,
    per: int = 1,
    numbered: bool = True,
    shards: int = 1,
    shard: int = 0,
    queue: Queue | None = None,
) -> dict[str, Any]:
    """Compare our marks with the sink's, recipient by recipient, and each message from its recipients. Pure.

    Our mark of recipient j of message seq is at (seq // shards) * per + j; the sink's at seq * per + j, the
    recipient's number (`numbered`: trafficgen numbered the recipients; else per is 1 and the number is seq)."""
    tally = _Tally(run_id, contract.run_tag(run_id) if numbered else None, queue)
    capacity = theirs.capacity
    marks = theirs.marks
    size = len(marks)
    for index in range(0, len(ours) - per + 1, per):
        mine = ours[index : index + per]
        if not mine.strip(b"\0"):
            continue
        seq = (index // per) * shards + shard
        outcomes = tries = 0
        for j, mark in enumerate(mine):
            number = seq * per + j
            if capacity is not None and number >= capacity:
                if mark == TARGET_ACCEPTED:
                    tally.recipients["unknown"] += 1
                    tally.accepted[0] += 1
                    outcomes |= UNKNOWN
                continue
            sink = marks[number] if number < size else 0
            if mark != TARGET_ACCEPTED:
                tally.recipients["unexpected"] += accepted(sink) > 0
                continue
            tally.accepted[0] += 1
            outcome = recipient_outcome(sink, queue.holds(number) if queue is not None else None)
            tally.recipient(seq, number, sink, outcome)
            outcomes |= outcome
            tries = max(tries, attempts(sink))
        if outcomes:
            tally.accepted[1] += 1
            kind = message_outcome(outcomes)
            tally.messages[kind] += 1
            if kind in ("delivered", "partly_delivered", "duplicated"):
                tally.message_tries[max(1, tries) - 1] += 1
    return tally.document()


def settled(document: dict[str, Any]) -> bool:
    """Nothing left to wait for: no recipient deferred, pending, unseen, or bounced before its DSN could arrive."""
    counts = document["recipients"]
    return not (counts["deferred"] or counts["pending"] or counts["lost"] or counts["bounced_without_dsn"])


TRANSIT_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))


def transit_stats(histogram: HdrHistogram) -> dict[str, int]:
    """count, min, p50, p90, p99 and max of a transit histogram, in milliseconds."""
    out = {"count": histogram.get_total_count(), "min": histogram.get_min_value()}
    for key, p in TRANSIT_PERCENTILES:
        out[key] = histogram.get_value_at_percentile(p)
    out["max"] = histogram.get_max_value()
    return out


def transit_report(ledger: Ledger) -> dict[str, Any]:
    """Transit times from trafficgen to the sink's final answer, all domains together and per domain."""
    domains = {d: transit_stats(h) for d, h in sorted(ledger.transit.items()) if h.get_total_count()}
    everything = HdrHistogram(contract.TRANSIT_LOWEST_MS, contract.TRANSIT_HIGHEST_MS, contract.TRANSIT_DIGITS)
    for histogram in ledger.transit.values():
        everything.add(histogram)
    return {
        "all": transit_stats(everything) if everything.get_total_count() else None,
        "domains": domains,
        "clock_skew": ledger.clock_skew,
    }


async def fetch_all(urls: tuple[str, ...], run_id: str, request_s: float) -> Ledger:
    return combine([await fetch_marks(url, run_id, request_s) for url in urls])


@dataclass(frozen=True)
class Asking:
    """What to reconcile and where to ask: the sinks, the run, our marks and how they map to recipients
    (reconcile()'s `per`, `numbered`, `shards`, `shard`), the MTA's queue command, and how long to keep asking."""

    urls: tuple[str, ...]
    run_id: str
    ours: bytes
    per: int = 1
    numbered: bool = True
    shards: int = 1
    shard: int = 0
    mta_queue: str | None = None
    wait_s: float = 0.0
    request_s: float = 60.0


async def ask_sinks(
    asking: Asking,
    on_poll: Callable[[dict[str, Any], float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """The reconciliation, asking the MTA's queue (when given) and then the sinks once a second for up to `wait_s`
    until nothing is left to wait for (the MTA may still be delivering); `on_poll` sees each reading and the
    seconds left. A document for the report, with "error" when a sink or the queue could not be read."""
    sinks = ", ".join(asking.urls)
    deadline = clock() + asking.wait_s
    tag = contract.run_tag(asking.run_id)
    while True:
        try:
            # The queue first: a recipient it names that reaches the sink before the ledger is read is delivered.
            queue = None
            if asking.mta_queue is not None:
                queue = await ask_queue(asking.mta_queue, tag, asking.request_s)
            ledger = await fetch_all(asking.urls, asking.run_id, asking.request_s)
        except ReconcileError as e:
            return {"sink": sinks, "error": str(e)}
        counts = reconcile(
            asking.ours,
            ledger,
            asking.run_id,
            per=asking.per,
            numbered=asking.numbered,
            shards=asking.shards,
            shard=asking.shard,
            queue=queue,
        )
        remaining = deadline - clock()
        if settled(counts) or remaining <= 0:
            break
        if on_poll is not None:
            on_poll(counts, remaining)
        await asyncio.sleep(min(POLL_INTERVAL, remaining))
    waited = max(0.0, asking.wait_s - max(0.0, deadline - clock()))
    return {
        "sink": sinks,
        "mta_queue": asking.mta_queue,
        "waited_s": round(waited, 1),
        **counts,
        "transit_ms": transit_report(ledger),
    }


def encode_marks(marks: bytes) -> str:
    """Our marks as a report keeps them, so `trafficgen report reconcile` can ask the sinks again later."""
    return base64.b64encode(zlib.compress(marks, 6)).decode("ascii")


def decode_marks(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))
