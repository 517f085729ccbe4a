"""Production-like MTA logs from a seeded description: KumoMTA's JSON records as its documentation gives them
(docs.kumomta.com/reference/log_record: Reception, Delivery, TransientFailure, Bounce, Expiration), written as kumod
writes its log_dir (zstd or gzip segments named by their first record's time), and Postfix's lines in the shape a
real Postfix writes them (the suite's private Postfix logs the same). The truth of what was written is kept beside
(`Truth`), so a test can check what `from-logs` derives against it and the bench can measure reading speed.

Every address's local part, every message id and subject is random, so a test can look for any of them in what
was derived. Only loopback addresses appear (the peers, the source addresses).

    python -m bench.maillogs --records 1000000 --dir /tmp/logs    # a KumoMTA log_dir and a Postfix maillog
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gzip
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import zstandard

FIRST_NAMES = ("maria", "chen", "oluwaseun", "ines", "dmitri", "aiko", "santiago", "fatima", "lars", "priya")


@dataclass(frozen=True)
class Provider:
    """A destination domain: its share of recipients, how its servers answer, when (RCPT TO or ".")."""

    name: str
    weight: float
    temporary: float = 0.0  # share of attempts deferred
    permanent: float = 0.0  # share of attempts bounced
    command: str = "RCPT TO"
    defer_text: str = "4.7.0 Try again later, closing connection. {id} - gsmtp"
    bounce_text: str = "5.1.1 <{rcpt}>: Recipient address rejected: User unknown in relay recipient table"


PROVIDERS = (
    Provider("gmail.com", 45, 0.10, 0.04, "RCPT TO"),
    Provider(
        "yahoo.com",
        20,
        0.20,
        0.0,
        ".",
        defer_text="4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected volume or user complaints",
    ),
    Provider("outlook.com", 15, 0.05, 0.06, "."),
    Provider("icloud.com", 8),
)
TAIL = 40  # small domains beside the providers: tail-N.example
TAIL_SHARE = 12.0  # their share of recipients, in all
TAIL_PERMANENT = 0.05
TENANTS = (("retail", 60), ("newsletters", 30), ("", 10))  # "": a message without a tenant
CAMPAIGNS = (("black-friday", 50), ("weekly-digest", 30), ("", 20))
SENDERS = (("shop.example", 70), ("news.example", 30))
SOURCES = ("ip-1", "ip-2", "ip-3")
MAX_ATTEMPTS = 3  # then the message expires


@dataclass
class Truth:
    """What a generated log holds, counted as it was written."""

    messages: int = 0
    recipients: collections.Counter[str] = field(default_factory=collections.Counter)
    tenants: collections.Counter[str] = field(default_factory=collections.Counter)
    campaigns: collections.Counter[str] = field(default_factory=collections.Counter)
    senders: collections.Counter[str] = field(default_factory=collections.Counter)
    answers: dict[str, collections.Counter[str]] = field(default_factory=dict)  # domain -> outcome -> attempts
    sizes: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)  # local parts, message ids, subjects: never to be derived

    def answer(self, domain: str, outcome: str) -> None:
        self.answers.setdefault(domain, collections.Counter())[outcome] += 1


@dataclass
class Log:
    """How to generate: `messages` over `period` seconds from `start`, by `seed`."""

    messages: int
    seed: int = 1
    start: float = 1_780_000_000.0  # 2026-05-28
    period: float = 86400.0
    keep: bool = True  # keep sizes, arrivals and secrets in the Truth (tests); a bench of millions does not
    truth: Truth = field(default_factory=Truth)

    def domains(self) -> list[tuple[Provider, float]]:
        tail = [Provider(f"tail-{i}.example", TAIL_SHARE / TAIL, 0.0, TAIL_PERMANENT, ".") for i in range(TAIL)]
        return [(p, p.weight) for p in (*PROVIDERS, *tail)]

    def arrivals(self, rng: random.Random) -> list[float]:
        """Arrival times with a daily shape: busiest in the afternoon, quiet at night (rejection sampling)."""
        times: list[float] = []
        while len(times) < self.messages:
            u = rng.random()
            if rng.random() * 2 <= 1 + math.sin(2 * math.pi * (u - 0.375)):
                times.append(self.start + u * self.period)
        return sorted(times)


def kumomta_records(log: Log) -> Iterator[dict[str, Any]]:
    """Each message's Reception record, then its attempts (retried up to MAX_ATTEMPTS, then an Expiration)."""
    rng = random.Random(log.seed)
    domains = log.domains()
    providers = [p for p, _ in domains]
    weights = [w for _, w in domains]
    truth = log.truth
    for t in log.arrivals(rng):
        provider = rng.choices(providers, weights)[0]
        tenant = rng.choices([n for n, _ in TENANTS], [w for _, w in TENANTS])[0]
        campaign = rng.choices([n for n, _ in CAMPAIGNS], [w for _, w in CAMPAIGNS])[0]
        sender_domain = rng.choices([n for n, _ in SENDERS], [w for _, w in SENDERS])[0]
        local = f"{rng.choice(FIRST_NAMES)}.{rng.randrange(10**6):06d}"
        recipient = f"{local}@{provider.name}"
        sender = f"bounces-{rng.randrange(10**8):08d}@{sender_domain}"
        size = _size(rng)
        message = _message(rng, t, sender, recipient, size, tenant, campaign)
        truth.messages += 1
        truth.recipients[provider.name] += 1
        truth.tenants[tenant] += 1
        truth.campaigns[campaign] += 1
        truth.senders[sender_domain] += 1
        if log.keep:
            truth.sizes.append(size)
            truth.arrivals.append(t)
            truth.secrets.update(
                {local, sender.partition("@")[0], message["headers"]["Message-ID"], message["headers"]["Subject"]}
            )
        yield message
        yield from _attempts(rng, provider, message, truth)


