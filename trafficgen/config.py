"""RunConfig: every option of a run, declared once, validated once (by the CLI or a program), then only read.

Each field is an option (mailload.options): its help, --help panel, metavar, environment variable and how the
text a user writes becomes its value are declared on the field, and the command line, docs/cli.md and the JSON
report's `config` are derived from them. `build()` takes options as a user writes them ("gmail.com:67.4",
"10kb..200kb", "1,000/hr") and raises ConfigError with one line naming the bad one; checks that involve several
options run after each option is read, one function per concern.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import socket
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from mailload import contract, units
from mailload.options import HIDDEN, OptionError, option, report, values
from mailload.units import RateSpec

DEFAULT_TARGET = "127.0.0.1:2025"
DEFAULT_HTTP_TARGET = "http://127.0.0.1:8000"  # KumoMTA's traffic-gen's, with --http
DEFAULT_DOMAINS = ("aol.com", "gmail.com", "hotmail.com", "yahoo.com")
DEFAULT_SUFFIX = contract.DEFAULT_SUFFIX
DEFAULT_DURATION = 60.0
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_RATE = 2000.0
MAX_BODY = 512 * 1024 * 1024
INJECT_PATH = "/api/inject/v1"
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9_])?"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
_URL = re.compile(r"^https?://[^/\s]+")

TARGET, LOAD, CONTENT, SMTP, OUTPUT, RECONCILE, HTTP, FLEET = (
    "Target",
    "Load shape",
    "Content",
    "SMTP",
    "Output",
    "Reconciliation",
    "KumoMTA HTTP injection",
    "Many machines",
)


class ConfigError(ValueError):
    """An option that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class DomainWeight:
    name: str
    weight: float


# --- reading one option ------------------------------------------------------------------------------------------


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


def parse_sink_urls(text: str, option_name: str = "--reconcile") -> tuple[str, ...]:
    """Sinks' admin URLs, comma-separated."""
    sinks = tuple(u.strip().rstrip("/") for u in text.split(",") if u.strip())
    if not sinks or not all(re.match(r"^https?://[^/\s]+$", u) for u in sinks):
        raise ConfigError(
            f"{option_name} {text!r}: give each sink's admin URL, like http://127.0.0.1:8000 (comma-separated)"
        )
    return sinks


def _domains(texts: list[str]) -> tuple[DomainWeight, ...]:
    return tuple(parse_domain(t) for t in texts)


def _headers(texts: list[str]) -> tuple[tuple[str, str], ...]:
    return tuple(parse_header(t) for t in texts)


def _suffix(text: str) -> str:
    suffix = text.strip().strip(".").lower()
    if suffix and not _DOMAIN.match(suffix):
        raise ConfigError(f"--domain-suffix {text!r} is not a domain name")
    return suffix


def _body_size(text: str) -> tuple[int, int]:
    try:
        size = units.parse_size_range(text)
    except ValueError as e:
        raise ConfigError(f"--body-size: {e}") from None
    if size[1] > MAX_BODY:
        raise ConfigError(f"--body-size {text!r} is larger than {MAX_BODY // 1024 // 1024} MiB")
    return size


