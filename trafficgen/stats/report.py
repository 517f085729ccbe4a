"""The report of a run, built from what was recorded: the JSON document of docs/report.md, typed by
trafficgen.stats.document. Pure: a Recorder and what the run was asked to do (a Plan) in, a Report out.

build() makes the document once, with everything the run knows at its end (the verdicts of --fail-fast and the
stairs, the reconciliation). figures() reads the numbers thresholds measure off the live counters, without encoding
a histogram or a timeline, so --fail-fast judges the run so far as build() would have reported it. recorder_of()
turns a report back into a Recorder: every histogram is in the document in HdrHistogram's standard compressed base64
form, so reports of several processes or machines merge exactly (trafficgen.stats.combine). The summary people read
is trafficgen.stats.summary; a saved report is read back by trafficgen.stats.saved.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hdrh.histogram import HdrHistogram

from mailload import native
from trafficgen import profile as profiles
from trafficgen import thresholds as judge
from trafficgen.profile import Profile
from trafficgen.stats.document import (
    SCHEMA,
    Aborted,
    ConfigView,
    Counts,
    Figures,
    LatencyMs,
    ProfileReport,
    ReconcileFailure,
    Reconciliation,
    Report,
    Schedule,
    StageReport,
    StairsVerdict,
    Thresholds,
    count_list,
    counts_of,
)
from trafficgen.stats.histogram import summary as histogram_summary
from trafficgen.stats.recorder import PHASES, Recorder, StagesState, State
from trafficgen.stats.timeline import State as TimelineState
from trafficgen.stats.timeline import from_report
from trafficgen.thresholds import Threshold
from trafficgen.version import __version__

if TYPE_CHECKING:
    from trafficgen.config import RunConfig

PERCENTILES = (("p50", 50.0), ("p75", 75.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p99_9", 99.9))
BEHIND = 0.98  # an achieved rate below this share of the asked one is reported as behind schedule


@dataclass(frozen=True)
class Plan:
    """What a run was asked to do, as config parsed it once: its rate (a throttle, or a profile), the burst, the
    count, the thresholds. A merged report has none: each instance ran its own schedule."""

    throttle_per_s: float | None = None
    max_burst: int | None = None
    message_count: int | None = None
    profile: Profile | None = None
    fail_if: tuple[Threshold, ...] = ()

    @classmethod
    def of(cls, config: RunConfig) -> Plan:
        throttle = config.throttle
        return cls(
            throttle_per_s=throttle.per_second if throttle else None,
            max_burst=throttle.max_burst if throttle else None,
            message_count=config.message_count,
            profile=config.profile,
            fail_if=config.fail_if,
        )


def _ms(microseconds: float) -> float:
    return round(microseconds / 1000, 3)


def latency_ms(histogram: HdrHistogram) -> LatencyMs:
    """min, mean, percentiles and max of a microsecond histogram, in milliseconds."""
    count = histogram.get_total_count()
    if not count:
        return {"count": 0, "min": None, "mean": None, "p50": None, "p75": None, "p90": None, "p95": None,
                "p99": None, "p99_9": None, "max": None}  # fmt: skip
    mean, (p50, p75, p90, p95, p99, p99_9) = histogram_summary(histogram, [p for _, p in PERCENTILES])
    return {
        "count": count,
        "min": _ms(histogram.get_min_value()),
        "mean": _ms(mean),
        "p50": _ms(p50),
        "p75": _ms(p75),
        "p90": _ms(p90),
        "p95": _ms(p95),
        "p99": _ms(p99),
        "p99_9": _ms(p99_9),
        "max": _ms(histogram.get_max_value()),
    }


def _latency(histogram: HdrHistogram | None) -> LatencyMs | None:
    return None if histogram is None else latency_ms(histogram)


def _encoded(histogram: HdrHistogram) -> str:
    """HdrHistogram's standard compressed base64 form."""
    return str(histogram.encode().decode("ascii"))


def schedule(plan: Plan, attempted: int, window: float) -> Schedule | None:
    """With --throttle or --profile: the rate asked and achieved, and how many messages fell due but were never
    sent."""
    asked = plan.throttle_per_s
    if plan.profile is not None:
        due = profiles.whole(plan.profile.count_by(window))
        asked = due / window if window > 0 else 0.0
    elif asked:
        due = max(0, math.ceil(window * asked - 1e-9)) + (plan.max_burst or 1) - 1
    else:
        return None
    if plan.message_count:
        due = min(due, plan.message_count)
    achieved = attempted / window if window > 0 else 0.0
    return {
        "asked_per_s": asked,
        "achieved_per_s": round(achieved, 3),
        "due": due,
        "never_sent": max(0, due - attempted),
        "behind": achieved < asked * BEHIND and due > attempted,
    }


