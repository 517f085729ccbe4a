"""Reports of several instances or runs: merged exactly, or compared before/after.

merge() adds totals, domains, replies and errors, and merges every HDR histogram, so the merged percentiles are
those of all the messages (never an average of percentiles). compare() lists what changed between two reports;
comparison() says it as data, with what regressed by more than a given percentage and how the two runs differ
(target, concurrency, workload), so a before/after comparison can gate a change in CI.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import IO, Literal

from rich import box
from rich.table import Table

from mailload import contract
from trafficgen.stats import report as reports
from trafficgen.stats.document import (
    COUNT_KEYS,
    LATENCY_KEYS,
    Comparison,
    ConfigView,
    DomainChange,
    Json,
    MessageOutcomes,
    Pair,
    RecipientOutcomes,
    Reconciliation,
    Regression,
    Report,
    SharePair,
    accepted_share,
    count_list,
    latency_values,
    message_outcomes,
    recipient_outcomes,
)
from trafficgen.stats.recorder import Recorder
from trafficgen.stats.summary import console_for
from trafficgen.stats.timeline import Timeline


def _time(document: Report) -> float:
    return datetime.datetime.fromisoformat(document["started_at"]).timestamp()


def _parts(run_id: Json, config: Json) -> list[tuple[str, str]]:
    """The (run id, shard) of each instance a report holds: itself, or the parts of a merged report."""
    config = config if isinstance(config, dict) else {}
    merged = config.get("merged_from")
    if isinstance(merged, list) and merged:
        return [part for item in merged if isinstance(item, dict) for part in _parts(item.get("run_id"), item)]
    return [(str(run_id), str(config.get("shard", "0/1")))]


def merge_checks(named: list[tuple[str, Report]]) -> tuple[list[str], list[str]]:
    """What stands against merging these reports (name, report): problems (the same instance twice would count
    its messages twice) and warnings (runs apart in time, or against different targets: rarely one test)."""
    problems, warnings = [], []
    seen: dict[tuple[str, str], str] = {}
    for name, document in named:
        for part in _parts(document["run_id"], document["config"]):
            if part in seen:
                which = f"{name} is given twice" if seen[part] == name else f"{seen[part]} and {name} are one instance"
                problems.append(f"{which} (run {part[0]}, shard {part[1]}): its messages would count twice")
            seen[part] = name
    targets = {name: document["target"] for name, document in named}
    if len(set(targets.values())) > 1:
        warnings.append("the reports differ in target: " + ", ".join(f"{t} ({n})" for n, t in targets.items()))
    spans = [(name, _time(d), _time(d) + d["elapsed_s"]) for name, d in named]
    for index, (name, start, end) in enumerate(spans):
        for other, other_start, other_end in spans[index + 1 :]:
            if start > other_end or other_start > end:
                (a, a_end), (b, b_start) = (
                    ((name, end), (other, other_start)) if start <= other_start else ((other, other_end), (name, start))
                )
                warnings.append(
                    f"{a} and {b} do not overlap in time: {b} started {b_start - a_end:,.1f} s after {a} ended"
                )
    return list(dict.fromkeys(problems)), warnings


def _number(value: Json) -> float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def merge(documents: list[Report]) -> Report:
    """One report for all: as if one generator had sent every message of every report."""
    starts = [_time(d) for d in documents]
    started = min(starts)
    ends = [s + d["elapsed_s"] for s, d in zip(starts, documents, strict=True)]
    sending_ends = [s + d["sending_s"] for s, d in zip(starts, documents, strict=True)]
    run_ids = sorted({d["run_id"] for d in documents})
    config: ConfigView = {
        "merged_from": [{"run_id": d["run_id"], "started_at": d["started_at"], **d["config"]} for d in documents],
        "concurrency": sum(_number(d["config"].get("concurrency")) for d in documents),
    }
    reconciled = [r for d in documents if (r := d.get("reconciliation")) is not None and "error" not in r]
    return reports.build(
        _merged_recorder(documents),
        run_id=run_ids[0] if len(run_ids) == 1 else "merged",
        target=", ".join(sorted({d["target"] for d in documents})),
        started=started,
        elapsed=max(ends) - started,
        window=max(sending_ends) - started,
        config=config,
        stopped_by=next((d["stopped_by"] for d in documents if d["stopped_by"]), None),
        reconciliation=(
            _merged_reconciliation(reconciled, single_run=len(run_ids) == 1)
            if documents and len(reconciled) == len(documents)
            else None
        ),
    )


def _merged_recorder(documents: list[Report]) -> Recorder:
    """Every report's counts and histograms in one Recorder, over the union of their domains."""
    domains: list[str] = []
    for document in documents:
        domains += [d for d in document["domains"] if d not in domains]
    merged = Recorder(domains)
    for document in documents:
        part = reports.recorder_of(document)
        state = part.state()
        # Each instance ran its own schedule (as with --throttle): a merged report has no stages and no schedule.
        state["stages"] = None
        state["counts"] = [
            part.counts[part.domains.index(d)] if d in part.domains else [0, 0, 0, 0, 0] for d in domains
        ]
        merged.merge(state)
    # A report written before timelines (or replies' domains) would leave them short of the totals: none then.
    if not all(document["timeline"] for document in documents):
        merged.timeline = Timeline(domains)
    if not all("domains" in reply for document in documents for reply in document["replies"]):
        merged.reply_domains.clear()
    return merged


