"""The `trafficgen` command: options (each also a TRAFFICGEN_* variable) -> one RunConfig -> a run.

The only module that knows Typer. `trafficgen [options]` runs; `trafficgen report ...` works on saved
reports. Exit codes: 0 completed, 1 stopped by an error, 2 bad usage, 3 a --fail-if threshold failed (or
`report compare --fail-if-regressed` found a regression), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mailload import options
from mailload.cli import (
    FormatOption,
    LogsArgument,
    OutputOption,
    QuietOption,
    derive_from_logs,
    run_app,
    set_empty_in_environment,
)
from mailload.runtime import ExitStatus, fail
from trafficgen import __version__
from trafficgen.config import ConfigError, RunConfig, build
from trafficgen.stats.document import Comparison, Report

if TYPE_CHECKING:
    from trafficgen.reconcile import Asking

PROG = "trafficgen"
INTERRUPTED = 130
ENV = "TRAFFICGEN"

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Send weighted SMTP traffic to a mail server and report every outcome. "
    "Run with options; `trafficgen report --help` for saved reports.",
)


def _version(value: bool) -> None:
    if value:
        print(f"{PROG} {__version__}")
        raise typer.Exit()


def main_command(ctx: typer.Context, **given: Any) -> None:
    """Every option of RunConfig (mailload.options derives them), and --version."""
    if ctx.invoked_subcommand is not None:
        return
    given.pop("version", None)
    # Click splits a list variable on whitespace and skips an empty variable: TRAFFICGEN_HEADER and
    # TRAFFICGEN_FAIL_IF hold one per line ("X-A: b" and "p99 < 2s" stay whole), and TRAFFICGEN_DOMAIN_SUFFIX=''
    # turns the suffix off.
    source = ctx.get_parameter_source
    for name, variable in (("headers", "HEADER"), ("fail_if", "FAIL_IF")):
        if given.get(name) is not None and getattr(source(name), "name", "") == "ENVIRONMENT":
            given[name] = [line for line in os.environ[f"{ENV}_{variable}"].splitlines() if line.strip()]
    empty_suffix = set_empty_in_environment(ctx, "domain_suffix", f"{ENV}_DOMAIN_SUFFIX")
    for name in given:
        if getattr(source(name), "name", "") == "DEFAULT":
            given[name] = None  # not given: a --workload file's value, else the option's default, applies
    if empty_suffix:
        given["domain_suffix"] = ""
    try:
        config = build(**given)
    except ConfigError as e:
        fail(PROG, _from_environment(ctx, str(e)))
    raise typer.Exit(execute(config))


def _from_environment(ctx: typer.Context, message: str) -> str:
    """A problem with an option's value names the variable it came from, when it came from one."""
    for item in options.declared(RunConfig):
        variable = item.envvar(ENV)
        source = getattr(ctx.get_parameter_source(item.name), "name", "")
        named = message.startswith((item.long_flag + " ", item.long_flag + ":"))
        if variable and source == "ENVIRONMENT" and named:
            return f"{variable}{message[len(item.long_flag) :]}"
    return message


def _signature() -> inspect.Signature:
    declared = options.signature(RunConfig, ENV, typer.Option, typer.Context)
    version = inspect.Parameter(
        "version",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[
            bool,
            typer.Option("--version", help="Print the version and exit", callback=_version, is_eager=True, metavar=""),
        ],
    )
    return declared.replace(parameters=[*declared.parameters.values(), version])


main_command.__signature__ = _signature()  # type: ignore[attr-defined]
app.callback()(main_command)


def write_json(document: Report | Comparison, path: str) -> None:
    text = json.dumps(document, indent=2) + "\n"
    if path == "-":
        write_stdout(text)
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        fail(PROG, f"--json {path}: cannot write: {e.strerror}", ExitStatus.ERROR)


