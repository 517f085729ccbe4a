"""The report as typed values: the JSON document of a run (schema 2, docs/report.md), section by section.

Building, merging, comparing and rendering a report all talk through these types. They are TypedDicts, so the
document is the JSON itself: json.dumps writes it as it was built (its keys in the order they were put), and
`trafficgen.run()` hands it over as a dict. A saved report becomes a `Report` only through trafficgen.stats.saved,
which validates it against these same types (and reads a report of schema 1 as schema 2).

Figures is the part of a report that thresholds measure, read-only, so that a whole report, the live counters of a
run (trafficgen.watch) and one step of the stairs (trafficgen.profile) are measured by one function.
"""

from __future__ import annotations

from typing import Literal, NotRequired, final

from typing_extensions import ReadOnly, TypeAliasType, TypedDict

SCHEMA = 2
# Schema 1 differs only in its reconciliation (one verdict per message, in flat keys): saved.upgrade() rewrites it.
READABLE_SCHEMAS = (1, SCHEMA)

# A JSON value: the report's `config` holds each option as the run used it (mailload.options declares them).
Json = TypeAliasType("Json", "bool | int | float | str | list[Json] | dict[str, Json] | None")
ConfigView = dict[str, Json]


def json_value(value: object) -> Json:
    """`value` as JSON (tuples as lists); TypeError for anything JSON cannot hold."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: json_value(item) for key, item in value.items()}
    raise TypeError(f"{value!r} is not a JSON value")


# --- counts and latency --------------------------------------------------------------------------------------------


class Counts(TypedDict):
    """The five counts: every attempted message has exactly one outcome."""

    attempted: int
    accepted: int
    tempfailed: int
    permfailed: int
    errors: int


COUNT_KEYS = ("attempted", "accepted", "tempfailed", "permfailed", "errors")


def count_values(counts: Counts) -> dict[str, int]:
    """The five counts by name, in COUNT_KEYS' order."""
    return dict(zip(COUNT_KEYS, count_list(counts), strict=True))


def count_list(counts: Counts) -> list[int]:
    """The five counts as [attempted, accepted, tempfailed, permfailed, errors]."""
    return [counts["attempted"], counts["accepted"], counts["tempfailed"], counts["permfailed"], counts["errors"]]


def accepted_share(counts: Counts | None) -> float | None:
    """The share of the attempted messages accepted; None when there are no counts or nothing was attempted."""
    return counts["accepted"] / counts["attempted"] if counts and counts["attempted"] else None


def counts_of(values: list[int]) -> Counts:
    """The five counts of [attempted, accepted, tempfailed, permfailed, errors]."""
    attempted, accepted, tempfailed, permfailed, errors = values
    return {
        "attempted": attempted,
        "accepted": accepted,
        "tempfailed": tempfailed,
        "permfailed": permfailed,
        "errors": errors,
    }


class RecipientCounts(TypedDict):
    """Recipients by outcome: one refused at RCPT has its own, the others share their message's."""

    accepted: int
    tempfailed: int
    permfailed: int
    errors: int


class Throughput(TypedDict):
    per_second: float
    per_minute: float
    per_hour: int


class LatencyMs(TypedDict):
    """min, mean, percentiles and max of an HDR histogram, in milliseconds (None when it counted nothing)."""

    count: int
    min: float | None
    mean: float | None
    p50: float | None
    p75: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    p99_9: float | None
    max: float | None


LATENCY_KEYS = ("min", "mean", "p50", "p75", "p90", "p95", "p99", "p99_9", "max")


def latency_values(latency: LatencyMs | None) -> dict[str, float | None]:
    """A latency's statistics by name, in LATENCY_KEYS' order (all None for no latency)."""
    if latency is None:
        return dict.fromkeys(LATENCY_KEYS)
    return {
        "min": latency["min"],
        "mean": latency["mean"],
        "p50": latency["p50"],
        "p75": latency["p75"],
        "p90": latency["p90"],
        "p95": latency["p95"],
        "p99": latency["p99"],
        "p99_9": latency["p99_9"],
        "max": latency["max"],
    }


class Schedule(TypedDict):
    """With --throttle or --profile: the rate asked and achieved, and the messages due but never sent."""

    asked_per_s: float
    achieved_per_s: float
    due: int
    never_sent: int
    behind: bool


class Reply(TypedDict):
    code: int
    text: str
    count: int
    domains: NotRequired[dict[str, int]]  # absent from reports written before replies said where they came from


class TextCount(TypedDict):
    text: str
    count: int


class Connections(TypedDict):
    opened: int
    peak: int
    failed: int
    errors: list[TextCount]