def _sums(views: list[RecipientOutcomes] | list[MessageOutcomes], keys: tuple[str, ...]) -> dict[str, int]:
    """Each count of a reconciliation's view, added up over the instances."""
    return {key: sum(_count(view, key) for view in views) for key in keys}


def _count(view: Mapping[str, object], key: str) -> int:
    value = view.get(key, 0)
    return value if isinstance(value, int) else 0


def _attempts(views: list[RecipientOutcomes] | list[MessageOutcomes]) -> dict[str, int]:
    return {bucket: sum(view["attempts"].get(bucket, 0) for view in views) for bucket in contract.ATTEMPT_BUCKETS}


def _merged_reconciliation(parts: list[Reconciliation], single_run: bool) -> Reconciliation:
    """The reconciliations of instances (shards) added up: both views' counts and attempts, and the samples."""
    pers = {p["per"] for p in parts}
    recipients = [p["recipients"] for p in parts]
    messages = [p["messages"] for p in parts]
    combined: Reconciliation = {
        "sink": ", ".join(sorted({p["sink"] for p in parts})),
        "mta_queue": next((p["mta_queue"] for p in parts if p["mta_queue"]), None),
        "per": pers.pop() if len(pers) == 1 else "mixed",
        "recipients": recipient_outcomes(
            _sums(recipients, ("accepted", *contract.RECIPIENT_OUTCOMES, *contract.RECIPIENT_DETAILS)),
            _attempts(recipients),
        ),
        "messages": message_outcomes(_sums(messages, ("accepted", *contract.MESSAGE_OUTCOMES)), _attempts(messages)),
        "samples": {
            kind: [s for p in parts for s in p["samples"].get(kind, [])][:100] for kind in contract.SAMPLE_KINDS
        },
    }
    # Instances of one run (shards) share its run id, so each sink's transit times are the whole run's.
    if single_run:
        combined["transit_ms"] = parts[0].get("transit_ms")
    return combined


def percent_change(before: float | None, after: float | None) -> str:
    """The relative change as the comparisons print it: +12.5%, "new", or "-"."""
    if not isinstance(before, int | float) or not isinstance(after, int | float):
        return "-"
    if before == 0:
        return "-" if after == 0 else "new"
    return f"{(after - before) / before * 100:+.1f}%"


def points_change(before: float | None, after: float | None) -> str:
    """The change of a share (0..1) in percentage points, as the comparisons print it: +1.25 pt (rounded once, from
    the shares themselves: -0.88497 is -0.88, not -0.885 rounded again to -0.89)."""
    if before is None or after is None:
        return "-"
    return f"{(after - before) * 100:+.2f} pt"


def _accepted(document: Report, name: str) -> float | None:
    """A domain's acceptance in a report (None when it attempted nothing there)."""
    return accepted_share(document["domains"].get(name))


def compare(before: Report, after: Report, out: IO[str]) -> None:
    """Print throughput, success rate and every latency percentile of two reports, and the change."""
    table = Table(
        box=box.SIMPLE, pad_edge=False, title=f"{before['run_id']} -> {after['run_id']}", title_justify="left"
    )
    for column in ("", "before", "after", "change"):
        table.add_column(column, justify="left" if not column else "right")
    tb, ta = before["throughput"]["per_second"], after["throughput"]["per_second"]
    table.add_row("throughput (msg/s)", f"{tb:,.1f}", f"{ta:,.1f}", percent_change(tb, ta))
    sb, sa = before["success_rate"], after["success_rate"]
    table.add_row(
        "success rate",
        "-" if sb is None else f"{sb * 100:.2f}%",
        "-" if sa is None else f"{sa * 100:.2f}%",
        points_change(sb, sa),
    )
    totals = zip(COUNT_KEYS, count_list(before["totals"]), count_list(after["totals"]), strict=True)
    for key, b, a in totals:
        table.add_row(key, f"{b:,}", f"{a:,}", percent_change(b, a))
    latency = latency_values(before["latency_ms"]), latency_values(after["latency_ms"])
    for key in LATENCY_KEYS:
        lb, la = latency[0][key], latency[1][key]
        table.add_row(
            f"latency {key.replace('_', '.')} (ms)",
            "-" if lb is None else f"{lb:,.3f}",
            "-" if la is None else f"{la:,.3f}",
            percent_change(lb, la),
        )
    for name in sorted(set(before["domains"]) | set(after["domains"])):
        rb, ra = _accepted(before, name), _accepted(after, name)
        table.add_row(
            f"{name} accepted",
            *("-" if r is None else f"{r * 100:.1f}%" for r in (rb, ra)),
            "-" if rb is None or ra is None else f"{(ra - rb) * 100:+.1f} pt",
        )
    with console_for(out) as console:
        console.print(table)


# --- comparing as data --------------------------------------------------------------------------------------------

