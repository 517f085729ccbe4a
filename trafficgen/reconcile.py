"""End-to-end reconciliation (`--reconcile`, `trafficgen report reconcile`): what became of each message the
target accepted?

Every message carries the trace header of mailload.contract. Per run, the sink keeps one byte per message id
(how often it accepted it, whether it refused it temporarily or permanently, whether the MTA returned it in a
DSN, how many attempts reached the end of DATA) and a histogram of transit times per domain. trafficgen fetches
them (`GET /runs/<run_id>?marks=1`) and, for every message the target accepted, says what became of it
(the keys of contract.RECONCILE_COUNTS): delivered (duplicated when more than once), bounced (with or without
the MTA's DSN), expired (deferred at the sink, then returned by the MTA), deferred_pending, lost. Messages the
target refused but the sink accepted anyway are `unexpected`; ids beyond what the sink's ledger keeps are
`unknown`. With several sinks behind the target, their ledgers are combined first (`combine`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from hdrh.histogram import HdrHistogram

from mailload import contract
from mailload.contract import MARK_DSN, MARK_PERMFAILED, MARK_TEMPFAILED, accepted, attempts
from trafficgen.stats.recorder import MARK_ACCEPTED as TARGET_ACCEPTED

SAMPLE_IDS = 100
POLL_INTERVAL = 1.0


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


def reconcile(ours: bytes, theirs: Ledger, run_id: str, shards: int = 1, shard: int = 0) -> dict[str, Any]:
    """Compare our marks (index: seq // shards) with the sink's (index: seq). Pure."""
    counts = dict.fromkeys(contract.RECONCILE_COUNTS, 0)
    tries = [0] * contract.MARK_ATTEMPTS_MAX
    samples: dict[str, list[str]] = {"lost": [], "duplicated": [], "bounced_without_dsn": [], "dsn_after_delivery": []}

    def sample(kind: str, seq: int) -> None:
        if len(samples[kind]) < SAMPLE_IDS:
            samples[kind].append(f"{run_id}.{seq}")

    capacity = theirs.capacity
    marks = theirs.marks
    size = len(marks)
    for index, mark in enumerate(ours):
        if not mark:
            continue
        seq = index * shards + shard
        if capacity is not None and seq >= capacity:
            counts["unknown"] += mark == TARGET_ACCEPTED  # beyond what the sink keeps: neither lost nor delivered
            continue
        sink = marks[seq] if seq < size else 0
        taken = accepted(sink)
        if mark != TARGET_ACCEPTED:
            counts["unexpected"] += taken > 0
            continue
        dsn = sink & MARK_DSN
        if taken:
            counts["delivered"] += 1
            tries[max(1, attempts(sink)) - 1] += 1
            if taken > 1:
                counts["duplicated"] += 1
                sample("duplicated", seq)
            if dsn:
                counts["dsn_after_delivery"] += 1
                sample("dsn_after_delivery", seq)
        elif sink & MARK_PERMFAILED:
            counts["bounced"] += 1
            if dsn:
                counts["dsn_returned"] += 1
            else:
                counts["bounced_without_dsn"] += 1
                sample("bounced_without_dsn", seq)
        elif sink & MARK_TEMPFAILED:
            counts["expired" if dsn else "deferred_pending"] += 1
        else:
            counts["lost"] += 1
            sample("lost", seq)
    return {
        **counts,
        # How many times the MTA brought each delivered message to the end of DATA before the sink took it.
        "attempts": dict(zip(contract.ATTEMPT_BUCKETS, tries, strict=True)),
        **{f"{kind}_ids": ids for kind, ids in samples.items()},
    }


def settled(counts: dict[str, Any]) -> bool:
    """Nothing left to wait for: no message deferred, unseen, or bounced before its DSN could arrive."""
    return not (counts["deferred_pending"] or counts["lost"] or counts["bounced_without_dsn"])


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


async def ask_sinks(
    urls: tuple[str, ...],
    run_id: str,
    ours: bytes,
    *,
    shards: int = 1,
    shard: int = 0,
    wait_s: float = 0.0,
    request_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """The reconciliation, asking the sinks once a second for up to `wait_s` until nothing is left pending
    (the MTA may still be delivering); a document for the report, with "error" when a sink could not be read."""
    sinks = ", ".join(urls)
    deadline = clock() + wait_s
    while True:
        try:
            ledger = await fetch_all(urls, run_id, request_s)
        except ReconcileError as e:
            return {"sink": sinks, "error": str(e)}
        counts = reconcile(ours, ledger, run_id, shards, shard)
        remaining = deadline - clock()
        if settled(counts) or remaining <= 0:
            break
        await asyncio.sleep(min(POLL_INTERVAL, remaining))
    waited = max(0.0, wait_s - max(0.0, deadline - clock()))
    return {"sink": sinks, "waited_s": round(waited, 1), **counts, "transit_ms": transit_report(ledger)}


def encode_marks(marks: bytes) -> str:
    """Our marks as a report keeps them, so `trafficgen report reconcile` can ask the sinks again later."""
    return base64.b64encode(zlib.compress(marks, 6)).decode("ascii")


def decode_marks(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))