def write_stdout(text: str) -> None:
    """All of `text` to stdout, in as many write(2) calls as it takes.

    A write(2) to a pipe that waits for a slow reader returns what it wrote so far when the process is
    interrupted, and closing uvloop's loop interrupts it, with no signal to see: the kernel tears libuv's io_uring
    ring down in a worker that notifies this process (task work, TWA_SIGNAL) milliseconds later, just as the report
    written after the run waits for room in the pipe. Under `python -u` or PYTHONUNBUFFERED, sys.stdout passes
    each write straight to the file descriptor and drops what write(2) did not take: the report was cut short."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a stream set in this process): it takes it whole
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    data = memoryview(text.encode())
    while data:
        data = data[os.write(fd, data) :]


def write_html(document: Report, other: Report | None, path: str) -> None:
    """The HTML report of `document` (with `other` overlaid, from `report compare`) to `path`."""
    from trafficgen.stats import html

    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(html.render(document, other))
    except OSError as e:
        fail(PROG, f"--html {path}: cannot write: {e.strerror}", ExitStatus.ERROR)


def execute(config: RunConfig) -> int:
    """Run, print the summary, write the JSON and HTML reports; the exit status."""
    from trafficgen.launch import run
    from trafficgen.sinkstate import ResetError
    from trafficgen.stats.summary import summary

    try:
        result = run(config)
    except ConfigError as e:
        fail(PROG, str(e))
    except ResetError as e:
        fail(PROG, str(e), ExitStatus.ERROR)
    document, end = result.report, result.end
    human = sys.stderr if config.json_path == "-" else sys.stdout
    totals = document["totals"]
    reached = totals["accepted"] + totals["tempfailed"] + totals["permfailed"]
    if config.json_path:
        write_json(document, config.json_path)
    if config.html_path:
        write_html(document, None, config.html_path)
    if not (end.error and reached == 0):
        if config.output == "kumomta":
            from trafficgen.stats import kumomta

            print("\n".join(kumomta.lines(document)), file=human, flush=True)
        else:
            summary(document, human)
    if end.error:
        print(f"{PROG}: error: {end.error}", file=sys.stderr)
        return ExitStatus.ERROR
    return _status(config, document, reached, end.interrupted)


def _status(config: RunConfig, document: Report, reached: int, interrupted: bool) -> int:
    """The exit status of a run that did not fail outright, with the line that says why when it is not 0."""
    if reached == 0 and not interrupted:
        # Nothing accepted, deferred or refused: whatever the flags, the run did not test the target.
        errors = document["errors"] or document["connections"]["errors"]
        why = f": {errors[0]['text']}" if errors else ""
        print(f"{PROG}: error: no message got an answer from {config.target}{why}", file=sys.stderr)
        return ExitStatus.ERROR
    reconciliation = document.get("reconciliation")
    if reconciliation is not None and "error" in reconciliation:
        print(f"{PROG}: error: reconciliation: {reconciliation['error']}", file=sys.stderr)
        return ExitStatus.ERROR
    if interrupted:
        return INTERRUPTED
    thresholds = document.get("thresholds")
    if thresholds and not thresholds["passed"]:
        failed = [(r["expression"], r["shown"]) for r in thresholds["results"] if not r["passed"]]
        aborted = thresholds.get("aborted")
        if aborted and not any(expression == aborted["expression"] for expression, _ in failed):
            failed.insert(0, (aborted["expression"], f"{aborted['shown']} when it stopped"))
        for expression, shown in failed:
            print(f"{PROG}: threshold failed: {expression} ({shown})", file=sys.stderr)
        return ExitStatus.THRESHOLD
    return ExitStatus.OK


def main() -> None:
    run_app(app, PROG)


report_app = typer.Typer(
    help="Work on saved JSON reports: show, merge, compare, reconcile again.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(report_app, name="report")


@contextlib.contextmanager
def _damaged(what: str) -> Iterator[None]:
    """A report that passed the checks but still holds something unexpected: one line, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as e:
        fail(PROG, f"{what}: a report is damaged ({type(e).__name__}: {e})")


def _load(path: str) -> Report:
    from trafficgen.stats.saved import ReportError, load

    try:
        return load(path)
    except ReportError as e:
        fail(PROG, str(e))
    raise AssertionError("unreachable")


