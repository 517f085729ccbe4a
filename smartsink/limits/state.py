"""The state that must hold for the sink as a whole: connection and transaction counts, rate buckets, the
greylist, the clients' reputations, and the reconciliation ledgers.

SharedState is plain, synchronous, single-owner data with an injected clock. With one worker it lives in that
worker (smartsink.limits.local); with several it lives in the supervisor and workers reach it over a Unix socket
(smartsink.limits.remote), so "40 connections" means 40 in all and a greylist retry may reach any worker.

What the sink has learnt (buckets, greylist, reputations) is shown by `view()` (bounded in size: the admin API's
`GET /state`), counted by `summary()` (`/health`, `/metrics`), cleared by `forget()` (`DELETE /state`), and
written and read back by `saved()` / `restore()` (`--state keep`). Connections and transactions in flight are
shown but never forgotten: they are counts of what is open now.
"""

from __future__ import annotations

import heapq
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from smartsink.ledger import Ledgers
from smartsink.policy.decide import split_address, strip_suffix
from smartsink.policy.model import Escalation, Rate

GREYLIST_MAX_ENTRIES = 500_000
GREYLIST_KEEP = 36 * 3600.0  # an entry is forgotten this long after it was last seen
ESCALATIONS_MAX = 100_000  # (domain, client) pairs whose deferrals are remembered
VIEW_LIMIT = 100  # entries of each kind `view()` lists by default
VIEW_LIMIT_MAX = 1000
STATE_FORMAT = 1  # of `saved()`: bumped when its layout changes


@dataclass
class _Bucket:
    tokens: float
    updated: float
    capacity: float = 0.0  # the rate's count: what a full bucket holds
    per_second: float = 0.0  # its refill


@dataclass
class _Reputation:
    """A client's recent deferrals by one domain, and until when that domain refuses it outright."""

    deferrals: deque[float] = field(default_factory=deque)
    until: float = 0.0
    within: float = 0.0  # the escalation's window, to count only the deferrals that still weigh
    after: int = 0  # deferrals in the window that escalate


def limit_key(domain: str, scope: str) -> str:
    """The key a limit counts under: the domain, and the client's scope when the limit is per address or /24."""
    return f"{domain}\x00{scope}" if scope else domain


def split_key(key: str) -> tuple[str, str]:
    """(domain, scope) of a limit_key; scope "" for the whole sink."""
    domain, _, scope = key.partition("\x00")
    return domain, scope


def _in_scope(scope: str, address: str) -> bool:
    """The scope (an address, a network like 127.0.0.0/24, or "" for the whole sink) is, or holds, `address` (an
    address or a network as /state shows it)."""
    if not scope:
        return False
    if scope == address:
        return True
    try:
        wanted = ipaddress.ip_network(address, strict=False)
        held = ipaddress.ip_network(scope, strict=False)
    except ValueError:
        return False
    return wanted.version == held.version and (wanted.subnet_of(held) or held.subnet_of(wanted))  # type: ignore[arg-type]


class Filter:
    """What `forget()` clears: everything, or what concerns one recipient domain, or one client address."""

    def __init__(self, domain: str | None = None, address: str | None = None, suffixes: Iterable[str] = ()):
        self.domain = domain.lower().rstrip(".") if domain else None
        self.address = address
        self.suffixes = tuple(suffixes)

    def limit(self, key: str) -> bool:
        domain, scope = split_key(key)
        return self._domain(domain) and self._address(scope)

    def greylisted(self, key: str) -> bool:
        scope, _, rest = key.partition("\x00")
        recipient = rest.partition("\x00")[2]
        domain = strip_suffix(split_address(recipient)[1], self.suffixes)
        return self._domain(domain) and self._address(scope)

    def _domain(self, domain: str) -> bool:
        return self.domain is None or domain == self.domain

    def _address(self, scope: str) -> bool:
        return self.address is None or _in_scope(scope, self.address)


