"""Thresholds: `--fail-if "p99 < 2s"`, and the conditions of a stairs profile, parsed and evaluated (no I/O).

A threshold is a condition that must hold, as k6 writes them: `p99 < 2s`, `success_rate > 0.95`,
`tempfailed < 5%`, scoped to one domain (`gmail.com: tempfailed < 10%`) or to one value of another dimension
(`tenant=acme: success_rate > 99%`). It is measured on Figures (trafficgen.stats.document): a whole report, the live
counters of the run so far, or a stairs step's own counts, so the run's end, --fail-fast and the stairs all read the
same numbers the same way.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mailload import units
from trafficgen.stats.document import Counts, Figures, LatencyMs, ThresholdResult

# Latency percentiles as the report names them (`p99_9`), and as people write them (`p99.9`).
LATENCY = {"min": "min", "mean": "mean", "max": "max", "p50": "p50", "p75": "p75", "p90": "p90", "p95": "p95"}
LATENCY |= {"p99": "p99", "p99.9": "p99_9", "p99_9": "p99_9", "median": "p50"}
COUNTS = {
    "attempted": "attempted",
    "sent": "attempted",
    "accepted": "accepted",
    "tempfailed": "tempfailed",
    "tempfail": "tempfailed",
    "deferred": "tempfailed",
    "permfailed": "permfailed",
    "permfail": "permfailed",
    "bounced": "permfailed",
    "errors": "errors",
    "error": "errors",
}
RATES = {"success_rate": "success_rate", "throughput": "throughput", "never_sent": "never_sent"}
METRICS = sorted({*LATENCY, *COUNTS, *RATES} - {"sent", "deferred", "bounced", "median", "tempfail", "permfail"})
# Scopes: a bare name is a domain; `KIND=NAME` one value of another dimension (the report's key for it).
SCOPES = {
    "domain": "domains",
    "tenant": "tenants",
    "campaign": "campaigns",
    "sender-domain": "sender_domains",
    "source": "source_addresses",
    "source-address": "source_addresses",
}
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "=": operator.eq,
}
_EXPRESSION = re.compile(
    r"^\s*(?:(?:(?P<kind>[a-z-]+)\s*=\s*)?(?P<scope>\[[^\]]+\]|[^\s:<>=!\[]+)\s*:\s*)?"
    r"(?P<metric>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op><=|>=|==|!=|<|>|=)\s*(?P<value>\S.*?)\s*$"
)


@dataclass(frozen=True, slots=True)
class Threshold:
    """One condition: `metric op limit`, on the whole run or one scope."""

    text: str  # as written, for the summary and the report
    metric: str  # the canonical name: p99, success_rate, tempfailed, throughput...
    op: str
    limit: float  # in the metric's unit: ms, a fraction (shares and rates), a count, msg/s
    share: bool = False  # a count written with %: its share of the attempted messages
    scope_key: str | None = None  # the report's key of the scope's dimension ("domains", "tenants"...)
    scope: str | None = None  # the domain, tenant... it applies to

    @property
    def kind(self) -> str:
        if self.metric in LATENCY.values():
            return "latency"
        if self.metric in ("success_rate", "throughput"):
            return self.metric
        return "share" if self.share else "count"

    @property
    def unit(self) -> str:
        return {"latency": "ms", "success_rate": "ratio", "throughput": "msg/s", "share": "ratio"}.get(
            self.kind, "count"
        )

    def holds(self, value: float | None) -> bool:
        """Whether the measured value meets the condition; no value (nothing measured) never does."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return OPERATORS[self.op](value, self.limit)


def parse(text: str) -> Threshold:
    """A threshold as written; ValueError names what is wrong."""
    m = _EXPRESSION.match(text)
    if not m:
        examples = '"p99 < 2s", "success_rate > 0.95" or "gmail.com: tempfailed < 10%"'
        raise ValueError(f"{text!r} is not a threshold like {examples}")
    name = m.group("metric").lower()
    metric = LATENCY.get(name) or COUNTS.get(name) or RATES.get(name)
    if metric is None:
        raise ValueError(f"{text!r}: unknown metric {name!r} (use one of {', '.join(METRICS)})")
    scope_key, scope = _scope(text, m.group("kind"), m.group("scope"))
    if scope_key is not None and (metric in LATENCY.values() or metric == "never_sent"):
        raise ValueError(f"{text!r}: {name} is measured for the whole run, not per {scope_key[:-1].replace('_', ' ')}")
    limit, share = _limit(text, metric, m.group("value").strip())
    return Threshold(text.strip(), metric, m.group("op"), limit, share, scope_key, scope)


def _scope(text: str, kind: str | None, scope: str | None) -> tuple[str | None, str | None]:
    if scope is None:
        return None, None
    key = SCOPES.get((kind or "domain").lower())
    if key is None:
        raise ValueError(f"{text!r}: unknown scope {kind!r} (use domain=, tenant=, campaign=, sender-domain=, source=)")
    name = scope.strip("[]") if key == "source_addresses" else scope.lower().rstrip(".")
    return key, name


