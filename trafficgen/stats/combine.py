"""Reports of several instances or runs: merged exactly, or compared before/after.

merge() adds totals, domains, replies and errors, and merges every HDR histogram, so the merged percentiles are
those of all the messages (never an average of percentiles). compare() lists what changed between two reports;
comparison() says it as data, with what regressed by more than a given percentage and how the two runs differ
(target, concurrency, workload), so a before/after comparison can gate a change in CI.
"""

from __future__ import annotations

import binascii
import datetime
import zlib
from typing import IO, Any

from rich import box
from rich.table import Table

from mailload import contract
from trafficgen.stats import report as reports
from trafficgen.stats.recorder import Recorder
from trafficgen.stats.timeline import Timeline


class ReportError(ValueError):
    """A file that is not a trafficgen report this version can read."""


def check(document: Any, name: str) -> dict[str, Any]:
    """The document, if it is a report these commands can read; else ReportError naming the first problem."""
    if not isinstance(document, dict) or document.get("schema") not in reports.READABLE_SCHEMAS:
        raise ReportError(f"{name} is not a trafficgen report with schema {reports.SCHEMA} (or 1)")
    for key in (
        "run_id",
        "target",
        "started_at",
        "elapsed_s",
        "config",
        "totals",
        "throughput",
        "latency_ms",
        "success_rate",
        "phases_ms",
        "domains",
        "recipients",
        "replies",
        "errors",
        "histogram",
    ):
        if key not in document:
            raise ReportError(f"{name}: the report has no {key!r}")
    try:
        _time(document)
        float(document["throughput"]["per_second"])
        reports.recorder_of(document)  # counts, replies and every histogram decode
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error, zlib.error) as e:
        raise ReportError(f"{name}: the report is damaged ({type(e).__name__}: {e})") from None
    return reports.upgrade(document)