def _stage(profile: Profile, recorder: Recorder, index: int, window: float) -> StageReport:
    """One stage of a --profile: what it made due, what was sent and answered of the messages due in it."""
    counted = recorder.stage_counts or []
    start = profile.stage_start(index)
    span = min(profile.stage(index).duration, max(0.0, window - start))
    due = profile.stage_due(index, until=window)
    row = counts_of(counted[index] if index < len(counted) else [0, 0, 0, 0, 0])
    attempted = row["attempted"]
    asked = due / span if span > 0 else 0.0
    achieved = attempted / span if span > 0 else 0.0
    histogram = recorder.stage_latency[index] if index < len(recorder.stage_latency) else None
    return {
        **profiles.stage_dict(profile, index),
        "due": due,
        **row,
        "asked_per_s": round(asked, 3),
        "achieved_per_s": round(achieved, 3),
        "never_sent": max(0, due - attempted),
        "behind": achieved < asked * BEHIND and due > attempted,
        "latency_from_intended_ms": _latency(histogram),
        "histogram": _encoded(histogram) if histogram is not None else None,
    }


def profile_report(
    profile: Profile | None, recorder: Recorder, window: float, stairs: StairsVerdict | None = None
) -> ProfileReport | None:
    """With --profile: each stage that started within the sending window, with what was due, sent and answered
    in it and its latency from the intended time (messages count in the stage they fell due in), and the stairs'
    verdict."""
    if profile is None:
        return None
    counted = recorder.stage_counts or []
    stages = []
    for index in range(profile.stage_count):
        if profile.stage_start(index) >= window and index >= len(counted):
            break
        stages.append(_stage(profile, recorder, index, window))
    return {"stages": stages, "stairs": stairs}


def thresholds_report(
    fail_if: tuple[Threshold, ...], figures: Figures, aborted: Aborted | None = None
) -> Thresholds | None:
    """With --fail-if: each threshold measured on the report, and whether all passed (not when --fail-fast
    stopped the run: `aborted`)."""
    if not fail_if:
        return None
    results = judge.evaluate(fail_if, figures)
    return {"passed": all(r["passed"] for r in results) and aborted is None, "results": results, "aborted": aborted}


def figures(recorder: Recorder, plan: Plan, window: float) -> Figures:
    """The run so far as thresholds measure it, read off the live counters after `window` seconds of sending: the
    numbers build() would report then, without encoding a histogram or a timeline (trafficgen.watch)."""
    totals = recorder.totals().as_dict()
    seconds = round(window, 3)
    return {
        "totals": totals,
        "latency_ms": latency_ms(recorder.latency),
        "latency_from_intended_ms": _latency(recorder.corrected),
        "elapsed_s": seconds,
        "sending_s": seconds,
        "schedule": schedule(plan, totals["attempted"], window),
        "domains": recorder.domain_totals(),
        "tenants": recorder.dimension_totals("tenants"),
        "campaigns": recorder.dimension_totals("campaigns"),
        "sender_domains": recorder.dimension_totals("sender_domains"),
        "source_addresses": recorder.dimension_totals("source_addresses"),
    }


NO_PLAN = Plan()