# What shapes the traffic of a run: two runs that differ in one of these ran different workloads.
SHAPE = (
    "workload",
    "domains",
    "domain_suffix",
    "recipients_per_message",
    "body_size",
    "body_size_median",
    "body_size_p99",
    "content",
    "attachment_share",
    "tenants",
    "campaigns",
    "sender_domains",
    "throttle_per_s",
    "profile",
    "message_count",
    "duration_s",
)
REGRESSION_PERCENTILES = ("p50", "p90", "p99")


def _change(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return round((after - before) / before * 100, 3)


def _points(before: float | None, after: float | None) -> float | None:
    """The change of a share (0..1) in percentage points, as the table prints it."""
    if before is None or after is None:
        return None
    return round((after - before) * 100, 3)


def _pair(before: float | None, after: float | None) -> Pair:
    return {"before": before, "after": after, "change_percent": _change(before, after)}


def _regression(name: str, pair: Pair, regressed: float) -> Regression | None:
    """The throughput or a latency percentile, when it got worse by more than `regressed` percent of its value."""
    change, worse = pair["change_percent"], -1 if name == "throughput" else 1
    if change is None or change * worse <= regressed:
        return None
    shown = f"{pair['before']:,} -> {pair['after']:,} ({change:+.1f}%, more than {regressed:g}%"
    return {
        "metric": name,
        "before": pair["before"],
        "after": pair["after"],
        "change_percent": change,
        "text": f"{name} {shown} worse)",
    }


def _share_regression(pair: SharePair, regressed: float) -> Regression | None:
    """The success rate, when it fell by more than `regressed` percentage points (as the table shows it: 95% ->
    90% is 5 points, not 5.3%)."""
    change, before, after = pair["change_points"], pair["before"], pair["after"]
    if change is None or before is None or after is None or -change <= regressed:
        return None
    shown = f"{before * 100:.2f}% -> {after * 100:.2f}% ({change:+.2f} pt, more than {regressed:g} pt"
    return {
        "metric": "success rate",
        "before": before,
        "after": after,
        "change_percent": pair["change_percent"],
        "change_points": change,
        "text": f"success rate {shown} worse)",
    }


def differences(before: Report, after: Report) -> list[str]:
    """How two runs differ in what they tested: target, concurrency, workload (what makes a comparison unfair)."""
    out = []
    if before["target"] != after["target"]:
        out.append(f"the runs differ in target: {before['target']} before, {after['target']} after")
    cb, ca = before["config"], after["config"]
    if cb.get("concurrency") != ca.get("concurrency"):
        out.append(f"the runs differ in concurrency: {cb.get('concurrency')} before, {ca.get('concurrency')} after")
    shape = [key for key in SHAPE if (cb.get(key) or None) != (ca.get(key) or None)]
    if shape:
        out.append("the runs differ in workload: " + ", ".join(shape))
    reset_before, reset_after = bool(cb.get("reset_sink")), bool(ca.get("reset_sink"))
    if reset_before != reset_after:
        which = "before" if reset_before else "after"
        out.append(f"only the run {which} reset its sinks (--reset-sink): the other met what earlier runs taught them")
    return out


def comparison(before: Report, after: Report, regressed: float | None = None) -> Comparison:
    """The change between two reports, as data; with `regressed` (a percentage), what got worse by more:
    throughput or the success rate fell, or latency (p50, p90, p99) rose. Latency is from the intended send time
    when both runs had a schedule, else the transaction's."""
    intended = bool(before["latency_from_intended_ms"] and after["latency_from_intended_ms"])
    lb = latency_values(before["latency_from_intended_ms"] if intended else before["latency_ms"])
    la = latency_values(after["latency_from_intended_ms"] if intended else after["latency_ms"])
    label: Literal["from_intended", "transaction"] = "from_intended" if intended else "transaction"
    throughput = _pair(before["throughput"]["per_second"], after["throughput"]["per_second"])
    sb, sa = before["success_rate"], after["success_rate"]
    success: SharePair = {**_pair(sb, sa), "change_points": _points(sb, sa)}
    latency = {k: _pair(lb[k], la[k]) for k in LATENCY_KEYS}
    totals = zip(COUNT_KEYS, count_list(before["totals"]), count_list(after["totals"]), strict=True)
    domains: dict[str, DomainChange] = {
        name: {"accepted_before": _accepted(before, name), "accepted_after": _accepted(after, name)}
        for name in sorted(set(before["domains"]) | set(after["domains"]))
    }
    found = []
    if regressed is not None:
        found = [
            _regression("throughput", throughput, regressed),
            _share_regression(success, regressed),
            *(_regression(f"latency {p} ({label})", latency[p], regressed) for p in REGRESSION_PERCENTILES),
        ]
    regressions = [r for r in found if r is not None]
    return {
        "before": before["run_id"],
        "after": after["run_id"],
        "warnings": differences(before, after),
        "throughput_per_s": throughput,
        "success_rate": success,
        "totals": {k: _pair(b, a) for k, b, a in totals},
        "latency": label,
        "latency_ms": latency,
        "domains": domains,
        "fail_if_regressed_percent": regressed,
        "regressions": regressions,
        "regressed": bool(regressions),
    }