def _limit(text: str, metric: str, value: str) -> tuple[float, bool]:
    """The limit in the metric's unit, and whether it was written as a share (%)."""
    if metric in LATENCY.values():
        if re.fullmatch(r"[0-9.,_]+", value):
            raise ValueError(f"{text!r}: give the latency a unit, like 2s or 300ms")
        try:
            return units.parse_duration(value) * 1000.0, False
        except ValueError as e:
            raise ValueError(f"{text!r}: {e}") from None
    if metric == "throughput":
        try:
            return (units.parse_rate(value).per_second if "/" in value else _number(value)), False
        except ValueError as e:
            raise ValueError(f"{text!r}: {e}") from None
    percent = value.endswith("%")
    try:
        number = _number(value.removesuffix("%").strip())
    except ValueError:
        raise ValueError(f"{text!r}: {value!r} is not a number") from None
    if metric == "success_rate":
        number = number / 100 if percent else number
        if not 0 <= number <= 1:
            raise ValueError(f"{text!r}: a success rate is between 0 and 1 (or 0% and 100%)")
        return number, False
    if percent:
        if not 0 <= number <= 100:
            raise ValueError(f"{text!r}: a share is between 0% and 100%")
        return number / 100, True
    return number, False


def _number(text: str) -> float:
    number = float(text.replace(",", "").replace("_", ""))
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{text!r} is not a finite number of at least 0")
    return number


# --- measuring ----------------------------------------------------------------------------------------------------


def latency_of(figures: Figures) -> LatencyMs | None:
    """The latency thresholds read: from the intended send time when the run had a schedule (open loop), else
    the transaction's."""
    return figures.get("latency_from_intended_ms") or figures.get("latency_ms")


def _value(values: Mapping[str, object] | None, key: str) -> float | None:
    """`values[key]` when it is a number (a percentile of a latency, a count of a row), else None."""
    value = values.get(key) if values is not None else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# The rows of counts a scope reads, by the report's key of its dimension.
ROWS: dict[str, Callable[[Figures], dict[str, Counts] | None]] = {
    "domains": lambda figures: figures.get("domains"),
    "tenants": lambda figures: figures.get("tenants"),
    "campaigns": lambda figures: figures.get("campaigns"),
    "sender_domains": lambda figures: figures.get("sender_domains"),
    "source_addresses": lambda figures: figures.get("source_addresses"),
}


def measure(threshold: Threshold, figures: Figures) -> float | None:
    """The threshold's metric in a report (or the live counters, or a step's); None when there is nothing to
    measure."""
    metric = threshold.metric
    if metric in LATENCY.values():
        return _value(latency_of(figures), metric)
    if metric == "never_sent":
        return _never_sent(threshold, figures)
    row: Mapping[str, object] | None = figures.get("totals") or {}
    if threshold.scope is not None:
        assert threshold.scope_key is not None
        row = (ROWS[threshold.scope_key](figures) or {}).get(threshold.scope)
        if row is None:
            return None
    return _count_measure(threshold, row or {}, figures)


def _never_sent(threshold: Threshold, figures: Figures) -> float | None:
    """Messages that fell due and were never sent: a count, or a share of those due."""
    plan = figures.get("schedule")
    if plan is None:
        return 0.0 if not threshold.share else None
    never, due = plan["never_sent"], plan["due"]
    return (never / due if due else None) if threshold.share else float(never)


def _count_measure(threshold: Threshold, row: Mapping[str, object], figures: Figures) -> float | None:
    """A measure of one row of counts (the totals, or one domain's...): the success rate, the throughput, or a
    count or its share of the attempted."""
    metric = threshold.metric
    attempted = _value(row, "attempted") or 0.0
    if metric == "success_rate":
        accepted = _value(row, "accepted")
        return accepted / attempted if attempted and accepted is not None else None
    if metric == "throughput":
        seconds = figures.get("sending_s") or figures.get("elapsed_s") or 0.0
        return attempted / seconds if seconds else None
    count = _value(row, metric)
    if count is None:
        return None
    if threshold.share:
        return count / attempted if attempted else None
    return count


def shown(threshold: Threshold, value: float | None) -> str:
    """The measured value as people read it: "1,234.5 ms", "4.20%", "17"."""
    if value is None:
        return "nothing measured"
    if math.isinf(value):
        return "unanswered"
    kind = threshold.kind
    if kind == "latency":
        return f"{value:,.1f} ms"
    if kind in ("share", "success_rate"):
        return f"{value * 100:.2f}%"
    if kind == "throughput":
        return f"{value:,.1f}/s"
    return f"{value:,.0f}"


def evaluate(thresholds: Sequence[Threshold], figures: Figures) -> list[ThresholdResult]:
    """Each threshold measured: what the report's `thresholds.results` holds."""
    results: list[ThresholdResult] = []
    for threshold in thresholds:
        value = measure(threshold, figures)
        results.append(
            {
                "expression": threshold.text,
                "metric": threshold.metric,
                "scope": threshold.scope,
                "value": None if value is None or math.isinf(value) else round(value, 6),
                "shown": shown(threshold, value),
                "limit": threshold.limit,
                "unit": threshold.unit,
                "passed": threshold.holds(value),
            }
        )
    return results


def first_failed(thresholds: Sequence[Threshold], figures: Figures) -> tuple[Threshold, float | None] | None:
    """The first threshold that does not hold, with its value; None when all hold."""
    for threshold in thresholds:
        value = measure(threshold, figures)
        if not threshold.holds(value):
            return threshold, value
    return None
