"""RunConfig: every option of a run, validated once (by the CLI or a program), then only read.

`build()` takes options as a user writes them ("gmail.com:67.4", "10kb..200kb", "1,000/hr") and raises
ConfigError with one line naming the bad one; RunConfig itself holds parsed values.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from mailload import contract, units
from mailload.units import RateSpec

DEFAULT_TARGET = "127.0.0.1:2025"
DEFAULT_DOMAINS = ("aol.com", "gmail.com", "hotmail.com", "yahoo.com")
DEFAULT_SUFFIX = contract.DEFAULT_SUFFIX
DEFAULT_DURATION = 60.0
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_RATE = 2000.0
MAX_BODY = 512 * 1024 * 1024
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9_])?"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


class ConfigError(ValueError):
    """An option that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class DomainWeight:
    name: str
    weight: float


@dataclass(frozen=True)
class RunConfig:
    host: str = "127.0.0.1"
    port: int = 2025
    concurrency: int = 10
    duration: float | None = DEFAULT_DURATION
    message_count: int | None = None
    domains: tuple[DomainWeight, ...] = tuple(DomainWeight(d, 1.0) for d in DEFAULT_DOMAINS)
    domain_suffix: str = DEFAULT_SUFFIX
    body_size: tuple[int, int] = (1024, 1024)
    body_file: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    throttle: RateSpec | None = None
    starttls: bool = False
    keep_going: bool = False
    sender: str | None = None
    recipient: str | None = None
    auth_user: str | None = None
    auth_password: str | None = None
    recipients_per_message: int = 1
    messages_per_connection: int | None = None
    source_address: str | None = None
    pipelining: bool = True
    seed: int | None = None
    json_path: str | None = None
    quiet: bool = False
    processes: int = 1
    timeout: float = DEFAULT_TIMEOUT
    ehlo: str = ""
    http: bool = False
    http_batch_size: int = 1
    http_url: str = ""
    http_defer_spool: bool = False
    http_defer_generation: bool = False
    run_id: str = field(default_factory=lambda: secrets.token_hex(6))
    reconcile: tuple[str, ...] | None = None  # the admin URLs of every sink behind the target
    reconcile_wait: float = 0.0
    shard_index: int = 0
    shard_count: int = 1
    hdr_log: str | None = None
    metrics: tuple[str, int] | None = None
    connect_rate: float = DEFAULT_CONNECT_RATE  # new connections per second while the first ones open

    @property
    def target(self) -> str:
        if self.http:
            return self.http_url
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def domain_with_suffix(self, name: str) -> str:
        return f"{name}.{self.domain_suffix}" if self.domain_suffix else name

    def public(self) -> dict[str, object]:
        """The config as the JSON report shows it (no password)."""
        return {
            "target": self.target,
            "concurrency": self.concurrency,
            "processes": self.processes,
            "duration_s": self.duration,
            "message_count": self.message_count,
            "domains": {d.name: d.weight for d in self.domains},
            "domain_suffix": self.domain_suffix,
            "body_size": list(self.body_size),
            "body_file": self.body_file,
            "headers": [f"{n}: {v}" for n, v in self.headers],
            "throttle_per_s": self.throttle.per_second if self.throttle else None,
            "max_burst": self.throttle.max_burst if self.throttle else None,
            "starttls": self.starttls,
            "keep_going": self.keep_going,
            "sender": self.sender,
            "recipient": self.recipient,
            "auth_user": self.auth_user,
            "recipients_per_message": self.recipients_per_message,
            "messages_per_connection": self.messages_per_connection,
            "source_address": self.source_address,
            "pipelining": self.pipelining,
            "seed": self.seed,
            "timeout_s": self.timeout,
            "http": self.http,
            "http_batch_size": self.http_batch_size if self.http else None,
            "http_defer_spool": self.http_defer_spool,
            "http_defer_generation": self.http_defer_generation,
            "shard": f"{self.shard_index}/{self.shard_count}",
            "reconcile": list(self.reconcile) if self.reconcile else None,
            "connect_rate_per_s": self.connect_rate,
        }


def parse_domain(text: str) -> DomainWeight:
    """ "gmail.com:67.4" or "gmail.com" (weight 1)."""
    name, colon, weight_text = text.strip().partition(":")
    name = name.strip().lower().rstrip(".")
    if not _DOMAIN.match(name):
        raise ConfigError(f"--domain {text!r}: {name!r} is not a domain name")
    weight = 1.0
    if colon:
        try:
            weight = float(weight_text)
        except ValueError:
            raise ConfigError(f"--domain {text!r}: weight {weight_text!r} is not a number") from None
        if not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"--domain {text!r}: weight must be more than 0")
    return DomainWeight(name, weight)


def parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not name or not _HEADER_NAME.match(name):
        raise ConfigError(f'--header {text!r} must look like "Name: value"')
    if "\r" in value or "\n" in value:
        raise ConfigError(f"--header {text!r}: a header value cannot hold a line break")
    return name, value


def parse_sink_urls(text: str, option: str = "--reconcile") -> tuple[str, ...]:
    """Sinks' admin URLs, comma-separated."""
    sinks = tuple(u.strip().rstrip("/") for u in text.split(",") if u.strip())
    if not sinks or not all(re.match(r"^https?://[^/\s]+$", u) for u in sinks):
        raise ConfigError(
            f"{option} {text!r}: give each sink's admin URL, like http://127.0.0.1:8000 (comma-separated)"
        )
    return sinks


def _positive(value: int | None, option: str) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{option} must be at least 1, got {value}")


def build(
    *,
    target: str = DEFAULT_TARGET,
    concurrency: int | None = None,
    duration: float | None = None,
    message_count: int | None = None,
    domains: list[str] | None = None,
    domain_suffix: str = DEFAULT_SUFFIX,
    body_size: str = "1024",
    body_file: str | None = None,
    headers: list[str] | None = None,
    throttle: str | None = None,
    starttls: bool = False,
    keep_going: bool = False,
    sender: str | None = None,
    recipient: str | None = None,
    auth_user: str | None = None,
    auth_password: str | None = None,
    recipients_per_message: int = 1,
    messages_per_connection: int | None = None,
    source_address: str | None = None,
    pipelining: bool = True,
    seed: int | None = None,
    json_path: str | None = None,
    quiet: bool = False,
    processes: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    ehlo: str | None = None,
    http: bool = False,
    http_batch_size: int = 1,
    http_defer_spool: bool = False,
    http_defer_generation: bool = False,
    run_id: str | None = None,
    reconcile: str | None = None,
    reconcile_wait: float = 0.0,
    shard: str | None = None,
    hdr_log: str | None = None,
    metrics: str | None = None,
    connect_rate: str | None = None,
) -> RunConfig:
    """Validate options as a user writes them; ConfigError names the first bad one."""
    host, port, http_url = "", 0, ""
    if http:
        if not re.match(r"^https?://[^/\s]+", target):
            raise ConfigError(f"--target {target!r}: with --http, give the MTA's URL, like http://127.0.0.1:8000")
        http_url = target.rstrip("/") + "/api/inject/v1"
        if recipients_per_message != 1:
            raise ConfigError("with --http, --http-batch-size sets the recipients of each message")
        for given, option in (
            (starttls, "--starttls"),
            (auth_user, "--auth-user"),
            (source_address, "--source-address"),
        ):
            if given:
                raise ConfigError(f"{option} applies to SMTP, not to --http")
        recipients_per_message = http_batch_size
    elif http_batch_size != 1 or http_defer_spool or http_defer_generation:
        raise ConfigError("--http-batch-size, --http-defer-spool and --http-defer-generation go with --http")
    elif re.match(r"^https?://", target):
        raise ConfigError(f"--target {target!r} is a URL: add --http to submit through the injection API")
    else:
        try:
            host, port = units.parse_hostport(target, "--target")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if port == 0:
            raise ConfigError(f"--target {target!r}: port 0 is not a port to connect to")
    concurrency = concurrency if concurrency is not None else 10 * (os.cpu_count() or 1)
    _positive(concurrency, "--concurrency")
    _positive(message_count, "--message-count")
    _positive(messages_per_connection, "--messages-per-connection")
    _positive(processes, "--processes")
    _positive(http_batch_size, "--http-batch-size")
    _positive(recipients_per_message, "--recipients-per-message")
    if duration is not None and (not math.isfinite(duration) or duration <= 0):
        raise ConfigError(f"--duration must be more than 0 seconds, got {duration}")
    if timeout <= 0:
        raise ConfigError(f"--timeout must be more than 0 seconds, got {timeout}")
    if reconcile_wait < 0:
        raise ConfigError(f"--reconcile-wait cannot be negative, got {reconcile_wait}")
    if message_count is None and duration is None:
        duration = DEFAULT_DURATION  # --message-count alone is never cut short by the default duration
    if processes > concurrency:
        raise ConfigError(f"--processes {processes} is more than --concurrency {concurrency}: each needs a connection")
    if message_count is not None and processes > message_count:
        raise ConfigError(f"--processes {processes} is more than --message-count {message_count}")

    parsed_domains = tuple(parse_domain(d) for d in (domains or DEFAULT_DOMAINS))
    suffix = domain_suffix.strip().strip(".").lower()
    if suffix and not _DOMAIN.match(suffix):
        raise ConfigError(f"--domain-suffix {domain_suffix!r} is not a domain name")
    try:
        size = units.parse_size_range(body_size)
    except ValueError as e:
        raise ConfigError(f"--body-size: {e}") from None
    if size[1] > MAX_BODY:
        raise ConfigError(f"--body-size {body_size!r} is larger than {MAX_BODY // 1024 // 1024} MiB")
    if body_file is not None:
        path = Path(body_file)
        if path.is_dir():
            raise ConfigError(f"--body-file {body_file}: is a directory")
        if not path.is_file():
            raise ConfigError(f"--body-file {body_file}: no such file")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"--body-file {body_file}: cannot be read")
    throttle_spec = None
    if throttle:
        try:
            throttle_spec = units.parse_rate(throttle, allow_burst=True)
        except ValueError as e:
            raise ConfigError(f"--throttle: {e}") from None
    for address, option in ((sender, "--sender"), (recipient, "--recipient")):
        if address is not None and not _ADDRESS.match(address):
            raise ConfigError(f"{option} {address!r} is not an address like user@example.test")
    if bool(auth_user) != bool(auth_password):
        raise ConfigError("--auth-user and --auth-password go together: give both")
    if source_address is not None:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in source_address else socket.AF_INET, source_address)
        except OSError:
            raise ConfigError(f"--source-address {source_address!r} is not an IP address") from None
    for output, option in ((json_path, "--json"), (hdr_log, "--hdr-log")):
        if output is not None and output != "-":
            directory = Path(output).resolve().parent
            if Path(output).is_dir():
                raise ConfigError(f"{option} {output}: is a directory")
            if not directory.is_dir() or not os.access(directory, os.W_OK):
                raise ConfigError(f"{option} {output}: cannot write in {directory}")
    connections_per_s = DEFAULT_CONNECT_RATE
    if connect_rate:
        try:
            connections_per_s = units.parse_rate(connect_rate).per_second
        except ValueError as e:
            raise ConfigError(f"--connect-rate: {e}") from None
    metrics_addr = None
    if metrics:
        try:
            metrics_addr = units.parse_hostport(metrics, "--metrics")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    sinks = parse_sink_urls(reconcile) if reconcile is not None else None
    shard_index, shard_count = 0, 1
    if shard:
        m = re.match(r"^\s*(\d+)\s*/\s*(\d+)\s*$", shard)
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
            raise ConfigError(f"--shard {shard!r} must be INDEX/COUNT with 0 <= INDEX < COUNT, like 0/4")
        shard_index, shard_count = int(m.group(1)), int(m.group(2))
    if run_id is not None and not contract.RUN_ID.match(run_id):
        raise ConfigError(f"--run-id {run_id!r}: use 1 to {contract.RUN_ID_MAX} letters, digits, '-' or '_'")
    return RunConfig(
        host=host,
        port=port,
        concurrency=concurrency,
        duration=duration,
        message_count=message_count,
        domains=parsed_domains,
        domain_suffix=suffix,
        body_size=size,
        body_file=body_file,
        headers=tuple(parse_header(h) for h in (headers or ())),
        throttle=throttle_spec,
        starttls=starttls,
        keep_going=keep_going,
        sender=sender,
        recipient=recipient,
        auth_user=auth_user,
        auth_password=auth_password,
        recipients_per_message=recipients_per_message,
        messages_per_connection=messages_per_connection,
        source_address=source_address,
        pipelining=pipelining,
        seed=seed,
        json_path=json_path,
        quiet=quiet,
        processes=processes,
        timeout=timeout,
        ehlo=ehlo or f"trafficgen.{suffix or 'localdomain'}",
        http=http,
        http_batch_size=http_batch_size,
        http_url=http_url,
        http_defer_spool=http_defer_spool,
        http_defer_generation=http_defer_generation,
        run_id=run_id or secrets.token_hex(6),
        reconcile=sinks,
        reconcile_wait=reconcile_wait,
        shard_index=shard_index,
        shard_count=shard_count,
        hdr_log=hdr_log,
        metrics=metrics_addr,
        connect_rate=connections_per_s,
    )
