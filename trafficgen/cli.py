"""The `trafficgen` command: options (each also a TRAFFICGEN_* variable) -> one RunConfig -> a run.

The only module that knows Typer. `trafficgen [options]` runs; `trafficgen report ...` works on saved
reports. Exit codes: 0 completed, 1 stopped by an error, 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from mailload.cli import ExitStatus, fail, run_app, set_empty_in_environment
from trafficgen.config import DEFAULT_SUFFIX, DEFAULT_TARGET, ConfigError, RunConfig, build

PROG = "trafficgen"
INTERRUPTED = 130

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    invoke_without_command=True,
    help="Send weighted SMTP traffic to a mail server and report every outcome. "
    "Run with options; `trafficgen report --help` for saved reports.",
)


def _env(name: str) -> str:
    return f"TRAFFICGEN_{name}"


@app.callback()
def main_command(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Option(envvar=_env("TARGET"), help="Where to send: HOST:PORT (with --http, the MTA's URL)")
    ] = DEFAULT_TARGET,
    concurrency: Annotated[
        int | None,
        typer.Option(envvar=_env("CONCURRENCY"), help="Connections in all [default: 10 x CPUs]", show_default=False),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            envvar=_env("DURATION"),
            help="Seconds to send for [default: 60, or none with --message-count]",
            show_default=False,
        ),
    ] = None,
    message_count: Annotated[
        int | None, typer.Option(envvar=_env("MESSAGE_COUNT"), help="Send exactly this many messages")
    ] = None,
    domain: Annotated[
        list[str] | None,
        typer.Option(
            envvar=_env("DOMAIN"),
            help="NAME[:WEIGHT], repeatable [default: aol.com gmail.com hotmail.com yahoo.com]",
            show_default=False,
        ),
    ] = None,
    domain_suffix: Annotated[
        str,
        typer.Option(
            envvar=_env("DOMAIN_SUFFIX"),
            help="Appended to every generated domain so no mail can reach a real mailbox; '' for none",
        ),
    ] = DEFAULT_SUFFIX,
    body_size: Annotated[
        str, typer.Option(envvar=_env("BODY_SIZE"), help="Body size: 1024, 60kb, 1MiB, or a range 10kb..200kb")
    ] = "1024",
    body_file: Annotated[
        str | None, typer.Option(envvar=_env("BODY_FILE"), help="Send this whole message (headers and body)")
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(envvar=_env("HEADER"), help='Extra header "Name: value", repeatable (variable: one per line)'),
    ] = None,
    throttle: Annotated[
        str | None,
        typer.Option(envvar=_env("THROTTLE"), help="One rate for the whole run: 300/s, 6000/m, 1,000/hr[,max_burst=N]"),
    ] = None,
    starttls: Annotated[bool, typer.Option(envvar=_env("STARTTLS"), help="Use STARTTLS when offered")] = False,
    keep_going: Annotated[
        bool, typer.Option(envvar=_env("KEEP_GOING"), help="Count errors and reconnect instead of stopping")
    ] = False,
    sender: Annotated[str | None, typer.Option(envvar=_env("SENDER"), help="Fixed envelope sender")] = None,
    recipient: Annotated[
        str | None, typer.Option(envvar=_env("RECIPIENT"), help="Fixed envelope recipient (no weights, no suffix)")
    ] = None,
    auth_user: Annotated[str | None, typer.Option(envvar=_env("AUTH_USER"), help="AUTH PLAIN/LOGIN user")] = None,
    auth_password: Annotated[str | None, typer.Option(envvar=_env("AUTH_PASSWORD"), help="AUTH password")] = None,
    recipients_per_message: Annotated[
        int, typer.Option(envvar=_env("RECIPIENTS_PER_MESSAGE"), help="RCPT commands per message")
    ] = 1,
    messages_per_connection: Annotated[
        int | None,
        typer.Option(envvar=_env("MESSAGES_PER_CONNECTION"), help="Reconnect after this many [default: never]"),
    ] = None,
    source_address: Annotated[
        str | None, typer.Option(envvar=_env("SOURCE_ADDRESS"), help="Local IP address to connect from")
    ] = None,
    pipelining: Annotated[
        bool,
        typer.Option("--pipelining/--no-pipelining", envvar=_env("PIPELINING"), help="Use PIPELINING when offered"),
    ] = True,
    seed: Annotated[int | None, typer.Option(envvar=_env("SEED"), help="Seed the random choices")] = None,
    json_path: Annotated[
        str | None, typer.Option("--json", envvar=_env("JSON"), help="Write the JSON report here ('-': stdout)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", envvar=_env("QUIET"), help="No live progress")] = False,
    processes: Annotated[
        int, typer.Option(envvar=_env("PROCESSES"), help="Processes to spread the connections over")
    ] = 1,
    timeout: Annotated[
        float, typer.Option(envvar=_env("TIMEOUT"), help="Seconds to wait for any connect or reply")
    ] = 60.0,
    ehlo: Annotated[
        str | None, typer.Option(envvar=_env("EHLO"), help="EHLO name [default: trafficgen.<suffix>]")
    ] = None,
    http: Annotated[
        bool, typer.Option(envvar=_env("HTTP"), help="Submit through KumoMTA's HTTP injection API at --target URL")
    ] = False,
    http_batch_size: Annotated[
        int, typer.Option(envvar=_env("HTTP_BATCH_SIZE"), help="Recipients per injected message (with --http)")
    ] = 1,
    http_defer_spool: Annotated[
        bool, typer.Option(envvar=_env("HTTP_DEFER_SPOOL"), help="Ask the MTA to defer spooling (with --http)")
    ] = False,
    http_defer_generation: Annotated[
        bool, typer.Option(envvar=_env("HTTP_DEFER_GENERATION"), help="Ask the MTA to defer generation (with --http)")
    ] = False,
    reconcile: Annotated[
        str | None,
        typer.Option(envvar=_env("RECONCILE"), help="At the end, ask the sink at this admin URL what it received"),
    ] = None,
    reconcile_wait: Annotated[
        float, typer.Option(envvar=_env("RECONCILE_WAIT"), help="Seconds to let the MTA deliver before asking")
    ] = 0.0,
    hdr_log: Annotated[
        str | None, typer.Option(envvar=_env("HDR_LOG"), help="Write each second's latency as an HdrHistogram log")
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(envvar=_env("METRICS"), help="Serve live counters and latency for Prometheus at HOST:PORT"),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(envvar=_env("SHARD"), help="INDEX/COUNT: this instance's share of a run over several machines"),
    ] = None,
    connect_rate: Annotated[
        str | None,
        typer.Option(
            envvar=_env("CONNECT_RATE"),
            help="How fast the connections are first opened, in all: 500/s [default: 2000/s]",
            show_default=False,
        ),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option(envvar=_env("RUN_ID"), help="Run id for the trace header [default: random]")
    ] = None,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    options = dict(ctx.params)
    # Click splits a list variable on whitespace and skips an empty variable: TRAFFICGEN_HEADER holds one
    # header per line ("X-A: b" stays whole), and TRAFFICGEN_DOMAIN_SUFFIX='' turns the suffix off.
    source = ctx.get_parameter_source
    if header is not None and getattr(source("header"), "name", "") == "ENVIRONMENT":
        options["header"] = [line for line in os.environ[_env("HEADER")].splitlines() if line.strip()]
    if set_empty_in_environment(ctx, "domain_suffix", _env("DOMAIN_SUFFIX")):
        options["domain_suffix"] = ""
    options["domains"], options["headers"] = options.pop("domain"), options.pop("header")
    try:
        config = build(**options)  # the options' names are build()'s
    except ConfigError as e:
        fail(PROG, str(e))
    raise typer.Exit(execute(config))


def write_json(document: dict[str, Any], path: str) -> None:
    text = json.dumps(document, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        fail(PROG, f"--json {path}: cannot write: {e.strerror}", ExitStatus.ERROR)


def execute(config: RunConfig) -> int:
    """Run, print the summary, write the JSON report; the exit status."""
    from trafficgen.launch import run
    from trafficgen.stats import report

    try:
        result = run(config)
    except ConfigError as e:
        fail(PROG, str(e))
    document, end = result.report, result.end
    human = sys.stderr if config.json_path == "-" else sys.stdout
    totals = document["totals"]
    reached = totals["accepted"] + totals["tempfailed"] + totals["permfailed"]
    if config.json_path:
        write_json(document, config.json_path)
    if not (end.error and reached == 0):
        report.summary(document, human)
    if end.error:
        print(f"{PROG}: error: {end.error}", file=sys.stderr)
        return ExitStatus.ERROR
    if reached == 0 and not end.interrupted:
        # Nothing accepted, deferred or refused: whatever the flags, the run did not test the target.
        errors = document["errors"] or document["connections"]["errors"]
        why = f": {errors[0]['text']}" if errors else ""
        print(f"{PROG}: error: no message got an answer from {config.target}{why}", file=sys.stderr)
        return ExitStatus.ERROR
    if "error" in document.get("reconciliation", {}):
        print(f"{PROG}: error: reconciliation: {document['reconciliation']['error']}", file=sys.stderr)
        return ExitStatus.ERROR
    if end.interrupted:
        return INTERRUPTED
    return ExitStatus.OK


def main() -> None:
    run_app(app, PROG)


report_app = typer.Typer(
    help="Work on saved JSON reports: show, merge, compare.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(report_app, name="report")


@contextlib.contextmanager
def _damaged(what: str) -> Iterator[None]:
    """A report that passed the checks but still holds something unexpected: one line, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as e:
        fail(PROG, f"{what}: a report is damaged ({type(e).__name__}: {e})")


