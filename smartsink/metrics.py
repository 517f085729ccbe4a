"""The sink's Prometheus metrics, summed over all worker processes (prometheus-client multiprocess mode).

With --workers N, every process of a sink writes its values to files under PROMETHEUS_MULTIPROC_DIR, which
smartsink's CLI creates before anything imports prometheus_client; a scrape of the admin listener reads and sums
them all, so /metrics shows the whole sink, and a worker that dies keeps what it counted (up to the turn of its
event loop it died in: count() below). With one worker (or imported by a program) the values stay in the process,
in the default registry: four times cheaper a count.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# (prometheus-client's multiprocess helpers carry no annotations: their calls are marked below.)
from prometheus_client import multiprocess as _mp
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

_pid = os.getpid()


def _process_id() -> int:
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


if MULTIPROC:
    # prometheus-client asks os.getpid() on every increment to notice a fork, and glibc no longer caches it:
    # a system call per count was a tenth of the sink's time. Our workers are spawned, and a fork updates it.
    os.register_at_fork(after_in_child=_forked)
    _values.ValueClass = _values.MultiProcessValue(process_identifier=_process_id)  # type: ignore[no-untyped-call]
_LIVE = {"multiprocess_mode": "livesum"} if MULTIPROC else {}

MESSAGES = Counter(
    "smartsink_messages",
    "Recipients answered, by policy domain (unknown domains fold into 'other') and outcome",
    ["domain", "outcome"],
)
CONNECTIONS_ACTIVE = Gauge("smartsink_connections_active", "SMTP connections open now", **_LIVE)  # type: ignore[arg-type]
CONNECTIONS_STALLED = Gauge(
    "smartsink_connections_stalled",
    "SMTP connections whose client is not taking the replies (64 KiB of them wait): cut after --timeout of this",
    **_LIVE,  # type: ignore[arg-type]
)
CONNECTIONS = Counter("smartsink_connections", "SMTP connections accepted")
CONNECTIONS_REFUSED = Counter(
    "smartsink_connections_refused", "Connections answered 421 at the greeting ([listener] max_connections)"
)
REDIRECTED = Counter(
    "smartsink_redirected_connections",
    "Connections whose original destination (SO_ORIGINAL_DST) was not the sink: an iptables redirect is live",
)
MX_CONNECTIONS = Counter(
    "smartsink_mx_connections",
    "SMTP connections by the MX host they were meant for (--dns-network; 'other': an unlisted domain's MX)",
    ["mx"],
)
MX_MESSAGES = Counter(
    "smartsink_mx_messages",
    "Recipients answered, by the MX host their connection was meant for and outcome",
    ["mx", "outcome"],
)
BYTES = Counter("smartsink_bytes_received", "Message bytes received after DATA")
RELOADS = Counter("smartsink_policy_reloads", "Policy reloads, by result", ["result"])
for _result in ("success", "error"):
    RELOADS.labels(_result)  # exported at 0 from the start, so the first reload is an increase()
THROTTLED = Counter("smartsink_throttled", "Recipients refused by a domain's rate", ["domain"])
GREYLISTED = Counter("smartsink_greylisted", "Recipients greylisted", ["domain"])
DISCONNECTS = Counter("smartsink_disconnects", "Transactions cut without a reply (disconnect)", ["domain"])
CONCURRENCY_REFUSED = Counter(
    "smartsink_concurrency_refused", "Transactions answered 421 by a domain's max_concurrency", ["domain"]
)
PER_CONNECTION_REFUSED = Counter(
    "smartsink_max_messages_refused", "Transactions answered 421 by max_messages_per_connection", ["domain"]
)
REPLY_DELAY = Histogram(
    "smartsink_reply_delay_seconds",
    "Delay added before the reply to the end of DATA (latency), by domain",
    ["domain"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
ESCALATED = Counter(
    "smartsink_escalated", "Recipients refused outright because their client's reputation escalated", ["domain"]
)
OVERRIDES_ACTIVE = Gauge(
    "smartsink_policy_overrides_active",
    "Windows of changed rules in force now (the policy's schedule and the admin API's overrides)",
    **_LIVE,  # type: ignore[arg-type]
)
TLS_HANDSHAKES = Counter("smartsink_tls_handshakes", "STARTTLS handshakes, by result (ok, failed)", ["result"])
AUTHS = Counter("smartsink_auth", "AUTH attempts, by result (ok, failed)", ["result"])
for _result in ("ok", "failed"):
    TLS_HANDSHAKES.labels(_result)
    AUTHS.labels(_result)
DNS_QUERIES = Counter(
    "smartsink_dns_queries", "DNS queries answered (--dns), by type (A, MX, ...; 'other') and rcode", ["type", "rcode"]
)
DNS_DROPPED = Counter(
    "smartsink_dns_dropped",
    "DNS input dropped unanswered, by reason: malformed, truncated, oversized, length_lie (TCP), response, rate, busy",
    ["reason"],
)
DNS_DROP_REASONS = ("malformed", "truncated", "oversized", "length_lie", "response", "rate", "busy")
for _reason in DNS_DROP_REASONS:
    DNS_DROPPED.labels(_reason)
DSNS = Counter("smartsink_dsns", "Failure DSNs (RFC 3464) received that return a trafficgen message")
INJECTED = Counter("smartsink_injected_messages", "Messages received on the HTTP inject API")
ADMIN_REFUSED = Counter(
    "smartsink_admin_refused",
    "Admin requests refused or cut short: no or wrong credential, a body not readable as JSON (too deep, too big), "
    "a client gone mid-body; by reason",
    ["reason"],
)
ADMIN_REASONS = ("credential", "body", "hangup")
for _reason in ADMIN_REASONS:
    ADMIN_REFUSED.labels(_reason)
STATE_RESETS = Counter("smartsink_state_resets", "DELETE /state calls: what the sink learnt forgotten (all or part)")

_children: dict[tuple[str, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """metric.labels(*labels), cached: labels() is slow on the hot path."""
    key = (metric._name, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


# Counts of the per-message counters not yet handed to prometheus-client: a dict addition a message instead of
# the client's lock and value object. With one worker publish() hands them over at every scrape. With workers
# (MULTIPROC) they go to the shared files at the end of the loop's turn in which they were counted, each counter
# once however many messages that turn answered (prometheus-client's call for each count was a tenth of a worker's
# time): a worker killed (SIGKILL, the OOM killer) loses only what the turn it died in counted, as the ledger's
# records, batched the same way (smartsink.limits.remote).
_pending: dict[Any, float] = {}
_publish_due = False


def count(counter: Any, amount: float = 1) -> None:
    """Add `amount` to a counter (or a labelled child): at the next publish(); with workers, at the end of this
    turn of the event loop (or now, outside one)."""
    global _publish_due
    _pending[counter] = _pending.get(counter, 0) + amount
    if MULTIPROC and not _publish_due:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            publish()
            return
        _publish_due = True
        loop.call_soon(publish)


def publish() -> None:
    """Hand what count() added to prometheus-client, so that /metrics shows it."""
    global _publish_due
    _publish_due = False
    if _pending:
        counts = list(_pending.items())
        _pending.clear()
        for counter, amount in counts:
            counter.inc(amount)


def message(domain: str, outcome: str) -> Any:
    """The smartsink_messages_total child for one (domain, outcome)."""
    return child(MESSAGES, domain, outcome)


def state_families(summary: dict[str, int], by_domain: dict[str, dict[str, float]]) -> list[Metric]:
    """The gauges of what the sink has learnt (smartsink.limits.state), read by the process that owns it at
    each scrape: a provider's memory as numbers. Domains are the policy's (unknown ones fold into 'other')."""
    families: list[Metric] = []
    for name, key, text in (
        ("blocked_clients", "blocked", "Clients a domain refuses outright now (escalate), by domain"),
        ("rate_tokens", "tokens", "Messages the domain's rate buckets would take now, summed over its clients"),
        ("rate_capacity", "capacity", "What the domain's rate buckets hold when full, summed over its clients"),
        ("transactions", "transactions", "Transactions in flight counted by max_concurrency, by domain"),
    ):
        family = GaugeMetricFamily(f"smartsink_state_{name}", text, labels=["domain"])
        for domain, row in sorted(by_domain.items()):
            family.add_metric([domain], row[key])
        families.append(family)
    for name, key, text in (
        ("greylist_entries", "greylist", "Greylist triplets remembered"),
        ("reputations", "reputations", "Clients whose deferrals a domain remembers (escalate), blocked or not"),
        ("rate_buckets", "rate_buckets", "Rate buckets (one per domain, or per domain and client)"),
    ):
        families.append(GaugeMetricFamily(f"smartsink_state_{name}", text, value=summary[key]))
    return families


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]):
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def exposition(extra: Iterable[Metric] = ()) -> bytes:
    """The text of /metrics: the sum over every process of this sink, and `extra` families (the state gauges).
    Runs in a thread: publish() first, on the thread that counts (count() and publish() are not thread-safe)."""
    if MULTIPROC:
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest()
    added = CollectorRegistry()
    added.register(_Families(extra))
    return text + generate_latest(added)


def process_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay: what was counted is never lost)."""
    if MULTIPROC:
        _mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]