def _number(flag: str, text: str | None) -> float | None:
    """A number option of the `report` commands, read here so a bad one is named in the project's words."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        fail(PROG, f"{flag} {text!r} is not a number")
    raise AssertionError("unreachable")


@report_app.command("show", help="Print the summary of a saved report.")
def report_show(path: Annotated[str, typer.Argument(help="A report written with --json", metavar="REPORT")]) -> None:
    from trafficgen.stats.summary import summary

    with _damaged(path):
        summary(_load(path), sys.stdout, show_timeline=True)


@report_app.command("html", help="Write the HTML report (charts, one self-contained file) of a saved report.")
def report_html(
    path: Annotated[str, typer.Argument(help="A report written with --json", metavar="REPORT")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Where to write it [default: the report's name with .html]", metavar="PATH"
        ),
    ] = None,
) -> None:
    document = _load(path)
    target = output or (path[: -len(".json")] if path.endswith(".json") else path) + ".html"
    with _damaged(path):
        write_html(document, None, target)
    print(target)


@report_app.command(
    "merge",
    help="Merge reports of instances that ran together into one (exact percentiles). A report of the same run and "
    "shard twice is refused; runs apart in time or against different targets are merged with a warning.",
)
def report_merge(
    paths: Annotated[list[str], typer.Argument(help="Reports written with --json", metavar="REPORT")],
    json_path: Annotated[
        str | None, typer.Option("--json", help="Write the merged report here ('-': stdout)", metavar="PATH")
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Merge even reports of the same run and shard (their counts add up)", metavar=""),
    ] = False,
) -> None:
    from trafficgen.stats.combine import merge, merge_checks
    from trafficgen.stats.summary import summary

    documents = [_load(p) for p in paths]
    with _damaged(", ".join(paths)):
        problems, warnings = merge_checks(list(zip(paths, documents, strict=True)))
    if problems and not force:
        fail(PROG, f"{problems[0]} (--force merges them anyway)")
    for warning in [*problems, *warnings]:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    with _damaged(", ".join(paths)):
        merged = merge(documents)
    if json_path:
        write_json(merged, json_path)
    summary(merged, sys.stderr if json_path == "-" else sys.stdout)


@report_app.command(
    "compare",
    help="Show the change in throughput, success rate (in points) and each latency percentile; with "
    "--fail-if-regressed, exit 3 when a run got worse by more than PERCENT (points for the success rate).",
)
def report_compare(
    before: Annotated[str, typer.Argument(help="The earlier report", metavar="BEFORE")],
    after: Annotated[str, typer.Argument(help="The later report", metavar="AFTER")],
    json_path: Annotated[
        str | None, typer.Option("--json", help="Write the comparison as JSON here ('-': stdout)", metavar="PATH")
    ] = None,
    html_path: Annotated[
        str | None,
        typer.Option("--html", help="Write both runs' charts overlaid to this HTML file", metavar="PATH"),
    ] = None,
    regressed_text: Annotated[
        str | None,
        typer.Option(
            "--fail-if-regressed",
            help="Exit 3 when throughput fell or latency (p50, p90, p99) rose by more than this percentage, or the "
            "success rate fell by more than this many percentage points",
            metavar="PERCENT",
        ),
    ] = None,
) -> None:
    from trafficgen.stats.combine import compare, comparison

    regressed = _number("--fail-if-regressed", regressed_text)
    if regressed is not None and not (regressed >= 0 and regressed < float("inf")):
        fail(PROG, f"--fail-if-regressed {regressed:g}: give a percentage of at least 0")
    human = sys.stderr if json_path == "-" else sys.stdout
    with _damaged(f"{before} or {after}"):
        first, second = _load(before), _load(after)
        result = comparison(first, second, regressed)
        compare(first, second, human)
    for warning in result["warnings"]:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if json_path:
        write_json(result, json_path)
    if html_path:
        with _damaged(f"{before} or {after}"):
            write_html(second, first, html_path)
    for regression in result["regressions"]:
        print(f"{PROG}: regressed: {regression['text']}", file=sys.stderr)
    raise typer.Exit(ExitStatus.THRESHOLD if result["regressions"] else ExitStatus.OK)


def _asking(path: str, document: Report, sink: str | None, mta_queue: str | None, wait: float) -> Asking:
    """What `report reconcile` asks (a trafficgen.reconcile.Asking), from a saved report and the command's options."""
    import zlib

    from trafficgen.config import parse_sink_urls
    from trafficgen.reconcile import Asking, decode_marks

    previous, config = document.get("reconciliation") or {"sink": "", "error": ""}, document["config"]
    try:
        ours = decode_marks(previous["marks"])
    except zlib.error as e:
        fail(PROG, f"{path}: a report is damaged (reconciliation.marks: {e})")
    per = previous.get("marks_per_message")
    numbered = not config.get("recipient")
    if per is None:  # schema 1: one mark per message, recipients without the run's tag
        if numbered and (config.get("recipients_per_message") or 1) != 1:
            fail(PROG, f"{path}: a report of schema 1 keeps one mark per message of several recipients: reconcile it "
                 "with the trafficgen that wrote it")  # fmt: skip
        per, numbered = 1, False
    index, _, count = str(config.get("shard", "0/1")).partition("/")
    try:
        given = config.get("reconcile")
        sinks = (
            parse_sink_urls(sink, "--sink")
            if sink
            else tuple(str(u) for u in (given if isinstance(given, list) else []))
        )
    except ConfigError as e:
        fail(PROG, str(e))
    if not sinks:
        fail(PROG, f"{path}: no sink URL in the report: give --sink")
    saved_queue = config.get("mta_queue")
    queue = mta_queue if mta_queue is not None else None if saved_queue is None else str(saved_queue)
    if queue is not None and not numbered:
        fail(PROG, f"{path}: --mta-queue finds recipients trafficgen numbered, and this run's recipients are not")
    return Asking(
        sinks,
        document["run_id"],
        ours,
        per=int(per),
        numbered=numbered,
        shards=int(count),
        shard=int(index),
        mta_queue=queue or None,
        wait_s=wait,
    )