def _load(path: str) -> dict[str, Any]:
    from trafficgen.stats.combine import ReportError, check

    try:
        with open(path, encoding="utf-8") as f:
            return check(json.load(f), path)
    except FileNotFoundError:
        fail(PROG, f"{path}: no such file")
    except (OSError, UnicodeDecodeError) as e:
        fail(PROG, f"{path}: cannot be read: {e}")
    except json.JSONDecodeError as e:
        fail(PROG, f"{path}: not JSON ({e.msg} at line {e.lineno})")
    except ReportError as e:
        fail(PROG, str(e))
    raise AssertionError("unreachable")


@report_app.command("show", help="Print the summary of a saved report.")
def report_show(path: Annotated[str, typer.Argument(help="A report written with --json")]) -> None:
    from trafficgen.stats import report

    with _damaged(path):
        report.summary(_load(path), sys.stdout)


@report_app.command("merge", help="Merge reports of instances that ran together into one (exact percentiles).")
def report_merge(
    paths: Annotated[list[str], typer.Argument(help="Reports written with --json")],
    json_path: Annotated[str | None, typer.Option("--json", help="Write the merged report here ('-': stdout)")] = None,
) -> None:
    from trafficgen.stats import report
    from trafficgen.stats.combine import merge

    with _damaged(", ".join(paths)):
        merged = merge([_load(p) for p in paths])
    if json_path:
        write_json(merged, json_path)
    report.summary(merged, sys.stderr if json_path == "-" else sys.stdout)