def _readable_file(text: str) -> str:
    path = Path(text)
    if path.is_dir():
        raise ConfigError(f"--body-file {text}: is a directory")
    if not path.is_file():
        raise ConfigError(f"--body-file {text}: no such file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"--body-file {text}: cannot be read")
    return text


def _throttle(text: str) -> RateSpec:
    try:
        return units.parse_rate(text, allow_burst=True)
    except ValueError as e:
        raise ConfigError(f"--throttle: {e}") from None


def _connect_rate(text: str) -> float:
    try:
        return units.parse_rate(text).per_second
    except ValueError as e:
        raise ConfigError(f"--connect-rate: {e}") from None


def _address(flag: str) -> Any:
    def parse(text: str) -> str:
        if not _ADDRESS.match(text):
            raise ConfigError(f"{flag} {text!r} is not an address like user@example.test")
        return text

    return parse


def _ip(text: str) -> str:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except OSError:
        raise ConfigError(f"--source-address {text!r} is not an IP address") from None
    return text


def _writable(flag: str) -> Any:
    def parse(text: str) -> str:
        if text != "-":
            directory = Path(text).resolve().parent
            if Path(text).is_dir():
                raise ConfigError(f"{flag} {text}: is a directory")
            if not directory.is_dir() or not os.access(directory, os.W_OK):
                raise ConfigError(f"{flag} {text}: cannot write in {directory}")
        return text

    return parse


def _hostport(flag: str) -> Any:
    def parse(text: str) -> tuple[str, int]:
        try:
            return units.parse_hostport(text, flag)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    return parse


def _shard(text: str) -> tuple[int, int]:
    m = re.match(r"^\s*(\d+)\s*/\s*(\d+)\s*$", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"--shard {text!r} must be INDEX/COUNT with 0 <= INDEX < COUNT, like 0/4")
    return int(m.group(1)), int(m.group(2))


def _run_id(text: str) -> str:
    if not contract.RUN_ID.match(text):
        raise ConfigError(f"--run-id {text!r}: use 1 to {contract.RUN_ID_MAX} letters, digits, '-' or '_'")
    return text


def _finite(flag: str) -> Any:
    def parse(value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{flag} must be more than 0 seconds, got {value}")
        return value

    return parse


# --- the report's view of some options --------------------------------------------------------------------------


def _show_throttle(spec: RateSpec | None) -> dict[str, Any]:
    return {"throttle_per_s": spec.per_second if spec else None, "max_burst": spec.max_burst if spec else None}


def _show_domains(domains: tuple[DomainWeight, ...]) -> dict[str, Any]:
    return {"domains": {d.name: d.weight for d in domains}}


def _show_headers(headers: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {"headers": [f"{n}: {v}" for n, v in headers]}


def _show_shard(shard: tuple[int, int]) -> dict[str, Any]:
    return {"shard": f"{shard[0]}/{shard[1]}"}


def _show_reconcile(sinks: tuple[str, ...] | None) -> dict[str, Any]:
    return {"reconcile": list(sinks) if sinks else None}


@dataclass(frozen=True)
class RunConfig:
    """Every option of a run. A field's default is what a run does when the option is not given."""

    # Target
    target: str = option(
        DEFAULT_TARGET,
        help="Where to send: HOST:PORT, [IPv6]:PORT (with --http, the MTA's URL)",
        doc=(
            "where to send (an MTA under test, or a sink); `[v6]:PORT` for IPv6; with `--http`, the MTA's URL "
            f"(default `{DEFAULT_HTTP_TARGET}`, as KumoMTA's traffic-gen)"
        ),
        panel=TARGET,
        metavar="HOST:PORT",
        shown_default=f"{DEFAULT_TARGET}; with --http, {DEFAULT_HTTP_TARGET}",
    )
    domains: tuple[DomainWeight, ...] = option(
        tuple(DomainWeight(d, 1.0) for d in DEFAULT_DOMAINS),
        help="A destination domain and its weight, repeatable; the variable holds several, separated by spaces",
        doc="repeatable; float weights (default 1); each message goes to one domain chosen by weight",
        panel=TARGET,
        metavar="NAME[:WEIGHT]",
        flags=("--domain",),
        given_as=list[str],
        parse=_domains,
        shown_default=" ".join(DEFAULT_DOMAINS),
        report=_show_domains,
    )
    domain_suffix: str = option(
        DEFAULT_SUFFIX,
        help="Appended to every generated domain so no mail can reach a real mailbox; '' for none",
        doc=(
            "appended to every generated domain (`gmail.com.sink.test`); `.test` is reserved by RFC 2606, so no "
            "generated address can reach a real mailbox. `''` disables it (then mail is addressed to the real "
            "domains: only do this when the target routes everything to a sink)"
        ),
        panel=TARGET,
        metavar="SUFFIX",
        parse=_suffix,
    )
    sender: str | None = option(
        None,
        help="Fixed envelope sender",
        doc="fixed envelope sender",
        panel=TARGET,
        metavar="ADDRESS",
        parse=_address("--sender"),
        shown_default="noreply@<domain>.<suffix>",
    )
    recipient: str | None = option(
        None,
        help="Fixed envelope recipient: no weights, no suffix",
        doc="fixed envelope recipient: no weights, no suffix; the report has one domain, the recipient's",
        panel=TARGET,
        metavar="ADDRESS",
        parse=_address("--recipient"),
        shown_default="user-<n>@<domain>.<suffix>",
    )
    # Load shape
    concurrency: int = option(
        10 * (os.cpu_count() or 1),
        help="Connections in all, opened at --connect-rate and held for the whole run",
        doc=(
            "connections in all (split over `--processes`), opened at `--connect-rate` and held for the whole "
            "run, with or without `--throttle` ([below](#connections)). The open-files soft limit is raised to "
            "the hard limit; a count that cannot fit is refused with the limit named"
        ),
        panel=LOAD,
        metavar="N",
        given_as=int,
        shown_default="10 x CPUs",
    )
    connect_rate: float = option(
        DEFAULT_CONNECT_RATE,
        help="How fast the connections are first opened, in all: 500/s",
        doc=(
            "how fast the connections are first opened, in all: 20,000 connections take 10 s at the default, 100 "
            "take 50 ms"
        ),
        panel=LOAD,
        metavar="RATE",
        parse=_connect_rate,
        shown_default="2000/s",
        report="connect_rate_per_s",
    )
    duration: float | None = option(
        DEFAULT_DURATION,
        help="Seconds to send for",
        doc="how long to send; messages in flight at the end get 10 s to finish",
        panel=LOAD,
        metavar="SECONDS",
        given_as=float,
        parse=_finite("--duration"),
        shown_default="60, or none with --message-count",
        report="duration_s",
    )
    message_count: int | None = option(
        None,
        help="Send exactly this many messages (not cut short by the default duration)",
        doc="exactly N attempts; not cut short by the default duration (give `--duration` too to cap it)",
        panel=LOAD,
        metavar="N",
        given_as=int,
    )
    throttle: RateSpec | None = option(
        None,
        help="One rate for the whole run, all connections and processes: 300/s, 6000/m, 1,000/hr[,max_burst=N]",
        doc=(
            "one rate for the whole run, all connections and processes: `300/s`, `6000/m`, `1,000/hr`, "
            "`50/min,max_burst=10`, and KumoMTA's spellings `100/5m`, `10/2s`, `100/30sec`, `local:100/s` (one "
            "run is one schedule, so `local:` changes nothing). Open loop: see "
            "[performance.md](performance.md#latency-that-does-not-lie). "
            "When the run achieves less than 98% of it, the live view, the summary and the report (`schedule`) "
            "say so, with the messages that fell due and were never sent"
        ),
        panel=LOAD,
        metavar="RATE",
        parse=_throttle,
        report=_show_throttle,
    )
    processes: int = option(
        1,
        help="Processes to spread the connections over",
        doc=(
            "spread the connections over N processes (one per core is sensible); counts and histograms are "
            "merged, `--throttle` is one schedule shared by all, `--concurrency` and `--message-count` are split "
            "exactly"
        ),
        panel=LOAD,
        metavar="N",
        given_as=int,
    )
    messages_per_connection: int | None = option(
        None,
        help="Reconnect after this many messages",
        doc="QUIT and reconnect after N messages",
        panel=LOAD,
        metavar="N",
        given_as=int,
        shown_default="never",
    )
    recipients_per_message: int = option(
        1,
        help="RCPT commands per message",
        doc="RCPTs per message, all in the message's domain, each a unique address",
        panel=LOAD,
        metavar="N",
        given_as=int,
    )
    keep_going: bool = option(
        False,
        help="Count errors and reconnect with backoff instead of stopping",
        doc="count errors and reconnect with backoff (50 ms doubling to 2 s) instead of stopping at the first one",
        panel=LOAD,
        given_as=bool,
    )
    timeout: float = option(
        DEFAULT_TIMEOUT,
        help="Seconds to wait for any connect or reply",
        doc=(
            "the longest wait for a connection or any reply; past it, the message is an error. A target that "
            "sends no greeting before `--timeout` or the end of the run is an error named as such (exit 1)"
        ),
        panel=LOAD,
        metavar="SECONDS",
        given_as=float,
        parse=_finite("--timeout"),
        report="timeout_s",
    )
    seed: int | None = option(
        None,
        help="Seed the random choices (domains, bodies, sizes)",
        doc="seed the domain choices, body text and sizes",
        panel=LOAD,
        metavar="N",
        given_as=int,
        shown_default="random",
    )
    # Content
    body_size: tuple[int, int] = option(
        (1024, 1024),
        help="Body size: 1024, 60kb, 1MiB, or a range 10kb..200kb",
        doc=(
            "at least this many bytes of readable text; `60kb` (1000s), `1MiB` (1024s); a range `10kb..200kb` "
            "picks a size per message, uniformly"
        ),
        panel=CONTENT,
        metavar="SIZE",
        parse=_body_size,
        shown_default="1024",
    )
    body_file: str | None = option(
        None,
        help="Send this whole message (headers and body)",
        doc=(
            "send this file as the whole message (headers and body): line endings made CRLF, dot-stuffed; "
            "`X-Trafficgen-Id` and `--header`s are put in front"
        ),
        panel=CONTENT,
        metavar="PATH",
        parse=_readable_file,
    )
    headers: tuple[tuple[str, str], ...] = option(
        (),
        help='Extra header "Name: value", repeatable; the variable holds one per line',
        doc="repeatable extra header",
        panel=CONTENT,
        metavar='"NAME: VALUE"',
        flags=("--header",),
        given_as=list[str],
        parse=_headers,
        report=_show_headers,
    )
    # SMTP
    starttls: bool = option(
        False,
        help="Use STARTTLS when offered (certificates not verified)",
        doc="use STARTTLS when the server offers it (certificates are not verified)",
        panel=SMTP,
        given_as=bool,
    )
    auth_user: str | None = option(
        None,
        help="AUTH PLAIN/LOGIN user (with --http, HTTP basic authentication)",
        doc=(
            "AUTH PLAIN, or LOGIN when PLAIN is not offered; a refused login is an error. With `--http`, the "
            "user of HTTP basic authentication (KumoMTA's `http_server_validate_auth_basic`)"
        ),
        panel=SMTP,
        metavar="USER",
    )
    auth_password: str | None = option(None, help="AUTH password", panel=SMTP, metavar="PASSWORD", report=HIDDEN)
    ehlo: str = option(
        f"trafficgen.{DEFAULT_SUFFIX}",
        help="EHLO name",
        doc="the EHLO name",
        panel=SMTP,
        metavar="NAME",
        shown_default="trafficgen.<suffix>",
        report=HIDDEN,
    )
    source_address: str | None = option(
        None,
        help="Local IP address to connect from",
        doc="local address to connect from",
        panel=SMTP,
        metavar="IP",
        parse=_ip,
    )
    pipelining: bool = option(
        True,
        help="Use PIPELINING when offered",
        doc=(
            "on: MAIL, every RCPT and DATA leave in one write when the server offers PIPELINING; `--no-"
            "pipelining` sends each command and waits for its reply"
        ),
        panel=SMTP,
        flags=("--pipelining/--no-pipelining",),
        given_as=bool,
    )
    # Output
    json_path: str | None = option(
        None,
        help="Write the JSON report here ('-': stdout)",
        doc="write the JSON report ([report.md](report.md)); `-` writes it to stdout and the summary to stderr",
        panel=OUTPUT,
        metavar="PATH",
        flags=("--json",),
        parse=_writable("--json"),
        report=HIDDEN,
    )
    quiet: bool = option(
        False,
        help="No live progress",
        doc="no live progress (the final summary is still printed)",
        panel=OUTPUT,
        flags=("--quiet", "-q"),
        given_as=bool,
        report=HIDDEN,
    )
    hdr_log: str | None = option(
        None,
        help="Write each second's latency as an HdrHistogram interval log",
        doc="write each second's transaction latency as an HdrHistogram interval log",
        panel=OUTPUT,
        metavar="PATH",
        parse=_writable("--hdr-log"),
        report=HIDDEN,
    )
    metrics: tuple[str, int] | None = option(
        None,
        help="Serve live counters and latency for Prometheus at HOST:PORT",
        doc="serve live counters and latency for Prometheus at `http://HOST:PORT/metrics`",
        panel=OUTPUT,
        metavar="HOST:PORT",
        parse=_hostport("--metrics"),
        report=HIDDEN,
    )
    # Reconciliation
    reconcile: tuple[str, ...] | None = option(
        None,
        help="At the end, ask the sinks at these admin URLs (comma-separated) what became of every message",
        doc=(
            "at the end, ask the sink(s) at these admin URLs what became of every message: delivered, bounced "
            "(and whether the MTA sent a DSN), deferred, lost, duplicated, attempts, transit times "
            "([deployment.md](deployment.md#did-the-mta-lose-or-duplicate-mail-reconciliation))"
        ),
        panel=RECONCILE,
        metavar="URL[,URL]",
        parse=parse_sink_urls,
        report=_show_reconcile,
    )
    reconcile_wait: float = option(
        0.0,
        help="Ask once a second for up to this long while the MTA delivers its queue",
        doc=(
            "ask once a second for up to this long while the MTA delivers its queue; ends early once nothing is pending"
        ),
        panel=RECONCILE,
        metavar="SECONDS",
        given_as=float,
        report=HIDDEN,
    )
    run_id: str = option(
        factory=lambda: secrets.token_hex(6),
        help="Run id for the trace header",
        doc=(
            "the run id (1 to 64 letters, digits, `-`, `_`) in `X-Trafficgen-Id: <run_id>.<seq>; t=<ms>` and in "
            "the report"
        ),
        panel=RECONCILE,
        metavar="ID",
        parse=_run_id,
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
        given_as=bool,
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
        given_as=int,
    )
    http_defer_spool: bool = option(
        False,
        help="Ask the MTA to defer spooling (with --http)",
        doc="with `--http`: KumoMTA's `deferred_spool`",
        panel=HTTP,
        given_as=bool,
    )
    http_defer_generation: bool = option(
        False,
        help="Ask the MTA to defer generation (with --http)",
        doc="with `--http`: KumoMTA's `deferred_generation`",
        panel=HTTP,
        given_as=bool,
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
        parse=_shard,
        shown_default="0/1",
        report=_show_shard,
    )

    # --- derived, read-only -------------------------------------------------------------------------------

    @cached_property
    def endpoint(self) -> tuple[str, int]:
        """(host, port) of an SMTP target."""
        return units.parse_hostport(self.target, "--target")

    @property
    def host(self) -> str:
        return self.endpoint[0]

    @property
    def port(self) -> int:
        return self.endpoint[1]

    @property
    def http_url(self) -> str:
        return self.target if self.http else ""

    @property
    def shard_index(self) -> int:
        return self.shard[0]

    @property
    def shard_count(self) -> int:
        return self.shard[1]

    def domain_with_suffix(self, name: str) -> str:
        return f"{name}.{self.domain_suffix}" if self.domain_suffix else name

    def public(self) -> dict[str, object]:
        """The config as the JSON report shows it (no password, no local paths)."""
        shown = report(self)
        shown["http_batch_size"] = self.http_batch_size if self.http else None
        return shown


# --- checks across options, one concern each ------------------------------------------------------------------------


def _resolve_target(fields: dict[str, Any]) -> None:
    target = str(fields.get("target", DEFAULT_TARGET))
    if fields.get("http"):
        if not _URL.match(target):
            raise ConfigError(f"--target {target!r}: with --http, give the MTA's URL, like http://127.0.0.1:8000")
        fields["target"] = target.rstrip("/") + INJECT_PATH
        return
    if fields.get("http_batch_size", 1) != 1 or fields.get("http_defer_spool") or fields.get("http_defer_generation"):
        raise ConfigError("--http-batch-size, --http-defer-spool and --http-defer-generation go with --http")
    if re.match(r"^https?://", target):
        raise ConfigError(f"--target {target!r} is a URL: add --http to submit through the injection API")
    try:
        host, port = units.parse_hostport(target, "--target")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if port == 0:
        raise ConfigError(f"--target {target!r}: port 0 is not a port to connect to")
    fields["target"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_http(fields: dict[str, Any]) -> None:
    if not fields.get("http"):
        return
    if fields.get("recipients_per_message", 1) != 1:
        raise ConfigError("with --http, --http-batch-size sets the recipients of each message")
    for name, flag in (
        ("starttls", "--starttls"),
        ("source_address", "--source-address"),
    ):
        if fields.get(name):
            raise ConfigError(f"{flag} applies to SMTP, not to --http")
    fields["recipients_per_message"] = fields.get("http_batch_size", 1)


def _check_counts(fields: dict[str, Any]) -> None:
    for name in (
        "concurrency",
        "message_count",
        "messages_per_connection",
        "processes",
        "http_batch_size",
        "recipients_per_message",
    ):
        value = fields.get(name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    processes, count = fields.get("processes", 1), fields.get("message_count")
    concurrency = fields.get("concurrency", RunConfig.concurrency)
    if processes > concurrency:
        raise ConfigError(f"--processes {processes} is more than --concurrency {concurrency}: each needs a connection")
    if count is not None and processes > count:
        raise ConfigError(f"--processes {processes} is more than --message-count {count}")


def _check_times(fields: dict[str, Any]) -> None:
    duration = fields.get("duration")
    if duration is not None and duration <= 0:
        raise ConfigError(f"--duration must be more than 0 seconds, got {duration}")
    if fields.get("timeout", DEFAULT_TIMEOUT) <= 0:
        raise ConfigError(f"--timeout must be more than 0 seconds, got {fields['timeout']}")
    if fields.get("reconcile_wait", 0.0) < 0:
        raise ConfigError(f"--reconcile-wait cannot be negative, got {fields['reconcile_wait']}")
    if "duration" not in fields and fields.get("message_count") is not None:
        fields["duration"] = None  # --message-count alone is never cut short by the default duration


def _check_auth(fields: dict[str, Any]) -> None:
    if bool(fields.get("auth_user")) != bool(fields.get("auth_password")):
        raise ConfigError("--auth-user and --auth-password go together: give both")


def _default_ehlo(fields: dict[str, Any]) -> None:
    if not fields.get("ehlo"):  # the default follows --domain-suffix
        fields["ehlo"] = f"trafficgen.{fields.get('domain_suffix', DEFAULT_SUFFIX) or 'localdomain'}"


CHECKS = (_resolve_target, _check_http, _check_counts, _check_times, _check_auth, _default_ehlo)


def build(**given: Any) -> RunConfig:
    """Validate options as a user writes them (by field name; None or absent: the default); ConfigError names
    the first bad one."""
    if given.get("http") and not given.get("target"):
        given = {**given, "target": DEFAULT_HTTP_TARGET}
    try:
        fields = values(RunConfig, given)
    except OptionError as e:
        raise ConfigError(str(e)) from None
    for check in CHECKS:
        check(fields)
    return RunConfig(**fields)
