"""The `smartsink` command: options (each also a SMARTSINK_* variable) -> SinkConfig -> one sink or workers.

The only module that knows Typer. Everything it starts takes the one SinkConfig it builds.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import sys
import tempfile
from collections.abc import Coroutine
from typing import Annotated, Any

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
from mailload.runtime import ExitStatus, event_loop_factory, fail
from smartsink import __version__, logs
from smartsink.config import ConfigError, SinkConfig, build

PROG = "smartsink"
ENV = "SMARTSINK"
app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="An SMTP sink that answers like real mailbox providers, from a KumoMTA-style responses.toml. "
    "Run with options; `smartsink policy --help` to derive a policy from an MTA's logs.",
)


def _version(value: bool) -> None:
    if value:
        print(f"{PROG} {__version__}")
        raise typer.Exit()


def main_command(ctx: typer.Context, **given: Any) -> int:
    """Every option of SinkConfig (mailload.options derives them), --check and --version."""
    if ctx.invoked_subcommand is not None:
        return ExitStatus.OK
    check = given.pop("check")
    given.pop("version", None)
    if set_empty_in_environment(ctx, "domain_suffixes", f"{ENV}_DOMAIN_SUFFIX"):
        given["domain_suffixes"] = ""  # SMARTSINK_DOMAIN_SUFFIX='' strips nothing, like --domain-suffix ''
    try:
        config = build(**given)
    except ConfigError as e:
        fail(PROG, str(e))
    if check:
        return check_policy(config.policy_path)
    return serve(config)


def _signature() -> inspect.Signature:
    declared = options.signature(SinkConfig, ENV, typer.Option, typer.Context)
    actions = [
        inspect.Parameter(
            "check",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[
                bool,
                typer.Option(
                    "--check", help="Validate the policy file and exit: 0 when good, 2 with its problems", metavar=""
                ),
            ],
        ),
        inspect.Parameter(
            "version",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[
                bool,
                typer.Option(
                    "--version", help="Print the version and exit", callback=_version, is_eager=True, metavar=""
                ),
            ],
        ),
    ]
    return declared.replace(parameters=[*declared.parameters.values(), *actions])


main_command.__signature__ = _signature()  # type: ignore[attr-defined]
app.callback()(main_command)


def check_policy(path: str) -> int:
    from smartsink.policy import PolicyError, load_policy

    try:
        loaded = load_policy(path)
    except PolicyError as e:
        for problem in e.problems:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
        return ExitStatus.USAGE
    for warning in loaded.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    print(f"{path}: OK, {len(loaded.domains)} domains")
    return ExitStatus.OK


def serve(config: SinkConfig) -> int:
    """Run the sink until SIGTERM/SIGINT. The metrics directory must exist before prometheus_client loads."""
    logs.configure(config.log_level, config.log_format)
    metrics_dir = None
    if config.workers > 1:
        # Workers count into files that any process sums for /metrics; one process keeps them in memory.
        metrics_dir = tempfile.mkdtemp(prefix="smartsink-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        from smartsink.policy import PolicyError
        from smartsink.server import SinkStartError

        try:
            if config.workers > 1:
                from smartsink.supervisor import Supervisor

                return Supervisor(config).run()
            from smartsink.server import Sink

            return _run(Sink(config).serve())
        except PolicyError as e:
            for problem in e.problems:
                print(f"{PROG}: error: {problem}", file=sys.stderr)
            return ExitStatus.USAGE
        except SinkStartError as e:
            fail(PROG, str(e))
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return ExitStatus.OK


def _run(coro: Coroutine[Any, Any, None]) -> int:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(coro)
    return ExitStatus.OK


def main() -> None:
    run_app(app, PROG)


policy_app = typer.Typer(
    help="Policy files: derive one from an MTA's logs.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(policy_app, name="policy")


@policy_app.command(
    "from-logs",
    help="Write the policy an MTA's logs describe, in the responses.toml layout: per destination domain the share "
    "of temporary and permanent failures its servers answered, their texts weighted by frequency (addresses, IP "
    "addresses and ids masked), RCPT or DATA time, and latency where the log has it. "
    "Then: smartsink --policy FILE",
)
def policy_from_logs(
    logs: LogsArgument,
    output: OutputOption = None,
    fmt: FormatOption = "auto",
    top: Annotated[int, typer.Option("--top", help="Domains given a table of their own; the rest make [default]")] = 20,
    replies: Annotated[
        int, typer.Option("--replies", help="Reply texts kept per domain and kind, the most frequent")
    ] = 10,
    quiet: QuietOption = False,
) -> None:
    from smartsink.policy.fromlogs import policy

    for name, value in (("--top", top), ("--replies", replies)):
        if value < 1:
            fail(PROG, f"{name} must be at least 1, got {value}")
    derive_from_logs(PROG, logs, lambda aggregate, report: policy(aggregate, report, top, replies), output, fmt, quiet)