class SharedState:
    """The sink-wide counters; every method is quick and never blocks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.clock = clock
        self.wall = wall  # to show and save the clock's times as Unix times
        self.connections: dict[str, int] = {}  # by scope ("" for the whole sink)
        self.clients: dict[str, int] = {}  # by client address, whatever the scope
        self.mx_hosts: dict[str, int] = {}  # by the MX host a connection was meant for (the sink's DNS), when known
        self.transactions: dict[str, int] = {}
        self.buckets: dict[str, _Bucket] = {}
        self.greylist: OrderedDict[str, float] = OrderedDict()
        self.reputations: OrderedDict[str, _Reputation] = OrderedDict()
        self.ledgers = Ledgers()
        self.resets = 0

    # connections ([listener] max_connections), for the whole sink or per client address or /24 (scope)
    def open_connection(self, limit: int | None, scope: str = "", client: str = "", mx: str = "") -> bool:
        current = self.connections.get(scope, 0)
        if limit is not None and current >= limit:
            return False
        self.connections[scope] = current + 1
        if client:
            self.clients[client] = self.clients.get(client, 0) + 1
        if mx:
            self.mx_hosts[mx] = self.mx_hosts.get(mx, 0) + 1
        return True

    def close_connection(self, scope: str = "", client: str = "", mx: str = "") -> None:
        _decrement(self.connections, scope)
        if client:
            _decrement(self.clients, client)
        if mx:
            _decrement(self.mx_hosts, mx)

    @property
    def connections_open(self) -> int:
        return sum(self.connections.values())

    # transactions in flight per domain (max_concurrency)
    def begin_transaction(self, domain: str, limit: int) -> bool:
        current = self.transactions.get(domain, 0)
        if current >= limit:
            return False
        self.transactions[domain] = current + 1
        return True

    def end_transaction(self, domain: str) -> None:
        _decrement(self.transactions, domain)

    # accepted messages per time per domain (rate): a token bucket holding one period's worth, full or empty at
    # its first use (rate_start)
    def take_rate(self, domain: str, rate: Rate, full: bool = True) -> bool:
        now = self.clock()
        bucket = self.buckets.get(domain)
        if bucket is None:
            bucket = self.buckets[domain] = _Bucket(rate.count if full else 0.0, now, rate.count, rate.per_second)
        else:
            bucket.tokens = min(rate.count, bucket.tokens + (now - bucket.updated) * rate.per_second)
            bucket.updated = now
            bucket.capacity, bucket.per_second = rate.count, rate.per_second  # a reload may have changed it
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
            first = next(iter(self.greylist.values()))
            if len(self.greylist) > GREYLIST_MAX_ENTRIES or now - first > GREYLIST_KEEP:
                self.greylist.popitem(last=False)
            else:
                break

    # reputation: a client that keeps sending after deferrals gets refused outright for a while (escalate)
    def escalated(self, key: str) -> bool:
        reputation = self.reputations.get(key)
        return reputation is not None and reputation.until > self.clock()

    def deferred(self, key: str, escalation: Escalation) -> bool:
        """Note a deferral of this client by this domain; True when it now escalates."""
        now = self.clock()
        reputation = self.reputations.get(key)
        if reputation is None:
            reputation = self.reputations[key] = _Reputation()
            while len(self.reputations) > ESCALATIONS_MAX:
                self.reputations.popitem(last=False)
        self.reputations.move_to_end(key)
        reputation.within, reputation.after = escalation.within, escalation.after
        if reputation.until > now:
            return False
        deferrals = reputation.deferrals
        deferrals.append(now)
        while deferrals and now - deferrals[0] > escalation.within:
            deferrals.popleft()
        if len(deferrals) < escalation.after:
            return False
        deferrals.clear()
        reputation.until = now + escalation.lasts
        return True

    # --- seeing it, resetting it --------------------------------------------------------------------------------

    def _unix(self, t: float, now: float, wall: float) -> float:
        return round(wall + (t - now), 3)

    def _weighing(self, reputation: _Reputation, now: float) -> int:
        """The deferrals that still count towards an escalation."""
        return sum(1 for t in reputation.deferrals if now - t <= reputation.within)

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(bucket.capacity, bucket.tokens + (now - bucket.updated) * bucket.per_second)

    def summary(self) -> dict[str, int]:
        """How much the sink holds, by kind: /health's `state` and the gauges of /metrics."""
        now = self.clock()
        return {
            "blocked": sum(1 for r in self.reputations.values() if r.until > now),
            "reputations": len(self.reputations),
            "rate_buckets": len(self.buckets),
            "greylist": len(self.greylist),
            "connections": self.connections_open,
            "transactions": sum(self.transactions.values()),
            "resets": self.resets,
        }

    def by_domain(self) -> dict[str, dict[str, float]]:
        """Per policy domain: clients refused outright now, rate tokens left and what full buckets hold,
        transactions in flight (the labelled gauges of /metrics; domains are the policy's, so few)."""
        now = self.clock()
        out: dict[str, dict[str, float]] = {}

        def row(domain: str) -> dict[str, float]:
            return out.setdefault(domain, {"blocked": 0, "tokens": 0.0, "capacity": 0.0, "transactions": 0})

        for key, reputation in self.reputations.items():
            if reputation.until > now:
                row(split_key(key)[0])["blocked"] += 1
        for key, bucket in self.buckets.items():
            counts = row(split_key(key)[0])
            counts["tokens"] += self._level(bucket, now)
            counts["capacity"] += bucket.capacity
        for key, count in self.transactions.items():
            row(split_key(key)[0])["transactions"] += count
        return out

    def view(self, limit: int = VIEW_LIMIT) -> dict[str, Any]:
        """What the sink holds now, each kind with its count and at most `limit` entries (the most telling
        first): clients refused outright (latest end first), clients building up deferrals (most first), rate
        buckets (emptiest first), greylist entries (newest first), connections by client and by MX (most first) and
        transactions in flight by limit key. Times are Unix times."""
        now, wall = self.clock(), self.wall()
        blocked = [(k, r) for k, r in self.reputations.items() if r.until > now]
        building = [(k, r, n) for k, r in self.reputations.items() if r.until <= now and (n := self._weighing(r, now))]
        greylist_newest = _newest(self.greylist, limit)
        return {
            "now": round(wall, 3),
            "blocked": {
                "count": len(blocked),
                "entries": [
                    {
                        **_named(key),
                        "until": self._unix(r.until, now, wall),
                        "left_s": round(r.until - now, 3),
                    }
                    for key, r in heapq.nlargest(limit, blocked, key=lambda item: item[1].until)
                ],
            },
            "deferrals": {
                "count": len(building),
                "entries": [
                    {**_named(key), "deferrals": n, "escalate_after": r.after, "within_s": r.within}
                    for key, r, n in heapq.nlargest(limit, building, key=lambda item: item[2])
                ],
            },
            "rate_buckets": {
                "count": len(self.buckets),
                "entries": [
                    {
                        **_named(key),
                        "tokens": round(level, 3),
                        "capacity": b.capacity,
                        "refill_per_s": b.per_second,
                    }
                    for key, b, level in heapq.nsmallest(
                        limit,
                        ((k, b, self._level(b, now)) for k, b in self.buckets.items()),
                        key=lambda item: item[2],
                    )
                ],
            },
            "greylist": {
                "count": len(self.greylist),
                "entries": [_greylisted(key, self._unix(first, now, wall)) for key, first in greylist_newest],
            },
            "connections": {
                "count": self.connections_open,
                "clients": _top(self.clients, limit, "client"),
                "mx": _top(self.mx_hosts, limit, "mx"),
                "limited": _top({s: n for s, n in self.connections.items() if s}, limit, "scope"),
            },
            "transactions": {
                "count": sum(self.transactions.values()),
                "entries": [
                    {**_named(key), "in_flight": n}
                    for key, n in heapq.nlargest(limit, self.transactions.items(), key=lambda item: item[1])
                ],
            },
        }

    def forget(self, only: Filter | None = None) -> dict[str, int]:
        """Clear what the sink learnt (reputations, rate buckets, greylist), all of it or what `only` selects;
        the counts removed, by kind. Open connections and transactions in flight stay counted."""
        self.resets += 1
        if only is None or (only.domain is None and only.address is None):
            removed = {
                "reputations": len(self.reputations),
                "rate_buckets": len(self.buckets),
                "greylist": len(self.greylist),
            }
            self.reputations.clear()
            self.buckets.clear()
            self.greylist.clear()
            return removed
        return {
            "reputations": _drop(self.reputations, only.limit),
            "rate_buckets": _drop(self.buckets, only.limit),
            "greylist": _drop(self.greylist, only.greylisted),
        }

    # --- keeping it across a restart (--state keep) -------------------------------------------------------------

    def saved(self) -> dict[str, Any]:
        """What the sink learnt, in JSON, its times as Unix times (the clock's own do not survive a restart)."""
        now, wall = self.clock(), self.wall()
        return {
            "format": STATE_FORMAT,
            "saved_at": round(wall, 3),
            "reputations": {
                key: {
                    "deferrals": [self._unix(t, now, wall) for t in r.deferrals],
                    "until": self._unix(r.until, now, wall) if r.until > now else 0,
                    "within": r.within,
                    "after": r.after,
                }
                for key, r in self.reputations.items()
            },
            "rate_buckets": {
                key: [round(self._level(b, now), 3), b.capacity, b.per_second] for key, b in self.buckets.items()
            },
            "greylist": [[key, self._unix(first, now, wall)] for key, first in self.greylist.items()],
        }

    def restore(self, data: dict[str, Any]) -> int:
        """Take back what `saved()` wrote (times moved onto this clock); the entries read. ValueError (or KeyError,
        TypeError) when it is not such a document."""
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"not a smartsink state of format {STATE_FORMAT}")
        now, wall = self.clock(), self.wall()

        def here(t: float) -> float:
            return now + (float(t) - wall)

        reputations: OrderedDict[str, _Reputation] = OrderedDict()
        for key, r in data["reputations"].items():
            until = float(r["until"])
            reputations[str(key)] = _Reputation(
                deque(here(t) for t in r["deferrals"]),
                here(until) if until else 0.0,
                float(r["within"]),
                int(r["after"]),
            )
        buckets = {
            str(key): _Bucket(float(tokens), now, float(capacity), float(per_second))
            for key, (tokens, capacity, per_second) in data["rate_buckets"].items()
        }
        greylist: OrderedDict[str, float] = OrderedDict((str(key), here(first)) for key, first in data["greylist"])
        self.reputations, self.buckets, self.greylist = reputations, buckets, greylist
        self._trim_greylist(now)
        return len(reputations) + len(buckets) + len(greylist)


