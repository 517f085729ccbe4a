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
import bisect
import contextlib
import json
import re
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aiohttp
from hdrh.histogram import HdrHistogram

from mailload import contract
from mailload.contract import MARK_DSN, MARK_PERMFAILED, MARK_TEMPFAILED, accepted, attempts
from trafficgen.stats.document import (
    Counted,
    ReconcileFailure,
    Reconciliation,
    Sample,
    Transit,
    TransitStats,
    message_outcomes,
    recipient_outcomes,
)
from trafficgen.stats.recorder import MARK_ACCEPTED as TARGET_ACCEPTED
from trafficgen.stats.recorder import MARK_REFUSED as TARGET_REFUSED

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


# --- reading recipients in bulk -----------------------------------------------------------------------------------
# reconcile() reads a million recipients in a few passes of bytes.translate, bytes.count and big-integer ORs (each
# in C), through tables built once from recipient_outcome() and message_outcome(), which say what each case means.
CHUNK = 1 << 20  # recipients read at a time: the temporary bytes stay within a few MiB
_BEYOND = 24  # the class of a recipient whose number is beyond what the sink keeps
_DSN = 0x10  # in a recipient's code: it came back in a DSN too
_UNEXPECTED = 0x80  # a recipient's code: the target refused it, yet the sink accepted it
_BUCKETS = contract.MARK_ATTEMPTS_MAX


def _class(mark: int) -> int:
    """What of a sink's mark decides a recipient's outcome, in 5 bits (0 to 23): accepted 0, 1 or more times,
    refused permanently, returned in a DSN, refused temporarily."""
    return (
        min(accepted(mark), 2)
        + 3 * bool(mark & MARK_PERMFAILED)
        + 6 * bool(mark & MARK_DSN)
        + 12 * bool(mark & MARK_TEMPFAILED)
    )


