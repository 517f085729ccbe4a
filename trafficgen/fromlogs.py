"""The workload a production MTA's logs describe, as a --workload file (pure): `trafficgen workload from-logs`.

From the Aggregate of mailload.mtalog: the destination domains (the largest `top` by name, the rest as one domain,
OTHER_DOMAINS, with the rest's share), tenants, campaigns and sender domains (the same way), the egress sources
(as that many loopback source addresses), the usual recipients per message, the sizes (their quantiles, as many as
it takes to reproduce the log's within SIZE_TOLERANCE), and the arrivals over the logged period as --profile
stages, replayed `speed` times faster at `share` of the volume.

Only names of domains, tenants and campaigns, counts and distributions are written: no address, local part,
message id or subject is in the aggregate to begin with.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import json
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from mailload.mtalog.aggregate import NO_VALUE, Aggregate
from mailload.mtalog.read import LogError, ReadReport
from mailload.mtalog.tally import LogHistogram, Timeline, TopCounter
from trafficgen import profile as profiles
from trafficgen.bodysize import QuantileSize
from trafficgen.readers import ConfigError, parse_domain, parse_label

OTHER_DOMAINS = "other-domains.test"
OTHER_SENDERS = "other-senders.test"
OTHER_LABEL = "others"
NO_TENANT, NO_CAMPAIGN = "no-tenant", "no-campaign"
HEADER_BYTES = 800  # a message's size less its body: trafficgen's headers and the MTA's Received line
SIZE_TOLERANCE = 0.05  # the sizes' quantiles reproduce the log's within 5% (checked at every whole percentile)
BASE_PERCENTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100)
MAX_SIZE_POINTS = 48
RANK_SLACK = 0.5  # percentile points: a size may stand where the log's stands this near (a gap between sizes)
MAX_SOURCES = 250
FIRST_SOURCE = ipaddress.ip_address("127.0.0.2")  # on Linux every 127.x.y.z is this host's, without setup


class WorkloadError(LogError):
    """Logs that hold no workload (no message taken in); the message says why."""


@dataclass(frozen=True)
class Shape:
    """How the workload is drawn from the logs."""

    top: int = 20  # domains, tenants, campaigns, sender domains kept by name
    speed: float = 1.0  # replay this many times faster: 24 plays a day in an hour
    share: float = 1.0  # of the volume, from 0 to 1
    stages: int = 24  # at most this many --profile stages


def workload(aggregate: Aggregate, report: ReadReport, shape: Shape) -> str:
    """The text of a workload file."""
    if aggregate.messages == 0:
        raise WorkloadError("no message was taken in during these logs (only deliveries of older mail): no traffic")
    if aggregate.domains.total == 0:
        raise WorkloadError("the logs name no recipient of the messages taken in: no domain to send to")
    out = _head(aggregate, report)
    out += _recipients(aggregate.per_message)
    out += _sizes(aggregate.sizes)
    out += _profile(aggregate.arrivals, shape)
    out += _sources(len(aggregate.sources))
    out += _weights("domain", "Destination domains", aggregate.domains, shape.top, _domain_name, OTHER_DOMAINS)
    out += _labels("tenant", "Tenants", aggregate.tenants, shape.top, NO_TENANT)
    out += _labels("campaign", "Campaigns", aggregate.campaigns, shape.top, NO_CAMPAIGN)
    out += _weights("sender-domain", "Sender domains", aggregate.senders, shape.top, _domain_name, OTHER_SENDERS)
    return out


def _head(aggregate: Aggregate, report: ReadReport) -> str:
    files = len(report.files)
    return (
        _comment(
            "A workload derived from an MTA's logs by `trafficgen workload from-logs` "
            f"({files} file{'s' if files != 1 else ''}, {report.total('lines'):,} lines: {aggregate.messages:,} "
            f"messages taken in, {aggregate.domains.total:,} recipients). Only domains, tenants, campaigns, counts and "
            "distributions are written: no address, local part, message id or subject. Run it: trafficgen --workload "
            "THIS.toml --target MTA:PORT; options given on the command line win over this file (--concurrency, "
            "--profile, --domain-suffix...)."
        )
        + "\n"
    )


def _recipients(per_message: TopCounter[int]) -> str:
    if per_message.total == 0:
        return _comment("Recipients per message: the logs do not say; one each.") + "\n"
    ranked = per_message.top(3)
    mode = ranked[0][0]
    mean = sum(n * c for n, c in per_message.counts.items()) / max(1, per_message.total - per_message.pruned)
    spread = ", ".join(f"{n} in {100 * c / per_message.total:.1f}%" for n, c in ranked)
    return (
        _comment(f"Recipients per message: {spread} of the messages (mean {mean:.2f}): the most common.")
        + f"recipients-per-message = {mode}\n\n"
    )


def size_points(sizes: LogHistogram) -> tuple[list[float], float]:
    """The percentiles to write (BASE_PERCENTILES, then where the log's sizes are reproduced worst, to a tenth of a
    percentile) until the checked quantiles are within SIZE_TOLERANCE, and the largest difference left."""
    points = list(BASE_PERCENTILES)
    while True:
        worst, where = _worst(sizes, points)
        if worst <= SIZE_TOLERANCE or where is None or len(points) >= MAX_SIZE_POINTS:
            return points, worst
        points = sorted({*points, where})


def _worst(sizes: LogHistogram, points: list[float]) -> tuple[float, float | None]:
    """The largest difference between the quantiles the points give and the log's, checked at every whole
    percentile and half-way between two points: a size's relative distance to the log's sizes within RANK_SLACK
    percentile points of it. And the percentile to add for it (None when the points are already that close)."""
    spec = _spec(sizes, points)
    checks = sorted({*range(1, 100), *((a + b) / 2 for a, b in itertools.pairwise(points))} - set(points))
    worst, where = 0.0, None
    for p in checks:
        low = sizes.quantile(max(0.0, p - RANK_SLACK) / 100)
        high = sizes.quantile(min(100.0, p + RANK_SLACK) / 100)
        value = spec.quantile(p / 100)
        off = (low - value) / max(1.0, low) if value < low else (value - high) / max(1.0, high) if value > high else 0.0
        if off > worst:
            candidate = round(p, 1)
            worst, where = off, candidate if candidate not in points else None
    return worst, where


def _spec(sizes: LogHistogram, points: list[float], less: int = 0) -> QuantileSize:
    values = [max(1, round(sizes.quantile(p / 100)) - less) for p in points]
    for i in range(1, len(values)):
        values[i] = max(values[i], values[i - 1])
    return QuantileSize(tuple((p / 100, v) for p, v in zip(points, values, strict=True)))


def _sizes(sizes: LogHistogram) -> str:
    if sizes.count == 0:
        return _comment("Message sizes: the logs do not say; trafficgen's default.") + "\n"
    points, worst = size_points(sizes)
    spec = _spec(sizes, points, HEADER_BYTES)
    text = ",".join(f"{_key(q * 100)}={v}" for q, v in spec.points)
    return (
        _comment(
            f"Message sizes ({sizes.count:,}): their quantiles, less {HEADER_BYTES} bytes of headers, drawn "
            f"log-linearly between them; the log's quantiles are reproduced within {worst:.1%} (each whole percentile "
            f"and each half-way between two given, against the log's within {RANK_SLACK} percentile points of it; the "
            f"tolerance: {SIZE_TOLERANCE:.0%}). Median {sizes.quantile(0.5):,.0f} bytes, p99 "
            f"{sizes.quantile(0.99):,.0f}, mean {sizes.mean:,.0f}."
        )
        + f'body-size = "{text}"\n\n'
    )


def _key(percent: float) -> str:
    if percent == 0:
        return "min"
    if percent == 100:
        return "max"
    return f"p{_number(percent)}"


def stages(arrivals: Timeline, shape: Shape) -> tuple[list[str], float, float]:
    """The --profile stages of the arrivals: (stages, the logged period's start, its length in seconds)."""
    width = arrivals.width
    start = math.floor(arrivals.first / width) * width
    end = (math.floor(arrivals.last / width) + 1) * width
    buckets = round((end - start) / width)
    count = max(1, min(shape.stages, buckets))
    length = (end - start) / count
    out: list[tuple[str, float]] = []  # (rate as written, seconds)
    for i in range(count):
        due = arrivals.between(start + i * length, start + (i + 1) * length)
        rate = _number(due * shape.share * shape.speed / length)
        seconds = length / shape.speed
        if out and out[-1][0] == rate:
            out[-1] = (rate, out[-1][1] + seconds)
        else:
            out.append((rate, seconds))
    texts = [f"pause {_number(s)}s" if r == "0" else f"hold {r}/s {_number(s)}s" for r, s in out]
    return texts, start, end - start


def _profile(arrivals: Timeline, shape: Shape) -> str:
    if arrivals.total == 0:
        return _comment("Rate: the logs give no time of arrival; trafficgen's default.") + "\n"
    texts, start, length = stages(arrivals, shape)
    try:
        profiles.parse(", ".join(texts))
    except profiles.ProfileError as e:
        raise WorkloadError(
            f"the rate cannot be replayed at --speed {_number(shape.speed)} and --share {_number(shape.share * 100)}%: "
            f"{e} (a smaller --speed, a larger --share, fewer --stages)"
        ) from None
    began = datetime.datetime.fromtimestamp(start, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    total = arrivals.total * shape.share
    run = length / shape.speed
    listed = ",\n".join(f'    "{t}"' for t in texts)
    return (
        _comment(
            f"Rate: the {arrivals.total:,} arrivals of {_span(length)} from {began} (as logged), in {len(texts)} "
            f"stage{'s' if len(texts) != 1 else ''}, replayed {_number(shape.speed)} times as fast at "
            f"{_number(shape.share * 100)}% of the volume: about {total:,.0f} messages in {_span(run)}. Give "
            "--concurrency enough connections for the busiest stage's rate."
        )
        + f"profile = [\n{listed},\n]\n\n"
    )


def _span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.4g} h"
    if seconds >= 60:
        return f"{seconds / 60:.4g} min"
    return f"{seconds:.4g} s"


def _sources(count: int) -> str:
    if count < 2:
        return (
            _comment(
                f"Egress sources: {'one' if count else 'the logs name none'}; connections leave from the "
                "default address."
            )
            + "\n"
        )
    used = min(count, MAX_SOURCES)
    addresses = ", ".join(f'"{FIRST_SOURCE + i}"' for i in range(used))
    more = f" (the first {MAX_SOURCES})" if count > MAX_SOURCES else ""
    return (
        _comment(
            f"Egress sources: {count:,} seen, as that many source addresses{more}: loopback addresses (every 127.x.y.z "
            "is this host's on Linux), for a target on loopback; give this host's own with --source-address otherwise."
        )
        + f"source-address = [{addresses}]\n\n"
    )


def _domain_name(name: str) -> str | None:
    try:
        return parse_domain(name, "domain").name
    except ConfigError:
        return None


def _label_name(name: str) -> str | None:
    cleaned = "".join(c if "!" <= c <= "~" and c != ":" else "-" for c in name)[:200]
    try:
        return parse_label(cleaned, "label").name
    except ConfigError:
        return None


def _weights(
    key: str, title: str, counter: TopCounter[str], top: int, valid: Callable[[str], str | None], rest_name: str
) -> str:
    kept: list[tuple[str, int]] = []
    for name, n in counter.top(top):
        written = valid(name) if name else None
        if written is not None:
            kept.append((written, n))
    rest = counter.total - sum(n for _, n in kept)
    lines = [f"{_key_of(name)} = {_number(100 * n / counter.total)}" for name, n in kept]
    note = f"the {len(kept)} largest by name"
    if rest > 0:
        lines.append(f"{_key_of(rest_name)} = {_number(100 * rest / counter.total)}")
        note += (
            f"; the {max(0, counter.distinct - len(kept)):,} others as {rest_name}, {100 * rest / counter.total:.2f}%"
        )
    return _comment(f"{title} ({counter.total:,}, in percent): {note}.") + f"[{key}]\n" + "\n".join(lines) + "\n\n"


def _labels(key: str, title: str, counter: TopCounter[str], top: int, none_name: str) -> str:
    if set(counter.counts) <= {NO_VALUE}:
        return _comment(f"{title}: the logs name none.") + "\n"
    kept: list[tuple[str, int]] = []
    for name, n in counter.top(top):
        written = none_name if name == NO_VALUE else _label_name(name)
        if written is not None and written not in (k for k, _ in kept):
            kept.append((written, n))
    rest = counter.total - sum(n for _, n in kept)
    lines = [f"{_key_of(name)} = {_number(100 * n / counter.total)}" for name, n in kept]
    note = f"the {len(kept)} largest by name ({none_name}: messages without one)"
    if rest > 0:
        lines.append(f"{_key_of(OTHER_LABEL)} = {_number(100 * rest / counter.total)}")
        note += f"; the others as {OTHER_LABEL}, {100 * rest / counter.total:.2f}%"
    return _comment(f"{title} of the messages (in percent): {note}.") + f"[{key}]\n" + "\n".join(lines) + "\n\n"


def _key_of(name: str) -> str:
    """A name as a TOML key: a basic string (JSON's escapes are TOML's), whatever quotes or backslashes it holds."""
    return json.dumps(name)


def _comment(text: str) -> str:
    return "\n".join(textwrap.wrap(text, 116, initial_indent="# ", subsequent_indent="# ")) + "\n"


def _number(x: float) -> str:
    """A number as written in the file: up to 6 decimals, no trailing zeros."""
    text = f"{x:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"