def _size(rng: random.Random) -> int:
    if rng.random() < 0.05:
        return rng.randrange(1_000_000, 5_000_000)  # a newsletter with images, an attachment
    return max(300, int(rng.lognormvariate(math.log(20_000), 0.8)))


def _message(
    rng: random.Random, t: float, sender: str, recipient: str, size: int, tenant: str, campaign: str
) -> dict[str, Any]:
    domain = recipient.partition("@")[2]
    in_queue = rng.random() < 0.8  # else the tenant and campaign are only in the logged headers
    who = f"{campaign}:{tenant}" if campaign else tenant
    queue = f"{who}@{domain}" if in_queue and (tenant or campaign) else domain
    headers = {
        "Subject": f"Your order {rng.randrange(10**7):07d} has shipped",
        "Message-ID": f"<{rng.randrange(16**16):016x}@{sender.partition('@')[2]}>",
    }
    if not in_queue:
        headers.update({"X-Tenant": tenant, "X-Campaign": campaign})
    return {
        "type": "Reception",
        "id": f"{rng.randrange(16**32):032x}",
        "sender": sender,
        "recipient": recipient,
        "queue": queue,
        "site": "",
        "size": size,
        "response": {"code": 250, "enhanced_code": None, "content": "", "command": None},
        "peer_address": {"name": "app.internal", "addr": "127.0.0.1"},
        "timestamp": int(t),
        "created": int(t),
        "num_attempts": 0,
        "bounce_classification": "Uncategorized",
        "egress_pool": None,
        "egress_source": None,
        "feedback_report": None,
        "meta": {},
        "headers": headers,
        "delivery_protocol": None,
        "reception_protocol": "ESMTP",
        "nodeid": "557f3ad4-2c8c-11ee-976e-782d7e12e173",
    }


def _attempts(
    rng: random.Random, provider: Provider, message: dict[str, Any], truth: Truth
) -> Iterator[dict[str, Any]]:
    t = message["timestamp"]
    recipient = message["recipient"]
    for attempt in range(MAX_ATTEMPTS):
        t += 1 + attempt * 600
        roll = rng.random()
        if roll < provider.permanent:
            kind, code, outcome = "Bounce", 550, "permfailed"
            text = provider.bounce_text
        elif roll < provider.permanent + provider.temporary:
            kind, code, outcome = "TransientFailure", 451 if provider.command == "." else 421, "tempfailed"
            text = provider.defer_text
        else:
            kind, code, outcome = "Delivery", 250, "accepted"
            text = "2.0.0 OK {id} - gsmtp"
        truth.answer(provider.name, outcome)
        yield _delivery(rng, message, kind, code, text, provider, t, attempt, recipient)
        if kind != "TransientFailure":
            return
    yield {
        **message,
        "type": "Expiration",
        "timestamp": t + 3600,
        "response": {"code": 551, "enhanced_code": None, "content": "KumoMTA internal: message expired"},
    }


def _delivery(
    rng: random.Random,
    message: dict[str, Any],
    kind: str,
    code: int,
    text: str,
    provider: Provider,
    t: int,
    attempt: int,
    recipient: str,
) -> dict[str, Any]:
    source = rng.choice(SOURCES)
    filled = text.format(id=f"{rng.randrange(16**12):012x}", rcpt=recipient, ip=f"127.0.0.{2 + SOURCES.index(source)}")
    enhanced, _, content = filled.partition(" ")
    klass, subject, detail = (int(p) for p in enhanced.split("."))
    command = "." if kind == "Delivery" else provider.command
    return {
        **message,
        "type": kind,
        "site": f"{source}->mx.{provider.name}",
        "response": {
            "code": code,
            "enhanced_code": {"class": klass, "subject": subject, "detail": detail},
            "content": content,
            "command": command,
        },
        "peer_address": {"name": f"mx.{provider.name}.", "addr": "127.0.0.1"},
        "timestamp": t,
        "num_attempts": attempt,
        "egress_pool": "pool0",
        "egress_source": source,
        "source_address": {"address": f"127.0.0.{2 + SOURCES.index(source)}:{rng.randrange(1024, 65535)}"},
        "delivery_protocol": "ESMTP",
    }