def _mark_of(cls: int) -> int:
    """A sink's mark of this class."""
    return cls % 3 | MARK_PERMFAILED * (cls // 3 % 2) | MARK_DSN * (cls // 6 % 2) | MARK_TEMPFAILED * (cls // 12)


def _codes(asked: bool) -> bytes:
    """A recipient's key (its class | our mark << 5 | held in the MTA's queue << 7) to its code: its outcome's
    position in contract.RECIPIENT_OUTCOMES + 1 (| _DSN when it came back in a DSN) when the target accepted it,
    _UNEXPECTED, or 0."""
    table = bytearray(256)
    for key in range(256):
        cls, ours, held = key & 31, key >> 5 & 3, key >> 7
        if cls > _BEYOND:
            continue
        mark = _mark_of(cls) if cls < _BEYOND else 0
        if ours == TARGET_ACCEPTED:
            outcome = UNKNOWN if cls == _BEYOND else recipient_outcome(mark, bool(held) if asked else None)
            table[key] = outcome.bit_length() | (_DSN if mark & MARK_DSN else 0)
        elif ours == TARGET_REFUSED and accepted(mark):
            table[key] = _UNEXPECTED
    return bytes(table)


def _table(value: Callable[[int], int]) -> bytes:
    return bytes(value(byte) for byte in range(256))


_CLASS = _table(_class)
_CODES = {False: _codes(False), True: _codes(True)}
_OURS = _table(lambda mark: mark << 5 if mark in (TARGET_ACCEPTED, TARGET_REFUSED) else 0)
_HELD = _table(lambda held: 0x80 if held else 0)
_TAKEN = _table(lambda mark: 0x08 if mark == TARGET_ACCEPTED else 0)
_TRIES = _table(lambda mark: min(_BUCKETS, max(1, attempts(mark))) if accepted(mark) else 0)
_TRIED = _table(lambda mark: attempts(mark))
_BITS = _table(lambda code: 1 << ((code & 0x0F) - 1) if not code & _UNEXPECTED and 1 <= code & 0x0F <= 8 else 0)
_KINDS = _table(lambda bits: contract.MESSAGE_OUTCOMES.index(message_outcome(bits)) + 1 if bits else 0)
_THERMOMETER = _table(lambda key: (1 << (key & 7)) - 1 if key & 0x08 else 0)  # attempts as that many low bits
_MOST = _table(lambda bits: bits.bit_count() << 4)  # a message's most attempts (from the OR of its thermometers)


def _code(outcome: int, dsn: bool = False) -> bytes:
    return bytes([outcome.bit_length() | (_DSN if dsn else 0)])


_SAMPLE_CODES = {
    "lost": (_code(LOST),),
    "duplicated": (_code(DUPLICATED), _code(DUPLICATED, True)),
    "bounced_without_dsn": (_code(BOUNCED),),
    "dsn_after_delivery": (_code(DELIVERED, True), _code(DUPLICATED, True)),
    "deferred": (_code(DEFERRED),),
    "pending": (_code(PENDING),),
}


def _or(a: bytes, b: bytes) -> bytes:
    """Two byte strings of one length, OR-ed byte by byte (as big integers: in C)."""
    return (int.from_bytes(a, "big") | int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _by_message(values: bytes, per: int) -> bytes:
    """Each message's values (per consecutive bytes) OR-ed into one byte."""
    if per == 1:
        return values
    out = values[0::per]
    for j in range(1, per):
        out = _or(out, values[j::per])
    return out


@dataclass(frozen=True)
class _Layout:
    """Where recipient j of our message m is: at m * per + j in our marks; its number (the sink's index) is
    (m * shards + shard) * per + j."""

    per: int
    shards: int
    shard: int

    def number(self, index: int) -> int:
        m, j = divmod(index, self.per)
        return (m * self.shards + self.shard) * self.per + j

    def seq(self, index: int) -> int:
        return index // self.per * self.shards + self.shard

    def aligned(self, source: bytes | bytearray, first: int, count: int) -> bytes:
        """The bytes of `source` (indexed by number) for our messages first .. first + count - 1, in our order."""
        per, stride = self.per, self.shards * self.per
        if self.shards == 1:
            piece = bytes(source[first * per : (first + count) * per])
            return piece + bytes(count * per - len(piece))
        out = bytearray(count * per)
        for j in range(per):
            start = (first * self.shards + self.shard) * per + j
            column = source[start : start + count * stride : stride]
            out[j : j + len(column) * per : per] = column
        return bytes(out)

    def first_beyond(self, capacity: int | None, first: int, count: int) -> int:
        """The first of these recipients (from 0) whose number is at or beyond `capacity`; all of them: none."""
        size = count * self.per
        if capacity is None:
            return size
        start = first * self.per
        return bisect.bisect_left(range(size), True, key=lambda i: self.number(start + i) >= capacity)


class _Tally:
    """The counts and samples of one reconciliation, as reconcile() adds up its chunks."""

    def __init__(self, run_id: str, tag: str | None, queue: Queue | None, layout: _Layout):
        self.run_id, self.tag, self.queue, self.layout = run_id, tag, queue, layout
        self.recipients = dict.fromkeys(("accepted", *contract.RECIPIENT_OUTCOMES, *contract.RECIPIENT_DETAILS), 0)
        self.messages = dict.fromkeys(("accepted", *contract.MESSAGE_OUTCOMES), 0)
        self.recipient_tries = [0] * _BUCKETS
        self.message_tries = [0] * _BUCKETS
        self.samples: dict[str, list[Sample]] = {kind: [] for kind in contract.SAMPLE_KINDS}

    def add(self, mine: bytes, theirs: bytes, held: bytes | None, first: int, beyond: int) -> None:
        """One chunk: our marks, the sink's and the queue's for those recipients (from our message `first`), the
        recipients from `beyond` on being past what the sink keeps."""
        classes = theirs.translate(_CLASS)
        if beyond < len(mine):
            classes = classes[:beyond] + bytes([_BEYOND]) * (len(mine) - beyond)
            theirs = theirs[:beyond] + bytes(len(mine) - beyond)
        keys = _or(classes, mine.translate(_OURS))
        if held is not None:
            keys = _or(keys, held.translate(_HELD))
        codes = keys.translate(_CODES[held is not None])
        self._count_recipients(codes)
        taken = mine.translate(_TAKEN)
        tries = _or(theirs.translate(_TRIES), taken)
        for n in range(1, _BUCKETS + 1):
            self.recipient_tries[n - 1] += tries.count(bytes([n | 0x08]))
        self._count_messages(codes, _or(theirs.translate(_TRIED), taken))
        self._sample(codes, theirs, first * self.layout.per)

    def _count_recipients(self, codes: bytes) -> None:
        counts = self.recipients
        for name in contract.RECIPIENT_OUTCOMES:
            plain, dsn = _code(_BIT[name]), _code(_BIT[name], True)
            counts[name] += codes.count(plain) + codes.count(dsn)
            if name == "bounced":
                counts["dsn_returned"] += codes.count(dsn)
                counts["bounced_without_dsn"] += codes.count(plain)
            elif name in ("delivered", "duplicated"):
                counts["dsn_after_delivery"] += codes.count(dsn)
        counts["accepted"] = sum(counts[name] for name in contract.RECIPIENT_OUTCOMES)
        counts["unexpected"] += codes.count(bytes([_UNEXPECTED]))

    def _count_messages(self, codes: bytes, tried: bytes) -> None:
        per = self.layout.per
        outcomes = _by_message(codes.translate(_BITS), per)
        kinds = outcomes.translate(_KINDS)
        most = _by_message(tried.translate(_THERMOMETER), per).translate(_MOST)
        keyed = _or(kinds, most)
        self.messages["accepted"] += len(kinds) - kinds.count(b"\0")
        for position, name in enumerate(contract.MESSAGE_OUTCOMES, 1):
            self.messages[name] += kinds.count(bytes([position]))
            if name in ("delivered", "partly_delivered", "duplicated"):
                for n in range(_BUCKETS + 1):
                    self.message_tries[max(1, n) - 1] += keyed.count(bytes([position | n << 4]))

    def _sample(self, codes: bytes, theirs: bytes, start: int) -> None:
        for kind in contract.SAMPLE_KINDS:
            found = self.samples[kind]
            room = SAMPLE_IDS - len(found)
            if room <= 0:
                continue
            positions: list[int] = []
            for code in _SAMPLE_CODES[kind]:
                at = codes.find(code)
                while at >= 0 and len(positions) < room * 2:
                    positions.append(at)
                    at = codes.find(code, at + 1)
            for at in sorted(positions)[:room]:
                found.append(self._entry(start + at, theirs[at]))

    def _entry(self, index: int, sink: int) -> Sample:
        number = self.layout.number(index)
        entry: Sample = {
            "id": f"{self.run_id}.{self.layout.seq(index)}",
            "recipient": contract.recipient_local(self.tag, number) if self.tag is not None else None,
            "sink_saw": contract.describe_mark(sink),
        }
        if self.queue is not None and number in self.queue.reasons:
            entry["mta_said"] = self.queue.reasons[number]
        return entry

    def document(self) -> Counted:
        buckets = contract.ATTEMPT_BUCKETS
        return {
            "per": "recipient" if self.tag is not None else "message",
            # How many transactions the MTA made for each delivered recipient before the sink took it.
            "recipients": recipient_outcomes(self.recipients, dict(zip(buckets, self.recipient_tries, strict=True))),
            # For each message delivered (wholly or partly): the most transactions any of its recipients took.
            "messages": message_outcomes(self.messages, dict(zip(buckets, self.message_tries, strict=True))),
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
) -> Counted:
    """Compare our marks with the sink's, recipient by recipient, and each message from its recipients. Pure.

    Our mark of recipient j of message seq is at (seq // shards) * per + j; the sink's at seq * per + j, the
    recipient's number (`numbered`: trafficgen numbered the recipients; else per is 1 and the number is seq)."""
    layout = _Layout(per, shards, shard)
    tally = _Tally(run_id, contract.run_tag(run_id) if numbered else None, queue, layout)
    messages = len(ours) // per
    step = max(1, CHUNK // per)
    for first in range(0, messages, step):
        count = min(step, messages - first)
        mine = bytes(ours[first * per : (first + count) * per])
        if not mine.strip(b"\0"):
            continue
        held = layout.aligned(queue.held, first, count) if queue is not None else None
        beyond = layout.first_beyond(theirs.capacity, first, count)
        tally.add(mine, layout.aligned(theirs.marks, first, count), held, first, beyond)
    return tally.document()


def settled(document: Counted) -> bool:
    """Nothing left to wait for: no recipient deferred, pending, unseen, or bounced before its DSN could arrive."""
    counts = document["recipients"]
    return not (counts["deferred"] or counts["pending"] or counts["lost"] or counts["bounced_without_dsn"])


def transit_stats(histogram: HdrHistogram) -> TransitStats:
    """count, min, p50, p90, p99 and max of a transit histogram, in milliseconds."""
    at = histogram.get_value_at_percentile
    return {
        "count": int(histogram.get_total_count()),
        "min": int(histogram.get_min_value()),
        "p50": int(at(50.0)),
        "p90": int(at(90.0)),
        "p99": int(at(99.0)),
        "max": int(histogram.get_max_value()),
    }


def transit_report(ledger: Ledger) -> Transit:
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
    on_poll: Callable[[Counted, float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Reconciliation | ReconcileFailure:
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
        "per": counts["per"],
        "recipients": counts["recipients"],
        "messages": counts["messages"],
        "samples": counts["samples"],
        "transit_ms": transit_report(ledger),
    }


def encode_marks(marks: bytes) -> str:
    """Our marks as a report keeps them, so `trafficgen report reconcile` can ask the sinks again later."""
    return base64.b64encode(zlib.compress(marks, 6)).decode("ascii")


def decode_marks(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))