@report_app.command(
    "reconcile",
    help="Ask the sinks again what became of a saved run's recipients and messages (the MTA may have delivered "
    "more since). The report must come from a run with --reconcile.",
)
def report_reconcile(
    path: Annotated[
        str, typer.Argument(help="A report written with --json by a run with --reconcile", metavar="REPORT")
    ],
    sink: Annotated[
        str | None,
        typer.Option(
            help="The sinks' admin URLs, comma-separated [default: the run's --reconcile]", metavar="URL[,URL]"
        ),
    ] = None,
    wait_text: Annotated[
        str,
        typer.Option(
            "--wait", help="Ask each second for up to this many seconds until nothing is pending", metavar="SECONDS"
        ),
    ] = "0",
    mta_queue: Annotated[
        str | None,
        typer.Option(
            "--mta-queue",
            metavar="COMMAND",
            help="A command that prints the MTA's queue (postqueue -j) [default: the run's --mta-queue]",
        ),
    ] = None,
    json_path: Annotated[
        str | None,
        typer.Option("--json", help="Write the report with the new reconciliation here ('-': stdout)", metavar="PATH"),
    ] = None,
) -> None:
    import asyncio

    from mailload.runtime import event_loop_factory
    from trafficgen.reconcile import ask_sinks
    from trafficgen.stats.progress import ReconcileProgress
    from trafficgen.stats.summary import print_reconciliation

    document = _load(path)
    previous = document.get("reconciliation")
    if previous is None or "marks" not in previous:
        fail(PROG, f"{path}: this run was not made with --reconcile, so the report does not say what the target took")
        return
    wait = _number("--wait", wait_text) or 0.0
    if not 0 <= wait < float("inf"):
        fail(PROG, f"--wait {wait:g}: give a number of seconds of at least 0")
    with _damaged(path):
        asking = _asking(path, document, sink, mta_queue, wait)
        progress = ReconcileProgress(not wait, sys.stderr)
        try:
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                reconciliation = runner.run(ask_sinks(asking, progress.update))
        finally:
            progress.close()
    if "error" in reconciliation:
        fail(PROG, f"reconciliation: {reconciliation['error']}", ExitStatus.ERROR)
        return
    reconciliation["marks"] = previous["marks"]
    reconciliation["marks_per_message"] = asking.per
    document["reconciliation"] = reconciliation
    if json_path:
        write_json(document, json_path)
    from trafficgen.stats.summary import console_for

    with console_for(sys.stderr if json_path == "-" else sys.stdout) as console:
        print_reconciliation(console, reconciliation)


workload_app = typer.Typer(
    help="Workload files: derive one from an MTA's logs.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(workload_app, name="workload")


@workload_app.command(
    "from-logs",
    help="Write the workload an MTA's logs describe, as a --workload file: destination domains, tenants, campaigns, "
    "sender domains, egress sources, recipients per message, sizes, and the rate over the logged period as "
    "--profile stages. Only domains, names, counts and distributions are written, never an address. "
    "Then: trafficgen --workload FILE --target MTA:PORT",
)
def workload_from_logs(
    logs: LogsArgument,
    output: OutputOption = None,
    fmt: FormatOption = "auto",
    top: Annotated[
        int, typer.Option("--top", help="Domains, tenants, campaigns and sender domains kept by name; the rest as one")
    ] = 20,
    speed: Annotated[
        float,
        typer.Option("--speed", help="Replay the logged period this many times faster: 24 plays a day in an hour"),
    ] = 1.0,
    share: Annotated[str, typer.Option("--share", help="Of the logged volume, in percent: 10 or 10%")] = "100",
    stages: Annotated[int, typer.Option("--stages", help="At most this many --profile stages")] = 24,
    tenant_header: Annotated[
        str, typer.Option("--tenant-header", help="The logged header that names the tenant (KumoMTA's headers)")
    ] = "X-Tenant",
    campaign_header: Annotated[
        str, typer.Option("--campaign-header", help="The logged header that names the campaign")
    ] = "X-Campaign",
    quiet: QuietOption = False,
) -> None:
    from trafficgen.fromlogs import Shape, workload

    try:
        percent = float(share.strip().removesuffix("%"))
    except ValueError:
        fail(PROG, f"--share {share!r} is not a percentage like 10 or 10%")
    if not 0 < percent <= 100:
        fail(PROG, f"--share {share!r}: a percentage above 0, at most 100")
    if not speed > 0 or speed == float("inf"):
        fail(PROG, f"--speed {speed:g}: a factor above 0, like 24 for a day in an hour")
    for name, value in (("--top", top), ("--stages", stages)):
        if value < 1:
            fail(PROG, f"{name} must be at least 1, got {value}")
    shape = Shape(top=top, speed=speed, share=percent / 100, stages=stages)
    derive_from_logs(
        PROG,
        logs,
        lambda aggregate, report: workload(aggregate, report, shape),
        output,
        fmt,
        quiet,
        tenant_header,
        campaign_header,
    )
