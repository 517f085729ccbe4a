"""The checks across options, one concern each: a RunConfig whose options are each good on their own may still
ask for something that cannot be (--profile with --throttle, --processes beyond --concurrency...). Each check reads
a built RunConfig and raises ConfigError naming the options; none changes anything. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from mailload import units
from trafficgen.readers import ConfigError, is_ip
from trafficgen.runconfig import RunConfig

_URL = re.compile(r"^https?://[^/\s]+")


def check_target(config: RunConfig) -> None:
    target = config.target
    if config.http:
        if not _URL.match(target):
            raise ConfigError(f"--target {target!r}: with --http, give the MTA's URL, like http://127.0.0.1:8000")
        return
    if config.http_batch_size != 1 or config.http_defer_spool or config.http_defer_generation:
        raise ConfigError("--http-batch-size, --http-defer-spool and --http-defer-generation go with --http")
    if re.match(r"^https?://", target):
        raise ConfigError(f"--target {target!r} is a URL: add --http to submit through the injection API")
    try:
        _, port = units.parse_hostport(target, "--target")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if port == 0:
        raise ConfigError(f"--target {target!r}: port 0 is not a port to connect to")


def check_http(config: RunConfig) -> None:
    if not config.http:
        return
    if config.recipients_per_message != 1:
        raise ConfigError("with --http, --http-batch-size sets the recipients of each message")
    for given, flag in ((config.starttls, "--starttls"), (config.source_address, "--source-address")):
        if given:
            raise ConfigError(f"{flag} applies to SMTP, not to --http")


def check_counts(config: RunConfig) -> None:
    processes, count, concurrency = config.processes, config.message_count, config.concurrency
    if processes > concurrency:
        raise ConfigError(f"--processes {processes} is more than --concurrency {concurrency}: each needs a connection")
    if count is not None and processes > count:
        raise ConfigError(f"--processes {processes} is more than --message-count {count}")


def check_queue(config: RunConfig) -> None:
    if config.mta_queue is None:
        return
    if not config.reconcile:
        raise ConfigError("--mta-queue is read at reconciliation: give --reconcile too")
    if not config.mta_queue.strip():
        raise ConfigError("--mta-queue is empty: give the command that prints the MTA's queue")
    if config.recipient:
        raise ConfigError("--mta-queue finds recipients trafficgen numbers, and --recipient gives one fixed address")


def check_profile(config: RunConfig) -> None:
    if config.profile is None:
        return
    if config.throttle is not None:
        raise ConfigError("--profile and --throttle both set the rate: give one")
    if config.message_count is not None:
        raise ConfigError(
            "--profile and --message-count both set how many messages are sent (the stages make them due): give "
            "one (--duration caps a profile)"
        )


def check_mix(config: RunConfig) -> None:
    if config.sender and config.sender_domains:
        raise ConfigError("--sender fixes the sender: it cannot go with --sender-domain")
    if config.body_file and config.content != "text":
        raise ConfigError("--content shapes generated bodies: it cannot go with --body-file")


def check_sources(config: RunConfig) -> None:
    if not config.source_address or config.http or not is_ip(config.host):
        return
    for source in config.source_address:
        if (":" in source.name) != (":" in config.host):
            raise ConfigError(f"--source-address {source.name} and --target {config.target} are not of one IP version")


def check_thresholds(config: RunConfig) -> None:
    if config.fail_fast and not config.fail_if:
        raise ConfigError("--fail-fast stops the run at the first failed --fail-if: give --fail-if")
    known = {"domains": config.domain_names, **config.dimensions}
    for item in config.fail_if:
        names = known.get(item.scope_key, []) if item.scope_key is not None else []
        if item.scope_key is not None and item.scope not in names:
            what, listed = item.scope_key[:-1].replace("_", " "), ", ".join(names) or "none given"
            raise ConfigError(f"--fail-if {item.text!r}: {item.scope!r} is not a {what} of this run ({listed})")


def check_auth(config: RunConfig) -> None:
    if bool(config.auth_user) != bool(config.auth_password):
        raise ConfigError("--auth-user and --auth-password go together: give both")


CHECKS: tuple[Callable[[RunConfig], None], ...] = (
    check_target,
    check_http,
    check_counts,
    check_profile,
    check_queue,
    check_mix,
    check_sources,
    check_thresholds,
    check_auth,
)


def check(config: RunConfig) -> RunConfig:
    """The config, once every check passed; ConfigError names the first that did not."""
    for each in CHECKS:
        each(config)
    return config