def _decrement(counts: dict[str, int], key: str) -> None:
    current = counts.get(key, 0)
    if current <= 1:
        counts.pop(key, None)
    else:
        counts[key] = current - 1


def _drop(entries: dict[str, Any], selected: Callable[[str], bool]) -> int:
    keys = [key for key in entries if selected(key)]
    for key in keys:
        del entries[key]
    return len(keys)


def _named(key: str) -> dict[str, str | None]:
    """A limit key as /state names it: the domain, and the client (an address or a /24) or the MX host it counts."""
    domain, scope = split_key(key)
    if scope.startswith("mx:"):
        return {"domain": domain, "client": None, "mx": scope[3:]}
    return {"domain": domain, "client": scope or None, "mx": None}


def _greylisted(key: str, first_seen: float) -> dict[str, Any]:
    scope, _, rest = key.partition("\x00")
    sender, _, recipient = rest.partition("\x00")
    return {"client": scope or None, "sender": sender, "recipient": recipient, "first_seen": first_seen}


def _newest(entries: OrderedDict[str, float], limit: int) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for key in reversed(entries):
        if len(out) >= limit:
            break
        out.append((key, entries[key]))
    return out


def _top(counts: dict[str, int], limit: int, name: str) -> list[dict[str, Any]]:
    return [{name: key, "open": n} for key, n in heapq.nlargest(limit, counts.items(), key=lambda item: item[1])]