def write_kumomta(
    records: Iterator[dict[str, Any]], directory: Path, per_segment: int, kinds: tuple[str, ...]
) -> tuple[list[Path], int]:
    """Records into segment files as kumod's log_dir holds them (named by their first record's time, UTC), each
    compressed by the next of `kinds` ("zstd", "gzip" or "" for plain) in turn; the files and the records."""
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    out: TextIO | None = None
    count = total = 0
    for record in records:
        total += 1
        if out is None or count == per_segment:
            if out is not None:
                out.close()
            stamp = datetime.datetime.fromtimestamp(record["timestamp"], datetime.UTC).strftime("%Y%m%d-%H%M%S")
            path = directory / f"{stamp}-{len(paths):03d}"
            out = _open(path, kinds[len(paths) % len(kinds)])
            paths.append(path)
            count = 0
        out.write(json.dumps(record, separators=(",", ":")) + "\n")
        count += 1
    if out is not None:
        out.close()
    return paths, total


def _open(path: Path, kind: str) -> TextIO:
    if kind == "gzip":
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=1)
    if kind == "zstd":
        opened: TextIO = zstandard.open(path, "wt", cctx=zstandard.ZstdCompressor(level=3), encoding="utf-8")
        return opened
    return open(path, "w", encoding="utf-8")


def postfix_lines(log: Log) -> Iterator[str]:
    """The same traffic as Postfix logs it (syslog lines of smtpd, cleanup, qmgr, smtp), one recipient a message."""
    rng = random.Random(log.seed)
    domains = log.domains()
    providers = [p for p, _ in domains]
    weights = [w for _, w in domains]
    for n, t in enumerate(log.arrivals(rng)):
        provider = rng.choices(providers, weights)[0]
        qid = f"{n:010X}"
        local = f"{rng.choice(FIRST_NAMES)}.{rng.randrange(10**6):06d}"
        stamp = datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%b %d %H:%M:%S")
        head = f"{stamp} mta postfix"
        size = _size(rng)
        yield f"{head}/smtpd[1201]: {qid}: client=app.internal[127.0.0.1]"
        yield f"{head}/cleanup[1202]: {qid}: message-id=<{rng.randrange(16**16):016x}@shop.example>"
        yield f"{head}/qmgr[1203]: {qid}: from=<bounces@shop.example>, size={size}, nrcpt=1 (queue active)"
        roll = rng.random()
        relay = f"relay=mx.{provider.name}[127.0.0.1]:25, delay=0.4, delays=0.1/0/0.1/0.2"
        to = f"{head}/smtp[1204]: {qid}: to=<{local}@{provider.name}>, {relay}"
        host = f"host mx.{provider.name}[127.0.0.1] said:"
        if roll < provider.permanent:
            said = f"{host} 550 5.1.1 <{local}@{provider.name}>: User unknown (in reply to RCPT TO command)"
            yield f"{to}, dsn=5.1.1, status=bounced ({said})"
            yield f"{head}/qmgr[1203]: {qid}: removed"
        elif roll < provider.permanent + provider.temporary:
            yield f"{to}, dsn=4.7.0, status=deferred ({host} 421 4.7.0 Try again later (in reply to RCPT TO command))"
        else:
            yield f"{to}, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as {rng.randrange(16**8):08X})"
            yield f"{head}/qmgr[1203]: {qid}: removed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.maillogs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="KumoMTA records, at least (some 2.1 a message)")
    parser.add_argument("--dir", type=Path, required=True, help="where to write kumomta/ and maillog")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    messages = max(1, round(args.records / 2.0))
    log = Log(messages, args.seed, keep=False)
    paths, records = write_kumomta(kumomta_records(log), args.dir / "kumomta", 500_000, ("zstd",))
    with open(args.dir / "maillog", "w", encoding="utf-8") as out:
        lines = 0
        for line in postfix_lines(Log(messages, args.seed, keep=False)):
            out.write(line + "\n")
            lines += 1
    print(f"{args.dir / 'kumomta'}: {records:,} records in {len(paths)} zstd segments")
    print(f"{args.dir / 'maillog'}: {lines:,} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
