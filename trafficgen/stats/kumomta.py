"""--output kumomta: the closing lines KumoMTA's traffic-gen prints, from a report (pure).

Its users' scripts grep them, so they are written as that tool writes them: counts with thousands separators, and
durations as Rust's Debug form of a Duration writes them (`10.001s`, `1.234ms`, `250µs`, `0ns`: the largest unit
below the value, the fraction without trailing zeros), latency from microseconds:

    sent 9,882 messages, failed 1,124 over 10.002s.
    transaction latency: avg=199.863ms min=4µs max=6.164479s p50=130.687ms p75=255.103ms ... p99.9=2.281471s
    overall rate: 988 msgs/s, 59,280 msgs/minute, 3,556,800 msgs/hour

`sent` counts the messages the target accepted and `failed` every other one (tempfailed, permfailed, errors), and
the rate is of the accepted messages, as its counter is; the latency is of every transaction.
"""

from __future__ import annotations

from trafficgen.stats.document import Report, latency_values

PERCENTILES = (("50", "p50"), ("75", "p75"), ("90", "p90"), ("95", "p95"), ("99", "p99"), ("99.9", "p99_9"))


def duration(nanos: int) -> str:
    """A duration as Rust's `{:?}` of a std::time::Duration writes it."""
    nanos = max(0, nanos)
    seconds, rest = divmod(nanos, 1_000_000_000)
    if seconds:
        return _decimal(seconds, rest, 9) + "s"
    if rest >= 1_000_000:
        return _decimal(rest // 1_000_000, rest % 1_000_000, 6) + "ms"
    if rest >= 1_000:
        return _decimal(rest // 1_000, rest % 1_000, 3) + "µs"
    return f"{rest}ns"


def _decimal(whole: int, fraction: int, digits: int) -> str:
    if not fraction:
        return str(whole)
    return f"{whole}.{fraction:0{digits}d}".rstrip("0")


def _micros(milliseconds: float | None) -> int:
    return 0 if milliseconds is None else round(milliseconds * 1000)


def lines(report: Report) -> list[str]:
    """The three lines, from a report of trafficgen.stats.report."""
    totals = report["totals"]
    sent = totals["accepted"]
    failed = totals["attempted"] - sent
    elapsed = float(report["elapsed_s"])
    latency = latency_values(report["latency_ms"])
    parts = [f"{name}={duration(_micros(latency.get(key)) * 1000)}" for name, key in (
        ("avg", "mean"), ("min", "min"), ("max", "max"))]  # fmt: skip
    parts += [f"p{name}={duration(_micros(latency.get(key)) * 1000)}" for name, key in PERCENTILES]
    per_second = int(sent / elapsed) if elapsed > 0 else 0
    return [
        f"sent {sent:,} messages, failed {failed:,} over {duration(round(elapsed * 1e9))}.",
        "transaction latency: " + " ".join(parts) + " ",
        f"overall rate: {per_second:,} msgs/s, {per_second * 60:,} msgs/minute, {per_second * 3600:,} msgs/hour",
    ]