class Histograms(TypedDict):
    latency_from_intended: str | None
    phases: dict[str, str]


# --- the profile and the thresholds --------------------------------------------------------------------------------


class StageShape(TypedDict):
    """A stage of a --profile as written: its kind, when it starts, how long, from and to which rate."""

    stage: str
    kind: str
    start_s: float
    duration_s: float
    from_per_s: float
    to_per_s: float


class StageReport(StageShape):
    """A stage that started within the sending window: what it made due, what was sent and answered in it."""

    due: int
    attempted: int
    accepted: int
    tempfailed: int
    permfailed: int
    errors: int
    asked_per_s: float
    achieved_per_s: float
    never_sent: int
    behind: bool
    latency_from_intended_ms: LatencyMs | None
    histogram: str | None


class StairsVerdict(TypedDict):
    """The stairs' verdict: the last rate that held, the one that did not and why."""

    last_held_per_s: float | None
    failed_per_s: float | None
    reason: str | None


class ProfileReport(TypedDict):
    stages: list[StageReport]
    stairs: StairsVerdict | None


class ThresholdResult(TypedDict):
    """One --fail-if threshold measured: its value in its unit, as people read it, and whether it held."""

    expression: str
    metric: str
    scope: str | None
    value: float | None
    shown: str
    limit: float
    unit: str
    passed: bool


class Aborted(TypedDict):
    """The --fail-fast threshold that stopped the run, its value and when."""

    expression: str
    value: float | None
    shown: str
    at_s: float


class Thresholds(TypedDict):
    passed: bool
    results: list[ThresholdResult]
    aborted: Aborted | None


# --- the run over time ---------------------------------------------------------------------------------------------


class Percentiles(TypedDict):
    p50: float
    p90: float
    p99: float


class Point(Counts):
    """One interval of the timeline: the outcomes that came in it, the connections at its end, its latency."""

    at: int
    t_s: float
    connections: int | None
    latency_ms: NotRequired[Percentiles | None]  # absent from a point of a report written before it was measured
    latency_from_intended_ms: NotRequired[Percentiles | None]


class DomainPoint(TypedDict):
    at: int
    t_s: float
    domains: dict[str, Counts]


class DomainTimeline(TypedDict):
    interval_s: int
    points: list[DomainPoint]


class TimelineHistograms(TypedDict):
    latency: list[str | None]
    intended: list[str | None]


class TimelineReport(TypedDict):
    interval_s: int
    points: list[Point]
    domains: DomainTimeline
    histograms: NotRequired[TimelineHistograms]  # absent when the timeline has no point


# --- the reconciliation --------------------------------------------------------------------------------------------

Per = Literal["recipient", "message", "mixed"]


class RecipientOutcomes(TypedDict):
    """What became of the recipients the target accepted (mailload.contract.RECIPIENT_OUTCOMES), and details."""

    accepted: int
    delivered: int
    duplicated: int
    bounced: int
    expired: int
    deferred: int
    pending: int
    lost: int
    unknown: int
    dsn_returned: int
    bounced_without_dsn: int
    dsn_after_delivery: int
    unexpected: int
    attempts: dict[str, int]


class MessageOutcomes(TypedDict):
    """What became of the messages the target accepted (mailload.contract.MESSAGE_OUTCOMES)."""

    accepted: int
    delivered: int
    partly_delivered: int
    duplicated: int
    bounced: int
    expired: int
    deferred: int
    pending: int
    lost: int
    unknown: int
    attempts: dict[str, int]


def recipient_outcomes(counts: dict[str, int], attempts: dict[str, int]) -> RecipientOutcomes:
    """The recipients' view from counts by name (a name not counted is 0)."""
    n = counts.get
    return {
        "accepted": n("accepted", 0),
        "delivered": n("delivered", 0),
        "duplicated": n("duplicated", 0),
        "bounced": n("bounced", 0),
        "expired": n("expired", 0),
        "deferred": n("deferred", 0),
        "pending": n("pending", 0),
        "lost": n("lost", 0),
        "unknown": n("unknown", 0),
        "dsn_returned": n("dsn_returned", 0),
        "bounced_without_dsn": n("bounced_without_dsn", 0),
        "dsn_after_delivery": n("dsn_after_delivery", 0),
        "unexpected": n("unexpected", 0),
        "attempts": attempts,
    }