def _time(document: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(document["started_at"]).timestamp()


def _parts(document: dict[str, Any]) -> list[tuple[str, str]]:
    """The (run id, shard) of each instance a report holds: itself, or the parts of a merged report."""
    config = document.get("config") or {}
    merged = config.get("merged_from")
    if merged:
        return [part for item in merged for part in _parts({"run_id": item.get("run_id"), "config": item})]
    return [(str(document.get("run_id")), str(config.get("shard", "0/1")))]


def merge_checks(named: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[str]]:
    """What stands against merging these reports (name, report): problems (the same instance twice would count
    its messages twice) and warnings (runs apart in time, or against different targets: rarely one test)."""
    problems, warnings = [], []
    seen: dict[tuple[str, str], str] = {}
    for name, document in named:
        for part in _parts(document):
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


def merge(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """One report for all: as if one generator had sent every message of every report."""
    starts = [_time(d) for d in documents]
    started = min(starts)
    ends = [s + d["elapsed_s"] for s, d in zip(starts, documents, strict=True)]
    sending_ends = [s + d.get("sending_s", d["elapsed_s"]) for s, d in zip(starts, documents, strict=True)]
    run_ids = sorted({d["run_id"] for d in documents})
    document = reports.build(
        _merged_recorder(documents),
        run_id=run_ids[0] if len(run_ids) == 1 else "merged",
        target=", ".join(sorted({d["target"] for d in documents})),
        started=started,
        elapsed=max(ends) - started,
        window=max(sending_ends) - started,
        config={
            "merged_from": [{"run_id": d["run_id"], "started_at": d["started_at"], **d["config"]} for d in documents],
            "concurrency": sum(d["config"].get("concurrency") or 0 for d in documents),
        },
        stopped_by=next((d["stopped_by"] for d in documents if d.get("stopped_by")), None),
    )
    parts = [d.get("reconciliation") for d in documents]
    if parts and all(p and "error" not in p for p in parts):
        document["reconciliation"] = _merged_reconciliation([p for p in parts if p], single_run=len(run_ids) == 1)
    return document


def _merged_recorder(documents: list[dict[str, Any]]) -> Recorder:
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
    if not all(document.get("timeline") for document in documents):
        merged.timeline = Timeline(domains)
    if not all("domains" in reply for document in documents for reply in document["replies"]):
        merged.reply_domains.clear()
    return merged


def _merged_reconciliation(parts: list[dict[str, Any]], single_run: bool) -> dict[str, Any]:
    """The reconciliations of instances (shards) added up: both views' counts and attempts, and the samples."""
    pers = {p.get("per") for p in parts}
    combined: dict[str, Any] = {
        "sink": ", ".join(sorted({p["sink"] for p in parts})),
        "mta_queue": next((p["mta_queue"] for p in parts if p.get("mta_queue")), None),
        "per": pers.pop() if len(pers) == 1 else "mixed",
    }
    views = {
        "recipients": ("accepted", *contract.RECIPIENT_OUTCOMES, *contract.RECIPIENT_DETAILS),
        "messages": ("accepted", *contract.MESSAGE_OUTCOMES),
    }
    for view, keys in views.items():
        combined[view] = {key: sum(p[view].get(key, 0) for p in parts) for key in keys}
        combined[view]["attempts"] = {
            bucket: sum((p[view].get("attempts") or {}).get(bucket, 0) for p in parts)
            for bucket in contract.ATTEMPT_BUCKETS
        }
    combined["samples"] = {
        kind: [s for p in parts for s in (p.get("samples") or {}).get(kind, [])][:100] for kind in contract.SAMPLE_KINDS
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
    """The change of a share (0..1) in percentage points, as the comparisons print it: +1.25 pt."""
    points = _points(before, after)
    return "-" if points is None else f"{points:+.2f} pt"


def compare(before: dict[str, Any], after: dict[str, Any], out: IO[str]) -> None:
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
    for key in ("attempted", "accepted", "tempfailed", "permfailed", "errors"):
        b, a = before["totals"][key], after["totals"][key]
        table.add_row(key, f"{b:,}", f"{a:,}", percent_change(b, a))
    lb, la = before["latency_ms"], after["latency_ms"]
    for key in ("min", "mean", "p50", "p75", "p90", "p95", "p99", "p99_9", "max"):
        b, a = lb.get(key), la.get(key)
        table.add_row(
            f"latency {key.replace('_', '.')} (ms)",
            "-" if b is None else f"{b:,.3f}",
            "-" if a is None else f"{a:,.3f}",
            percent_change(b, a),
        )
    for name in sorted(set(before["domains"]) | set(after["domains"])):
        rates = []
        for document in (before, after):
            row = document["domains"].get(name)
            rates.append(row["accepted"] / row["attempted"] if row and row["attempted"] else None)
        table.add_row(
            f"{name} accepted",
            *("-" if r is None else f"{r * 100:.1f}%" for r in rates),
            "-" if None in rates else f"{(rates[1] - rates[0]) * 100:+.1f} pt",  # type: ignore[operator]
        )
    with reports.console_for(out) as console:
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


def _pair(before: float | None, after: float | None) -> dict[str, Any]:
    return {"before": before, "after": after, "change_percent": _change(before, after)}


def _regressions(result: dict[str, Any], regressed: float) -> list[dict[str, Any]]:
    """What got worse by more than `regressed`: throughput and latency by that percentage of their value, the
    success rate by that many percentage points (as the table shows it: 95% -> 90% is 5 points, not 5.3%)."""
    found = []
    checks: list[tuple[str, dict[str, Any], int, str]] = [
        ("throughput", result["throughput_per_s"], -1, "change_percent"),
        ("success rate", result["success_rate"], -1, "change_points"),
        *(
            (f"latency {p} ({result['latency']})", result["latency_ms"][p], 1, "change_percent")
            for p in REGRESSION_PERCENTILES
        ),
    ]
    for name, pair, worse, key in checks:
        change = pair[key]
        if change is None or change * worse <= regressed:
            continue
        if key == "change_points":
            rates = f"{pair['before'] * 100:.2f}% -> {pair['after'] * 100:.2f}%"
            shown = f"{rates} ({change:+.2f} pt, more than {regressed:g} pt"
        else:
            shown = f"{pair['before']:,} -> {pair['after']:,} ({change:+.1f}%, more than {regressed:g}%"
        found.append({"metric": name, **pair, "text": f"{name} {shown} worse)"})
    return found


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
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


def comparison(before: dict[str, Any], after: dict[str, Any], regressed: float | None = None) -> dict[str, Any]:
    """The change between two reports, as data; with `regressed` (a percentage), what got worse by more:
    throughput or the success rate fell, or latency (p50, p90, p99) rose. Latency is from the intended send time
    when both runs had a schedule, else the transaction's."""
    intended = bool(before.get("latency_from_intended_ms") and after.get("latency_from_intended_ms"))
    key = "latency_from_intended_ms" if intended else "latency_ms"
    lb, la = before.get(key) or {}, after.get(key) or {}
    result: dict[str, Any] = {
        "before": before["run_id"],
        "after": after["run_id"],
        "warnings": differences(before, after),
        "throughput_per_s": _pair(before["throughput"]["per_second"], after["throughput"]["per_second"]),
        "success_rate": {
            **_pair(before["success_rate"], after["success_rate"]),
            "change_points": _points(before["success_rate"], after["success_rate"]),
        },
        "totals": {k: _pair(before["totals"][k], after["totals"][k]) for k in before["totals"]},
        "latency": "from_intended" if intended else "transaction",
        "latency_ms": {
            k: _pair(lb.get(k), la.get(k)) for k in ("min", "mean", "p50", "p75", "p90", "p95", "p99", "p99_9", "max")
        },
        "domains": {},
        "fail_if_regressed_percent": regressed,
        "regressions": [],
    }
    for name in sorted(set(before["domains"]) | set(after["domains"])):
        rates = []
        for document in (before, after):
            row = document["domains"].get(name)
            rates.append(row["accepted"] / row["attempted"] if row and row["attempted"] else None)
        result["domains"][name] = {"accepted_before": rates[0], "accepted_after": rates[1]}
    if regressed is not None:
        result["regressions"] = _regressions(result, regressed)
    result["regressed"] = bool(result["regressions"])
    return result
