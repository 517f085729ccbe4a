"""End-to-end reconciliation (`--reconcile`): did the MTA under test lose or duplicate mail?

Every message carries `X-Trafficgen-Id: <run_id>.<seq>`. The sink keeps, per run, one byte per id: how often it
accepted it (bits 0-1, saturating at 3), whether it ever refused it temporarily (bit 2) or permanently (bit 3).
At the end of the run trafficgen fetches that ledger (`GET /runs/<run_id>?marks=1`) and, for every message the
target accepted, says what became of it:

- delivered: the sink accepted it (duplicated: more than once);
- bounced: the sink refused it permanently and never accepted it;
- deferred_pending: the sink only refused it temporarily so far (the MTA may still retry);
- lost: the sink never saw it.

With several sinks behind the target, their ledgers are combined first (`combine`).

Messages the target did not accept but the sink accepted anyway are counted as `unexpected`; messages whose id is
beyond what the sink's ledger keeps (16 Mi ids a run) as `unknown`.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any, NamedTuple

import aiohttp

from trafficgen.stats.recorder import MARK_ACCEPTED

SAMPLE_IDS = 100


class ReconcileError(Exception):
    """The sink's ledger could not be read."""


class Ledger(NamedTuple):
    marks: bytes  # one byte per message id
    capacity: int | None  # ids at or beyond this are not kept by the sink (None: no limit said)


async def fetch_marks(url: str, run_id: str, wait_s: float) -> Ledger:
    """The sink's ledger for this run (empty when it saw none of its messages)."""
    address = f"{url}/runs/{run_id}?marks=1"
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(address, timeout=aiohttp.ClientTimeout(total=wait_s)) as response:
                if response.status == 404:
                    return Ledger(b"", None)
                if response.status != 200:
                    raise ReconcileError(f"{address} answered HTTP {response.status}")
                body = json.loads(await response.text())
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise ReconcileError(f"cannot read the sink's ledger at {address}: {e or type(e).__name__}") from None
    try:
        return Ledger(zlib.decompress(base64.b64decode(body["marks"])), body.get("capacity"))
    except (KeyError, ValueError, TypeError, zlib.error) as e:
        raise ReconcileError(f"{address} did not answer with a ledger: {e}") from None


def combine(ledgers: list[Ledger]) -> Ledger:
    """The ledgers of several sinks behind one address as one: acceptances add up, refusals are kept."""
    capacities = [ledger.capacity for ledger in ledgers if ledger.capacity is not None]
    capacity = min(capacities) if capacities else None
    if len(ledgers) == 1:
        return Ledger(ledgers[0].marks, capacity)
    combined = bytearray(max((len(ledger.marks) for ledger in ledgers), default=0))
    for ledger in ledgers:
        for seq, mark in enumerate(ledger.marks):
            if mark:
                current = combined[seq]
                accepted = min(3, (current & 3) + (mark & 3))
                combined[seq] = (current | mark) & 0b1100 | accepted
    return Ledger(bytes(combined), capacity)


def reconcile(ours: bytes, theirs: Ledger, run_id: str, shards: int = 1, shard: int = 0) -> dict[str, Any]:
    """Compare our marks (index: seq // shards) with the sink's (index: seq). Pure."""
    keys = ("delivered", "bounced", "deferred_pending", "lost", "duplicated", "unexpected", "unknown")
    counts = dict.fromkeys(keys, 0)
    capacity = theirs.capacity
    marks = theirs.marks
    lost_ids: list[str] = []
    duplicated_ids: list[str] = []
    size = len(marks)
    for index, mark in enumerate(ours):
        if not mark:
            continue
        seq = index * shards + shard
        if capacity is not None and seq >= capacity:
            counts["unknown"] += mark == MARK_ACCEPTED  # beyond what the sink keeps: neither lost nor delivered
            continue
        sink = marks[seq] if seq < size else 0
        accepted = sink & 3
        if mark != MARK_ACCEPTED:
            counts["unexpected"] += accepted > 0
            continue
        if accepted:
            counts["delivered"] += 1
            if accepted > 1:
                counts["duplicated"] += 1
                if len(duplicated_ids) < SAMPLE_IDS:
                    duplicated_ids.append(f"{run_id}.{seq}")
        elif sink & 8:
            counts["bounced"] += 1
        elif sink & 4:
            counts["deferred_pending"] += 1
        else:
            counts["lost"] += 1
            if len(lost_ids) < SAMPLE_IDS:
                lost_ids.append(f"{run_id}.{seq}")
    return {**counts, "lost_ids": lost_ids, "duplicated_ids": duplicated_ids}