def message_outcomes(counts: dict[str, int], attempts: dict[str, int]) -> MessageOutcomes:
    """The messages' view from counts by name (a name not counted is 0)."""
    n = counts.get
    return {
        "accepted": n("accepted", 0),
        "delivered": n("delivered", 0),
        "partly_delivered": n("partly_delivered", 0),
        "duplicated": n("duplicated", 0),
        "bounced": n("bounced", 0),
        "expired": n("expired", 0),
        "deferred": n("deferred", 0),
        "pending": n("pending", 0),
        "lost": n("lost", 0),
        "unknown": n("unknown", 0),
        "attempts": attempts,
    }


class Sample(TypedDict):
    id: str
    recipient: str | None
    sink_saw: str | None
    mta_said: NotRequired[str | None]


class TransitStats(TypedDict):
    count: int
    min: int
    p50: int
    p90: int
    p99: int
    max: int


class Transit(TypedDict):
    all: TransitStats | None
    domains: dict[str, TransitStats]
    clock_skew: int


class Counted(TypedDict):
    """One reading of the sinks' ledgers against our marks (trafficgen.reconcile.reconcile)."""

    per: Per
    recipients: RecipientOutcomes
    messages: MessageOutcomes
    samples: dict[str, list[Sample]]


@final
class Reconciliation(Counted):
    sink: str
    mta_queue: str | None
    waited_s: NotRequired[float]  # absent from a merged report
    transit_ms: NotRequired[Transit | None]
    marks: NotRequired[str]  # what the target accepted, for `report reconcile`
    marks_per_message: NotRequired[int]


@final
class ReconcileFailure(TypedDict):
    """A sink's ledger (or the MTA's queue) could not be read."""

    sink: str
    error: str
    marks: NotRequired[str]
    marks_per_message: NotRequired[int]


# --- the report ----------------------------------------------------------------------------------------------------


class Due(TypedDict):
    """Of a schedule, what thresholds read: the messages due, and those never sent."""

    due: ReadOnly[int]
    never_sent: ReadOnly[int]


class Figures(TypedDict, total=False):
    """What a threshold measures (trafficgen.thresholds): a report is one, and so are the live counters of a run and
    the counts of one step of the stairs, which hold only what they have."""

    totals: ReadOnly[Counts]
    latency_ms: ReadOnly[LatencyMs | None]
    latency_from_intended_ms: ReadOnly[LatencyMs | None]
    elapsed_s: ReadOnly[float]
    sending_s: ReadOnly[float]
    schedule: ReadOnly[Due | None]
    domains: ReadOnly[dict[str, Counts]]
    tenants: ReadOnly[dict[str, Counts]]
    campaigns: ReadOnly[dict[str, Counts]]
    sender_domains: ReadOnly[dict[str, Counts]]
    source_addresses: ReadOnly[dict[str, Counts]]


class Report(TypedDict):
    """The report of a run, or of runs merged (trafficgen.stats.report builds it, docs/report.md says each key)."""

    schema: int
    tool: str
    run_id: str
    target: str
    started_at: str
    elapsed_s: float
    sending_s: float
    stopped_by: str | None
    config: ConfigView
    totals: Counts
    success_rate: float | None
    recipients: RecipientCounts
    throughput: Throughput
    schedule: Schedule | None
    latency_ms: LatencyMs
    latency_from_intended_ms: LatencyMs | None
    phases_ms: dict[str, LatencyMs]
    domains: dict[str, Counts]
    tenants: dict[str, Counts]
    campaigns: dict[str, Counts]
    sender_domains: dict[str, Counts]
    source_addresses: dict[str, Counts]
    replies: list[Reply]
    errors: list[TextCount]
    connections: Connections
    histogram: str
    histograms: Histograms
    profile: ProfileReport | None
    timeline: TimelineReport | None  # None: a report of schema 1 written before timelines
    thresholds: Thresholds | None
    reconciliation: NotRequired[Reconciliation | ReconcileFailure]


# --- a comparison of two reports (`report compare --json`) ---------------------------------------------------------


class Pair(TypedDict):
    before: float | None
    after: float | None
    change_percent: float | None


class SharePair(Pair):
    """A share (the success rate): its change in percentage points too."""

    change_points: float | None


class Regression(TypedDict):
    metric: str
    before: float | None
    after: float | None
    change_percent: float | None
    change_points: NotRequired[float | None]
    text: str


class DomainChange(TypedDict):
    accepted_before: float | None
    accepted_after: float | None


class Comparison(TypedDict):
    before: str
    after: str
    warnings: list[str]
    throughput_per_s: Pair
    success_rate: SharePair
    totals: dict[str, Pair]
    latency: Literal["from_intended", "transaction"]
    latency_ms: dict[str, Pair]
    domains: dict[str, DomainChange]
    fail_if_regressed_percent: float | None
    regressions: list[Regression]
    regressed: bool
