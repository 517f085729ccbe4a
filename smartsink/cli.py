"""The `smartsink` command: options (each also a SMARTSINK_* variable) -> SinkConfig -> one sink or workers.

The only module that knows Typer. Everything it starts takes the one SinkConfig it builds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Coroutine
from typing import Annotated, Any

import typer

from mailload.cli import ExitStatus, event_loop_factory, fail, run_app, set_empty_in_environment
from smartsink.config import (
    DEFAULT_HTTP,
    DEFAULT_LISTEN,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_SUFFIX,
    ConfigError,
    SinkConfig,
    build,
)

PROG = "smartsink"
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def _env(name: str) -> str:
    return f"SMARTSINK_{name}"


@app.command(help="An SMTP sink that answers like real mailbox providers, from a KumoMTA-style responses.toml.")
def main_command(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option(envvar=_env("LISTEN"), help="SMTP address HOST:PORT")] = DEFAULT_LISTEN,
    policy: Annotated[
        str | None,
        typer.Option(
            envvar=_env("POLICY"),
            help="Policy file [default: ./policy/responses.toml, else the copy inside the package]",
            show_default=False,
        ),
    ] = None,
    http: Annotated[
        str, typer.Option(envvar=_env("HTTP"), help="Admin HTTP address HOST:PORT (/health, /metrics); 'off' for none")
    ] = DEFAULT_HTTP,
    workers: Annotated[
        int, typer.Option(envvar=_env("WORKERS"), help="Processes serving the SMTP port (SO_REUSEPORT)")
    ] = 1,
    seed: Annotated[
        int | None, typer.Option(envvar=_env("SEED"), help="Seed every random choice, for reproducible answers")
    ] = None,
    domain_suffix: Annotated[
        str,
        typer.Option(
            envvar=_env("DOMAIN_SUFFIX"),
            help="Suffix stripped from recipient domains before the policy lookup (comma-separated; '' for none)",
        ),
    ] = DEFAULT_SUFFIX,
    max_message_size: Annotated[
        str, typer.Option(envvar=_env("MAX_MESSAGE_SIZE"), help="Larger messages get 552 (e.g. 10MB, 25MiB)")
    ] = DEFAULT_MAX_MESSAGE_SIZE,
    tls_cert: Annotated[str | None, typer.Option(envvar=_env("TLS_CERT"), help="PEM certificate for STARTTLS")] = None,
    tls_key: Annotated[str | None, typer.Option(envvar=_env("TLS_KEY"), help="PEM key for STARTTLS")] = None,
    tls_self_signed: Annotated[
        bool, typer.Option(envvar=_env("TLS_SELF_SIGNED"), help="Offer STARTTLS with a certificate made at start")
    ] = False,
    auth: Annotated[
        str,
        typer.Option(
            envvar=_env("AUTH"), help="AUTH PLAIN/LOGIN: off, any (accept any credentials), required (and demand it)"
        ),
    ] = "off",
    hostname: Annotated[
        str | None, typer.Option(envvar=_env("HOSTNAME"), help="Name in the greeting [default: this host's name]")
    ] = None,
    engine: Annotated[
        str, typer.Option(envvar=_env("ENGINE"), help="SMTP engine: fast, or aiosmtpd (the slower reference)")
    ] = "fast",
    timeout: Annotated[
        float, typer.Option(envvar=_env("TIMEOUT"), help="Seconds a connection may stay silent before 421")
    ] = 300.0,
    log_level: Annotated[str, typer.Option(envvar=_env("LOG_LEVEL"), help="debug, info, warning or error")] = "info",
    check: Annotated[
        bool, typer.Option("--check", help="Validate the policy file and exit: 0 when good, 2 with its problems")
    ] = False,
) -> int:
    options = dict(ctx.params)
    check = options.pop("check")
    if set_empty_in_environment(ctx, "domain_suffix", _env("DOMAIN_SUFFIX")):
        options["domain_suffix"] = ""  # SMARTSINK_DOMAIN_SUFFIX='' strips nothing, like --domain-suffix
    try:
        config = build(**options)  # the options' names are build()'s
    except ConfigError as e:
        fail(PROG, str(e))
    if check:
        return check_policy(config.policy_path)
    return serve(config)


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
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
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