@report_app.command("compare", help="Show the change in throughput, success rate and each latency percentile.")
def report_compare(
    before: Annotated[str, typer.Argument(help="The earlier report")],
    after: Annotated[str, typer.Argument(help="The later report")],
) -> None:
    from trafficgen.stats.combine import compare

    with _damaged(f"{before} or {after}"):
        compare(_load(before), _load(after), sys.stdout)


@report_app.command(
    "reconcile",
    help="Ask the sinks again what became of a saved run's messages (the MTA may have delivered more since). "
    "The report must come from a run with --reconcile.",
)
def report_reconcile(
    path: Annotated[str, typer.Argument(help="A report written with --json by a run with --reconcile")],
    sink: Annotated[
        str | None, typer.Option(help="The sinks' admin URLs, comma-separated [default: the run's --reconcile]")
    ] = None,
    wait: Annotated[
        float, typer.Option(help="Ask each second for up to this many seconds until nothing is pending")
    ] = 0.0,
    json_path: Annotated[
        str | None, typer.Option("--json", help="Write the report with the new reconciliation here ('-': stdout)")
    ] = None,
) -> None:
    import asyncio

    from mailload.cli import event_loop_factory
    from trafficgen.config import parse_sink_urls
    from trafficgen.reconcile import ask_sinks, decode_marks
    from trafficgen.stats.report import print_reconciliation

    document = _load(path)
    previous = document.get("reconciliation") or {}
    if "marks" not in previous:
        fail(PROG, f"{path}: this run was not made with --reconcile, so the report does not say what the target took")
    if wait < 0:
        fail(PROG, f"--wait cannot be negative, got {wait}")
    with _damaged(path):
        ours = decode_marks(previous["marks"])
        index, _, count = str(document["config"].get("shard", "0/1")).partition("/")
        urls = document["config"].get("reconcile") or []
        try:
            sinks = parse_sink_urls(sink, "--sink") if sink else tuple(urls)
        except ConfigError as e:
            fail(PROG, str(e))
        if not sinks:
            fail(PROG, f"{path}: no sink URL in the report: give --sink")
        ask = ask_sinks(sinks, document["run_id"], ours, shards=int(count), shard=int(index), wait_s=wait)
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            reconciliation = runner.run(ask)
    if "error" in reconciliation:
        fail(PROG, f"reconciliation: {reconciliation['error']}", ExitStatus.ERROR)
    reconciliation["marks"] = previous["marks"]
    document["reconciliation"] = reconciliation
    if json_path:
        write_json(document, json_path)
    from rich.console import Console

    human = sys.stderr if json_path == "-" else sys.stdout
    console = Console(file=human, width=120, highlight=False)
    print_reconciliation(console, reconciliation, document["totals"]["accepted"])