def build(
    recorder: Recorder,
    *,
    run_id: str,
    target: str,
    started: float,
    elapsed: float,
    window: float | None = None,
    config: ConfigView,
    stopped_by: str | None = None,
    plan: Plan = NO_PLAN,
    aborted: Aborted | None = None,
    stairs: StairsVerdict | None = None,
    reconciliation: Reconciliation | ReconcileFailure | None = None,
) -> Report:
    """The report of what `recorder` counted over a run of `elapsed` seconds (sending for `window` of them), with
    the verdicts of --fail-fast (`aborted`) and of the stairs, and the reconciliation, when the run had them."""
    totals = recorder.totals().as_dict()
    attempted = totals["attempted"]
    window = elapsed if window is None else window
    per_second = attempted / window if window > 0 else 0.0
    replies = sorted(recorder.replies.items(), key=lambda item: (-item[1], item[0]))
    from_domains = recorder.reply_domain_counts()
    accepted, tempfailed, permfailed, errors = recorder.recipients
    document: Report = {
        "schema": SCHEMA,
        "tool": f"trafficgen {__version__} ({native.running().kind.replace('pure', 'pure Python')})",
        "run_id": run_id,
        "target": target,
        "started_at": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(timespec="milliseconds"),
        "elapsed_s": round(elapsed, 3),
        "sending_s": round(window, 3),
        "stopped_by": stopped_by,
        "config": config,
        "totals": totals,
        "success_rate": round(totals["accepted"] / attempted, 6) if attempted else None,
        "recipients": {"accepted": accepted, "tempfailed": tempfailed, "permfailed": permfailed, "errors": errors},
        "throughput": {
            "per_second": round(per_second, 3),
            "per_minute": round(per_second * 60, 1),
            "per_hour": round(per_second * 3600),
        },
        "schedule": schedule(plan, attempted, window),
        "latency_ms": latency_ms(recorder.latency),
        "latency_from_intended_ms": _latency(recorder.corrected),
        "phases_ms": {name: latency_ms(recorder.phases[name]) for name in PHASES},
        "domains": recorder.domain_totals(),
        "tenants": recorder.dimension_totals("tenants"),
        "campaigns": recorder.dimension_totals("campaigns"),
        "sender_domains": recorder.dimension_totals("sender_domains"),
        "source_addresses": recorder.dimension_totals("source_addresses"),
        "replies": [
            {"code": code, "text": text, "count": n, "domains": from_domains.get((code, text), {})}
            for (code, text), n in replies
        ],
        "errors": [{"text": text, "count": n} for text, n in recorder.errors.most_common()],
        "connections": {
            "opened": recorder.connections_opened,
            "peak": recorder.connections_peak,
            "failed": sum(recorder.connection_errors.values()),
            "errors": [{"text": text, "count": n} for text, n in recorder.connection_errors.most_common()],
        },
        "histogram": _encoded(recorder.latency),
        "histograms": {
            "latency_from_intended": _encoded(recorder.corrected) if recorder.corrected else None,
            "phases": {name: _encoded(recorder.phases[name]) for name in PHASES},
        },
        "profile": profile_report(plan.profile, recorder, window, stairs),
        "timeline": recorder.timeline.report(started),
        "thresholds": None,
    }
    # Measured on the document itself: the thresholds judge exactly the numbers the report shows.
    document["thresholds"] = thresholds_report(plan.fail_if, document, aborted)
    if reconciliation is not None:
        document["reconciliation"] = reconciliation
    return document


# --- a report back as a Recorder ----------------------------------------------------------------------------------


def timeline_of(report: Report) -> TimelineState | None:
    """A report's timeline as a Timeline's state (None for a report written before timelines)."""
    timeline = report["timeline"]
    if not timeline:
        return None
    return from_report(timeline, list(report["domains"])).state()


def _rows(rows: dict[str, Counts]) -> list[list[int]]:
    return [count_list(row) for row in rows.values()]


def recorder_of(report: Report) -> Recorder:
    """A Recorder holding what a report holds, for merging reports."""
    domains = list(report["domains"])
    recorder = Recorder(domains)
    recipients = report["recipients"]
    connections = report["connections"]
    dimensions = {
        "tenants": report["tenants"],
        "campaigns": report["campaigns"],
        "sender_domains": report["sender_domains"],
        "source_addresses": report["source_addresses"],
    }
    state: State = {
        "domains": domains,
        "counts": _rows(report["domains"]),
        "recipients": [
            recipients["accepted"],
            recipients["tempfailed"],
            recipients["permfailed"],
            recipients["errors"],
        ],
        "replies": [(r["code"], r["text"], r["count"]) for r in report["replies"]],
        "reply_domains": [
            (r["code"], r["text"], name, n) for r in report["replies"] for name, n in r.get("domains", {}).items()
        ],
        "timeline": timeline_of(report),
        "errors": {e["text"]: e["count"] for e in report["errors"]},
        "latency": report["histogram"],
        "corrected": report["histograms"]["latency_from_intended"],
        "phases": report["histograms"]["phases"],
        "connections_opened": connections["opened"],
        "connections_open": 0,
        "connections_peak": connections["peak"],
        "connection_errors": {e["text"]: e["count"] for e in connections["errors"]},
        "marks": None,
        "dimensions": {key: {"names": list(rows), "counts": _rows(rows)} for key, rows in dimensions.items() if rows},
        "stages": _stages_state(report),
    }
    recorder.merge(state)
    return recorder


def _stages_state(report: Report) -> StagesState | None:
    """A report's profile stages as a Recorder's state holds them (None without stages or their histograms)."""
    stages = report["profile"]["stages"] if report["profile"] else []
    latency = [stage["histogram"] for stage in stages]
    if not stages or not all(latency):
        return None
    return {"counts": [count_list(stage) for stage in stages], "latency": [h for h in latency if h]}
