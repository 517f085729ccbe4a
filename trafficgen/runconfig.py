"""RunConfig: every option of a run, declared once: SendConfig's (what is sent), then the output, the thresholds,
reconciliation, KumoMTA's HTTP injection and the fleet's shard, each field with its option (mailload.options), as
SendConfig's are.

A field holds what was given or its default, never rewritten; what a run derives from several options (its
length, recipients per message with --http, the inject URL) is trafficgen.derived's. trafficgen.config.build()
reads and checks them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from mailload.options import HIDDEN, option
from mailload.values import Count, Flag, HostPort, Many, Seconds, Text
from trafficgen.configview import show_reconcile, show_reset, show_shard, show_thresholds
from trafficgen.derived import Derived
from trafficgen.readers import (
    parse_sink_urls,
    read_reset_sinks,
    read_run_id,
    read_shard,
    read_thresholds,
    read_word,
    writable,
)
from trafficgen.sendconfig import MAX_WAIT, SendConfig
from trafficgen.thresholds import Threshold

OUTPUTS = ("summary", "kumomta")
OUTPUT, CI, RECONCILE, HTTP, FLEET = (
    "Output",
    "Thresholds (CI)",
    "Reconciliation",
    "KumoMTA HTTP injection",
    "Many machines",
)


@dataclass(frozen=True)
class RunConfig(SendConfig, Derived):
    """Every option of a run: what was given, or the option's default (None where the default follows other
    options: Derived gives the value the run uses). Nothing rewrites a field once it is read."""

    # Output
    json_path: str | None = option(
        None,
        help="Write the JSON report here ('-': stdout)",
        doc="write the JSON report ([report.md](report.md)); `-` writes it to stdout and the summary to stderr",
        panel=OUTPUT,
        metavar="PATH",
        flags=("--json",),
        kind=Text(writable("--json")),
        report=HIDDEN,
    )
    html_path: str | None = option(
        None,
        help="Write the HTML report here (charts; one file that needs no network)",
        doc=(
            "write the HTML report: one self-contained file (the charting library inside it, nothing fetched when "
            "viewed) with throughput, latency and connections over time, outcomes per domain, the top replies, "
            "the profile's stages and the thresholds ([report.md](report.md#the-html-report)). Also "
            "`trafficgen report html REPORT.json` from a saved report"
        ),
        panel=OUTPUT,
        metavar="PATH",
        flags=("--html",),
        kind=Text(writable("--html")),
        report=HIDDEN,
    )
    output: str = option(
        "summary",
        help="summary (per domain and reply), or kumomta (KumoMTA traffic-gen's closing lines)",
        doc=(
            "what is printed at the end: `summary`, the per-domain and per-reply tables; `kumomta`, the lines "
            "KumoMTA's traffic-gen prints, which its users' scripts grep: `sent N messages, failed F over T.`, "
            "`transaction latency: avg=... p99=...`, `overall rate: N msgs/s, ...` ([below](#kumomta-output))"
        ),
        panel=OUTPUT,
        metavar="FORMAT",
        kind=Text(parse=read_word("--output", OUTPUTS)),
        report=HIDDEN,
    )
    quiet: bool = option(
        False,
        help="No live progress",
        doc="no live progress (the final summary is still printed)",
        panel=OUTPUT,
        flags=("--quiet", "-q"),
        kind=Flag(),
        report=HIDDEN,
    )
    hdr_log: str | None = option(
        None,
        help="Write each second's latency as an HdrHistogram interval log",
        doc="write each second's transaction latency as an HdrHistogram interval log",
        panel=OUTPUT,
        metavar="PATH",
        kind=Text(writable("--hdr-log")),
        report=HIDDEN,
    )
    metrics: tuple[str, int] | None = option(
        None,
        help="Serve live counters and latency for Prometheus at HOST:PORT",
        doc="serve live counters and latency for Prometheus at `http://HOST:PORT/metrics`",
        panel=OUTPUT,
        metavar="HOST:PORT",
        kind=HostPort(),
        report=HIDDEN,
    )
    # Thresholds (CI)
    fail_if: tuple[Threshold, ...] = option(
        (),
        help='A condition the run must meet, repeatable: "p99 < 2s", "success_rate > 0.95", "gmail.com: errors < 1%"',
        doc=(
            "a condition the run must meet, as k6 writes thresholds; repeatable. Metrics: latency `p50` ... "
            "`p99.9`, `min`, `mean`, `max` (from the intended send time under `--throttle` or `--profile`), "
            "`success_rate`, `accepted`, `tempfailed`, `permfailed`, `errors`, `attempted` (counts, or shares "
            "with `%`), `throughput` (msg/s), `never_sent`; a `DOMAIN:` prefix (or `tenant=NAME:`, `campaign=`, "
            "`sender-domain=`, `source=`) scopes it. Each is printed and in the report; one that fails gives exit "
            "status 3 ([below](#thresholds))"
        ),
        panel=CI,
        metavar='"EXPR"',
        flags=("--fail-if",),
        kind=Many(read_thresholds),
        report=show_thresholds,
    )
    fail_fast: bool = option(
        False,
        help="Check the --fail-if thresholds each second and stop the run at the first that fails",
        doc=(
            "check the `--fail-if` thresholds once a second (once 100 messages have their outcome) and stop the "
            "run at the first that fails: in-flight messages finish, the report is written, exit status 3"
        ),
        panel=CI,
        kind=Flag(),
    )
    # Reconciliation
    reconcile: tuple[str, ...] | None = option(
        None,
        help="At the end, ask the sinks at these admin URLs (comma-separated) what became of every recipient",
        doc=(
            "at the end, ask the sink(s) at these admin URLs what became of every recipient the target accepted, "
            "and so of every message: delivered, duplicated, bounced (and whether the MTA sent a DSN), expired, "
            "deferred or pending, lost; attempts, transit times "
            "([deployment.md](deployment.md#did-the-mta-lose-or-duplicate-mail-reconciliation))"
        ),
        panel=RECONCILE,
        metavar="URL[,URL]",
        kind=Text(parse_sink_urls),
        report=show_reconcile,
    )
    reconcile_wait: float = option(
        0.0,
        help="Ask once a second for up to this long while the MTA delivers its queue",
        doc=(
            "ask once a second for up to this long while the MTA delivers its queue, showing the recipients "
            "delivered and awaited so far and the time left; ends early once nothing is left to wait for"
        ),
        panel=RECONCILE,
        metavar="DURATION",
        kind=Seconds(at_most=MAX_WAIT, zero=True),
        report=HIDDEN,
    )
    mta_queue: str | None = option(
        None,
        help="A command that prints the MTA's queue (postqueue -j): recipients it names are deferred, not lost",
        doc=(
            "a shell command that prints the MTA's queue, run before each reading of the sinks' ledgers (Postfix: "
            "`postqueue -j`; Exim: `exim -bp`; any listing that names each queued recipient): a recipient the sink "
            "has not taken that it names is `deferred` (still in the MTA's queue); one it does not name, neither "
            "taken nor bounced nor returned in a DSN, is `lost`. Without it, a recipient the sink only deferred is "
            "`pending`"
        ),
        panel=RECONCILE,
        metavar="COMMAND",
    )
    reset_sink: tuple[str, ...] = option(
        (),
        help="Before the run, make the sink at this admin URL forget what it learnt (DELETE /state); repeatable",
        doc=(
            "before sending, ask the sink(s) at these admin URLs to forget what they learnt from earlier runs "
            "(`DELETE /state`: clients blocked by `escalate`, rate buckets, the greylist), so runs compared with "
            "`report compare` start equal; repeatable, or comma-separated. A sink with `--admin-token` takes it in "
            "the URL, `http://:TOKEN@host:8026` (never shown). A sink that does not answer stops the run before it "
            "starts (exit 1). The report's `config.reset_sink` lists them "
            "([policy.md](policy.md#state-what-the-sink-remembers))"
        ),
        panel=RECONCILE,
        metavar="URL",
        kind=Many(read_reset_sinks),
        report=show_reset,
    )
    run_id: str = option(
        factory=lambda: secrets.token_hex(6),
        help="Run id for the trace header",
        doc=(
            "the run id (1 to 64 letters, digits, `-`, `_`) in `X-Trafficgen-Id: <run_id>.<seq>; t=<ms>`, in each "
            "recipient (`user-<n>.<run>@...`: in lower case, or a digest of it past 32 characters) and in the report"
        ),
        panel=RECONCILE,
        metavar="ID",
        kind=Text(read_run_id),
        shown_default="random",
        report=HIDDEN,
    )
    # KumoMTA HTTP injection
    http: bool = option(
        False,
        help="Submit through KumoMTA's HTTP injection API at the --target URL",
        doc=(
            "submit through KumoMTA's HTTP injection API: `--target http://HOST:PORT`, `POST "
            "{target}/api/inject/v1` ([deployment.md](deployment.md#kumomtas-http-injection-api))"
        ),
        panel=HTTP,
        kind=Flag(),
    )
    http_batch_size: int = option(
        1,
        help="Recipients per injected message, one request each (with --http)",
        doc=(
            "with `--http`: recipients per injected message, one request each. It counts recipients, as "
            "KumoMTA's traffic-gen does: `--message-count` counts requests (messages), so `--message-count 100 "
            "--http-batch-size 10` injects 100 requests for 1,000 recipients, and the report counts both"
        ),
        panel=HTTP,
        metavar="N",
        kind=Count(at_least=1),
    )
    http_defer_spool: bool = option(
        False,
        help="Ask the MTA to defer spooling (with --http)",
        doc="with `--http`: KumoMTA's `deferred_spool`",
        panel=HTTP,
        kind=Flag(),
    )
    http_defer_generation: bool = option(
        False,
        help="Ask the MTA to defer generation (with --http)",
        doc="with `--http`: KumoMTA's `deferred_generation`",
        panel=HTTP,
        kind=Flag(),
    )
    # Many machines
    shard: tuple[int, int] = option(
        (0, 1),
        help="This instance's share of a run spread over several machines with one --run-id",
        doc=(
            "this instance's share of a run spread over COUNT instances with one `--run-id`: message ids (and "
            "recipients) `seq = n * COUNT + INDEX`"
        ),
        panel=FLEET,
        metavar="INDEX/COUNT",
        kind=Text(read_shard),
        shown_default="0/1",
        report=show_shard,
    )
